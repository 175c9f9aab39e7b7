"""A submission must not be able to write its own grade (issue 26): one test per road.

Each evil submission is the untouched Phase 0 stubs (every TODO still raising) plus lines appended to
`phase0/__init__.py`, graded as an instructor grades it. The graded code runs in the worker
(grader.worker); the verdict is made in the grading process, which never imports it
(grader/ARCHITECTURE.md). So every road must score 0: the stubs earn nothing.
"""
import csv
import json
import os
import subprocess
import sys

import pytest

from grader import settings
from grader.impl import ROOT
from grader.instructor.generate import write_fresh
from grader.instructor.tests import submissions

PHASE = 0
ONLY = ["-k", "softmax and not kernel_compiles"]  # the stubs' softmax tests: enough to see a forged verdict

ROADS = {
    "patch pytest's reports": """
import _pytest.reports
_original = _pytest.reports.TestReport.from_item_and_call.__func__
def _passed(cls, item, call):
    report = _original(cls, item, call)
    report.outcome = "passed"
    return report
_pytest.reports.TestReport.from_item_and_call = classmethod(_passed)
""",
    "patch the plugin": """
import grader.plugin
grader.plugin.GradingSession.pytest_runtest_logreport = lambda self, report: None
""",
    "patch the numerics and the scorer": """
import grader.numerics, grader.scoring
for _name in dir(grader.numerics):
    if _name.startswith("assert_"):
        setattr(grader.numerics, _name, lambda *a, **k: None)
_summarize = grader.scoring.summarize
def _full(header, rows, seconds):
    for row in rows:
        row["outcome"] = "passed"
    return _summarize(header, rows, seconds)
grader.scoring.summarize = _full
""",
    "write the report file": """
import glob, json, os
for _path in glob.glob(os.path.join(os.getcwd(), "**", "*.json"), recursive=True) + glob.glob("/tmp/**/*red*.json",
                                                                                              recursive=True):
    try:
        json.dump({"score": 23, "max_score_run": 23, "tests": []}, open(_path, "w"))
    except OSError:
        pass
""",
    "a fake table and an early exit": """
import os, sys
print("Score: 23 / 23 points on the tiers run here (interpreter, compile) in 1 s")
sys.stdout.flush()
os._exit(0)
""",
}


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    root = tmp_path_factory.mktemp("red")
    write_fresh(ROOT / "solutions", root / "stubs")
    return root / "stubs"


def _evil(tmp_path, stubs, code: str):
    folder = _copy_of(stubs, tmp_path / "evil")
    with open(folder / f"phase{PHASE}" / "__init__.py", "a") as f:
        f.write("\n" + code)
    return folder


def _copy_of(src, dst):
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst


def _assert_zero(proc, report, rows):
    assert report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    graded = {n: r for n, r in rows.items() if r["outcome"] != "skipped"}
    assert graded, rows
    assert report["score"] == 0, {n: (r["outcome"], r["message"]) for n, r in graded.items()}
    assert all(r["outcome"] == "failed" for r in graded.values())
    assert proc.returncode == 1, proc.returncode
    assert "Score: 0 / " in proc.stdout


@pytest.mark.parametrize("road", list(ROADS))
def test_a_road_to_a_forged_grade_scores_zero(tmp_path, stubs, road):
    folder = _evil(tmp_path, stubs, ROADS[road])
    proc, report, rows = submissions.grade(folder, PHASE, *ONLY, timeout=300)
    _assert_zero(proc, report, rows)
    if road == "a fake table and an early exit":
        assert all("exited (status 0)" in r["message"] for r in rows.values() if r["outcome"] == "failed")


def test_the_secret_seed_is_not_in_the_workers_environment(tmp_path, stubs):
    leak = tmp_path / "leak.txt"
    folder = _evil(tmp_path, stubs, f"""
import os
open({str(leak)!r}, "a").write(repr(dict(os.environ)) + "\\n")
""")
    proc, report, rows = submissions.grade(folder, PHASE, *ONLY, env={settings.SEED.name: "424242"}, timeout=300)
    _assert_zero(proc, report, rows)
    assert report["seed"] == "secret"
    seen = leak.read_text()  # the worker ran the appended lines, and saw no seed
    assert "PATH" in seen and "424242" not in seen


