"""What only the course's authors and instructors run; never copied to students.

generate.py (exercises/ from solutions/), release.py (`make release`), nbgrade.py (`make nbgrader`),
grade_all.py (`make grade-all`), mutants/ (`make mutants`), tests/ (the course's own tests, `make test`)
and INSTRUCTORS.md. Student folders (grader/, grader/phases/) never import from here: see
`tests/test_layout.py`.
"""
