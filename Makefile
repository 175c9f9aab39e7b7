# FlashAttention from Scratch -- the course's verbs. `make help` lists them.
#
# Set-up is automatic: a Python that already has torch and triton (the GPU machines) is used as
# it is; otherwise the first command builds .venv (torch, triton, pytest, numpy, matplotlib).

SHELL := /bin/bash
VENV ?= .venv
TORCH_SPEC ?= torch
IMPL ?= exercises
# The phases this tree has (PHASES, given on the command line, selects some for release and mutants).
COURSE_PHASES := $(sort $(patsubst solutions/phase%,%,$(wildcard solutions/phase[0-9]*)))
ifeq ($(COURSE_PHASES),)  # a student copy (make release) has no solutions/
COURSE_PHASES := $(sort $(patsubst exercises/phase%,%,$(wildcard exercises/phase[0-9]*)))
endif

# Set-up is decided by what imports, not by file times: a .venv whose packages all import is used as
# it is, however new pyproject.toml is; one that lacks any is (re)built by `setup`. The lint verbs
# need ruff (the dev extra) as well.
imports = $(shell $(1) -c 'import $(2)' >/dev/null 2>&1 && echo yes)
VENV_NEEDS := torch, triton, pytest, numpy, matplotlib, pytest_benchmark
ifneq ($(filter test lint,$(MAKECMDGOALS)),)
VENV_NEEDS += , ruff
endif
ifeq ($(call imports,python3,torch, triton, pytest, numpy),yes)
PY := python3
SETUP :=
else
PY := $(VENV)/bin/python
SETUP := $(if $(call imports,$(PY),$(VENV_NEEDS)),,setup)
endif

ifneq ($(filter grade grade-all bench hint,$(MAKECMDGOALS)),)
ifeq ($(filter $(PHASE),$(COURSE_PHASES)),)
$(error PHASE must be one of: $(COURSE_PHASES) -- e.g. make grade PHASE=0 [IMPL=exercises|solutions])
endif
ifeq ($(filter $(IMPL),exercises solutions),)
ifeq ($(wildcard $(IMPL)/phase$(PHASE)/.),)
$(error IMPL must be exercises, solutions or a submission folder holding phase$(PHASE)/, not '$(IMPL)')
endif
endif
endif

.PHONY: help setup grade hint bench check-solutions test mutants exercises measure figures lint clean release nbgrader grade-all

help: ## list the verbs
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

grade: $(SETUP) ## grade one phase: PHASE=N [IMPL=exercises|solutions|a submission folder] [TEST=name: that test alone, full traceback]
	@$(PY) -m grader grade --phase $(PHASE) --impl $(IMPL) $(if $(TEST),--test '$(TEST)',)

hint: ## hints, one level per call: PHASE=N lists the TODOs, PHASE=N TODO=k reveals the next hint of TODO k
	@python3 -m grader.hints --phase $(PHASE) --impl $(IMPL) $(if $(TODO),--todo $(TODO),)

bench: $(SETUP) ## GPU: time PHASE=N's kernels (pytest-benchmark, CUDA events); each run saved and compared with the last
	@$(PY) -m grader bench --phase $(PHASE) --impl $(IMPL)

check-solutions: $(SETUP) ## every phase both ways: solutions get full marks, untouched stubs zero
	@$(PY) -m grader check-solutions

test: $(SETUP) ## everything CI runs: lint, stale-exercises check, check-solutions, the mutation suite, the course's own tests [STRICT=1]
	@if $(PY) -c 'import ruff' 2>/dev/null; then $(PY) -m ruff check grader solutions; \
	else echo "make test: ruff is not installed in this Python, so lint was NOT run (pip install ruff)"; \
	test -z "$$CI"; fi
	$(PY) -m grader.instructor.generate --check $(if $(STRICT),--strict,)
	$(PY) -m grader check-solutions
	$(PY) -m grader.instructor.mutants
	$(PY) -m pytest grader/instructor/tests -q

mutants: $(SETUP) ## grade realistic bugs planted in copies of solutions/: each must lose points [PHASES=0-2 RECORD=1]
	$(PY) -m grader.instructor.mutants $(if $(PHASES),--phases $(PHASES),) $(if $(RECORD),--record,)

exercises: $(SETUP) ## regenerate exercises/ from solutions/ (edited files are kept unless FORCE=1)
	$(PY) -m grader.instructor.generate $(if $(FORCE),--force,)

measure: $(SETUP) ## GPU only: run the lessons' measurements [PHASE=N] (device ceilings, kernels vs SDPA) into assets/
	$(PY) -m grader.lessons.measure $(if $(PHASE),phase$(PHASE),$(COURSE_PHASES:%=phase%))

figures: $(SETUP) ## redraw the plots and tables of lessons and README from the data in assets/
	$(PY) -m grader.lessons.figures

lint: $(SETUP) ## ruff over the course's code
	$(PY) -m ruff check grader solutions

release: ## write the student copy (no solutions/, hidden tests stripped) to build/release/ and build/release.tar.gz [PHASES=0-2]
	python3 -m grader.instructor.release $(if $(PHASES),--phases $(PHASES),)

nbgrader: $(SETUP) ## write an nbgrader course, one assignment per phase, to build/nbgrader/ [PHASES=0-2 NBGRADER_DIR=dir]
	@$(PY) -c 'import nbgrader' 2>/dev/null || $(PY) -m pip install -q -e ".[nbgrader]"
	$(PY) -m grader.instructor.nbgrade $(if $(PHASES),--phases $(PHASES),) $(if $(NBGRADER_DIR),--out $(NBGRADER_DIR),)

grade-all: $(SETUP) ## grade every submission: SUBMISSIONS=DIR PHASE=N [TIMEOUT=s JOBS=j] -> gradebook CSV
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade-all SUBMISSIONS=DIR PHASE=N (one folder per submission, shaped like exercises/)"; exit 2; }
	@$(PY) -m grader.instructor.grade_all --submissions "$(SUBMISSIONS)" --phase $(PHASE) \
		$(if $(TIMEOUT),--timeout $(TIMEOUT),) $(if $(JOBS),--jobs $(JOBS),) $(if $(OUT),--out $(OUT),)

clean: ## remove reports and caches (keeps .venv)
	rm -rf reports .pytest_cache && find . -name __pycache__ -prune -exec rm -rf {} +

setup: ## build or complete .venv (torch, triton, pytest, numpy, matplotlib, ruff); the verbs run it when a package does not import
	@echo "Setting up $(VENV): torch, triton, pytest, numpy, matplotlib, ruff"
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -c 'import torch' 2>/dev/null || $(VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(VENV)/bin/python -m pip install -q -e ".[dev]"
	@$(VENV)/bin/python -c 'import $(VENV_NEEDS)' || { echo "setup: $(VENV) still cannot import one of: $(VENV_NEEDS)"; exit 1; }
