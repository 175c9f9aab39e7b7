"""Grade in a child process, so that a kernel that crashes the process costs only its own test.

A store past the end of a tensor can kill the whole Python process (a segfault, `Fatal Python
error: Aborted` when the heap is found corrupted, a lost CUDA context on the GPU). The graded code
runs in a worker (grader.worker) of the grading session, which runs in a child process (`pytest -p
grader.plugin --progress FILE`) that writes every result to FILE as soon as its test ends; when
the worker dies, the child writes the worker's exit status and last kernel to FILE and exits too
(grader/ARCHITECTURE.md). This process, which imports neither torch nor Triton, reads FILE:

- the child ends normally: nothing more to do (one extra Python start-up, about 0.1 s);
- the child dies during test T: T fails with "the process crashed in `<kernel>`", naming the last
  kernel launched and the kernel line from the crash's Python traceback, and the tests after T run
  in a new child. When T was not the first test of its child, it is first run alone: a crash that
  does not happen alone was caused by memory that an earlier test of the same child corrupted,
  and that test is found by bisection (the earlier tests, halved, each time followed by T) and
  fails in T's place;
- the child dies while preparing a test (importing the submission crashes): every remaining test
  fails with that message, without starting a child per test;
- the child exits on purpose after a GPU memory fault (grader.plugin): the rest runs in a new child.

Then this process prints the table and writes the JSON report (grader.scoring, grader.messages).
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from grader import messages, scoring, settings
from grader.impl import ROOT

PYTEST_OK = (0, 1, 5)  # all passed, some failed, nothing collected: the child finished normally
INTERRUPTED = 2


class _Run:
    """What one child process reported."""

    def __init__(self, rc: int, events: list[dict], crash_log: str):
        self.rc = rc
        started = next((e for e in events if "header" in e), {})
        self.header, self.items = started.get("header"), started.get("items", [])
        self.rows = {e["row"]["id"]: e["row"] for e in events if "row" in e}
        self.ended = any("end" in e for e in events)
        self.order = [e["test"] for e in events if e.get("when") == "setup"]
        self.crash_log = crash_log
        # The worker (grader.worker) died in a test: its status, not the grading process's, names the crash.
        self.died_with = next((e["worker_died"] for e in events if "worker_died" in e), rc)
        self.kernel = None  # the last kernel launched, and the test running when the process died
        self.running = self.when = None
        for e in events:
            if "test" in e:
                self.running, self.when, self.kernel = e["test"], e["when"], None
            elif "launch" in e:
                self.kernel = e["launch"]
            elif "row" in e and e["row"]["id"] == self.running:
                self.running = None

    @property
    def crashed(self) -> bool:
        return not (self.ended and self.rc in PYTEST_OK + (INTERRUPTED,))

    def ran_before(self, nodeid: str) -> list[str]:
        """Tests this child finished before `nodeid`, in order."""
        done = [t for t in self.order if t in self.rows]
        return done[:done.index(nodeid)] if nodeid in done else [t for t in done if t != nodeid]


def _death(rc: int) -> str:
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return {"SIGSEGV": "a segmentation fault", "SIGABRT": "an abort (Fatal Python error: Aborted)",
                "SIGBUS": "a bus error", "SIGKILL": "SIGKILL (out of memory?)"}.get(name, name)
    return f"exit status {rc}"


def _kernel_line(crash_log: str) -> str:
    """file:line of the innermost frame of the graded code in the crash's Python traceback."""
    for line in crash_log.splitlines():  # faulthandler lists the innermost frame first
        found = re.search(r'File "([^"]+)", line (\d+)', line)
        if found and re.search(r"(/exercises/|/solutions/|/fa_submission_[0-9a-f]+/)", found.group(1)):
            path = re.sub(r".*/(exercises|solutions)/", r"\1/", found.group(1))
            path = re.sub(r".*/fa_submission_[0-9a-f]+/", "", path)
            return f"{path}:{found.group(2)}"
    return ""


def crash_message(returncode: int, kernel: str | None, crash_log: str) -> str:
    if returncode >= 0:  # an exit, not a signal: os._exit or sys.exit somewhere in the graded code
        return (f"the process exited (status {returncode}) in the middle of this test: graded code must not end "
                "the process (os._exit, sys.exit); the other tests ran in a fresh process")
    where = _kernel_line(crash_log)
    kernel = (f"in `{kernel}` (the last Triton kernel launched{', at ' + where if where else ''})" if kernel
              else f"before any Triton kernel ran{' (at ' + where + ')' if where else ''}")
    return (f"the process crashed {kernel} with {_death(returncode)}: usually a store or load without a mask, "
            "past the end of a tensor (the other tests ran in a fresh process)")


def _crash_message(run: _Run) -> str:
    return crash_message(run.died_with, run.kernel, run.crash_log)


