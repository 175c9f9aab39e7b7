"""Generate exercises/ from solutions/: every answer region becomes a stub that fails clearly.

In solutions/, an answer sits between `### BEGIN SOLUTION` and `### END SOLUTION` (nbgrader's
markers) under a `# TODO(phase N): <what to write>` comment. The stub that replaces it says
`phase N: <what to write>`:
- in host Python, `raise NotImplementedError("phase N: ...")`;
- inside a `@triton.jit` function, `tl.static_assert(False, "phase N: ...")`, which stops the
  compiler at compile time and raises an AssertionError under the interpreter.

A student's work is never lost: `exercises/.generated.json` remembers what the generator last
wrote; a file that differs from that is skipped (and listed) unless `--force` is given.

The stale check tells a course developer's stale tree from a student's work by that manifest: a
file is stale when what the generator last wrote (the manifest's digest) is not what solutions/
generates now, i.e. solutions/ changed and exercises/ was not regenerated. A file edited since it
was generated, with the manifest still matching solutions/, is a student's work and passes;
`--strict` (CI, on a clean clone where nobody solved anything) fails on those edits as well.

    python -m grader.instructor.generate                   regenerate, keeping edited files
    python -m grader.instructor.generate --force           regenerate, overwriting edited files
    python -m grader.instructor.generate --check [--strict] exit 1 if exercises/ is stale against solutions/
    python -m grader.instructor.generate --diff            show how exercises/ differs from a fresh generation
    python -m grader.instructor.generate --out DIR         write a fresh generation to DIR (exercises/ untouched)
"""
import argparse
import ast
import difflib
import hashlib
import json
import re
import sys
from pathlib import Path

from grader.impl import ROOT

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
# `# TODO(phase N): what` or `# TODO(phase N, id): what`; the id keys the TODO's hints (grader.hints).
TODO = re.compile(r"#\s*TODO\(phase (\d+)(?:,\s*[\w.-]+)?\):\s*(.+?)\s*$")
COPIED = ("hints.toml",)  # data files of a phase that the exercises carry as they are
MANIFEST = ".generated.json"
HEADER = ("# Generated from {source} by `make exercises`: fill in the TODOs below.\n"
          "# Regenerating never overwrites a file you have edited (unless forced).\n")


class MarkerError(ValueError):
    pass


def _jit_line_ranges(source: str) -> list[range]:
    """Line ranges of functions decorated with something whose name contains `jit`."""
    ranges = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if any("jit" in ast.unparse(d) for d in node.decorator_list):
                ranges.append(range(node.lineno, node.end_lineno + 1))
    return ranges


def _todo_above(lines: list[str], begin: int, where: str) -> tuple[str, str]:
    """The `# TODO(phase N): what` comment in the comment block right above line `begin`."""
    i = begin - 1
    while i >= 0 and lines[i].strip().startswith("#"):
        found = TODO.search(lines[i])
        if found:
            return found.group(1), found.group(2)
        i -= 1
    raise MarkerError(f"{where}:{begin + 1}: {BEGIN} needs a '# TODO(phase N): ...' comment right above it")


def stub_source(source: str, where: str = "<source>") -> str:
    """The exercise version of a solution file."""
    lines = source.splitlines(keepends=True)
    jit_ranges = _jit_line_ranges(source)
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() != BEGIN:
            if lines[i].strip() == END:
                raise MarkerError(f"{where}:{i + 1}: {END} without {BEGIN}")
            out.append(lines[i])
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() in (BEGIN, END)), None)
        if end is None or lines[end].strip() != END:
            raise MarkerError(f"{where}:{i + 1}: {BEGIN} without a matching {END}")
        phase, what = _todo_above(lines, i, where)
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        message = json.dumps(f"phase {phase}: {what}")
        in_jit = any(i + 1 in r for r in jit_ranges)
        stub = f"tl.static_assert(False, {message})" if in_jit else f"raise NotImplementedError({message})"
        out.append(f"{indent}{stub}\n")
        i = end + 1
    return "".join(out)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def expected_files(solutions: Path) -> dict[str, str]:
    """relative path -> generated text, for every Python file under solutions/ (and the COPIED data files)."""
    files = {}
    for path in sorted(solutions.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(solutions).as_posix()
        text = stub_source(path.read_text(), f"solutions/{rel}")
        has_regions = text != path.read_text()
        files[rel] = (HEADER.format(source=f"solutions/{rel}") + text) if has_regions else text
    for name in COPIED:
        for path in sorted(solutions.rglob(name)):
            files[path.relative_to(solutions).as_posix()] = path.read_text()
    return files


def generate(solutions: Path, exercises: Path, force: bool = False) -> dict[str, list[str]]:
    """Write exercises/; returns lists of written, unchanged and skipped (student-edited) files."""
    manifest_path = exercises / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    done = {"written": [], "unchanged": [], "skipped": []}
    for rel, text in expected_files(solutions).items():
        target = exercises / rel
        if target.exists():
            current = target.read_text()
            if current == text:
                done["unchanged"].append(rel)
                manifest[rel] = _digest(text)
                continue
            if manifest.get(rel) != _digest(current) and not force:
                done["skipped"].append(rel)  # edited since we last wrote it: the student's work
                continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        manifest[rel] = _digest(text)
        done["written"].append(rel)
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(dict(sorted(manifest.items())), indent=1) + "\n")
    return done


