"""Turn a failure into one line a student can act on, and the results into a table."""
import re
import traceback
from pathlib import Path

from grader import hints
from grader.bounds import OutOfBoundsError
from grader.impl import ROOT

TODO = re.compile(r"phase (\d+): ([^\n]+)")
WIDTH = 100


def _chain(exc):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _where_in_course(tb) -> str:
    """The innermost frame inside exercises/ or solutions/: where the student should look."""
    for frame in reversed(traceback.extract_tb(tb)):
        path = Path(frame.filename)
        if path.is_relative_to(ROOT) and path.relative_to(ROOT).parts[0] in ("exercises", "solutions"):
            return f" ({path.relative_to(ROOT)}:{frame.lineno})"
    return ""


def describe(excinfo) -> str:
    exc = excinfo.value
    for link in _chain(exc):
        if isinstance(link, OutOfBoundsError):  # already names the kernel, the tensor and the line
            return str(link)
    for link in _chain(exc):
        found = TODO.search(str(link))
        if found:
            what = found.group(2).strip()
            if what.endswith(("')", '")')):  # the interpreter reports AssertionError('phase N: ...')
                what = what[:-2]
            return f"TODO phase {found.group(1)}: {what}"
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(exc, AssertionError):
        return first or "assertion failed"
    return f"{type(exc).__name__}: {first}{_where_in_course(excinfo.tb)}"


def _fmt_points(x: float) -> str:
    return f"{x:g}"


def render(summary: dict) -> list[str]:
    env = summary["environment"]
    phase = summary["phase"]
    lines = ["", "=" * WIDTH,
             f"Phase {phase} -- grading {summary['impl']}/phase{phase} on {env['device']}"
             f" (torch {env['torch']}, Triton {env['triton']}, seed {summary['seed']})"]
    for name, state in summary["tiers"].items():
        lines.append(f"  tier {name:<12} {state}")
    lines += ["-" * WIDTH, f"{'points':>7}  {'result':<7} {'tier':<12} test", "-" * WIDTH]
    todos = hints.references(summary)  # a stub's long message is printed once, below the table
    for row in summary["tests"]:
        result = {"passed": "PASS", "failed": "FAIL", "skipped": "not run"}[row["outcome"]]
        earned = row["points"] if row["outcome"] == "passed" else 0
        points = f"{_fmt_points(earned)}/{_fmt_points(row['points'])}"
        lines.append(f"{points:>7}  {result:<7} {row['tier']:<12} {row['name']}")
        if row["outcome"] == "failed":
            todo = todos.get(row["message"])
            lines.append(f"{'':>29}-> " + (f"{todo} is not written yet (listed below)" if todo else row["message"]))
        for line in _metric_lines(row.get("metrics", {})):
            lines.append(f"{'':>29}   {line}")
    lines.append("-" * WIDTH)
    ran = [n for n, s in summary["tiers"].items() if s == "available"]
    lines.append(f"Score: {_fmt_points(summary['score'])} / {_fmt_points(summary['max_score_run'])} points"
                 f" on the tiers run here ({', '.join(ran)}) in {summary['seconds']:.0f} s")
    for cheat in summary.get("cheats", []):
        lines.append(f"Caught computing outside Triton: {cheat['function']} scores 0 in every test of this phase"
                     f" (in {cheat['test']}: {cheat['reason']})")
    if summary["points_not_run"]:
        lines.append(f"Not run here: {_fmt_points(summary['points_not_run'])} points of tiers this machine"
                     " lacks (they are not counted as passed)")
    if todos:
        lines.append(f"Unimplemented: {len(todos)} TODO(s) still raise their stub message:")
        lines += [f"  {name}: {message.removeprefix('TODO ')}" for message, name in todos.items()]
        lines.append(f"  Stuck? `make hint PHASE={phase} TODO=k` gives a hint for TODO k, one level per call.")
    lines.append("=" * WIDTH)
    return lines


def _metric_lines(metrics: dict) -> list[str]:
    out = []
    for entry in metrics.get("compiled", []):
        if "error" in entry:
            continue
        out.append(f"{entry['kernel']} [{entry['label']}] {entry['arch']}: {entry.get('registers', '?')} registers,"
                   f" {entry.get('spill_bytes', '?')} B spilled, {entry['shared_bytes']} B shared memory")
    if "throughput" in metrics:
        out.append(metrics["throughput"]["summary"])
    return out
