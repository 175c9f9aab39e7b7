"""`make release`: the student copy of the course, as a folder and as an archive.

It holds the folders listed in STUDENT_FOLDERS: the lessons and the exercises (exercises/), the
grader students run (the files of grader/ and grader/phases/), the figures (assets/); and the
Makefile (without the instructor verbs), pyproject.toml and the README. It has no solutions/, no
grader/instructor/ (these tools, the course's own tests) and no grader/lessons/ (the measurements),
because they are not listed; every `### BEGIN HIDDEN TESTS` ... `### END HIDDEN TESTS` block is cut
out of the grader, as nbgrader does with its hidden tests.

A course is released phase by phase (`--phases 0-2`: the exercises, graders and figures of those
phases only; by default every phase). Before it writes the archive it checks its own work, for the
phases it holds (`leaks`): no line of any of their solution regions and no line of a hidden test may
appear in any file of the copy. A later phase's scaffolding that repeats an earlier phase's answer
counts as a leak when both phases are released together.

    python -m grader.instructor.release [--phases 0-2] [--out build/release] [--archive build/release.tar.gz]
"""
import argparse
import re
import shutil
import sys
import tarfile
from pathlib import Path

from grader.impl import ROOT

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
# Parts of the README for the course's authors and instructors (their verbs, INSTRUCTORS.md): cut
# from the student copy, which has neither.
BEGIN_COURSE_ONLY, END_COURSE_ONLY = "<!-- BEGIN COURSE-ONLY -->", "<!-- END COURSE-ONLY -->"
ARCHIVE_TOP = "flashattention-from-scratch"

TOP_FILES = ("README.md", "Makefile", "pyproject.toml", ".gitignore", "LICENSE", "LICENSE.md", "LICENSE.txt")
# What students get, by folder: each folder listed comes with its files, and with its subfolders only
# where it ends in /** (the whole tree). A folder that is not listed stays home, whatever it holds.
# The grader's folders are shared with `make nbgrader`, whose notebooks run the same grader.
GRADER_FOLDERS = ("grader", "grader/phases")
STUDENT_FOLDERS = ("exercises/**", "assets/**", *GRADER_FOLDERS)
# The folders of grader/ that stay home: the instructor's tools and the course's own tests (they
# read solutions/), and the measurement scripts behind the lessons' tables (they import solutions/;
# Phase 4's includes a working atomic-dQ backward kernel, a near answer: students get the tables, not
# the scripts). The course's test_layout.py checks that every folder of grader/ is in one list or
# the other, and that no student folder imports from these.
HOME_FOLDERS = ("grader/instructor", "grader/lessons")
# Makefile verbs that need solutions/ or exist for instructors; the release's Makefile drops them.
INSTRUCTOR_TARGETS = ("check-solutions", "test", "mutants", "exercises", "measure", "figures", "lint", "release",
                      "nbgrader", "grade-all")
SKIP_PARTS = ("__pycache__", ".pytest_cache", ".ipynb_checkpoints", ".hints")  # .hints: a user's record


class ReleaseError(RuntimeError):
    pass


def strip_regions(text: str, begin: str, end: str, where: str = "<text>") -> str:
    """`text` without the lines from `begin` to `end` (markers included); markers must pair up."""
    out, inside = [], None
    for i, line in enumerate(text.splitlines(keepends=True), 1):
        mark = line.strip()
        if mark == begin:
            if inside is not None:
                raise ReleaseError(f"{where}:{i}: {begin} inside the block opened at line {inside}")
            inside = i
        elif mark == end:
            if inside is None:
                raise ReleaseError(f"{where}:{i}: {end} without {begin}")
            inside = None
        elif inside is None:
            out.append(line)
    if inside is not None:
        raise ReleaseError(f"{where}:{inside}: {begin} is never closed by {end}")
    return "".join(out)


def strip_hidden_tests(text: str, where: str = "<text>") -> str:
    return strip_regions(text, BEGIN_HIDDEN, END_HIDDEN, where)


def region_lines(text: str, begin: str, end: str) -> tuple[list[str], list[str]]:
    """(lines inside the regions, lines outside them), stripped."""
    inside, outside, depth = [], [], False
    for line in text.splitlines():
        mark = line.strip()
        if mark == begin:
            depth = True
        elif mark == end:
            depth = False
        else:
            (inside if depth else outside).append(mark)
    return inside, outside