def write_fresh(solutions: Path, dest: Path) -> Path:
    """Write what solutions/ generates into `dest` (a submission-shaped folder), ignoring exercises/.

    check-solutions grades the untouched stubs from such a copy, so that a student's solved
    exercises/ never makes it fail."""
    for rel, text in expected_files(solutions).items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(text)
    return dest


def differences(solutions: Path, exercises: Path) -> dict[str, list[str]]:
    """Files of exercises/ that differ from what solutions/ generates, sorted by cause:
    stale (the generator last wrote something else: solutions/ changed since), missing, and edited
    (changed since the generator wrote them: a student's work)."""
    manifest_path = exercises / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    found = {"stale": [], "missing": [], "edited": []}
    for rel, text in expected_files(solutions).items():
        target = exercises / rel
        if not target.exists():
            found["missing"].append(rel)
        elif target.read_text() != text:
            found["stale" if manifest.get(rel) != _digest(text) else "edited"].append(rel)
    return found


def stale(solutions: Path, exercises: Path, strict: bool = False) -> list[str]:
    """Files of exercises/ that are out of date against solutions/ (with `strict`, also the ones
    edited since generation)."""
    found = differences(solutions, exercises)
    kinds = ("stale", "missing", "edited") if strict else ("stale", "missing")
    return [f"{rel} ({'differs' if kind == 'stale' else kind})" for kind in kinds for rel in found[kind]]


def diff(solutions: Path, exercises: Path) -> str:
    """A unified diff from a fresh generation to exercises/."""
    out = []
    for rel, text in expected_files(solutions).items():
        target = exercises / rel
        current = target.read_text() if target.exists() else ""
        out += difflib.unified_diff(text.splitlines(keepends=True), current.splitlines(keepends=True),
                                    f"generated/{rel}", f"exercises/{rel}")
    return "".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader.instructor.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if exercises/ is stale against solutions/")
    parser.add_argument("--strict", action="store_true",
                        help="with --check: files edited since generation fail too (CI, on a clean clone)")
    parser.add_argument("--diff", action="store_true", help="print how exercises/ differs from a fresh generation")
    parser.add_argument("--out", type=Path, default=None, help="write a fresh generation here instead")
    parser.add_argument("--force", action="store_true", help="overwrite files edited since generation")
    args = parser.parse_args(argv)
    solutions, exercises = ROOT / "solutions", ROOT / "exercises"
    try:
        if args.diff:
            sys.stdout.write(diff(solutions, exercises))
            return 0
        if args.out:
            write_fresh(solutions, args.out)
            print(f"wrote a fresh generation of solutions/ to {args.out}")
            return 0
        if args.check:
            return _check(solutions, exercises, args.strict)
        done = generate(solutions, exercises, force=args.force)
    except MarkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exercises/: {len(done['written'])} written, {len(done['unchanged'])} unchanged,"
          f" {len(done['skipped'])} skipped")
    for rel in done["written"]:
        print(f"  wrote    exercises/{rel}")
    for rel in done["skipped"]:
        print(f"  SKIPPED  exercises/{rel}: you edited it (FORCE=1 would overwrite your edits)")
    return 0


SEE_DIFF = "see the difference with `python -m grader.instructor.generate --diff`"


def _check(solutions: Path, exercises: Path, strict: bool) -> int:
    found = differences(solutions, exercises)
    problems = stale(solutions, exercises, strict)
    if found["edited"] and not strict:
        print(f"exercises/: {len(found['edited'])} file(s) edited since generation (your work, not checked):"
              f" {', '.join(found['edited'])}")
    if not problems:
        print("exercises/ is up to date with solutions/")
        return 0
    print("exercises/ is out of date with solutions/: " + ", ".join(problems), file=sys.stderr)
    print(f"{SEE_DIFF}. `make exercises` updates the files nobody edited and keeps edited ones;"
          " `make exercises FORCE=1` overwrites edited files, and with them any work in them."
          " Course developers: regenerate and commit exercises/ with solutions/.", file=sys.stderr)
    return 1

if __name__ == "__main__":
    sys.exit(main())
