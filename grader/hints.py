"""`make hint PHASE=N [TODO=k]`: hints for the TODOs of a phase, one level at a time.

Every answer region of the course sits under a `# TODO(phase N, <id>): ...` comment that states
the contract; `<tree>/phaseN/hints.toml` holds up to three hints per TODO id, written next to
the solutions and copied into exercises/ by `make exercises`:

    level 1  question  a question that points at the idea
    level 2  formula   the key formula or invariant
    level 3  shape     the shape of the code (never the code itself)

Each `make hint PHASE=N TODO=k` reveals the next level of TODO k (its number in the listing, or its
id) and repeats the levels already taken. What was taken is kept in `<tree>/.hints/phaseN.json`, so
it travels with a submission; the grading report copies it (`hints`), and grade-all's gradebook
counts it. It is a record the student's copy keeps, not a proof: a deleted file reads as no hints.

    python -m grader.hints --phase N [--todo k] [--impl exercises|DIR]
"""
import argparse
import json
import re
import sys
import textwrap
import time
import tomllib
from pathlib import Path

from grader.impl import ROOT

LEVELS = ("question", "formula", "shape")
LEVEL_NAMES = {"question": "a question", "formula": "the key formula", "shape": "the shape of the code"}
TODO_COMMENT = re.compile(r"#\s*TODO\(phase (\d+)(?:,\s*([\w.-]+))?\):\s*(.+?)\s*$")
HINTS_FILE = "hints.toml"
STATE_DIR = ".hints"
WIDTH = 96


class HintError(ValueError):
    pass


def tree_dir(impl: str = "exercises") -> Path:
    """The folder of the graded tree: exercises/, solutions/ or a submission folder."""
    return ROOT / impl if impl in ("exercises", "solutions") else Path(impl).resolve()


def todos(phase: int, tree: Path) -> list[dict]:
    """The TODOs of a phase (number, id, file, line, summary, text), numbered in the order of the
    phase's hints file (the lesson's order), then any without hints by file and line."""
    found = []
    folder = tree / f"phase{phase}"
    for path in sorted(folder.glob("*.py")):
        lines = path.read_text().splitlines()
        for n, line in enumerate(lines, 1):
            match = TODO_COMMENT.search(line)
            if not match or int(match.group(1)) != phase:
                continue
            text = [match.group(3)]
            for more in lines[n:]:  # the contract continues on the comment lines below
                more = more.strip()
                if not more.startswith("#") or more.startswith(("### ", "# TODO(")):
                    break
                text.append(more.lstrip("#").strip())
            found.append({"id": match.group(2) or f"{path.stem}:{n}",
                          "file": path.name, "line": n, "summary": match.group(3), "text": " ".join(text)})
    order = {todo_id: i for i, todo_id in enumerate(load_hints(phase, tree))}
    found.sort(key=lambda e: order.get(e["id"], len(order)))  # stable: file and line order otherwise
    for number, entry in enumerate(found, 1):
        entry["number"] = number
    return found


def load_hints(phase: int, tree: Path) -> dict[str, dict]:
    path = tree / f"phase{phase}" / HINTS_FILE
    if not path.exists():
        return {}
    return tomllib.loads(path.read_text())


def _state_path(phase: int, tree: Path) -> Path:
    return tree / STATE_DIR / f"phase{phase}.json"


def taken(phase: int, tree: Path) -> dict[str, list[dict]]:
    """TODO id -> the levels taken, in order ([{"level": 1, "at": "..."}, ...])."""
    path = _state_path(phase, tree)
    try:
        return json.loads(path.read_text()).get("taken", {})
    except (OSError, ValueError):
        return {}


def record(phase, impl: str) -> dict:
    """What the grading report keeps: hints taken per TODO id (levels, when) and their count."""
    if phase is None:
        return {"count": 0, "todos": {}}
    per_todo = taken(int(phase), tree_dir(impl))
    return {"count": sum(len(v) for v in per_todo.values()),
            "todos": {todo: {"levels": [t["level"] for t in got], "at": [t["at"] for t in got]}
                      for todo, got in sorted(per_todo.items())}}


def _find(todo: str, listed: list[dict]) -> dict:
    for entry in listed:
        if todo == str(entry["number"]) or todo == entry["id"]:
            return entry
    choices = ", ".join(f"{e['number']} ({e['id']})" for e in listed)
    raise HintError(f"no TODO {todo!r} in this phase; choose one of: {choices}")


def _verb(phase: int, verb: str | None) -> str:
    """How the student asks for a hint, with `{k}` for the TODO: a make verb, or `fa.hint({k})` in a notebook."""
    return verb or f"make hint PHASE={phase} TODO={{k}}"