# A block header on one flag (`if CAUSAL:`, `if not EVEN_N:`) is syntax that any kernel of the course
# has, not an answer.
FLAG_HEADER = re.compile(r"^(if|elif|while)( not)? [A-Za-z_][A-Za-z0-9_]*:$")


def _meaningful(line: str) -> bool:
    """Lines long enough to be an answer rather than syntax (`else:`, `)`, `return o`, blank)."""
    return len(line) >= 10 and re.search(r"[A-Za-z0-9]", line) is not None and not FLAG_HEADER.match(line)


def course_phases(root: Path = ROOT) -> list[int]:
    """The phases of solutions/ (phaseN folders), in order."""
    return sorted(int(p.name[len("phase"):]) for p in (root / "solutions").glob("phase*")
                  if p.is_dir() and p.name[len("phase"):].isdigit())


def parse_phases(spec: str | None, available: list[int]) -> list[int]:
    """`0-2`, `0,3`, `1-2,4` or None (every phase) -> sorted phase numbers; ValueError names a bad one."""
    if not spec:
        return list(available)
    chosen = set()
    for part in spec.replace(" ", "").split(","):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"PHASES must look like 0-2 or 0,3, not {spec!r}")
        chosen.update(range(int(low), int(high or low) + 1))
    unknown = sorted(chosen - set(available))
    if unknown:
        raise ValueError(f"no phase {', '.join(map(str, unknown))}: the course has {', '.join(map(str, available))}")
    return sorted(chosen)


def imported_phases(phase: int, root: Path = ROOT) -> set[int]:
    """Earlier phases that phase `phase` imports (`from ..phase0.checks import ...`)."""
    found = set()
    for path in (root / "solutions" / f"phase{phase}").glob("*.py"):
        found.update(int(n) for n in re.findall(r"from \.\.phase(\d+)", path.read_text()))
    return found - {phase}


def _phase_of(path: Path, tree: Path) -> int | None:
    first = path.relative_to(tree).parts[0]
    return int(first[len("phase"):]) if first.startswith("phase") and first[len("phase"):].isdigit() else None


def _solution_regions(root: Path):
    """(phase or None, path relative to root, lines inside the solution regions, lines outside them)
    of each source file of solutions/: what both leak checks below start from."""
    solutions = root / "solutions"
    for path in sorted(solutions.rglob("*.py")):
        if not any(part in SKIP_PARTS for part in path.parts):
            inside, outside = region_lines(path.read_text(), BEGIN_SOLUTION, END_SOLUTION)
            yield _phase_of(path, solutions), str(path.relative_to(root)), inside, outside


def secret_lines(root: Path = ROOT, phases: list[int] | None = None) -> dict[str, str]:
    """Every line a copy holding `phases` (default: every phase) must not contain -> where it comes from.

    - The lines of the solution regions of those phases, except a line that also stands outside
      the solution regions of the same phase or an earlier one: the student has that line in front
      of them anyway. A line that only a *later* phase shows as scaffolding stays secret: released
      together, the later stub would give the earlier answer away.
    - The lines of hidden-test blocks in grader/, except those that also appear outside such blocks.
    """
    phases = course_phases(root) if phases is None else phases
    inside_by_phase: dict[int, dict[str, str]] = {}
    outside_by_phase: dict[int | None, set[str]] = {}
    for phase, where, inside, outside in _solution_regions(root):
        outside_by_phase.setdefault(phase, set()).update(outside)
        if phase is not None:
            for line in inside:
                if _meaningful(line):
                    inside_by_phase.setdefault(phase, {}).setdefault(line, where)
    secrets = {}
    for phase in phases:
        seen = set(outside_by_phase.get(None, set())).union(
            *(lines for p, lines in outside_by_phase.items() if p is not None and p <= phase))
        for line, where in inside_by_phase.get(phase, {}).items():
            if line not in seen:
                secrets.setdefault(line, where)
    hidden, public = {}, set()
    for path in sorted((root / "grader").rglob("*.py")):
        if any(part in SKIP_PARTS for part in path.parts):
            continue
        inside, outside = region_lines(path.read_text(), BEGIN_HIDDEN, END_HIDDEN)
        public.update(outside)
        for line in inside:
            if _meaningful(line):
                hidden.setdefault(line, str(path.relative_to(root)))
    secrets.update({line: where for line, where in hidden.items() if line not in public and line not in secrets})
    return secrets


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _statements(lines: list[str]) -> list[tuple[int, str]]:
    """(index of the first line, the lines joined) of each statement spanning several lines: a line
    whose brackets stay open continues on the next. Comments are dropped (roughly: `#` to the end)."""
    found, parts, start, depth = [], [], 0, 0
    for i, line in enumerate(lines):
        code = line.split("#", 1)[0].strip()
        if not parts:
            start = i
        parts.append(code)
        depth += sum(code.count(c) for c in "([{") - sum(code.count(c) for c in ")]}")
        if depth <= 0:
            if len(parts) > 1:
                found.append((start, " ".join(parts)))
            parts, depth = [], 0
    return found


