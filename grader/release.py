"""`make release`: the student copy of the course, as a folder and as an archive.

It holds the lessons and the exercises (exercises/), the grader (grader/, without the course's own
tests and the instructor tools), the figures (assets/), the Makefile (without the instructor verbs),
pyproject.toml and the README; it has no solutions/, and every `### BEGIN HIDDEN TESTS` ...
`### END HIDDEN TESTS` block is cut out of the grader, as nbgrader does with its hidden tests.
Before it writes the archive it checks its own work: no line of any solution region and no line
of any hidden test may appear in any file of the copy (`leaks`).

    python -m grader.release [--out build/release] [--archive build/release.tar.gz]
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
ARCHIVE_TOP = "flashattention-from-scratch"

TOP_FILES = ("README.md", "Makefile", "pyproject.toml", ".gitignore", "LICENSE", "LICENSE.md", "LICENSE.txt")
TOP_DIRS = ("exercises", "grader", "assets")
# Instructor-only parts of grader/: the course's own tests (they read solutions/) and the tools
# that build releases, nbgrader courses and gradebooks.
# grader/lessons/ holds the measurement scripts behind the lessons' tables, and Phase 4's includes a
# working atomic-dQ backward kernel (a near answer): students get the tables, not the scripts.
GRADER_EXCLUDED = ("tests", "release.py", "nbgrade.py", "grade_all.py", "notebook.py", "lessons", "measure.py",
                   "figures.py")
# Makefile verbs that need solutions/ or exist for instructors; the release's Makefile drops them.
INSTRUCTOR_TARGETS = ("check-solutions", "test", "exercises", "measure", "figures", "lint", "release",
                      "nbgrader", "grade-all")
SKIP_PARTS = ("__pycache__", ".pytest_cache", ".ipynb_checkpoints")


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


def _meaningful(line: str) -> bool:
    """Lines long enough to be an answer rather than syntax (`else:`, `)`, `return o`, blank)."""
    return len(line) >= 10 and re.search(r"[A-Za-z0-9]", line) is not None


def secret_lines(root: Path = ROOT) -> dict[str, str]:
    """Every line a student copy must not contain -> where it comes from.

    The lines of solution regions in solutions/ and of hidden-test blocks in grader/, except those
    that also appear outside such regions (in the same tree), which a student sees anyway.
    """
    secrets, public = {}, set()
    for tree, begin, end in (("solutions", BEGIN_SOLUTION, END_SOLUTION), ("grader", BEGIN_HIDDEN, END_HIDDEN)):
        for path in sorted((root / tree).rglob("*.py")):
            if any(part in SKIP_PARTS for part in path.parts):
                continue
            inside, outside = region_lines(path.read_text(), begin, end)
            public.update(outside)
            for line in inside:
                if _meaningful(line):
                    secrets.setdefault(line, f"{path.relative_to(root)}")
    return {line: where for line, where in secrets.items() if line not in public}


def leaks(release: Path, root: Path = ROOT) -> list[str]:
    """Problems of a student copy: solutions/ present, markers left, secret lines found."""
    problems = []
    if (release / "solutions").exists():
        problems.append("solutions/ is in the release")
    secrets = secret_lines(root)
    for path in sorted(p for p in release.rglob("*") if p.is_file()):
        try:
            text = path.read_text()
        except (UnicodeDecodeError, ValueError):
            continue  # figures and other binary files
        rel = path.relative_to(release)
        for n, line in enumerate(text.splitlines(), 1):
            mark = line.strip()
            if mark in (BEGIN_SOLUTION, END_SOLUTION, BEGIN_HIDDEN, END_HIDDEN):
                problems.append(f"{rel}:{n}: marker {mark!r} left in the release")
            elif mark in secrets:
                problems.append(f"{rel}:{n}: a line of {secrets[mark]} that students must not see: {mark[:80]!r}")
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


def _copy_tree(src: Path, dst: Path, exclude_top: tuple[str, ...] = ()) -> None:
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part in SKIP_PARTS for part in rel.parts) or rel.parts[0] in exclude_top or path.suffix == ".pyc":
            continue
        target = dst / rel
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix == ".py":
                target.write_text(strip_hidden_tests(path.read_text(), str(path.relative_to(ROOT))))
            else:
                shutil.copy2(path, target)


def build(out: Path, archive: Path | None = None, root: Path = ROOT) -> list[str]:
    """Write the student copy to `out` (replacing it) and, when it is clean, `archive`."""
    if out.resolve() == root.resolve() or root.resolve().is_relative_to(out.resolve()):
        raise ReleaseError(f"refusing to replace {out}: it holds the course itself")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in TOP_FILES:
        if (root / name).is_file():
            text = (root / name).read_text()
            (out / name).write_text(release_makefile(text) if name == "Makefile" else text)
    for name in TOP_DIRS:
        if (root / name).is_dir():
            _copy_tree(root / name, out / name, GRADER_EXCLUDED if name == "grader" else ())
    problems = leaks(out, root)
    if problems:
        raise ReleaseError("the student copy would leak answers:\n  " + "\n  ".join(problems[:30]))
    if archive is not None:
        archive.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(out, arcname=ARCHIVE_TOP)
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader.release", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "build" / "release"))
    parser.add_argument("--archive", default=str(ROOT / "build" / "release.tar.gz"))
    args = parser.parse_args(argv)
    try:
        files = build(Path(args.out), Path(args.archive))
    except ReleaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"student copy: {args.out} ({len(files)} files) and {args.archive}")
    print("  no solutions/, hidden tests stripped, checked: no line of a solution region or hidden test in it")
    print(f"  try it: cd {args.out} && make grade PHASE=0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
