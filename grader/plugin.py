"""The pytest plugin behind `make grade`: tiers, points, a readable table, a JSON report.

Loaded with `-p grader.plugin` by `python -m grader grade`. Test modules in grader/phases mark
each test with `@pytest.mark.points(n)` and, when it needs more than the correctness tier,
`@pytest.mark.tier("compile" | "gpu" | "throughput")`.

This process never imports the graded code: the `api` fixture is a proxy of the phase's package in
a worker process (grader.remote, grader.worker), which runs each call and returns its outputs. The
seed, the inputs, the references, the comparisons, the points and the report stay here (see
grader/ARCHITECTURE.md).

`python -m grader grade` runs this session in a child process with `--progress FILE` (see
grader.isolation): the results then go to FILE test by test, and the supervising process prints the
table and writes the report. When the worker dies in a test, this process hands its death to the
supervisor (EXIT_WORKER_DIED), which names the crash and grades the rest with a fresh pair.
Without `--progress` (pytest run by hand) the session prints and writes them itself, and a dead
worker fails its test and is started again.
"""
from grader import runtime

runtime.configure()  # before anything imports a kernel module

import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from grader import gpulock, hints, impl, messages, remote, scoring, settings, tiers, usage, warmup  # noqa: E402

PUBLIC_SEED = 0
_CRASH_LOG = None  # kept open for faulthandler


def pytest_addoption(parser):
    group = parser.getgroup("grader")
    group.addoption("--phase", type=int, default=None, help="phase being graded (for the report)")
    group.addoption("--report", default=None, help="where to write the JSON report")
    group.addoption("--warm-shard", default=None,
                    help="internal: a directory of claims; fill the kernel cache (see grader.warmup)")
    group.addoption("--progress", default=None, help="internal: write results test by test to this file "
                                                     "(see grader.isolation)")
    group.addoption("--only", default=None, help="internal: a JSON file listing the node ids to run, in order")


def pytest_configure(config):
    config.addinivalue_line("markers", "points(n): points this test is worth")
    config.addinivalue_line("markers", "tier(name): compile, gpu or throughput (default: correctness)")
    if settings.CRASH_LOG.is_set() and config.getoption("progress") and not config.getoption("warm_shard"):
        # grader.isolation reads the Python traceback of a crash here, to name the kernel line
        import faulthandler

        global _CRASH_LOG
        _CRASH_LOG = open(settings.CRASH_LOG.get(), "w")
        faulthandler.enable(_CRASH_LOG)
    if config.getoption("warm_shard"):
        from grader import timing

        timing.compile_only = True  # a warm-up process compiles; it does not time (see grader.warmup)
        os.nice(5)  # the graded run beside it comes first for the CPU
    # The graded tree, named explicitly to the worker (the worker's environment has no FA_IMPL).
    remote.start_session(settings.IMPL.get(), settings.CRASH_LOG.get() if config.getoption("progress") else None)
    config.pluginmanager.register(GradingSession(config), "grading-session")


def pytest_unconfigure(config):
    remote.close()


def base_seed() -> tuple[int, str]:
    secret = settings.SEED.get()
    return (int(secret), "secret") if secret else (PUBLIC_SEED, "public")


@pytest.fixture
def seed(request) -> int:
    """A seed per test case: fresh inputs for every case, reproducible for a given base seed."""
    digest = hashlib.sha256(f"{base_seed()[0]}:{request.node.nodeid}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@pytest.fixture
def gen(seed):
    import torch

    return torch.Generator().manual_seed(seed)


@pytest.fixture
def device() -> str:
    return runtime.device()


@pytest.fixture
def api(request):
    """The graded phase's package (exercises.phaseN or solutions.phaseN) in the worker, noting which
    functions a test uses (a function caught cheating loses the points of every test that uses it)."""
    return usage.RecordingAPI(remote.load(request.module.PHASE))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Every test but a timing shares the machine with other gradings (see grader.gpulock); a
    throughput test's timings take it alone, one timing at a time (grader.timing.median_ms), so that
    neither another process's kernels nor its CPU work (compiling, a host-side wrapper's Python)
    slow the code being timed. In a warm-up process a throughput test times nothing, and shares too."""
    timing_test = tiers.of(item) == "throughput" and not item.config.getoption("warm_shard")
    if timing_test or not runtime.has_cuda():
        return (yield)
    with gpulock.hold(exclusive=False):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """Give the GPU memory this test is done with back to the device: other gradings may be running
    on the same GPU (grader.gpulock), and PyTorch's allocator would otherwise keep it."""
    result = yield
    if tiers.of(item) in ("gpu", "throughput") and runtime.has_cuda():
        import torch

        torch.cuda.empty_cache()
    return result


