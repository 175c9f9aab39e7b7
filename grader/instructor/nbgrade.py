"""`make nbgrader`: an nbgrader course with one assignment per phase, generated from the repository.

    build/nbgrader/
      nbgrader_config.py
      source/phaseN/phaseN.ipynb      the assignment (instructor version, answers between nbgrader's markers)
      source/phaseN/fa_course/        the public grader (hidden tests cut out) the notebook runs
      source/phaseN/assets/...        the lesson's figures

The notebook: the lesson (exercises/phaseN/README.md) as markdown cells; a read-only set-up cell; one
code cell per module the phase needs (`%%fa_module phaseN/<file>.py`, see grader/notebook.py): the
files with answers are autograded-answer cells holding the solution between `### BEGIN SOLUTION` and
`### END SOLUTION` (modules of earlier phases that this phase imports come along the same way, so a
student's own earlier work runs, as in exercises/), the others are read-only; then one autograder
test cell per test of the phase's grader, worth the grader's points, and one per hidden-test block,
its code between `### BEGIN HIDDEN TESTS` and `### END HIDDEN TESTS`.

Points count the tests that run on the machine that autogrades (`--target cpu`: interpreter and
compile tiers; `--target gpu`: all tiers; default: this machine's). A cell's score is its share of
the grader's points that ran, so a notebook made for one target still scores 0..max on the other.

The student version of each assignment (release/phaseN/) is checked like `make release`: no line of an
answer of phase N or of an earlier phase it includes may appear in it.

    python -m grader.instructor.nbgrade [--out build/nbgrader] [--phases 0-2] [--target cpu|gpu] [--no-generate]
"""
import argparse
import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from grader import settings
from grader.impl import ROOT, phases
from grader.instructor.answers import BEGIN_HIDDEN, BEGIN_SOLUTION, END_HIDDEN, leaks
from grader.instructor.release import (BEGIN_COURSE_ONLY, END_COURSE_ONLY, GRADER_FOLDERS, parse_phases,
                                       strip_hidden_tests, strip_regions, student_files)

COURSE_ID = "flashattention-from-scratch"
TARGET_TIERS = {"cpu": {"correctness", "compile"}, "gpu": {"correctness", "compile", "gpu", "throughput"}}
SETUP_CELL = """\
# Set-up (read-only): the course's grader, and Triton's interpreter when there is no GPU.
# Run it first, and again after restarting the kernel.
import sys
if "fa_course" not in sys.path:
    sys.path.insert(0, "fa_course")
from grader import notebook as fa
fa.setup({phase})"""


# ---------------------------------------------------------------- which modules a phase needs
def _imports(path: Path, phase_dir: str) -> set[str]:
    """Relative imports of a module, as paths like `phase0/checks.py` or `phase3/__init__.py`."""
    found = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        parts = [phase_dir][: 2 - node.level] + (node.module.split(".") if node.module else [])
        base = ROOT / "solutions" / Path(*parts) if parts else ROOT / "solutions"
        if base.with_suffix(".py").is_file():
            found.add(base.with_suffix(".py").relative_to(ROOT / "solutions").as_posix())
        elif (base / "__init__.py").is_file():
            found.add((base / "__init__.py").relative_to(ROOT / "solutions").as_posix())
            for alias in node.names:  # `from . import x` or `from ..phase3 import forward`
                if (base / f"{alias.name}.py").is_file():
                    found.add((base / f"{alias.name}.py").relative_to(ROOT / "solutions").as_posix())
    return found


def needed_modules(phase: int) -> list[str]:
    """Every module of phase N and those of earlier phases it imports, in an order that imports
    cleanly cell by cell: phase by phase, dependencies first, each package's __init__ last."""
    todo = [p.relative_to(ROOT / "solutions").as_posix()
            for p in sorted((ROOT / "solutions" / f"phase{phase}").glob("*.py"))]
    deps: dict[str, set[str]] = {}
    while todo:
        rel = todo.pop()
        if rel in deps:
            continue
        deps[rel] = _imports(ROOT / "solutions" / rel, rel.split("/")[0])
        todo.extend(deps[rel] - set(deps))
    order: list[str] = []

    def visit(rel, stack=()):
        if rel in order or rel in stack:
            return
        for dep in sorted(deps[rel]):
            if dep.split("/")[0] == rel.split("/")[0] or dep < rel:
                visit(dep, (*stack, rel))
        order.append(rel)

    def key(rel):
        ph, name = rel.split("/")
        return (int(ph[len("phase"):]), name == "__init__.py", name)

    for rel in sorted(deps, key=key):
        visit(rel)
    return sorted(order, key=lambda r: (key(r)[0], key(r)[1], order.index(r)))


