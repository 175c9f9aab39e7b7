"""The grader's own rules: error messages, honesty checks and the command line."""
import json
import os
import subprocess
import sys

import pytest
import torch

from grader import messages, numerics, settings
from grader.honesty import HonestyError, graded_call
from grader.impl import ROOT


def test_assert_close_accepts_pytorch_level_error_and_explains_a_mismatch():
    ref = torch.randn(4, 8, dtype=torch.float64)
    baseline = ref.to(torch.float16)
    numerics.assert_close("o", ref.to(torch.float16), ref, baseline)
    wrong = baseline.clone()
    wrong[2, 5] += 0.5
    with pytest.raises(AssertionError) as info:
        numerics.assert_close("o", wrong, ref, baseline)
    text = str(info.value)
    assert "o: max |error|" in text and "at [2, 5]" in text and "allowed" in text and "float16" in text


def test_assert_close_reports_nan_elements():
    ref = torch.randn(3, 3, dtype=torch.float64)
    got = ref.float().clone()
    got[1, 2] = float("nan")  # a plain NaN, not the grader's poison (see test_feedback.py)
    with pytest.raises(AssertionError, match=r"1 of 9 values are NaN or inf: 1 NaN computed .*first at \[1, 2\]"):
        numerics.assert_close("o", got, ref, ref.float())


def test_assert_close_checks_shape():
    with pytest.raises(AssertionError, match="shape"):
        numerics.assert_close("o", torch.zeros(2, 3), torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, 2))


def test_graded_call_forbids_torch_softmax_and_matmul():
    x = torch.randn(4, 4)
    with pytest.raises(HonestyError, match="softmax"):
        graded_call(lambda t: torch.softmax(t, -1), x, what="f", triton=False)
    with pytest.raises(HonestyError, match="matmul"):
        graded_call(lambda t: t @ t, x, what="f", triton=False)
    with pytest.raises(HonestyError, match="scaled_dot_product_attention"):
        graded_call(lambda t: torch.nn.functional.scaled_dot_product_attention(t, t, t), x[None], what="f",
                    forbid=("sdpa",), triton=False)
    assert graded_call(lambda t: t @ t, x, forbid=("sdpa",), triton=False).shape == (4, 4)


def test_graded_call_requires_a_triton_launch_and_unchanged_inputs():
    x = torch.randn(8)
    with pytest.raises(HonestyError, match="launched no Triton kernel"):
        graded_call(lambda t: t * 2, x, what="f")
    with pytest.raises(HonestyError, match="modified its input"):
        graded_call(lambda t: t.mul_(2), x, what="f", triton=False)


def test_graded_call_poisons_fresh_outputs():
    out = graded_call(lambda t: torch.empty_like(t), torch.randn(5), triton=False)
    assert torch.isnan(out).all()


def test_stub_failures_read_as_todo():
    try:
        raise NotImplementedError("phase 3: stream K and V blocks")
    except NotImplementedError:
        info = pytest.ExceptionInfo.from_current()
    assert messages.describe(info) == "TODO phase 3: stream K and V blocks"
    try:
        raise RuntimeError("interpreter") from AssertionError("AssertionError('phase 2: rescale acc (by alpha)')")
    except RuntimeError:
        info = pytest.ExceptionInfo.from_current()
    assert messages.describe(info) == "TODO phase 2: rescale acc (by alpha)"
    try:  # a stub in a @triton.jit helper: one more InterpreterError(...) around it per call level
        raise RuntimeError("InterpreterError(\"AssertionError('phase 6: the mask of (seed, row, col)')\")")
    except RuntimeError:
        info = pytest.ExceptionInfo.from_current()
    assert messages.describe(info) == "TODO phase 6: the mask of (seed, row, col)"


def _grade(*args):
    return subprocess.run([sys.executable, "-m", "grader", "grade", *args], cwd=ROOT, capture_output=True, text=True)


def test_unknown_phase_is_one_line():
    proc = _grade("--phase", "99")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "choose PHASE from 0" in proc.stderr


def test_make_grade_without_phase_is_one_line():
    proc = subprocess.run(["make", "-s", "grade"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "PHASE must be one of: 0" in proc.stderr


def test_gpu_warm_up_shards_run_and_leave_the_grade_unchanged():
    """The kernel-cache warm-up (on by default on a GPU) forced on here: same score, plus its progress line."""
    proc = subprocess.run([sys.executable, "-m", "grader", "grade", "--phase", "0", "--impl", "solutions",
                           "--report", str(ROOT / "reports" / "warmup-test.json")],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, settings.WARM_SHARDS.name: "2"})
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "warming Triton's kernel cache" in proc.stdout
    report = json.loads((ROOT / "reports" / "warmup-test.json").read_text())
    assert report["score"] == report["max_score_run"] > 0