def _points(item) -> float:
    marker = item.get_closest_marker("points")
    return float(marker.args[0]) if marker else 1.0


# The GPU reports a kernel's illegal memory access at the next synchronisation, and from then on
# every CUDA call of the process fails: the rest of the grading must go on in a fresh process.
GPU_FAULT = re.compile(r"illegal memory access|unspecified launch failure|misaligned address|"
                       r"device-side assert|CUDA error: an illegal|cudaErrorIllegalAddress")
EXIT_GPU_FAULT = 75  # the child's exit status after a GPU fault (grader.isolation starts a new one)
EXIT_WORKER_DIED = 76  # the child's exit status after its worker died in a test (grader.isolation)


class Progress:
    """Results written test by test, so that the supervising process survives our crash."""

    def __init__(self, path):
        self.file = open(path, "a", buffering=1)

    def write(self, **event):
        self.file.write(json.dumps(event) + "\n")
        self.file.flush()



class GradingSession:
    def __init__(self, config):
        self.config = config
        self.available = tiers.detect()
        self.results: dict[str, dict] = {}
        self.started = time.time()
        path = None if config.getoption("warm_shard") else config.getoption("progress")
        self.progress = Progress(path) if path else None
        self.gpu_fault = None
        self.warm = None  # a grader.warmup.Background beside the graded run
        self.warm_queue: dict[str, int] = {}
        self.claimed: set[str] = set()  # a warm-up process: the tests it took
        if self.progress:
            remote.on_death = self.worker_died

    def worker_died(self, returncode: int, kernel: str | None) -> None:
        """The worker died in the running test: grader.isolation names the crash from these lines."""
        if kernel:
            self.progress.write(launch=kernel)
        self.progress.write(worker_died=returncode)
        sys.stdout.flush()
        os._exit(EXIT_WORKER_DIED)

    def pytest_collection_modifyitems(self, config, items):
        for item in items:
            tier = tiers.of(item)
            if self.available[tier]:
                item.add_marker(pytest.mark.skip(reason=f"needs the {tier} tier: {self.available[tier]}"))
        only = config.getoption("only")
        if only:  # a restarted child of grader.isolation: these tests, in this order
            wanted = json.loads(Path(only).read_text())
            by_id = {it.nodeid: it for it in items}
            keep = [by_id[nodeid] for nodeid in wanted if nodeid in by_id]
            config.hook.pytest_deselected(items=[it for it in items if it not in keep])
            items[:] = keep
        if config.getoption("warm_shard"):  # a warm-up process: the tests that compile, heaviest first
            keep = self._warmable(items)
            config.hook.pytest_deselected(items=[it for it in items if it not in keep])
            items[:] = keep
            self.warm_queue = {item.nodeid: i for i, item in enumerate(keep)}

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item):
        claims = self.config.getoption("warm_shard")
        if claims:  # a warm-up process: run the test only if nobody else has taken it
            if not warmup.claim(claims, self.warm_queue[item.nodeid]):
                pytest.skip("another warm-up process runs this test")
            self.claimed.add(item.nodeid)
        elif self.warm is not None and item.nodeid in self.warm_queue:  # the graded run, warm-up alongside
            index = self.warm_queue[item.nodeid]
            if not warmup.claim(self.warm.claims, index):
                self.warm.wait_for(index)  # a warm-up process is compiling its kernels; they will be cached

    def _warmable(self, items):
        """Tests that will run here and compile kernels as they go (see grader.warmup)."""
        return warmup.order([it for it in items if not self.available[tiers.of(it)]], tiers.of)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        if call.excinfo is not None and not call.excinfo.errisinstance(pytest.skip.Exception):
            report.grader_message = messages.describe(call.excinfo)
            shown = next((link.worker_traceback for link in messages.chain(call.excinfo.value)
                          if getattr(link, "worker_traceback", "")), "")
            if shown:  # the graded code's own traceback, from the worker (make grade TEST=... shows it)
                report.sections.append(("traceback in the graded code (the worker)", shown))
            if self.progress and GPU_FAULT.search(str(call.excinfo.value)):
                kernel = remote.last_kernel() or "a Triton kernel"
                self.gpu_fault = report.grader_message = (
                    f"the GPU reported a memory fault in `{kernel}` (the last kernel launched): usually a store or "
                    f"load without a mask; the remaining tests run in a fresh process ({report.grader_message})")
        return report

    def pytest_runtest_logstart(self, nodeid, location):
        usage.reset()
        remote.reset()  # the previous test's objects in the worker
        if self.progress:
            self.progress.write(test=nodeid, when="setup")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item):
        if self.progress:
            self.progress.write(test=item.nodeid, when="call")

    def pytest_runtest_logfinish(self, nodeid, location):
        if self.warm is not None:
            self.warm.poll()  # note the warm-up processes that have ended (for their times)
        if nodeid in self.claimed:
            warmup.mark_done(self.config.getoption("warm_shard"), self.warm_queue[nodeid])
        row = self.results.get(nodeid)
        if row is not None:
            row.update(usage.snapshot())
            if self.progress:
                self.progress.write(row=dict(id=nodeid, **row))
        if self.gpu_fault and self.progress:  # this process can no longer use the GPU
            sys.stdout.flush()
            os._exit(EXIT_GPU_FAULT)

    def pytest_runtest_logreport(self, report):
        row = self.results.setdefault(report.nodeid, {"outcome": "passed", "message": "", "duration": 0.0})
        row["duration"] += report.duration
        if report.skipped and report.when in ("setup", "call"):
            row["outcome"] = "skipped"
            row["message"] = report.longrepr[2].removeprefix("Skipped: ") if isinstance(report.longrepr, tuple) else ""
        elif report.failed:
            row["outcome"] = "failed"
            row["message"] = row["message"] or getattr(report, "grader_message", "") or "failed"
        for key, value in report.user_properties:
            row.setdefault("metrics", {})[key] = value

    def pytest_collection_finish(self, session):
        if self.config.getoption("warm_shard") is None and not self.config.getoption("only"):
            warmed = self._warmable(session.items)
            count = warmup.shard_count(len(warmed))
            phase = self.config.getoption("phase")
            if count and phase is not None and warmup.warmed_before(int(phase)):
                count = 0  # this exact code was warmed on this machine: its kernels are in the cache
            if count:
                reporter = self.config.pluginmanager.get_plugin("terminalreporter")
                if reporter:
                    reporter.write_line(f"warming Triton's kernel cache: {len(warmed)} tests in {count} processes, "
                                        "grading alongside ...")
                self.warm = warmup.Background(list(self.config.invocation_params.args), count,
                                              str(self.config.rootpath))
                self.warm_queue = {item.nodeid: i for i, item in enumerate(warmed)}
        for item in session.items:
            self.results.setdefault(item.nodeid, {"outcome": "passed", "message": "", "duration": 0.0})
            self.results[item.nodeid].update(
                name=item.name.removeprefix("test_"), tier=tiers.of(item), points=_points(item))
        if self.progress:
            items = [dict(id=item.nodeid, **{k: self.results[item.nodeid][k] for k in ("name", "tier", "points")},
                          skip=self.available[tiers.of(item)]) for item in session.items]
            self.progress.write(header=self.header(), items=items)

    def pytest_sessionfinish(self, session, exitstatus):
        if self.warm is not None:
            seconds = self.warm.finish()
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            if reporter:
                reporter.ensure_newline()
                reporter.write_line(f"warm-up processes took {seconds[0]:.0f} s to {seconds[-1]:.0f} s "
                                    f"(median {seconds[len(seconds) // 2]:.0f} s)")
            phase = self.config.getoption("phase")
            if phase is not None and exitstatus != pytest.ExitCode.INTERRUPTED:
                warmup.mark_warmed(int(phase))
        if self.progress:
            self.progress.write(end=int(exitstatus))

    def pytest_terminal_summary(self, terminalreporter):
        if self.progress:
            return  # the supervising process prints the table and writes the report
        summary = self.summary()
        for line in messages.render(summary):
            terminalreporter.write_line(line)
        path = self.config.getoption("report")
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(summary, indent=1) + "\n")
            terminalreporter.write_line(f"Report: {path}")

    def header(self) -> dict:
        seed, kind = base_seed()
        return {
            "phase": self.config.getoption("phase"),
            "impl": impl.label(),
            "seed": seed if kind == "public" else "secret",
            "tiers": {name: ("available" if reason is None else f"not run: {reason}")
                      for name, reason in self.available.items()},
            "environment": tiers.environment(),
            "hints": hints.record(self.config.getoption("phase"), impl.label()),  # `make hint`, per TODO id
        }

    def summary(self) -> dict:
        rows = [dict(id=nodeid, **row) for nodeid, row in self.results.items() if "points" in row]
        return scoring.summarize(self.header(), rows, time.time() - self.started)