# ---------------------------------------------------------------- the grader's tests
def collect(phase: int) -> list[dict]:
    """The phase's test items with their function, points, marked tier and line (in a child process)."""
    proc = subprocess.run([sys.executable, "-m", "grader.instructor.nbgrade", "--collect", str(phase)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"could not collect phase {phase}'s tests:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _collect_here(phase: int) -> list[dict]:
    import os

    import pytest

    os.environ.setdefault(settings.IMPL.name, "solutions")
    items = []

    class Collector:
        def pytest_collection_finish(self, session):
            for item in session.items:
                tier = item.get_closest_marker("tier")
                points = item.get_closest_marker("points")
                items.append({"function": item.originalname, "name": item.name,
                              "tier": tier.args[0] if tier else "correctness",
                              "points": float(points.args[0]) if points else 1.0,
                              "line": item.function.__code__.co_firstlineno})

    path = ROOT / "grader" / "phases" / f"test_phase{phase}.py"
    code = pytest.main([str(path), "--collect-only", "-q", "-p", "grader.plugin", "--rootdir", str(ROOT),
                        "-p", "no:cacheprovider"], plugins=[Collector()])
    if code != 0:
        raise SystemExit(code)
    return items


def hidden_blocks(source: str) -> list[tuple[int, int, str]]:
    """(first line, last line, text) of each hidden-test block, markers excluded (1-based lines)."""
    blocks, start = [], None
    lines = source.splitlines(keepends=True)
    for i, line in enumerate(lines, 1):
        if line.strip() == BEGIN_HIDDEN:
            start = i
        elif line.strip() == END_HIDDEN and start is not None:
            blocks.append((start, i, "".join(lines[start:i - 1])))
            start = None
    return blocks


# ---------------------------------------------------------------- the notebook
def _cell(kind: str, source: str, **nbgrader) -> dict:
    cell = {"cell_type": kind, "metadata": {}, "source": source}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    if nbgrader:
        cell["metadata"]["nbgrader"] = {"schema_version": 3, "grade": False, "solution": False, "locked": False,
                                        **nbgrader}
    return cell


def _lesson_cells(phase: int, assignment: Path) -> list[dict]:
    readme = ROOT / "exercises" / f"phase{phase}" / "README.md"
    if not readme.exists():
        return [_cell("markdown", f"# Phase {phase}\n\n(This phase has no lesson text yet.)")]
    # as `make release` ships a lesson: without its parts for instructors
    text = strip_regions(readme.read_text(), BEGIN_COURSE_ONLY, END_COURSE_ONLY, str(readme.relative_to(ROOT)))

    def relink(match):  # figures referenced by the lesson are copied next to the notebook
        label, target = match.group(1), match.group(2)
        if re.match(r"^[a-z]+://", target) or target.startswith("#"):
            return match.group(0)
        src = (readme.parent / target).resolve()
        if not src.is_file() or not src.is_relative_to(ROOT):
            return match.group(0)
        dest = Path("assets") / src.relative_to(ROOT / "assets") if src.is_relative_to(ROOT / "assets") \
            else Path("assets") / src.name
        (assignment / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, assignment / dest)
        return f"![{label}]({dest.as_posix()})"

    text = re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", relink, text)
    chunks = re.split(r"\n(?=## )", text)  # one markdown cell per section
    return [_cell("markdown", chunk.strip("\n")) for chunk in chunks if chunk.strip()]


def notebook(phase: int, target: str, assignment: Path) -> tuple[dict, float]:
    """The source notebook of one phase and its total points."""
    tiers = TARGET_TIERS[target]
    cells = [_cell("markdown", f"# FlashAttention from Scratch, Phase {phase}\n\n"
                   "Read the lesson, fill in the code cells below where they say `YOUR CODE HERE` (each has a "
                   "`TODO` comment above it that says what to write), then run the test cells at the end: each "
                   "prints the grader's verdict case by case and shows the points it gives. Run the set-up cell "
                   "first. Kernels run on a GPU when there is one, otherwise with Triton's interpreter (slower, "
                   "small shapes).", grade_id=f"phase{phase}_intro", locked=True),
             _cell("code", SETUP_CELL.format(phase=phase), grade_id=f"phase{phase}_setup", locked=True)]
    cells += _lesson_cells(phase, assignment)
    cells.append(_cell("markdown", "## Your code\n\nEach cell below is one file of the course's package: "
                       "`%%fa_module phaseN/name.py` saves the cell to that file and imports it, so its functions "
                       "become available here. Cells of earlier phases hold your own earlier work, as in "
                       "`exercises/`: fill them in too, where this phase uses them. Stuck? Run the cells, then "
                       "`fa.hint()` lists the TODOs and `fa.hint(k)` gives the next hint for TODO k (a question, "
                       "the key formula, then the shape of the code); the hints you take are kept in `fa_hints/` "
                       "beside this notebook and go in with it.",
                       grade_id=f"phase{phase}_code_intro", locked=True))
    for rel in needed_modules(phase):
        source = (ROOT / "solutions" / rel).read_text()
        code = f"%%fa_module {rel}\n{source.rstrip()}\n"
        grade_id = "phase{}_{}".format(phase, re.sub(r"\W", "_", rel.removesuffix(".py")))
        if any(line.strip() == BEGIN_SOLUTION for line in source.splitlines()):
            cells.append(_cell("code", code, grade_id=grade_id, solution=True))
        else:
            cells.append(_cell("code", code, grade_id=grade_id, locked=True))

    cells.append(_cell("markdown", f"## Grading\n\nEach cell runs some of Phase {phase}'s tests (the same grader "
                       f"as `make grade PHASE={phase}`) on the code above and shows the points earned. Cells that "
                       "look empty hold hidden tests, which run when your notebook is graded.",
                       grade_id=f"phase{phase}_grading_intro", locked=True))
    grader_source = (ROOT / "grader" / "phases" / f"test_phase{phase}.py").read_text()
    blocks = hidden_blocks(grader_source)
    items = collect(phase)
    total = 0.0
    first_line = {}
    for i in items:
        first_line.setdefault(i["function"], i["line"])
    in_block = {fn: next((k for k, b in enumerate(blocks) if b[0] < line < b[1]), None)
                for fn, line in first_line.items()}
    emitted = set()
    for fn in first_line:
        if fn in emitted:
            continue
        block = None if in_block[fn] is None else blocks[in_block[fn]]
        group = [fn] if block is None else [g for g in first_line if in_block[g] == in_block[fn]]
        emitted.update(group)
        runs = [i for i in items if i["function"] in group and i["tier"] in tiers]
        points = sum(i["points"] for i in runs)
        if not points:
            continue  # nothing of it runs on the target (e.g. a throughput test for a CPU autograder)
        total += points
        cases = f"{len(runs)} case{'s' if len(runs) > 1 else ''}"
        grade_id = f"phase{phase}_test_{'_'.join(g.removeprefix('test_') for g in group)}"[:60]
        if block is None:
            code = f"# {fn.removeprefix('test_')}: {cases}, {points:g} point(s)\nfa.tests({group!r}, points={points:g})"
        else:
            body = block[2]
            literal = f"r'''\n{body}'''" if "'''" not in body and not body.endswith("\\") else repr(body)
            code = (f"# Hidden tests: {cases}, {points:g} point(s); they run when your notebook is graded.\n"
                    f"{BEGIN_HIDDEN}\nfa.hidden_tests({group!r}, points={points:g}, source={literal})\n{END_HIDDEN}")
        cells.append(_cell("code", code, grade_id=grade_id, grade=True, locked=True, points=points))
    nb = {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
                       "language_info": {"name": "python"}}}
    for i, cell in enumerate(nb["cells"]):
        cell["id"] = f"cell-{i:03d}"
    return nb, total


def _graders_needed(phase: int) -> set[str]:
    """test_phaseN.py and the earlier phases' graders it imports (Phase 5 reuses 3's and 4's cases)."""
    needed, todo = set(), [phase]
    while todo:
        name = f"test_phase{todo.pop()}.py"
        if name in needed:
            continue
        needed.add(name)
        source = (ROOT / "grader" / "phases" / name).read_text()
        todo += [int(n) for n in re.findall(r"from grader\.phases import test_phase(\d+)", source)]
    return needed


def _ship_grader(phase: int, dest: Path) -> None:
    """The public grader of one phase (hidden tests cut out) into dest/grader: the grader's student
    folders, as `make release` ships them, with only the graders of this phase and of the earlier
    phases that it imports."""
    graders = _graders_needed(phase) | {"__init__.py"}
    for rel in student_files(ROOT, GRADER_FOLDERS):
        if rel.suffix != ".py" or (rel.parent.as_posix() == "grader/phases" and rel.name not in graders):
            continue
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(strip_hidden_tests((ROOT / rel).read_text(), rel.as_posix()))
    (dest / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")


def _ship_hints(phase: int, dest: Path) -> None:
    """The hints of every phase the notebook holds (`fa.hint(k)`; grader/notebook.py installs them)."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted({int(rel.split("/")[0].removeprefix("phase")) for rel in needed_modules(phase)}):
        source = ROOT / "solutions" / f"phase{p}" / "hints.toml"
        if source.exists():
            shutil.copy2(source, dest / f"phase{p}.toml")


CONFIG = f'''\
# nbgrader configuration of the course, written by `make nbgrader` (grader/instructor/nbgrade.py).
c = get_config()  # noqa: F821
c.CourseDirectory.course_id = "{COURSE_ID}"
# A phase's grader can run for minutes under Triton's interpreter: one test cell runs it all.
c.Execute.timeout = 3600
c.ClearSolutions.code_stub = {{
    "python": "# YOUR CODE HERE\\nraise NotImplementedError(\\"your code here: see the TODO above\\")"}}
'''


def tool_env() -> dict:
    """The environment for nbgrader's commands: this Python's bin/ first (nbgrader runs `alembic`, and
    Jupyter starts kernels with `python`)."""
    import os

    bindir = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=os.pathsep.join([bindir, os.environ.get("PATH", "")]))


def build(out: Path, selected: list[int], target: str, generate: bool = True) -> dict[int, float]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "nbgrader_config.py").write_text(CONFIG)
    totals = {}
    for phase in selected:
        assignment = out / "source" / f"phase{phase}"
        if assignment.exists():
            shutil.rmtree(assignment)
        assignment.mkdir(parents=True)
        nb, totals[phase] = notebook(phase, target, assignment)
        (assignment / f"phase{phase}.ipynb").write_text(json.dumps(nb, indent=1) + "\n")
        _ship_grader(phase, assignment / "fa_course")
        _ship_hints(phase, assignment / "fa_course" / "hints")
        print(f"source/phase{phase}/phase{phase}.ipynb: {sum(c['cell_type'] == 'code' for c in nb['cells'])} code"
              f" cells, {totals[phase]:g} points ({target} autograder)", flush=True)
        if generate:
            proc = subprocess.run([sys.executable, "-m", "nbgrader", "generate_assignment", f"phase{phase}",
                                   "--force"], cwd=out, capture_output=True, text=True, env=tool_env(), check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"nbgrader generate_assignment phase{phase} failed:\n{proc.stderr[-3000:]}")
            # The student version holds this phase and the earlier phases it imports: none of their
            # answers may show anywhere in it (a later module's scaffolding included).
            included = sorted({int(rel.split("/")[0].removeprefix("phase")) for rel in needed_modules(phase)})
            problems = leaks(out / "release" / f"phase{phase}", ROOT, included)
            if problems:
                raise RuntimeError(f"release/phase{phase} would leak answers:\n  " + "\n  ".join(problems[:30]))
            print(f"release/phase{phase}/: the student version (nbgrader generate_assignment), checked: no line "
                  f"of an answer of phase(s) {', '.join(map(str, included))}", flush=True)
    return totals


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader.instructor.nbgrade", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "build" / "nbgrader"))
    parser.add_argument("--phases", default=None, help="e.g. 0-2 or 0,3: one assignment each (default: every phase)")
    parser.add_argument("--target", choices=sorted(TARGET_TIERS), default=None,
                        help="the autograding machine: cpu (interpreter and compile tiers) or gpu (all tiers)")
    parser.add_argument("--no-generate", action="store_true", help="skip `nbgrader generate_assignment`")
    parser.add_argument("--collect", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.collect is not None:
        print(json.dumps(_collect_here(args.collect)))
        return 0
    try:
        selected = parse_phases(args.phases, phases())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.target is None:
        from grader import runtime

        args.target = "gpu" if runtime.has_cuda() else "cpu"
    generate = not args.no_generate
    if generate:
        try:
            import nbgrader  # noqa: F401
        except ImportError:
            print("nbgrader is not installed (pip install '.[nbgrader]'): writing source/ only", file=sys.stderr)
            generate = False
    build(Path(args.out), selected, args.target, generate)
    print(f"course: {args.out} (run nbgrader's commands from there; see grader/instructor/INSTRUCTORS.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
