"""Grade many submissions of one phase into a gradebook: `make grade-all SUBMISSIONS=DIR PHASE=N`.

Each folder of DIR is one submission shaped like `exercises/` (DIR/alice/phase0/..., DIR/bob/...).
Each is graded from a temporary copy of DIR/<name> (`python -m grader grade --impl COPY`), in a
process of its own, in a session of its own, under a time limit: a submission that crashes the
interpreter, hangs or loops forever is killed (with everything it started) and costs only its own
points. Results go to OUT (default build/grade-all/phaseN):

    OUT/reports/<name>.json   the grader's JSON report for each submission, plus `status`, `exit` and
                              a digest of the graded files; written last and atomically, so that its
                              presence means "done"
    OUT/logs/<name>.log       what the grader printed (its table), or why it crashed or was killed
    OUT/gradebook.csv         one row per submission, one column per test (points earned), total,
                              and the number of hints taken (`make hint`, recorded in the submission)

Interrupted (Ctrl-C, a lost connection), the same command resumes: a submission whose report exists
for the same phase, seed and files is not graded again (`--regrade` forces it).

    python -m grader.instructor.grade_all --submissions DIR --phase N [--timeout S] [--jobs J] [--out OUT]
"""
import argparse
import csv
import hashlib
import json
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from grader import settings
from grader.impl import ROOT, phases



def submissions(folder: Path) -> list[Path]:
    """Sub-folders of `folder`, by name; hidden ones (.git, ...) and __pycache__ are not submissions."""
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith((".", "_")))


