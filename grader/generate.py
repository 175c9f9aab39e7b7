"""Generate exercises/ from solutions/: every answer region becomes a stub that fails clearly.

In solutions/, an answer sits between `### BEGIN SOLUTION` and `### END SOLUTION` (nbgrader's
markers) under a `# TODO(phase N): <what to write>` comment. The stub that replaces it says
`phase N: <what to write>`:
- in host Python, `raise NotImplementedError("phase N: ...")`;
- inside a `@triton.jit` function, `tl.static_assert(False, "phase N: ...")`, which stops the
  compiler at compile time and raises an AssertionError under the interpreter.

A student's work is never lost: `exercises/.generated.json` remembers what the generator last
wrote; a file that differs from that is skipped (and listed) unless `--force` is given.

    python -m grader.generate            regenerate, keeping edited files
    python -m grader.generate --force    regenerate, overwriting edited files
    python -m grader.generate --check    exit 1 if exercises/ is not what solutions/ generates
"""
import argparse
import ast
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


def stale(solutions: Path, exercises: Path) -> list[str]:
    """Files of exercises/ that differ from what solutions/ generates (or are missing)."""
    problems = []
    for rel, text in expected_files(solutions).items():
        target = exercises / rel
        if not target.exists():
            problems.append(f"{rel} (missing)")
        elif target.read_text() != text:
            problems.append(f"{rel} (differs)")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if exercises/ is stale")
    parser.add_argument("--force", action="store_true", help="overwrite files edited since generation")
    args = parser.parse_args(argv)
    solutions, exercises = ROOT / "solutions", ROOT / "exercises"
    try:
        if args.check:
            problems = stale(solutions, exercises)
            if problems:
                print("exercises/ is stale against solutions/: " + ", ".join(problems), file=sys.stderr)
                print("run `make exercises` (add FORCE=1 to overwrite edited files) and commit", file=sys.stderr)
                return 1
            print("exercises/ matches solutions/")
            return 0
        done = generate(solutions, exercises, force=args.force)
    except MarkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exercises/: {len(done['written'])} written, {len(done['unchanged'])} unchanged,"
          f" {len(done['skipped'])} skipped")
    for rel in done["written"]:
        print(f"  wrote    exercises/{rel}")
    for rel in done["skipped"]:
        print(f"  SKIPPED  exercises/{rel}: you edited it; `make exercises FORCE=1` overwrites it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
