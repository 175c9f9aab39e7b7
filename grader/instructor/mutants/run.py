"""`make mutants`: grade every mutant of the catalogue and report which ones the graders kill.

    python -m grader.instructor.mutants [--phases 0-2] [--only NAME,NAME] [--only-gpu] [--jobs 2] [--record] [--list]

How a mutant is graded: its copy of solutions/ (build/mutants/<name>/) is graded by
`python -m grader grade --impl <copy>` in a process of its own, with the tiers the mutant names
(correctness by default; see grader/instructor/mutants/__init__.py) and, where the mutant says so, a -k
expression narrowing the tests. Processes run `--jobs` at a time, the slowest phases first.

Before the mutants, one unmutated copy per phase and test selection (a *control*) must get full
marks with the same selection: otherwise a "kill" could be the grader failing on its own.

Mutants marked `where="gpu"` need the GPU or throughput tier; without a GPU they are listed as not
run, never as killed. The exit status is non-zero when a patch no longer applies, a control loses
points, a grading process fails, or a mutant that ran survives.

The report goes to reports/mutants-<cpu|gpu>.json; `--record` also writes it to
assets/mutants/<cpu|gpu>.json, the data behind the README's kill-rate table (`make figures`).
"""
import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time

from grader import runtime
from grader.impl import ROOT
from grader.instructor.mutants import Mutant, PatchError, build_copy, catalogue, check_catalogue
from grader.instructor.release import course_phases, parse_phases

WORK = ROOT / "build" / "mutants"
TIMEOUT = 900  # seconds for one grading process; the slowest (Phase 4 with training) needs about 30


@dataclasses.dataclass
class Job:
    name: str
    phase: int
    tiers: tuple[str, ...]
    tests: str | None
    mutant: Mutant | None = None  # None: a control, the unmutated solutions

    @property
    def selection(self) -> str:
        tests = f" -k {self.tests!r}" if self.tests else ""
        return f"tiers {','.join(self.tiers)}{tests}"


def _where() -> str:
    return "gpu" if runtime.has_cuda() else "cpu"


def _runs_here(m: Mutant, where: str) -> bool:
    return m.where == "cpu" or where == "gpu"


def _plan(mutants: list[Mutant], where: str) -> list[Job]:
    """Controls first (one per phase and selection), then the mutants, slowest phases first."""
    jobs, controls = [], {}
    for m in mutants:
        if not _runs_here(m, where):
            continue
        key = (m.phase, m.tiers, m.tests)
        if key not in controls:
            controls[key] = Job(f"control-phase{m.phase}-{len(controls)}", m.phase, m.tiers, m.tests)
        jobs.append(Job(m.name, m.phase, m.tiers, m.tests, m))
    # Phase 4 grades slowest (the training test) and compile-tier jobs take longest: start them first
    # so that two workers finish together.
    cost = lambda j: ("compile" in j.tiers, j.phase)
    return sorted(controls.values(), key=cost, reverse=True) + sorted(jobs, key=cost, reverse=True)


def _grade(job: Job, jobs: int, timeout: int) -> dict:
    copy = build_copy(job.mutant, job.phase, WORK / job.name)
    report = copy / "report.json"
    cmd = [sys.executable, "-m", "grader", "grade", "--phase", str(job.phase), "--impl", str(copy),
           "--report", str(report), "-p", "grader.instructor.mutants.select", "--mutant-tiers", ",".join(job.tiers)]
    if job.tests:
        cmd += ["-k", job.tests]
    env = dict(os.environ)
    # Parallel graders share the cores: one torch thread each instead of all of them each.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    started = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"grading took more than {timeout} s", "seconds": time.time() - started}
    seconds = time.time() - started
    if proc.returncode not in (0, 1) or not report.exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        return {"status": "error", "error": f"the grader exited {proc.returncode}: {' | '.join(tail)[-300:]}",
                "seconds": seconds}
    summary = json.loads(report.read_text())
    failed = [t for t in summary["tests"] if t["outcome"] == "failed"]
    row = {"score": summary["score"], "max_score": summary["max_score_run"], "tests_run": len(
        [t for t in summary["tests"] if t["outcome"] != "skipped"]), "seconds": seconds}
    if failed:
        row["first_failure"] = f"{failed[0]['name']}: {failed[0]['message']}"[:300]
    if row["max_score"] == 0:
        row.update(status="error", error="no graded test ran with this selection")
    elif job.mutant is None:
        row["status"] = "ok" if row["score"] == row["max_score"] else "error"
        if row["status"] == "error":
            row["error"] = f"the unmutated solutions scored {row['score']:g}/{row['max_score']:g}"
    else:
        row["status"] = "killed" if row["score"] < row["max_score"] else "survived"
    return row


def _row(job: Job, result: dict) -> dict:
    m = job.mutant
    row = {"name": job.name, "phase": job.phase, "selection": job.selection, **result}
    if m is not None:
        row.update(file=m.file, bug=m.bug, where=m.where, killed_by=m.killed_by)
    return row


def _score(r: dict) -> str:
    return f"{r['score']:g}/{r['max_score']:g}" if "score" in r else "-"


def _line(i: int, n: int, r: dict) -> str:
    detail = r.get("error") or r.get("first_failure", "")
    return (f"[{i:>{len(str(n))}}/{n}] {r['name']:<36} phase {r['phase']}  {_score(r):>9}  {r['status']:<8} "
            f"{r['seconds']:5.1f} s  {detail[:90]}")