def digest(submission: Path, phase: int) -> str:
    """What the grade depends on: every Python file of the submission (earlier phases are imported)."""
    h = hashlib.sha256()
    for path in sorted(submission.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(submission).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    hints_taken = submission / ".hints" / f"phase{phase}.json"  # in the report: a new hint regrades
    if hints_taken.is_file():
        h.update(hints_taken.read_bytes())
    grader_file = ROOT / "grader" / "phases" / f"test_phase{phase}.py"
    h.update(grader_file.read_bytes())
    return h.hexdigest()[:16]


def seed_kind() -> str:
    """Which seed grades: a digest of the secret one (never the seed itself), or `public`."""
    secret = settings.SEED.get()
    return "secret:" + hashlib.sha256(secret.encode()).hexdigest()[:8] if secret else "public"


def collect_tests(phase: int) -> list[dict]:
    """The phase's tests in order (id, name, points, tier), from a collect-only run of the grader."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "collect.json"
        proc = subprocess.run([sys.executable, "-m", "grader", "grade", "--phase", str(phase), "--impl", "exercises",
                               "--report", str(report), "--collect-only"],
                              cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
        if not report.exists():
            raise RuntimeError(f"could not list the tests of phase {phase}:\n"
                               f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        summary = json.loads(report.read_text())
    here = {name for name, state in summary["tiers"].items() if state == "available"}
    return [{"id": t["id"], "name": t["name"], "points": t["points"], "tier": t["tier"], "runs": t["tier"] in here}
            for t in summary["tests"]]


def _crash(code: int) -> str:
    if code < 0:
        try:
            return f"crashed ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"crashed (exit {code})"


def _kill_group(proc: subprocess.Popen) -> None:
    """End the grader we started and everything it started (its own session), by its id."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Grader:
    def __init__(self, phase: int, folder: Path, out: Path, timeout: float, tests: list[dict]):
        self.phase, self.folder, self.out, self.timeout, self.tests = phase, folder, out, timeout, tests
        self.running: dict[str, subprocess.Popen] = {}
        self.stopping = False  # set on Ctrl-C: what was killed then is not a grade
        self.lock = threading.Lock()
        (out / "reports").mkdir(parents=True, exist_ok=True)
        (out / "logs").mkdir(parents=True, exist_ok=True)

    def report_path(self, name: str) -> Path:
        return self.out / "reports" / f"{name}.json"

    def done(self, sub: Path) -> bool:
        path = self.report_path(sub.name)
        if not path.exists():
            return False
        try:
            report = json.loads(path.read_text())
        except ValueError:
            return False
        return (report.get("phase") == self.phase and report.get("digest") == digest(sub, self.phase)
                and report.get("seed_kind") == seed_kind())

    def grade(self, sub: Path) -> dict | None:
        """Grade one submission in its own process; returns its report (None when interrupted)."""
        started = time.time()
        log_path = self.out / "logs" / f"{sub.name}.log"
        tmp_report = self.out / "reports" / f".{sub.name}.partial.json"
        tmp_report.unlink(missing_ok=True)
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")  # leave the submission's folder as it was
        with open(log_path, "w") as log:
            if not (sub / f"phase{self.phase}").is_dir():
                status, code = f"no phase{self.phase}/ folder in the submission", None
                log.write(status + "\n")
            else:
                # A copy of its own, in a folder of its own: the graded code finds no other submission
                # beside it, and what it writes lands in the copy, deleted afterwards. The report is
                # written by the grading process, which never runs the submission's code (grader.remote).
                copy_root = tempfile.mkdtemp(prefix="fa-grade-all-")
                if settings.WORKER_USER.is_set():
                    os.chmod(copy_root, 0o755)  # the worker's user reads the copy (see INSTRUCTORS.md)
                copy = Path(copy_root) / sub.name
                shutil.copytree(sub, copy, symlinks=False, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                proc = subprocess.Popen(
                    [sys.executable, "-m", "grader", "grade", "--phase", str(self.phase), "--impl", str(copy),
                     "--report", str(tmp_report)],
                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True)
                with self.lock:
                    self.running[sub.name] = proc
                try:
                    code = proc.wait(timeout=self.timeout)
                    status = "graded" if code in (0, 1) and tmp_report.exists() else _crash(code)
                except subprocess.TimeoutExpired:
                    code, status = None, f"killed after the {self.timeout:g} s time limit"
                finally:
                    _kill_group(proc)  # also whatever it left behind (workers, a hung child)
                    proc.wait()
                    with self.lock:
                        self.running.pop(sub.name, None)
                    shutil.rmtree(copy_root, ignore_errors=True)
            if self.stopping:
                return None  # interrupted, not finished: no report, so a resumed run grades it
            if status != "graded":
                log.write(f"\n[grade-all] {sub.name}: {status}\n")
        if status == "graded":
            report = json.loads(tmp_report.read_text())
            tmp_report.unlink()
        else:
            tmp_report.unlink(missing_ok=True)
            report = self._failed_report(status, log_path)
        report.update(submission=sub.name, path=str(sub.resolve()), status=status, exit=code,
                      digest=digest(sub, self.phase), seed_kind=seed_kind(),
                      wall_seconds=round(time.time() - started, 1))
        final = self.report_path(sub.name)
        tmp = final.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1) + "\n")
        os.replace(tmp, final)  # atomic: a report on disk is a finished grade
        return report

    def _failed_report(self, status: str, log_path: Path) -> dict:
        tail = log_path.read_text(errors="replace")[-2000:].strip().splitlines()
        why = f"{status}; every test of this submission scores 0"
        return {"phase": self.phase, "score": 0.0,
                "max_score_run": sum(t["points"] for t in self.tests if t["runs"]),
                "log_tail": tail[-20:],
                "tests": [dict(t, outcome="failed" if t["runs"] else "skipped",
                               message=why if t["runs"] else "tier not run here", duration=0.0)
                          for t in self.tests]}

    def interrupt(self) -> None:
        self.stopping = True
        with self.lock:
            for proc in list(self.running.values()):
                _kill_group(proc)


def write_gradebook(path: Path, tests: list[dict], reports: dict[str, dict]) -> None:
    """One row per submission, one column per test (points earned, empty when not run), the total."""
    known = {t["id"] for t in tests}
    extra = []  # tests a report has that the collection did not list (should not happen)
    for report in reports.values():
        for row in report.get("tests", []):
            if row["id"] not in known:
                known.add(row["id"])
                extra.append({"id": row["id"], "name": row["name"], "points": row["points"]})
    columns = tests + extra
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["submission", "status", "total", "max_points_run",
                    *[f"{t['name']} ({t['points']:g})" for t in columns], "hints taken", "seconds"])
        for name in sorted(reports):
            report = reports[name]
            by_id = {row["id"]: row for row in report.get("tests", [])}
            cells = []
            for t in columns:
                row = by_id.get(t["id"])
                if row is None or row["outcome"] == "skipped":
                    cells.append("")
                else:
                    cells.append(f"{row['points']:g}" if row["outcome"] == "passed" else "0")
            w.writerow([name, report.get("status", ""), f"{report.get('score', 0):g}",
                        f"{report.get('max_score_run', 0):g}", *cells, _hints_taken(report),
                        report.get("wall_seconds", "")])
    os.replace(tmp, path)