def reveal(phase: int, todo: str, tree: Path, verb: str | None = None) -> list[str]:
    """Take the next hint of one TODO; returns the lines to print (the levels taken so far)."""
    listed = todos(phase, tree)
    if not listed:
        raise HintError(f"phase {phase} has no TODOs in {tree / f'phase{phase}'}")
    entry = _find(todo, listed)
    hints = load_hints(phase, tree).get(entry["id"], {})
    levels = [level for level in LEVELS if hints.get(level)]
    texts = [hints[level] for level in levels]
    if not texts:
        raise HintError(f"TODO {entry['number']} ({entry['id']}) has no hints")
    state = taken(phase, tree)
    got = state.setdefault(entry["id"], [])
    new = len(got) < len(texts)
    if new:
        got.append({"level": len(got) + 1, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        path = _state_path(phase, tree)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"phase": phase, "taken": state}, indent=1) + "\n")
    lines = [f"TODO {entry['number']} of phase {phase} ({entry['file']}:{entry['line']}, id {entry['id']}):",
             *textwrap.wrap(entry["text"], WIDTH, initial_indent="  ", subsequent_indent="  "), ""]
    for i, text in enumerate(texts[:len(got)], 1):
        lines.append(f"Hint {i}/{len(texts)}, {LEVEL_NAMES[levels[i - 1]]}:")
        for paragraph in text.strip().split("\n\n"):
            lines += [f"  {line}" for line in _wrap(paragraph)]
        lines.append("")
    if not new:
        lines.append("That was the last hint for this TODO; the lesson (README.md) has the derivation.")
    elif len(got) < len(texts):
        lines.append(f"The next call ({_verb(phase, verb).format(k=entry['number'])}) reveals hint {len(got) + 1}.")
    lines.append(f"Hints taken are recorded in {_state_path(phase, tree).relative_to(tree.parent)} and in the"
                 " grading report.")
    return lines


def _wrap(paragraph: str) -> list[str]:
    """Wrap prose, but keep indented lines (formulas, code shapes) as they are."""
    raw = paragraph.splitlines()
    if any(line.startswith("  ") for line in raw):
        return [line.rstrip() for line in raw]
    return textwrap.wrap(" ".join(line.strip() for line in raw), WIDTH - 2)


def listing(phase: int, tree: Path, verb: str | None = None) -> list[str]:
    listed = todos(phase, tree)
    if not listed:
        return [f"phase {phase} has no TODOs in {tree / f'phase{phase}'}"]
    hints, state = load_hints(phase, tree), taken(phase, tree)
    lines = [f"Phase {phase}: {len(listed)} TODOs. `{_verb(phase, verb).format(k='k')}` reveals the next hint of "
             "TODO k.",
             f"{'TODO':>4}  {'hints':<6} {'where':<24} what"]
    for entry in listed:
        available = sum(1 for lv in LEVELS if hints.get(entry["id"], {}).get(lv))
        used = f"{len(state.get(entry['id'], []))}/{available}"
        where = f"{entry['file']}:{entry['line']}"
        summary = entry["summary"] if len(entry["summary"]) <= WIDTH - 40 else entry["summary"][:WIDTH - 43] + "..."
        lines.append(f"{entry['number']:>4}  {used:<6} {where:<24} {summary}")
    return lines


STUB = re.compile(r"phase (\d+): (.+)$")


def number_of(impl: str, stub_text: str) -> tuple[int, int] | None:
    """(phase, `make hint` number) of the TODO whose stub says `stub_text` (`... phase N: what`)."""
    found = STUB.search(stub_text.strip())
    if not found:
        return None
    phase, what = int(found.group(1)), found.group(2)
    try:
        for entry in todos(phase, tree_dir(impl)):
            if what == entry["summary"]:
                return phase, entry["number"]
    except (OSError, ValueError):
        pass
    return None


def references(summary: dict) -> dict[str, str]:
    """Each distinct stub message of a graded run (`TODO phase N: ...`) -> how the table names it:
    `TODO k` with its `make hint` number (`phase N TODO k` for an earlier phase's stub), in order."""
    refs: dict[str, tuple] = {}
    for row in summary["tests"]:
        message = row.get("message", "")
        if row["outcome"] == "failed" and message.startswith("TODO") and message not in refs:
            refs[message] = number_of(summary.get("impl", "exercises"), message) or (999, len(refs) + 1)
    named = {}
    for message, (phase, number) in sorted(refs.items(), key=lambda item: item[1]):
        if phase == 999:  # a stub not found in the graded tree (edited since): named by its order
            named[message] = f"#{number}"
        else:
            named[message] = f"TODO {number}" if phase == summary.get("phase") else f"phase {phase} TODO {number}"
    return named


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader.hints", description=__doc__.split("\n")[0])
    parser.add_argument("--phase", required=True, type=int)
    parser.add_argument("--todo", default=None, help="the TODO's number in the listing, or its id")
    parser.add_argument("--impl", default="exercises", help="exercises (default) or your own copy's folder")
    args = parser.parse_args(argv)
    tree = tree_dir(args.impl)
    if not (tree / f"phase{args.phase}").is_dir():
        print(f"error: no phase{args.phase}/ in {tree}", file=sys.stderr)
        return 2
    try:
        lines = listing(args.phase, tree) if not args.todo else reveal(args.phase, args.todo, tree)
    except HintError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
