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
import shutil
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


def mark_done(claims_dir: str, index: int) -> None:
    """Test number `index`, claimed by this warm-up process, has run: its kernels are in the cache."""
    open(os.path.join(claims_dir, f"{index}.done"), "w").close()


class Background:
    """`count` warm-up processes working through the shared queue of the pytest invocation `args`
    while the caller goes on. The graded run claims each test before it runs it: a test no warm-up
    process has taken yet it runs (and compiles) itself; one a warm-up process is running it waits
    for (`wait_for`), then finds its kernels in the cache. Nothing is compiled twice, and the graded
    run keeps pace with the warm-up instead of starting after it."""

    def __init__(self, args: list[str], count: int, rootdir: str, timeout_s: float = 600,
                 env: dict | None = None):
        self.claims = tempfile.mkdtemp(prefix="fa-warm-")
        self.started = time.time()
        self.timeout_s = timeout_s
        # `args` already loads this plugin (it is what called us).
        self.procs = [subprocess.Popen([sys.executable, "-m", "pytest", *_without_report(args),
                                        "--warm-shard", self.claims, "-q", "--tb=no"],
                                       cwd=rootdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True, env=env)
                      for _ in range(count)]
        self.seconds = [0.0] * count

    def poll(self) -> bool:
        """True once every process has ended; notes when each did."""
        for i, proc in enumerate(self.procs):
            if not self.seconds[i] and proc.poll() is not None:
                self.seconds[i] = time.time() - self.started
        if time.time() - self.started > self.timeout_s:  # a hanging submission: the graded run times it out itself
            for i, proc in enumerate(self.procs):
                if not self.seconds[i]:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    self.seconds[i] = time.time() - self.started
        return all(self.seconds)

    def wait_for(self, index: int) -> None:
        """Until the warm-up process that claimed test number `index` has run it."""
        done = os.path.join(self.claims, f"{index}.done")
        while not os.path.exists(done) and not self.poll():
            time.sleep(0.05)

    def finish(self) -> list[float]:
        """Wait for every process; the seconds each took, sorted."""
        while not self.poll():
            time.sleep(0.1)
        shutil.rmtree(self.claims, ignore_errors=True)
        return sorted(self.seconds)


def run_shards(args: list[str], count: int, rootdir: str, timeout_s: float = 600,
               env: dict | None = None) -> list[float]:
    """Run the pytest invocation `args` in `count` processes sharing one queue of tests, and wait;
    the seconds each process took."""
    return Background(args, count, rootdir, timeout_s, env).finish()


def warm_phases(phases: list[int], tree: str) -> tuple[list[int], list[float]]:
    """One warm-up for several phases of `tree` at once (`make check-solutions` on a GPU): a single
    queue over all their tests, heaviest tiers of every phase first, so that no phase's long pole
    waits behind another phase's light tests. Phases warmed before are left out. Returns the phases
    warmed and the seconds each process took."""
    env = {**os.environ, settings.IMPL.name: tree}
    previous = os.environ.get(settings.IMPL.name)
    os.environ[settings.IMPL.name] = tree  # the stamps name the tree through it
    try:
        todo = [p for p in phases if not warmed_before(p)]
        if not todo:
            return [], []
        files = [str(ROOT / "grader" / "phases" / f"test_phase{p}.py") for p in todo]
        seconds = run_shards([*files, "-p", "grader.plugin", "--rootdir", str(ROOT)],
                             shard_count(10 * len(todo)), str(ROOT), env=env)
        for p in todo:
            mark_warmed(p)
        return todo, sorted(seconds)
    finally:
        if previous is None:
            del os.environ[settings.IMPL.name]
        else:
            os.environ[settings.IMPL.name] = previous
