"""Fill Triton's kernel cache in parallel before a GPU grading run.

On a GPU every test case with a new dtype, head dim, mask or size pattern makes Triton compile its
kernels, one after another: a few seconds each on Triton 3.6, minutes for a phase with a cold
cache. Compiling is CPU work and the GPU machine has many cores, so before the graded run the
same tests run once in several processes (`--warm-shard i/K`, each taking every K-th test),
which leaves the compiled kernels in Triton's on-disk cache. Their results are thrown away; the
graded run then loads each kernel from the cache instead of compiling it. The compile tier
(parallel already) and the throughput tier (which needs the GPU to itself) are not warmed.

`FA_WARM_SHARDS=0` turns this off; `FA_WARM_SHARDS=K` forces K processes (also without a GPU,
for testing).
"""
import os
import signal
import subprocess
import sys
import time

from grader import runtime

NOT_WARMED = ("compile", "throughput")


def shard_count(n_items: int) -> int:
    forced = os.environ.get("FA_WARM_SHARDS")
    if forced is not None:
        return max(0, int(forced))
    if not runtime.has_cuda() or n_items < 4:
        return 0
    # Compiling is single-threaded CPU work: one shard per core but two (left for the driver and the
    # GPU tests' own launches), three tests a shard at least (each shard pays torch's import).
    return max(0, min(16, (os.cpu_count() or 2) - 2, n_items // 3))


def parse_shard(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    index, count = (int(x) for x in value.split("/"))
    return index, count


def _without_report(args: list[str]) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--report":
            skip = True
            continue
        if arg.startswith("--report="):
            continue
        out.append(arg)
    return out


def run_shards(args: list[str], count: int, rootdir: str, timeout_s: float = 600) -> float:
    """Run the pytest invocation `args` as `count` shards in parallel; returns the seconds taken."""
    started = time.time()
    # `args` already loads this plugin (it is what called us).
    procs = [subprocess.Popen([sys.executable, "-m", "pytest", *_without_report(args),
                               "--warm-shard", f"{i}/{count}", "-q", "--tb=no"],
                              cwd=rootdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
             for i in range(count)]
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, timeout_s - (time.time() - started)))
        except subprocess.TimeoutExpired:  # a hanging submission: the graded run will time it out itself
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return time.time() - started
