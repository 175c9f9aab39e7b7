"""`make release`: the student copy of the course, as a folder and as an archive.

It holds the folders listed in STUDENT_FOLDERS: the lessons and the exercises (exercises/), the
grader students run (the files of grader/ and grader/phases/), what the lessons show from assets/
(assets/phaseN/: figures, tables and their data); and the Makefile (without the instructor verbs),
pyproject.toml and the README. It has no solutions/, no grader/instructor/ (these tools, the course's
own tests), no grader/lessons/ (the measurements) and no assets/reports/ or assets/mutants/ (records
of grading the solutions and their mutants), because they are not listed; every
`### BEGIN HIDDEN TESTS` ... `### END HIDDEN TESTS` block is cut out of the grader, as nbgrader
does with its hidden tests.

A course is released phase by phase (`--phases 0-2`: the exercises, graders and figures of those
phases only; by default every phase). Before it writes the archive it checks its own work, for the
phases it holds (`answers.leaks`): no line or statement of any of their solution regions and none of
a hidden test may appear in any file of the copy, whatever its kind (a JSON string, a log line, a
hint and a comment included). A later phase's scaffolding that repeats an earlier phase's answer
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
from grader.instructor.answers import BEGIN_HIDDEN, END_HIDDEN, course_phases, leaks

# Parts of the README for the course's authors and instructors (their verbs, INSTRUCTORS.md): cut
# from the student copy, which has neither.
BEGIN_COURSE_ONLY, END_COURSE_ONLY = "<!-- BEGIN COURSE-ONLY -->", "<!-- END COURSE-ONLY -->"
ARCHIVE_TOP = "flashattention-from-scratch"

TOP_FILES = ("README.md", "Makefile", "pyproject.toml", ".gitignore", "LICENSE", "LICENSE.md", "LICENSE.txt")
# What students get, by folder: each folder listed comes with its files, and with its subfolders only
# where it ends in /** (the whole tree); a name may be a pattern (`phase*`). A folder that is not
# listed stays home, whatever it holds. The grader's folders are shared with `make nbgrader`, whose
# notebooks run the same grader.
GRADER_FOLDERS = ("grader", "grader/phases")
# What the copy takes from assets/: the folder of each released phase (assets/phaseN/), and of it
# what the lesson shows, its figures and tables and the data they are drawn from (LESSON_ASSET_KINDS:
# written by `make measure`, `make figures` and the experiments the stubs cite), and any other file
# that a shipped file cites by its path (a measurement log the lesson points to). Run logs and
# compiler dumps that nothing shipped cites stay home, as does every folder in HOME_ASSETS.
LESSON_ASSETS = "assets/phase*/**"
LESSON_ASSET_KINDS = (".png", ".svg", ".jpg", ".json", ".csv", ".md")
ASSET_CITATION = re.compile(r"assets/[\w./-]*[\w/]")
STUDENT_FOLDERS = ("exercises/**", LESSON_ASSETS, *GRADER_FOLDERS)
# The folders of grader/ that stay home: the instructor's tools and the course's own tests (they
# read solutions/), and the measurement scripts behind the lessons' tables (they import solutions/;
# Phase 4's includes a working atomic-dQ backward kernel, a near answer: students get the tables, not
# the scripts). The course's test_layout.py checks that every folder of grader/ is in one list or
# the other, and that no student folder imports from these.
HOME_FOLDERS = ("grader/instructor", "grader/lessons")
# The folders of assets/ that stay home: records of grading the reference solutions and their mutants
# (`make check-solutions`, `make mutants RECORD=1`, GPU grading logs). Their messages quote the
# solutions' source lines, and each mutant's record names the bug and the test that catches it.
# test_layout.py checks that every folder of assets/ ships (LESSON_ASSETS) or is listed here.
HOME_ASSETS = ("assets/reports", "assets/mutants")
# Makefile verbs that need solutions/ or exist for instructors; the release's Makefile drops them.
INSTRUCTOR_TARGETS = ("check-solutions", "test", "mutants", "exercises", "measure", "figures", "lint", "release",
                      "nbgrader", "grade-all")
TEXT_KINDS = (".py", ".md", ".toml", ".txt", "")  # files that may cite an asset (the Makefile has no suffix)
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
    Phase folders (`phase3/`) and phase graders (`phases/test_phase3.py`) belong to their phase."""
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
        for base in _folders(root, folder.removesuffix("/**")):
            for path in sorted(base.rglob("*") if whole else base.iterdir()):
                rel = path.relative_to(root)
                if path.is_file() and path.suffix != ".pyc" and not any(part in SKIP_PARTS for part in rel.parts):
                    found.append(rel)
    return found


def _folders(root: Path, pattern: str) -> list[Path]:
    """The folders of `root` that a STUDENT_FOLDERS entry names (`grader`, `assets/phase*`)."""
    return sorted(p for p in root.glob(pattern) if p.is_dir()) if any(c in pattern for c in "*?[") else \
        [root / pattern] if (root / pattern).is_dir() else []


def _copy_file(src: Path, target: Path, root: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    where = str(src.relative_to(root))
    if src.suffix == ".py":
        target.write_text(strip_hidden_tests(src.read_text(), where))
    elif src.suffix == ".md":  # a lesson may have parts for instructors too
        target.write_text(strip_regions(src.read_text(), BEGIN_COURSE_ONLY, END_COURSE_ONLY, where))
    else:
        shutil.copy2(src, target)


def cited_assets(copy: Path) -> set[str]:
    """The paths under assets/ that the files of `copy` outside assets/ cite: links, images, paths in
    prose and comments (`../../assets/phase0/roofline.png` cites `assets/phase0/roofline.png`).
    `assets/phaseN/` names no folder: N stands for any phase, as in the README's layout."""
    cited = set()
    for path in copy.rglob("*"):
        if path.is_file() and path.relative_to(copy).parts[0] != "assets" and path.suffix in TEXT_KINDS:
            found = ASSET_CITATION.findall(path.read_text(errors="replace"))
            cited.update(m.rstrip("/.") for m in found if "phaseN" not in m)
    return cited


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
    held_back = []  # assets of other kinds: shipped only if cited
    # Every phase by default: the phases that have a grader, so that a phase still being written (a draft
    # lesson in exercises/phase8/, no grader yet) stays home.
    shipped = phases if phases is not None else sorted(
        int(p.stem[len("test_phase"):]) for p in (root / "grader" / "phases").glob("test_phase*.py"))
    for rel in student_files(root):
        # `_unreleased` looks below the top folder: phase folders and graders of other phases
        if _unreleased(Path(*rel.parts[1:]), shipped):
            continue
        if rel.parts[0] == "assets" and rel.suffix not in LESSON_ASSET_KINDS:
            held_back.append(rel)
        else:
            _copy_file(root / rel, out / rel, root)
    cited = cited_assets(out)
    for rel in held_back:
        if rel.as_posix() in cited:
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
    print("  no solutions/, hidden tests stripped, checked: no line or statement of a released phase's "
          "solution regions or of a hidden test in any of its files")
    print(f"  try it: cd {args.out} && make grade PHASE=0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
