"""The course's autograder: a pytest plugin, one grader per phase, and the exercise generator.

Shared by every phase (never copied into one): the float64 reference and the SDPA-relative
error rule (`numerics`), FLOP and byte counts (`cost`), the GPU timer (`timing`), the checks
that keep a graded call honest (`honesty`) and the ahead-of-time compile tier (`aot`).
"""