def secret_statements(root: Path = ROOT, phases: list[int] | None = None) -> dict[str, str]:
    """The answers' statements that span several lines, whitespace removed -> where they come from:
    a lesson that quotes one on a single line (or re-wrapped) is caught too. Exempt as in
    `secret_lines`: a statement that also stands outside the regions of the same or an earlier phase."""
    phases = course_phases(root) if phases is None else phases
    inside_by_phase: dict[int, dict[str, str]] = {}
    outside_by_phase: dict[int | None, set[str]] = {}
    for phase, where, inside, outside in _solution_regions(root):
        outside_by_phase.setdefault(phase, set()).update(_squash(st) for _, st in _statements(outside))
        if phase is not None:
            for _, statement in _statements(inside):
                inside_by_phase.setdefault(phase, {}).setdefault(_squash(statement), where)
    secrets = {}
    for phase in phases:
        seen = set(outside_by_phase.get(None, set())).union(
            *(st for p, st in outside_by_phase.items() if p is not None and p <= phase))
        secrets.update({st: where for st, where in inside_by_phase.get(phase, {}).items() if st not in seen})
    return secrets


def _text_lines(path: Path) -> list[str] | None:
    """The lines a reader sees in a file (a notebook's cell sources), or None for a binary file."""
    try:
        text = path.read_text()
    except (UnicodeDecodeError, ValueError):
        return None  # figures and other binary files
    if path.suffix == ".ipynb":
        import json

        try:
            cells = json.loads(text).get("cells", [])
        except ValueError:
            return text.splitlines()
        return [line for cell in cells for line in "".join(cell.get("source", "")).splitlines()]
    return text.splitlines()


def leaks(release: Path, root: Path = ROOT, phases: list[int] | None = None) -> list[str]:
    """Problems of a student copy holding `phases` (default every phase): solutions/ present,
    markers left, secret lines found."""
    problems = []
    if (release / "solutions").exists():
        problems.append("solutions/ is in the release")
    secrets = secret_lines(root, phases)
    statements = secret_statements(root, phases)
    for path in sorted(p for p in release.rglob("*") if p.is_file()):
        lines = _text_lines(path)
        if lines is None:
            continue
        rel = path.relative_to(release)
        for n, line in enumerate(lines, 1):
            mark = line.strip()
            if mark in (BEGIN_SOLUTION, END_SOLUTION, BEGIN_HIDDEN, END_HIDDEN):
                problems.append(f"{rel}:{n}: marker {mark!r} left in the release")
            elif mark in secrets:
                problems.append(f"{rel}:{n}: a line of {secrets[mark]} that students must not see: {mark[:80]!r}")
            elif _squash(mark.split("#", 1)[0]) in statements:
                where = statements[_squash(mark.split("#", 1)[0])]
                problems.append(f"{rel}:{n}: a statement of {where}, on one line, that students must not see: "
                                f"{mark[:80]!r}")
        for start, statement in _statements([line.strip() for line in lines]):
            if _squash(statement) in statements and not any(p.startswith(f"{rel}:{start + 1}:") for p in problems):
                problems.append(f"{rel}:{start + 1}: a statement of {statements[_squash(statement)]} that students "
                                f"must not see: {statement[:80]!r}")
    return problems


