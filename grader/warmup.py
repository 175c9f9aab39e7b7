"""Fill Triton's kernel cache in parallel before a GPU grading run.

On a GPU every test case with a new dtype, head dim, mask or size pattern makes Triton compile its
kernels, one after another: a few seconds each on Triton 3.6, minutes for a phase with a cold
cache. Compiling is CPU work and the GPU machine has many cores, so before the graded run the
same tests run once in several processes, which leaves the compiled kernels in Triton's on-disk
cache. Their results are thrown away; the graded run then loads each kernel from the cache
instead of compiling it.

- **A shared queue, not fixed shares.** A few tests compile many kernels one after another (the
  throughput tests: forward and backward at the large shapes; the compile tier: every pinned
  configuration), so a fixed split leaves one process working long after the others stop. Every
  process walks the same list instead and runs each test it is first to claim (`claim`: a file
  created with O_EXCL), heaviest tiers first.
- **Every tier is warmed.** The throughput tier's timings become a single call in a warm-up
  process (`timing.compile_only`): it compiles the kernels of the large shapes, and a timing
  beside a dozen other processes would mean nothing anyway. The compile tier's `triton.compile`
  calls fill the same cache, so the graded compile tier only reads it.
- **Once per version of the code.** A stamp in Triton's cache directory records that this phase's
  grader and the graded tree's sources, exactly as they are, were warmed on this GPU with this
  Triton. Grading them again skips the warm-up (it would only re-run tests whose kernels are
  cached); any edit changes the stamp's name.

`FA_WARM_SHARDS=0` turns this off; `FA_WARM_SHARDS=K` forces K processes and ignores the stamp
(also without a GPU, for testing).
"""
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from grader import runtime, settings
from grader.impl import ROOT

# Tiers whose tests compile the most (many configurations; the largest shapes) are claimed first.
HEAVY_FIRST = ("compile", "throughput")


def order(items: list, tier_of) -> list:
    """`items` with the heavy tiers' tests first (stable): the order every process claims them in."""
    return sorted(items, key=lambda it: tier_of(it) not in HEAVY_FIRST)


def shard_count(n_items: int) -> int:
    forced = settings.WARM_SHARDS.get()
    if forced is not None:
        return max(0, int(forced))
    if not runtime.has_cuda() or n_items < 4:
        return 0
    # Compiling is single-threaded CPU work: one process per core but two (left for the driver and
    # the GPU tests' own launches), three tests a process at least (each one pays torch's import).
    return max(0, min(16, (os.cpu_count() or 2) - 2, n_items // 3))


def claim(claims_dir: str, index: int) -> bool:
    """True for exactly one of the processes asking for test number `index` of the shared list."""
    try:
        os.close(os.open(os.path.join(claims_dir, str(index)), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


# ------------------------------------------------------------------------------ the stamp
def _triton_cache_dir() -> Path:
    return Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")


def _tree_dir() -> Path | None:
    name = settings.IMPL.get()
    path = Path(name) if Path(name).is_dir() else ROOT / name
    return path if path.is_dir() else None


def stamp_path(phase: int) -> Path | None:
    """Where the stamp of this exact code, GPU and Triton lives; None where it cannot be named."""
    tree = _tree_dir()
    if tree is None or not runtime.has_cuda():
        return None
    import torch
    import triton

    digest = hashlib.sha256(f"{phase} {triton.__version__} {torch.cuda.get_device_name()}".encode())
    # Every source the graded run can compile from: the tree (earlier phases included, which later
    # phases import) and the grader (its tests choose the shapes and configurations).
    for path in sorted([*tree.rglob("*.py"), *(ROOT / "grader").rglob("*.py")]):
        digest.update(str(path.relative_to(path.anchor)).encode())
        digest.update(path.read_bytes())
    return _triton_cache_dir() / "fa-course-warm" / f"phase{phase}-{digest.hexdigest()[:32]}"


def warmed_before(phase: int) -> bool:
    if settings.WARM_SHARDS.get() is not None:
        return False
    stamp = stamp_path(phase)
    return stamp is not None and stamp.exists()


def mark_warmed(phase: int) -> None:
    stamp = stamp_path(phase)
    if stamp is not None:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()


# ------------------------------------------------------------------------------ the processes
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


def run_shards(args: list[str], count: int, rootdir: str, timeout_s: float = 600) -> list[float]:
    """Run the pytest invocation `args` in `count` processes sharing one queue of tests; the
    seconds each process took."""
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="fa-warm-") as claims:
        # `args` already loads this plugin (it is what called us).
        procs = [subprocess.Popen([sys.executable, "-m", "pytest", *_without_report(args),
                                   "--warm-shard", claims, "-q", "--tb=no"],
                                  cwd=rootdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
                 for _ in range(count)]
        seconds = [0.0] * count
        while not all(seconds):
            for i, proc in enumerate(procs):
                if not seconds[i] and proc.poll() is not None:
                    seconds[i] = time.time() - started
            if time.time() - started > timeout_s:  # a hanging submission: the graded run times it out itself
                for i, proc in enumerate(procs):
                    if not seconds[i]:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                        seconds[i] = time.time() - started
            time.sleep(0.1)
    return seconds
