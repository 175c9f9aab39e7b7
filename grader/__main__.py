"""Command line behind the Makefile: `python -m grader grade|check-solutions ...`."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from grader import isolation, settings
from grader.impl import ROOT, TREES, phases


def _phase_error(given) -> str:
    known = ", ".join(str(p) for p in phases())
    return f"error: unknown phase {given!r}: choose PHASE from {known} (e.g. make grade PHASE=0)"


def report_path(phase: int, tree: str) -> str:
    return str(ROOT / "reports" / f"phase{phase}-{tree}.json")


def grade(phase: int, tree: str, extra: list[str], report: str | None = None,
          tests: list[str] | None = None, only: str | None = None) -> int:
    """Grade `tree` (exercises, solutions or a submission directory) with the phase's grader, or
    with `tests` (test files or node ids) instead. `only` (a pytest -k expression) runs the matching
    tests verbosely, with full tracebacks, in this process: for finding a bug, not for a grade."""
    if tree not in TREES:  # a submission directory: see grader/impl.py
        tree = str(Path(tree).resolve())
    os.environ[settings.IMPL.name] = tree
    paths = tests or [str(ROOT / "grader" / "phases" / f"test_phase{phase}.py")]
    report = report or report_path(phase, Path(tree).name + ("" if only is None else "-test"))
    output = ["-q", "--tb=no", "-rN", "--disable-warnings"] if only is None else \
        ["-v", "--tb=long", "-k", only, "-p", "no:cacheprovider"]
    args = [*paths, "-p", "grader.plugin", *output, "--rootdir", str(ROOT),
            "--phase", str(phase), "--report", report, *extra]
    if only is not None or settings.ISOLATE.get() == "0":  # in this process (a debugger); a crash ends it
        import pytest

        return int(pytest.main(args))
    # In a child process that may crash without taking the table and the report with it.
    return isolation.run(args, report)


def benchmark(phase: int, tree: str, extra: list[str]) -> int:
    """pytest-benchmark over the phase's kernels (GPU only), saved and compared with the last run."""
    import pytest

    from grader import runtime

    if not runtime.has_cuda():
        print("error: make bench times kernels on a CUDA GPU; without one, `make grade` checks correctness",
              file=sys.stderr)
        return 2
    if phase == 0:
        print("error: phase 0 has no attention kernel to benchmark; its softmax is timed by `make grade`",
              file=sys.stderr)
        return 2
    os.environ[settings.IMPL.name] = tree if tree in TREES else str(Path(tree).resolve())
    os.environ[settings.BENCH_PHASE.name] = str(phase)
    storage = ROOT / ".benchmarks" / f"phase{phase}-{Path(tree).name}"
    args = [str(ROOT / "grader" / "benchmarks.py"), "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
            "--benchmark-timer=grader.timing.cuda_event_clock", "--benchmark-autosave",
            f"--benchmark-storage=file://{storage}", "--benchmark-compare",
            "--benchmark-columns=min,median,iqr,rounds", "--benchmark-sort=name", *extra]
    return int(pytest.main(args))


def check_solutions(selected: list[int]) -> int:
    """Both directions for every phase: the reference gets full marks, the stubs get zero.

    The stubs are graded from a fresh generation of solutions/ in a temporary folder, never from
    the working exercises/, which holds a student's work once they have solved anything."""
    from grader.instructor.generate import write_fresh

    with tempfile.TemporaryDirectory(prefix="fa-fresh-exercises-") as fresh:
        write_fresh(ROOT / "solutions", Path(fresh))
        return _check_both_ways(selected, fresh)


def _check_both_ways(selected: list[int], fresh_stubs: str) -> int:
    from grader import runtime, warmup

    print("check-solutions: solutions must pass every graded test, untouched stubs (freshly generated from"
          " solutions/, not your exercises/) must fail every one", flush=True)
    started = time.time()
    jobs = [(phase, tree) for phase in selected for tree in ("solutions", "exercises")]
    for phase, tree in jobs:
        if os.path.exists(report_path(phase, tree)):
            os.remove(report_path(phase, tree))  # never read a report left by an earlier run
    if runtime.has_cuda():
        results = _grade_side_by_side(jobs, fresh_stubs, warmup)
    else:  # the interpreter needs every core it has for one grading: one after another
        results = [_finish(phase, tree, *_start(phase, tree, fresh_stubs)) for phase, tree in jobs]
    problems = []
    if len(jobs) > 1:
        print(f"\n{'phase':<6} {'tree':<10} {'points':>9}  {'time':>5}  verdict")
        for (phase, tree), (ok, why, score, best, seconds) in zip(jobs, results):
            verdict = "ok" if ok else "PROBLEM: " + why
            print(f"{phase:<6} {tree:<10} {f'{score:g}/{best:g}':>9}  {seconds:4.0f}s  {verdict}")
    for (phase, tree), (ok, why, *_) in zip(jobs, results):
        if not ok:
            problems.append(f"phase {phase} {tree}: {why}")
    took = f"in {time.time() - started:.0f} s"
    if problems:
        print(f"FAILED: {len(problems)} problem(s) {took}")
        return 1
    print(f"OK: {len(selected)} phase(s), both directions, {took}")
    return 0


def _start(phase: int, tree: str, fresh_stubs: str, env: dict | None = None):
    """A grading run in its own process, its output to a temporary file; (process, output file, start)."""
    impl = fresh_stubs if tree == "exercises" else tree
    output = tempfile.TemporaryFile(mode="w+")
    # A stub's grading is never on the critical path of check-solutions: it yields the CPU.
    nice = ["nice", "-n", "10"] if tree == "exercises" and env is not None and shutil.which("nice") else []
    proc = subprocess.Popen([*nice, sys.executable, "-m", "grader", "grade", "--phase", str(phase), "--impl", impl,
                             "--report", report_path(phase, tree)],
                            cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, text=True, env=env)
    return proc, output, time.time()