class Supervisor:
    def __init__(self, pytest_args: list[str], workdir: Path, env: dict):
        self.args = pytest_args
        self.workdir = workdir
        self.env = env
        self.children = 0

    def child(self, only: list[str] | None, quiet: bool = False) -> _Run:
        """Run the grading session on `only` (None: every test) in a fresh child process."""
        self.children += 1
        progress = self.workdir / f"progress-{self.children}.jsonl"
        crash_log = self.workdir / f"crash-{self.children}.txt"
        cmd = [sys.executable, "-m", "pytest", *self.args, "--progress", str(progress), "-p", "no:faulthandler"]
        env = dict(self.env, **{settings.CRASH_LOG.name: str(crash_log)})
        if only is not None:
            (self.workdir / f"only-{self.children}.json").write_text(json.dumps(only))
            cmd += ["--only", str(self.workdir / f"only-{self.children}.json")]
            env[settings.WARM_SHARDS.name] = "0"  # the kernel cache is warm from the first child
        out = subprocess.DEVNULL if quiet else None
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out, preexec_fn=_die_with_parent)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:  # the child got the same Ctrl-C: let it finish its summary
            rc = proc.wait()
        events = []
        if progress.exists():
            for line in progress.read_text().splitlines():
                try:
                    events.append(json.loads(line))
                except ValueError:  # a line cut short by the crash
                    pass
        return _Run(rc, events, crash_log.read_text(errors="replace") if crash_log.exists() else "")

    def grade(self) -> tuple[int, dict | None, dict]:
        """Run every test, surviving crashes; returns (exit status, header, rows by node id)."""
        first = self.child(None)
        if first.header is None:  # the session never got to its tests (a usage or collection error)
            return (first.rc if first.rc > 0 else 3), None, {}
        header = first.header
        order = [item["id"] for item in first.items]
        items = {item["id"]: item for item in first.items}
        rows = dict(first.rows)
        run = first
        while run.crashed:
            if run.running is None:  # died outside a test (a GPU fault exits after its row is written)
                pending = [t for t in order if t not in rows]
                if pending and not run.rows:  # and made no progress: it would fail the same way again
                    for nodeid in pending:
                        rows[nodeid] = self._crashed_row(items[nodeid], run)
                    break
            elif run.when == "setup" and not run.ran_before(run.running):
                # preparing the first test of a fresh process crashes: so would every remaining test
                for nodeid in order:
                    if nodeid not in rows:
                        rows[nodeid] = self._crashed_row(items[nodeid], run)
                break
            else:
                self._settle(run, items, rows)
                pending = [t for t in order if t not in rows]
            if not pending:
                break
            last = run.running or (run.order[-1] if run.order else None)
            print(f"\n[grader] the grading process died in {items[last]['name'] if last in items else 'a test'}: "
                  f"the remaining {len(pending)} test(s) run in a fresh process", flush=True)
            run = self.child(pending)
            rows.update(run.rows)
            if run.rc == INTERRUPTED:
                break
        for nodeid in order:  # not run although nothing crashed (--collect-only, -x, an interruption)
            if nodeid not in rows:
                rows[nodeid] = dict({k: v for k, v in items[nodeid].items() if k != "skip"},
                                    outcome="skipped", message="not run", duration=0.0)
        if run.rc == INTERRUPTED or not order:
            rc = run.rc
        else:
            rc = 1 if any(r["outcome"] == "failed" for r in rows.values()) else 0
        return rc, header, {nodeid: rows[nodeid] for nodeid in order if nodeid in rows}

    def _crashed_row(self, item: dict, run: _Run, message: str | None = None) -> dict:
        row = {k: v for k, v in item.items() if k != "skip"}
        if item.get("skip"):  # a tier this machine lacks: not run, crash or no crash
            return dict(row, outcome="skipped", message=f"needs the {item['tier']} tier: {item['skip']}", duration=0.0)
        return dict(row, outcome="failed", message=message or _crash_message(run), duration=0.0)

    def _settle(self, run: _Run, items: dict, rows: dict) -> None:
        """The child died in `run.running`: charge the crash to the test that caused it."""
        victim = run.running
        earlier = run.ran_before(victim)
        if not earlier:  # it ran first in a fresh process: it crashed on its own
            rows[victim] = self._crashed_row(items[victim], run)
            return
        alone = self.child([victim], quiet=True)
        if alone.crashed:
            rows[victim] = self._crashed_row(items[victim], alone)
            return
        # Alone it does not crash: an earlier test of that child left memory corrupted. Bisect.
        rows[victim] = alone.rows.get(victim) or self._crashed_row(items[victim], run)
        suspects = earlier
        while len(suspects) > 1:
            half = suspects[:len(suspects) // 2]
            suspects = half if self.child(half + [victim], quiet=True).crashed else suspects[len(suspects) // 2:]
        pair = self.child(suspects + [victim], quiet=True)
        if pair.crashed:
            culprit = suspects[0]
            rows[culprit] = self._crashed_row(
                items[culprit], pair,
                f"corrupted memory that crashed the process later, in {items[victim]['name']}, with "
                f"{_death(pair.died_with)}: usually a store without a mask, past the end "
                f"of a tensor ({items[victim]['name']} runs fine on its own)")
        else:  # not reproducible: charge the test that was running
            rows[victim] = self._crashed_row(items[victim], run)


def _die_with_parent() -> None:
    """Linux: the child is killed when the supervisor dies (a time limit that kills only us)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def run(pytest_args: list[str], report: str | None) -> int:
    """Grade with the phase's grader in child processes; print the table and write the report."""
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="fa-grade-") as tmp:
        env = dict(os.environ)  # the child imports `grader` from wherever it is started
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
        rc, header, rows = Supervisor(pytest_args, Path(tmp), env).grade()
    if header is None:
        return rc
    summary = scoring.summarize(header, list(rows.values()), time.time() - started)
    for line in messages.render(summary):
        print(line)
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(json.dumps(summary, indent=1) + "\n")
        print(f"Report: {report}")
    sys.stdout.flush()
    return rc
