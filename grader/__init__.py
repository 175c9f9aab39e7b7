"""The course's autograder, in folders by who uses them.

- grader/ (these modules) and grader/phases/ (one grader per phase): what students run, `make
  grade`, `make hint`, `make bench`; `make release` and `make nbgrader` copy these two folders.
  Shared by every phase (never copied into one): the float64 reference and the SDPA-relative
  error rule (`numerics`), FLOP and byte counts (`cost`), the GPU timer (`timing`), the checks
  that keep a graded call honest (`honesty`) and the ahead-of-time compile tier (`aot`).
- grader/instructor/: the course's authors and instructors: the exercise generator, release,
  nbgrader, the gradebook, the mutation suite and the course's own tests.
- grader/lessons/: the measurements and figures behind the lessons' numbers (they import solutions/).
"""