def _finish(phase: int, tree: str, proc, output, started: float):
    """Wait for a grading run and judge it: solutions need full marks, stubs zero with every failure
    a TODO message. Prints one progress line; (ok, why, score, best, seconds)."""
    rc = proc.wait()
    seconds = time.time() - started
    output.seek(0)
    text = output.read()
    output.close()
    path = report_path(phase, tree)
    if rc not in (0, 1) or not os.path.exists(path):
        print(text[-9000:])
        why = f"the grader itself failed (exit {rc})"
        print(f"phase {phase}  {tree:<10} {seconds:5.0f} s  PROBLEM: {why}", flush=True)
        return False, why, 0, 0, seconds
    summary = json.loads(open(path).read())
    score, best = summary["score"], summary["max_score_run"]
    failed = [t for t in summary["tests"] if t["outcome"] == "failed"]
    if tree == "solutions":
        ok = rc == 0 and score == best and best > 0
        why = "" if ok else f"solutions scored {score:g}/{best:g} (exit {rc})"
    else:
        unclear = [t["name"] for t in failed if not t["message"].startswith("TODO")]
        ok = rc != 0 and score == 0 and failed and not unclear
        why = "" if ok else (f"stubs scored {score:g}/{best:g} (exit {rc})" if score or rc == 0 else
                             f"stub failures without a TODO message: {', '.join(unclear[:4])}")
    print(f"phase {phase}  {tree:<10} {score:g}/{best:g} points  exit {rc}  {seconds:5.0f} s  "
          f"{'ok' if ok else 'PROBLEM: ' + why}", flush=True)  # progress, one line per grading run
    if not ok:
        print(text[-9000:])  # the whole table, where it went wrong
    return bool(ok), why, score, best, seconds


def _grade_side_by_side(jobs, fresh_stubs: str, warmup) -> list:
    """On a GPU: every grading at once. Compiling is CPU work and the machine has many cores; the
    GPU is shared through grader.gpulock, which gives each timing the GPU to itself.

    The stubs compile nothing, so they are graded straight away, without a warm-up. The solutions'
    kernels are compiled first by one warm-up over every phase (grader.warmup.warm_phases), then
    the phases are graded together from the warm cache. Each run's line is printed as it ends."""
    import threading

    no_warmup = {**os.environ, settings.WARM_SHARDS.name: "0"}
    running = {job: _start(*job, fresh_stubs, env=no_warmup) for job in jobs if job[1] == "exercises"}
    phases = [phase for phase, tree in jobs if tree == "solutions"]
    warm = {}

    def warm_up():
        warm["phases"], warm["seconds"] = warmup.warm_phases(phases, "solutions")

    warming = threading.Thread(target=warm_up, daemon=True)
    if phases:
        print(f"warming Triton's kernel cache for the solutions of phase(s) {', '.join(map(str, phases))},"
              f" grading the stubs meanwhile ...", flush=True)
        warming.start()
    results = {}
    while len(results) < len(jobs):
        if phases and not warming.is_alive() and not any(tree == "solutions" for _, tree in running):
            seconds = warm.get("seconds") or [0.0]
            print(f"kernel cache warm after {seconds[-1]:.0f} s ({len(seconds)} processes); grading the solutions"
                  if warm.get("phases") else "kernel cache already warm for this code; grading the solutions",
                  flush=True)
            running.update({job: _start(*job, fresh_stubs) for job in jobs if job[1] == "solutions"})
        for job, (proc, output, started) in list(running.items()):
            if job not in results and proc.poll() is not None:
                results[job] = _finish(*job, proc, output, started)
        time.sleep(0.2)
    return [results[job] for job in jobs]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grade", help="grade one phase")
    g.add_argument("--phase", required=True)
    g.add_argument("--impl", default="exercises",
                   help="exercises (default), solutions, or a submission directory shaped like exercises/")
    g.add_argument("--report", default=None)
    g.add_argument("--tests", action="append", default=None,
                   help="grade with these test files or node ids instead of the phase's grader")
    g.add_argument("--test", default=None, help="run only the tests matching this pytest -k expression, verbosely,"
                   " with full tracebacks (make grade PHASE=N TEST=name)")
    b = sub.add_parser("bench", help="GPU: pytest-benchmark over one phase's kernels, compared with the last run")
    b.add_argument("--phase", required=True, type=int)
    b.add_argument("--impl", default="exercises")
    c = sub.add_parser("check-solutions", help="solutions pass and stubs fail, for every phase")
    c.add_argument("--phases", default=None, help="comma-separated subset (default: all)")
    args, extra = parser.parse_known_args(argv)
    if args.command == "grade":
        if not str(args.phase).isdigit() or int(args.phase) not in phases():
            print(_phase_error(args.phase), file=sys.stderr)
            return 2
        if args.impl not in TREES and not (Path(args.impl) / f"phase{args.phase}").is_dir():
            print(f"error: --impl must be {' or '.join(TREES)} or a directory holding phase{args.phase}/,"
                  f" not {args.impl!r}", file=sys.stderr)
            return 2
        return grade(int(args.phase), args.impl, extra, args.report, args.tests, args.test)
    if args.command == "bench":
        return benchmark(args.phase, args.impl, extra)
    selected = phases() if not args.phases else [int(p) for p in args.phases.split(",")]
    return check_solutions(selected)


if __name__ == "__main__":
    sys.exit(main())