def _table(rows: list[dict]) -> list[str]:
    lines = [f"{'mutant':<36} {'phase':>5} {'where':<5} {'score':>9}  killed?", "-" * 68]
    for r in rows:
        killed = {"killed": "yes", "survived": "NO (survived)", "not run": "not run (needs a GPU)"}.get(
            r["status"], r["status"])
        lines.append(f"{r['name']:<36} {r['phase']:>5} {r['where']:<5} {_score(r):>9}  {killed}")
    return lines


def run(mutants: list[Mutant], jobs: int, timeout: int) -> tuple[dict, bool]:
    where = _where()
    plan = _plan(mutants, where)
    started = time.time()
    print(f"mutants: {len(mutants)} in the catalogue, {sum(j.mutant is not None for j in plan)} to run here "
          f"({where}), {sum(j.mutant is None for j in plan)} controls first, {jobs} at a time", flush=True)
    done: dict[str, dict] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(_grade, job, jobs, timeout): job for job in plan}
        for i, future in enumerate(concurrent.futures.as_completed(futures), 1):
            job = futures[future]
            try:
                result = future.result()
            except PatchError as exc:  # checked up front; kept for a catalogue edited mid-run
                result = {"status": "error", "error": str(exc), "seconds": 0.0}
            row = _row(job, result)
            done[job.name] = row
            print(_line(i, len(plan), row), flush=True)
    controls = [done[j.name] for j in plan if j.mutant is None]
    rows = []
    for m in mutants:
        if m.name in done:
            rows.append(done[m.name])
        else:
            rows.append(_row(Job(m.name, m.phase, m.tiers, m.tests, m),
                             {"status": "not run", "seconds": 0.0,
                              "error": "needs the GPU or throughput tier"}))
    ran = [r for r in rows if r["status"] in ("killed", "survived")]
    killed = [r for r in ran if r["status"] == "killed"]
    errors = [r for r in controls + rows if r["status"] == "error"]
    summary = {
        "where": where, "mutants": len(rows), "run": len(ran), "killed": len(killed),
        "kill_rate": len(killed) / len(ran) if ran else None,
        "not_run": [r["name"] for r in rows if r["status"] == "not run"],
        "survived": [r["name"] for r in ran if r["status"] == "survived"],
        "errors": [r["name"] for r in errors], "wall_seconds": round(time.time() - started, 1), "jobs": jobs,
    }
    from grader import tiers

    data = {"summary": summary, "environment": tiers.environment(), "date": datetime.date.today().isoformat(),
            "controls": controls, "mutants": rows}
    ok = not errors and not summary["survived"]
    return data, ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader.instructor.mutants", description=__doc__.split("\n")[0])
    parser.add_argument("--phases", default=None, help="e.g. 0-2 or 0,3 (default: every phase with mutants)")
    parser.add_argument("--only", default=None, help="comma-separated mutant names")
    parser.add_argument("--jobs", type=int, default=None,
                        help="grading processes at a time (default: 2 without a GPU; 1 on a GPU, whose timings "
                             "need the device to themselves)")
    parser.add_argument("--only-gpu", action="store_true",
                        help="only the mutants that need a GPU (CI grades the others on the CPU tiers)")
    parser.add_argument("--timeout", type=int, default=TIMEOUT)
    parser.add_argument("--record", action="store_true", help="also write assets/mutants/<cpu|gpu>.json")
    parser.add_argument("--list", action="store_true", help="print the catalogue and exit")
    args = parser.parse_args(argv)
    try:
        phases = None if args.phases is None else set(parse_phases(args.phases, course_phases()))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mutants = catalogue(phases)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {m.name for m in mutants}
        if unknown:
            print(f"error: no mutant called {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        mutants = [m for m in mutants if m.name in wanted]
    if args.only_gpu:
        mutants = [m for m in mutants if m.where == "gpu"]
    problems = check_catalogue(mutants)
    if problems:  # before anything runs: a stale catalogue must not pass by grading fewer mutants
        print("error: the mutation catalogue no longer matches solutions/ "
              "(update grader/instructor/mutants/phaseN.py):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 2
    if args.list:
        for m in mutants:
            print(f"{m.name:<36} phase {m.phase}  {m.where:<4} {m.bug}")
        return 0
    jobs = args.jobs or (1 if _where() == "gpu" else min(2, os.cpu_count() or 1))
    data, ok = run(mutants, jobs, args.timeout)
    print()
    for line in _table(data["mutants"]):
        print(line)
    s = data["summary"]
    rate = f"{s['kill_rate']:.0%}" if s["kill_rate"] is not None else "-"
    print(f"\nkilled {s['killed']} of {s['run']} mutants run here ({rate}); {len(s['not_run'])} not run "
          f"(need a GPU); {s['wall_seconds']:.0f} s with {s['jobs']} processes")
    out = ROOT / "reports" / f"mutants-{s['where']}.json"
    targets = [out] + ([ROOT / "assets" / "mutants" / f"{s['where']}.json"] if args.record else [])
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")
        print(f"Report: {path.relative_to(ROOT)}")
    if s["survived"]:
        print(f"FAILED: {len(s['survived'])} mutant(s) survived: {', '.join(s['survived'])}")
    if s["errors"]:
        print(f"FAILED: {len(s['errors'])} grading run(s) went wrong: {', '.join(s['errors'])}")
    return 0 if ok else 1