def release_makefile(text: str) -> str:
    """The Makefile without the instructor verbs (their rule and recipe lines)."""
    out, dropping = [], False
    target = re.compile(r"^([A-Za-z0-9_.$()/-]+)\s*:(?!=)")
    for line in text.splitlines(keepends=True):
        found = target.match(line)
        if found:
            dropping = found.group(1) in INSTRUCTOR_TARGETS
        elif dropping and not line.startswith("\t"):
            dropping = False
        if dropping:
            continue
        if line.startswith(".PHONY:"):
            kept = [t for t in line.split()[1:] if t not in INSTRUCTOR_TARGETS]
            line = ".PHONY: " + " ".join(kept) + "\n"
        out.append(line)
    return "".join(out)


def _unreleased(rel: Path, phases: list[int]) -> bool:
    """Does this path (relative to exercises/, grader/ or assets/) belong to a phase not released?
    Phase folders (`phase3/`), phase graders (`phases/test_phase3.py`) and phase reports
    (`reports/phase3-...`) belong to their phase."""
    for part in rel.parts:
        found = re.match(r"^(?:test_)?phase(\d+)(?:$|[-_.])", part)
        if found:
            return int(found.group(1)) not in phases
    return False


def student_files(root: Path = ROOT, folders: tuple[str, ...] = STUDENT_FOLDERS) -> list[Path]:
    """The files of `folders` (see STUDENT_FOLDERS), relative to `root`, caches and .hints left out."""
    found = []
    for folder in folders:
        whole = folder.endswith("/**")
        base = root / folder.removesuffix("/**")
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*") if whole else base.iterdir()):
            rel = path.relative_to(root)
            if path.is_file() and path.suffix != ".pyc" and not any(part in SKIP_PARTS for part in rel.parts):
                found.append(rel)
    return found


def _copy_file(src: Path, target: Path, root: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix == ".py":
        target.write_text(strip_hidden_tests(src.read_text(), str(src.relative_to(root))))
    else:
        shutil.copy2(src, target)


def build(out: Path, archive: Path | None = None, root: Path = ROOT, phases: list[int] | None = None) -> list[str]:
    """Write the student copy of `phases` (default: every phase) to `out` (replacing it) and, when
    it is clean, `archive`."""
    if out.resolve() == root.resolve() or root.resolve().is_relative_to(out.resolve()):
        raise ReleaseError(f"refusing to replace {out}: it holds the course itself")
    if phases is not None:
        missing = sorted({dep for p in phases for dep in imported_phases(p, root)} - set(phases))
        if missing:
            raise ReleaseError(f"phases {phases} import phase(s) {missing}, which must be released with them")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in TOP_FILES:
        if (root / name).is_file():
            text = (root / name).read_text()
            if name == "Makefile":
                text = release_makefile(text)
            elif name.endswith(".md"):
                text = strip_regions(text, BEGIN_COURSE_ONLY, END_COURSE_ONLY, name)
            (out / name).write_text(text)
    for rel in student_files(root):
        # `_unreleased` looks below the top folder: phase folders, graders and reports of other phases
        if phases is None or not _unreleased(Path(*rel.parts[1:]), phases):
            _copy_file(root / rel, out / rel, root)
    problems = leaks(out, root, phases)
    if problems:
        raise ReleaseError("the student copy would leak answers:\n  " + "\n  ".join(problems[:30]))
    if archive is not None:
        archive.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(out, arcname=ARCHIVE_TOP)
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader.instructor.release", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "build" / "release"))
    parser.add_argument("--archive", default=str(ROOT / "build" / "release.tar.gz"))
    parser.add_argument("--phases", default=None,
                        help="the phases to release, e.g. 0-2 or 0,1,3 (default: every phase)")
    args = parser.parse_args(argv)
    try:
        phases = None if not args.phases else parse_phases(args.phases, course_phases())
        files = build(Path(args.out), Path(args.archive), phases=phases)
    except (ReleaseError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if "leak" in str(exc) and not args.phases:
            print("  (a later phase's stub may repeat an earlier phase's answer: release phase by phase, "
                  "e.g. make release PHASES=0-2)", file=sys.stderr)
        return 1
    which = "every phase" if phases is None else "phases " + ", ".join(map(str, phases))
    print(f"student copy of {which}: {args.out} ({len(files)} files) and {args.archive}")
    print("  no solutions/, hidden tests stripped, checked: no line of a released phase's solution region "
          "or of a hidden test in it")
    print(f"  try it: cd {args.out} && make grade PHASE=0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
