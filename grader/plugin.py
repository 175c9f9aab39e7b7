"""The pytest plugin behind `make grade`: tiers, points, a readable table, a JSON report.

Loaded with `-p grader.plugin` by `python -m grader grade`. Test modules in grader/phases mark
each test with `@pytest.mark.points(n)` and, when it needs more than the correctness tier,
`@pytest.mark.tier("compile" | "gpu" | "throughput")`.
"""
from grader import runtime

runtime.configure()  # before anything imports a kernel module

import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from grader import impl, messages, tiers, warmup  # noqa: E402

PUBLIC_SEED = 0


def pytest_addoption(parser):
    group = parser.getgroup("grader")
    group.addoption("--phase", type=int, default=None, help="phase being graded (for the report)")
    group.addoption("--report", default=None, help="where to write the JSON report")
    group.addoption("--warm-shard", default=None, help="internal: i/K, fill the kernel cache (see grader.warmup)")


def pytest_configure(config):
    config.addinivalue_line("markers", "points(n): points this test is worth")
    config.addinivalue_line("markers", "tier(name): compile, gpu or throughput (default: correctness)")
    config.pluginmanager.register(GradingSession(config), "grading-session")


def base_seed() -> tuple[int, str]:
    secret = os.environ.get("FA_GRADER_SEED")
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
    """The graded phase's package (exercises.phaseN or solutions.phaseN)."""
    return impl.load(request.module.PHASE)


def _points(item) -> float:
    marker = item.get_closest_marker("points")
    return float(marker.args[0]) if marker else 1.0


class GradingSession:
    def __init__(self, config):
        self.config = config
        self.available = tiers.detect()
        self.results: dict[str, dict] = {}
        self.started = time.time()

    def pytest_collection_modifyitems(self, config, items):
        for item in items:
            tier = tiers.of(item)
            if self.available[tier]:
                item.add_marker(pytest.mark.skip(reason=f"needs the {tier} tier: {self.available[tier]}"))
        shard = warmup.parse_shard(config.getoption("warm_shard"))
        if shard:  # a warm-up process: keep every K-th test that compiles kernels, drop the rest
            index, count = shard
            keep = set(self._warmable(items)[index::count])
            config.hook.pytest_deselected(items=[it for it in items if it not in keep])
            items[:] = [it for it in items if it in keep]

    def _warmable(self, items):
        """Tests that will run here and compile kernels as they go (see grader.warmup)."""
        return [it for it in items if tiers.of(it) not in warmup.NOT_WARMED and not self.available[tiers.of(it)]]

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        if call.excinfo is not None and not call.excinfo.errisinstance(pytest.skip.Exception):
            report.grader_message = messages.describe(call.excinfo)
        return report

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
        if self.config.getoption("warm_shard") is None:
            warmed = self._warmable(session.items)
            count = warmup.shard_count(len(warmed))
            if count:
                reporter = self.config.pluginmanager.get_plugin("terminalreporter")
                if reporter:
                    reporter.write_line(f"warming Triton's kernel cache: {len(warmed)} tests in {count} processes ...")
                seconds = warmup.run_shards(list(self.config.invocation_params.args), count,
                                            str(self.config.rootpath))
                if reporter:
                    reporter.write_line(f"kernel cache warm after {seconds:.0f} s; grading")
        for item in session.items:
            self.results.setdefault(item.nodeid, {"outcome": "passed", "message": "", "duration": 0.0})
            self.results[item.nodeid].update(
                name=item.name.removeprefix("test_"), tier=tiers.of(item), points=_points(item))

    def pytest_terminal_summary(self, terminalreporter):
        summary = self.summary()
        for line in messages.render(summary):
            terminalreporter.write_line(line)
        path = self.config.getoption("report")
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(summary, indent=1) + "\n")
            terminalreporter.write_line(f"Report: {path}")

    def summary(self) -> dict:
        seed, kind = base_seed()
        rows = [dict(id=nodeid, **row) for nodeid, row in self.results.items() if "points" in row]
        ran = [r for r in rows if r["outcome"] != "skipped"]
        return {
            "phase": self.config.getoption("phase"),
            "impl": impl.label(),
            "seed": seed if kind == "public" else "secret",
            "tiers": {name: ("available" if reason is None else f"not run: {reason}")
                      for name, reason in self.available.items()},
            "environment": tiers.environment(),
            "score": sum(r["points"] for r in ran if r["outcome"] == "passed"),
            "max_score_run": sum(r["points"] for r in ran),
            "points_not_run": sum(r["points"] for r in rows if r["outcome"] == "skipped"),
            "seconds": round(time.time() - self.started, 1),
            "tests": rows,
        }
