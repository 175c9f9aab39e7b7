"""How long `make grade PHASE=N` takes here, with an empty Triton cache and again with a warm one.

    python -m grader.instructor.grading_times [--phases 0-5] [--impl solutions]

Writes assets/reports/grading-times-<gpu, e.g. h100|cpu>.json; `make figures` turns the files into the README's
grading-times table. "Cold" is the first grading on a fresh machine: a new, empty TRITON_CACHE_DIR,
so every kernel is compiled (on a GPU, by the warm-up processes beside the graded run); "warm" is
the same grading again (what a student sees after the first `make grade`). Each is one wall-clock
measurement of the whole command, start-up included.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from grader.impl import ROOT, phases


def _grade(phase: int, impl: str, cache: str) -> dict:
    report = os.path.join(cache, f"phase{phase}.json")
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "grader", "grade", "--phase", str(phase), "--impl", impl,
                           "--report", report], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TRITON_CACHE_DIR": cache})
    seconds = time.time() - started
    if not os.path.exists(report):
        raise SystemExit(f"phase {phase}: the grader failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}"
                         f"{proc.stderr[-2000:]}")
    summary = json.loads(open(report).read())
    return {"seconds": round(seconds, 1), "score": summary["score"], "max_score_run": summary["max_score_run"],
            "tiers": [t for t, state in summary["tiers"].items() if state == "available"],
            "environment": summary["environment"]}


def _parse_phases(text: str | None) -> list[int]:
    if not text:
        return phases()
    if "-" in text:
        lo, hi = text.split("-")
        return [p for p in phases() if int(lo) <= p <= int(hi)]
    return [int(p) for p in text.split(",")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader.instructor.grading_times",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", default=None, help="e.g. 0-5 or 3,4 (default: every phase)")
    parser.add_argument("--impl", default="solutions")
    args = parser.parse_args(argv)
    from grader import runtime

    if runtime.has_cuda():
        from grader.lessons import common

        where = common.device_tag()  # each GPU's times in a file of its own
    else:
        where = "cpu"
    path = ROOT / "assets" / "reports" / f"grading-times-{where}.json"
    data = json.loads(path.read_text()) if path.exists() else {"phases": {}}
    for phase in _parse_phases(args.phases):
        with tempfile.TemporaryDirectory(prefix="fa-cold-cache-") as cache:
            cold = _grade(phase, args.impl, cache)
            warm = _grade(phase, args.impl, cache)
        data["phases"][str(phase)] = {"cold": cold, "warm": warm, "impl": args.impl, "cores": os.cpu_count(),
                                      "machine": platform.machine(), "date": datetime.date.today().isoformat()}
        print(f"phase {phase}: cold {cold['seconds']:.0f} s, warm {warm['seconds']:.0f} s "
              f"({cold['score']:g}/{cold['max_score_run']:g} points; {', '.join(cold['tiers'])})", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")  # after every phase: nothing lost if stopped
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
