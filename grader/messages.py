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


chain = _chain


SUBMISSION_FILE = re.compile(r".*/fa_submission_[0-9a-f]+/")


def course_path(filename: str) -> str | None:
    """`filename` as the student knows it (exercises/phase2/flash.py; phase2/flash.py in a submission
    folder), or None when it is not graded code (torch, Triton, the grader)."""
    if SUBMISSION_FILE.match(filename):
        return SUBMISSION_FILE.sub("", filename)
    path = Path(filename)
    if path.is_relative_to(ROOT) and path.relative_to(ROOT).parts[0] in ("exercises", "solutions"):
        return str(path.relative_to(ROOT))
    return None


def location(filename: str, lineno: int, code: str | None) -> str:
    """`exercises/phase2/flash.py:50: offs_n = ...`: where to look, with the line itself."""
    code = (code or "").strip()
    return f"{course_path(filename) or filename}:{lineno}" + (f": {code[:90]}" if code else "")


def where_in_course(exc) -> str:
    """The innermost frame of graded code in the exception's chain: where the student should look.
    Triton's interpreter raises InterpreterError from the kernel's own error, whose traceback holds
    the kernel's line; the InterpreterError's own stops at the launch. An error of the graded code
    that came from the worker (grader.remote) carries the line the worker found."""
    for link in _chain(exc):
        if getattr(link, "worker_where", None):
            return link.worker_where
    for link in reversed(list(_chain(exc))):  # the innermost error first
        for frame in reversed(traceback.extract_tb(link.__traceback__)):
            if course_path(frame.filename):
                return f" (at {location(frame.filename, frame.lineno, frame.line)})"
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
            # The interpreter reports AssertionError('phase N: ...'), inside one more InterpreterError(...)
            # per @triton.jit helper between the kernel and the stub: strip every wrapper's end.
            while what.endswith(("')", '")')):
                what = what[:-2]
            return f"TODO phase {found.group(1)}: {what}"
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(exc, AssertionError):
        return first or "assertion failed"
    shown = exc
    if type(exc).__name__ == "InterpreterError" and exc.__cause__ is not None:
        shown = exc.__cause__  # its own message is repr() of the kernel's error
        text = str(shown).strip().splitlines()
        first = text[0] if text else ""
    return f"{type(shown).__name__}: {first}{where_in_course(exc)}"


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