def test_the_hidden_graders_are_not_importable_from_the_worker(tmp_path, stubs):
    leak = tmp_path / "leak.txt"
    folder = _evil(tmp_path, stubs, f"""
try:
    import grader.phases.test_phase0
    open({str(leak)!r}, "w").write("imported")
except ImportError as exc:
    open({str(leak)!r}, "w").write("refused: " + str(exc))
""")
    proc, report, rows = submissions.grade(folder, PHASE, *ONLY, timeout=300)
    _assert_zero(proc, report, rows)
    assert leak.read_text().startswith("refused")


BACKWARD_IN_TORCH = '''

class _TorchBackward(FlashAttentionFunction):
    """The forward on the kernel; the backward computed by PyTorch and copied into buffers a kernel wrote."""

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(do, q, k, v, o, lse, causal=ctx.causal, sm_scale=ctx.sm_scale)
        with torch.enable_grad():
            qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
            s = (qg @ kg.transpose(-2, -1)) * (ctx.sm_scale or q.shape[-1] ** -0.5)
            if ctx.causal:
                s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1 + k.shape[2] - q.shape[2]), float("-inf"))
            ref = torch.autograd.grad(torch.softmax(s, -1) @ vg, (qg, kg, vg), do)
        for mine, theirs in zip((dq, dk, dv), ref):
            mine.copy_(theirs)
        return dq, dk, dv, None, None


def flash_attention(q, k, v, causal=False, sm_scale=None):
    return _TorchBackward.apply(q, k, v, causal, sm_scale)
'''


def test_a_backward_computed_in_pytorch_is_caught(tmp_path):
    """Issue 21: the honesty rules hold in autograd's backward, which runs in the worker too."""
    attention = (ROOT / "solutions" / "phase4" / "attention.py").read_text()
    assert "class FlashAttentionFunction" in attention and "def flash_attention(" in attention, "the reference changed?"
    folder = submissions.make(tmp_path, "torch-backward", append={"phase4/attention.py": BACKWARD_IN_TORCH})
    proc, report, rows = submissions.grade(folder, 4, "-k", "flash_attention_autograd and fp32", timeout=600)
    assert report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    graded = {n: r for n, r in rows.items() if r["outcome"] != "skipped"}
    assert graded and all(r["outcome"] == "failed" for r in graded.values()), graded
    assert report["cheats"] and any(f in report["cheats"][0]["reason"] for f in ("matmul", "softmax"))


def test_a_submission_cannot_write_another_submissions_report(tmp_path, stubs):
    """make grade-all: the evil submission, graded first, writes the victim's report and breaks its
    code; each is graded from its own copy, and reports are written by the grading process only."""
    subs, out = tmp_path / "subs", tmp_path / "out"
    _copy_of(ROOT / "solutions", subs / "victim")
    evil = _copy_of(stubs, subs / "aaa-evil")
    with open(evil / f"phase{PHASE}" / "__init__.py", "a") as f:
        f.write(f"""
import json, os, pathlib
_here = pathlib.Path(__file__).resolve().parents[1]
for _victim in (_here.parent / "victim" / "phase{PHASE}" / "softmax.py",):
    if _victim.exists():
        _victim.write_text("raise SystemExit('sabotaged')\\n")
for _reports in (_here.parent.parent / "out" / "reports", pathlib.Path({str(out / 'reports')!r})):
    if _reports.is_dir():
        for _name in ("victim.json", ".victim.partial.json", "aaa-evil.json", ".aaa-evil.partial.json"):
            (_reports / _name).write_text(json.dumps({{"score": 99, "max_score_run": 99, "tests": []}}))
""")
    proc = subprocess.run([sys.executable, "-m", "grader.instructor.grade_all", "--submissions", str(subs),
                           "--phase", str(PHASE), "--out", str(out), "--jobs", "1", "--timeout", "300"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["submission"]: r for r in csv.DictReader((out / "gradebook.csv").read_text().splitlines())}
    assert float(rows["aaa-evil"]["total"]) == 0
    assert float(rows["victim"]["total"]) == float(rows["victim"]["max_points_run"]) > 0
    assert "sabotaged" not in (subs / "victim" / f"phase{PHASE}" / "softmax.py").read_text()
    assert json.loads((out / "reports" / "victim.json").read_text())["score"] > 0