def _hints_taken(report: dict) -> str:
    """Levels of `make hint` the submission took in this phase (empty when the grader never ran)."""
    hints = report.get("hints")
    return str(hints["count"]) if hints else ""


def main(argv=None) -> int:
    # Ctrl-C must stop a long run so that it can resume later, even when a shell started this
    # process as a background job, which hands it SIGINT ignored (and Python then never raises
    # KeyboardInterrupt).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser(prog="python -m grader.instructor.grade_all", description=__doc__.split("\n")[0])
    parser.add_argument("--submissions", required=True, help="a folder holding one folder per submission")
    parser.add_argument("--phase", required=True, type=int)
    parser.add_argument("--out", default=None, help="default: build/grade-all/phaseN")
    parser.add_argument("--timeout", type=float, default=float(settings.GRADE_TIMEOUT.get()),
                        help=f"seconds each submission may take (default {settings.GRADE_TIMEOUT.default}, "
                             f"or {settings.GRADE_TIMEOUT.name})")
    parser.add_argument("--jobs", type=int, default=1,
                        help="submissions graded at once (default 1; on a GPU each timing still gets the machine "
                             "alone: grader/gpulock.py)")
    parser.add_argument("--regrade", action="store_true", help="grade again even what is already done")
    args = parser.parse_args(argv)

    if args.phase not in phases():
        print(f"error: unknown phase {args.phase}: choose one of {', '.join(map(str, phases()))}", file=sys.stderr)
        return 2
    folder = Path(args.submissions)
    if not folder.is_dir():
        print(f"error: SUBMISSIONS={args.submissions} is not a folder", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else ROOT / "build" / "grade-all" / f"phase{args.phase}"
    subs = submissions(folder)
    if not subs:
        print(f"error: no submission folders in {folder}", file=sys.stderr)
        return 2

    tests = collect_tests(args.phase)
    grader = Grader(args.phase, folder, out, args.timeout, tests)
    todo = [s for s in subs if args.regrade or not grader.done(s)]
    print(f"grade-all: phase {args.phase}, {len(subs)} submission(s) in {folder}: {len(subs) - len(todo)} already"
          f" graded, {len(todo)} to grade ({args.jobs} at a time, {args.timeout:g} s limit each); seed:"
          f" {seed_kind().split(':')[0]}", flush=True)
    counter = {"n": len(subs) - len(todo)}
    lock = threading.Lock()

    def one(sub: Path):
        report = grader.grade(sub)
        if report is None:
            return
        with lock:
            counter["n"] += 1
            print(f"[{counter['n']}/{len(subs)}] {sub.name:<24} {report['score']:g}/{report['max_score_run']:g}"
                  f" points  {report['status']}  ({report['wall_seconds']:.0f} s)", flush=True)
            write_gradebook(out / "gradebook.csv", tests, _reports(grader, subs))

    pool = ThreadPoolExecutor(max_workers=max(1, args.jobs))
    try:
        for future in [pool.submit(one, s) for s in todo]:
            future.result()
        pool.shutdown()
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)  # start nothing more
        grader.interrupt()
        print("\ninterrupted: run the same command again to grade the rest (what is done is kept)",
              file=sys.stderr, flush=True)
        os._exit(130)  # worker threads are blocked on processes just killed
    write_gradebook(out / "gradebook.csv", tests, _reports(grader, subs))
    print(f"gradebook: {out / 'gradebook.csv'}\nreports:   {out / 'reports'}/<submission>.json")
    return 0


def _reports(grader: Grader, subs: list[Path]) -> dict[str, dict]:
    found = {}
    for sub in subs:
        path = grader.report_path(sub.name)
        if path.exists():
            try:
                found[sub.name] = json.loads(path.read_text())
            except ValueError:
                continue
    return found


if __name__ == "__main__":
    sys.exit(main())
