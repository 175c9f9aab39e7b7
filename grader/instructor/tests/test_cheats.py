"""A student who computes the answer outside Triton does not get the points, whichever road they take.

Each road is a realistic cheating submission (the reference solution with one change), graded as an
instructor grades it; the call side (forbidden torch functions, wherever they are called from) and
the outcome side (the result must be written by a kernel during the call; a timed call must compute
anew; large magnitudes) each close some of them. A function caught cheating scores 0 in every test
of the phase that grades it, with the reason on the summary line.
"""
import subprocess
import sys
import textwrap

import pytest
import torch

from grader.honesty import HonestyError, graded_call
from grader.impl import ROOT
from grader.instructor.tests import submissions

SOFTMAX_LAUNCH = """    softmax_kernel[(rows.shape[0],)](rows, y, n_cols, rows.stride(0), y.stride(0),
                                     BLOCK=block, ONE_BLOCK=n_cols <= block, num_warps=num_warps)
"""


def _softmax_returning(expression: str) -> dict:
    """phase0/softmax.py that launches its kernel as a token, then returns `expression` instead."""
    return {"phase0/softmax.py": [(SOFTMAX_LAUNCH, SOFTMAX_LAUNCH + f"    return ({expression}).to(x.dtype)\n")]}


def _assert_function_zeroed(proc, report, rows, function, prefix):
    assert report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    graded = {n: r for n, r in rows.items() if n.startswith(prefix) and r["outcome"] != "skipped"}
    assert graded and all(r["outcome"] == "failed" for r in graded.values()), \
        {n: r["outcome"] for n, r in graded.items()}
    assert [c["function"] for c in report["cheats"]] == [function], report["cheats"]
    assert f"Caught computing outside Triton: {function} scores 0" in proc.stdout


# ---------------------------------------------------------------- the call side
SOFTMAX = torch.randn(4, 6)
OTHER_NAMESPACES = {
    "torch.special.softmax": lambda x: torch.special.softmax(x, -1),
    "torch.special.log_softmax": lambda x: torch.special.log_softmax(x, -1).exp(),
    "torch.special.logsumexp": lambda x: (x - torch.special.logsumexp(x, -1, keepdim=True)).exp(),
    "torch.logsumexp": lambda x: (x - torch.logsumexp(x, -1, keepdim=True)).exp(),
    "Tensor.logsumexp": lambda x: (x - x.logsumexp(-1, keepdim=True)).exp(),
    "torch.cumsum as a row sum": lambda x: x.exp() / x.exp().cumsum(-1)[..., -1:],
    "F.gumbel_softmax": lambda x: torch.nn.functional.gumbel_softmax(x, tau=1.0),
    "torch.linalg.matmul": lambda x: torch.linalg.matmul(x, x.T),
    "torch.linalg.vecdot": lambda x: torch.linalg.vecdot(x[:, None], x[None]),
    "torch.linalg.multi_dot": lambda x: torch.linalg.multi_dot([x, x.T]),
    "torch.dot": lambda x: torch.dot(x[0], x[1]),
    "torch.mv": lambda x: torch.mv(x, x[0]),
    "torch.outer": lambda x: torch.outer(x[0], x[1]),
    "F.bilinear": lambda x: torch.nn.functional.bilinear(x, x, torch.ones(2, 6, 6)),
}


@pytest.mark.parametrize("name", list(OTHER_NAMESPACES))
def test_softmax_logsumexp_and_matmul_are_forbidden_in_every_namespace(name):
    with pytest.raises(HonestyError, match="this exercise must compute it in Triton") as info:
        graded_call(OTHER_NAMESPACES[name], SOFTMAX.clone(), what="f", triton=False)
    assert info.value.cheat


def test_a_forbidden_call_is_caught_even_when_the_student_catches_it():
    def sly(x):
        try:
            return torch.softmax(x, -1)
        except Exception:  # the grader's exception, swallowed
            return x.exp() / x.exp().sum(-1, keepdim=True)
    with pytest.raises(HonestyError, match="softmax"):
        graded_call(sly, SOFTMAX.clone(), what="f", triton=False)


def test_a_caught_cheat_scores_the_whole_function_zero(tmp_path):
    """Caught once (a torch matmul after a real launch), flash_attention_forward loses every test of
    the phase, its compile-tier points included; merge_partials keeps its own points."""
    cheat = ("    return o, lse",
             "    s = (q.float() @ k.float().transpose(-2, -1)) * sm_scale\n"
             "    return o, lse")
    folder = submissions.make(tmp_path, "matmul", edits={"phase3/forward.py": [cheat]})
    proc, report, rows = submissions.grade(folder, 3, "-k", "fp32-N1 or compiles or merge_partials")
    _assert_function_zeroed(proc, report, rows, "flash_attention_forward", "forward")
    assert "0 points: flash_attention_forward was caught computing outside Triton" in \
        rows["forward_kernel_compiles"]["message"]
    assert "called torch's matmul" in report["cheats"][0]["reason"]
    assert rows["merge_partials"]["outcome"] == rows["merge_partials_with_an_empty_chunk"]["outcome"] == "passed"


# ---------------------------------------------------------------- user code in Triton's launcher
HOOK_SOFTMAX = '''

def _answer(y, x):
    y.copy_(torch.softmax(x.float(), dim=-1).to(y.dtype))  # the work, hidden in a hook


def _pre_hook(nargs):
    _answer(nargs["y_ptr"], nargs["x_ptr"])


def _prune(configs, named_args, **kwargs):
    _answer(named_args["y_ptr"], named_args["x_ptr"])
    return configs[:1]


HOOKS = {"pre_hook": dict(configs=[triton.Config({}, pre_hook=_pre_hook)]),
         "prune_configs_by": dict(configs=[triton.Config({}), triton.Config({}, num_warps=8)],
                                  prune_configs_by={"early_config_prune": _prune})}


@triton.autotune(key=[], **HOOKS["{hook}"])
@triton.jit
def _token_kernel(y_ptr, x_ptr, n_cols, BLOCK: tl.constexpr):
    # rewrites y with itself: a kernel "writes" the result
    cols = tl.arange(0, BLOCK)
    row = y_ptr + tl.program_id(0).to(tl.int64) * n_cols
    tl.store(row + cols, tl.load(row + cols, mask=cols < n_cols), mask=cols < n_cols)


def softmax(x):
    rows, y = as_rows(x)
    if rows.numel():
        _token_kernel[(rows.shape[0],)](y, rows, rows.shape[1], BLOCK=triton.next_power_of_2(rows.shape[1]))
    return y.reshape(x.shape)
'''


@pytest.mark.parametrize("hook", ["pre_hook", "prune_configs_by"])
def test_work_hidden_in_an_autotune_hook_is_caught(tmp_path, hook):
    folder = submissions.make(tmp_path, hook, append={"phase0/softmax.py": HOOK_SOFTMAX.replace("{hook}", hook)})
    proc, report, rows = submissions.grade(folder, 0, "-k", "softmax and (1x1 or 3x7 or 5x128)")
    _assert_function_zeroed(proc, report, rows, "softmax", "softmax")
    assert "called torch's softmax (in code that Triton's launcher calls back" in report["cheats"][0]["reason"]


# ---------------------------------------------------------------- the outcome side
@pytest.mark.parametrize("road, expression", [
    ("numpy", "torch.from_numpy((lambda a: (lambda e: e / e.sum(-1, keepdims=True))(__import__('numpy').exp("
              "a - a.max(-1, keepdims=True))))(x.float().numpy()))"),
    ("torch-exp-sum", "(lambda e: e / e.sum(-1, keepdim=True))((x.float() - x.float().amax(-1, keepdim=True)).exp())"),
])
def test_a_result_computed_beside_a_token_launch_is_caught(tmp_path, road, expression):
    """The kernel runs (and writes y), but the function returns what NumPy or PyTorch computed."""
    folder = submissions.make(tmp_path, road, edits=_softmax_returning(expression))
    proc, report, rows = submissions.grade(folder, 0, "-k", "softmax and (1x1 or 3x7 or 5x128 or compiles)")
    _assert_function_zeroed(proc, report, rows, "softmax", "softmax")
    assert "no Triton kernel wrote during this call" in rows["softmax[fp32-3x7]"]["message"]
    assert "0 points: softmax was caught" in rows["softmax_kernel_compiles"]["message"]


TIMED_SCRIPT = """
import os, sys
os.environ["TRITON_INTERPRET"] = "1"
import torch, triton, triton.language as tl
from grader import bounds
from grader.honesty import HonestyError, timed
if sys.argv[1] == "interpreter":
    bounds.install()  # as in grading: the interpreter sees which tensors kernels store to

@triton.jit
def double_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tl.store(y_ptr + i, 2 * tl.load(x_ptr + i, mask=i < n), mask=i < n)

@triton.jit
def touch_kernel(y_ptr):
    tl.load(y_ptr)  # reads the cached result: on a GPU it counts as a kernel argument

CACHE = {}
def honest(x):
    y = torch.empty_like(x)
    double_kernel[(1,)](x, y, x.numel(), BLOCK=64)
    return y
def cached(x):  # computes once, then answers by pointer
    if x.data_ptr() not in CACHE:
        CACHE[x.data_ptr()] = honest(x)
    touch_kernel[(1,)](CACHE[x.data_ptr()])
    return CACHE[x.data_ptr()]

x = torch.randn(50)
timed(lambda: honest(x), x)()
try:
    timed(lambda: cached(x), x)
except HonestyError as exc:
    assert exc.cheat, exc
    print("CAUGHT", exc)
"""


@pytest.mark.parametrize("where", ["interpreter", "gpu-like"])
def test_a_result_cached_by_pointer_fails_the_timed_call(where):
    """The throughput tier times the same call on the same tensors: a result kept by pointer must not
    pass for a measurement. "gpu-like" leaves out the interpreter's store tracking, as on a GPU."""
    proc = subprocess.run([sys.executable, "-c", TIMED_SCRIPT, where], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CAUGHT" in proc.stdout and "did not compute a new result after its inputs changed in place" in proc.stdout


OUTCOME_SCRIPT = """
import os, sys
os.environ["TRITON_INTERPRET"] = "1"
import torch, triton, triton.language as tl
from grader import bounds
from grader.honesty import HonestyError, graded_call
if sys.argv[1] == "interpreter":
    bounds.install()

@triton.jit
def exp_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tl.store(y_ptr + i, tl.exp(tl.load(x_ptr + i, mask=i < n)), mask=i < n)

def kernel_exp(x, dtype=torch.float32):
    y = torch.empty(x.shape, dtype=dtype)
    exp_kernel[(1,)](x, y, x.numel(), BLOCK=64)
    return y

def converted(x):  # honest: a float32 buffer from the kernel, returned in x's dtype
    return kernel_exp(x.float()).to(x.dtype).contiguous()

def overwritten(x):  # the kernel writes y, then the host replaces its values
    y = kernel_exp(x)
    y.copy_(x.exp())
    return y

def sliced_in(x):  # the kernel writes y, then the host writes part of it
    y = kernel_exp(x)
    y[:3] = 0.0
    return y

x = torch.randn(20)
assert torch.allclose(graded_call(converted, x.half()).float(), x.half().float().exp(), rtol=1e-3)
for cheat in (overwritten, sliced_in):
    try:
        graded_call(cheat, x)
        print("MISSED", cheat.__name__)
    except HonestyError as exc:
        assert exc.cheat and "no Triton kernel wrote" in str(exc), exc
print("DONE")
"""


@pytest.mark.parametrize("where", ["interpreter", "gpu-like"])
def test_a_kernel_result_may_be_converted_but_not_overwritten_on_the_host(where):
    """Moving or converting a kernel's result (`.to(dtype)`, `.contiguous()`) is honest; values the
    host writes into it afterwards (`y.copy_(...)`, `y[:3] = ...`) are not the kernel's."""
    proc = subprocess.run([sys.executable, "-c", OUTCOME_SCRIPT, where], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "DONE" in proc.stdout, proc.stdout + proc.stderr
    assert "MISSED" not in proc.stdout, proc.stdout


# ---------------------------------------------------------------- numerically fragile code
NAIVE_MERGE = ("    lse = m + torch.log(torch.exp(lse_a - m) + torch.exp(lse_b - m))",
               "    lse = torch.log(torch.exp(lse_a) + torch.exp(lse_b))")
BACKWARD_RATIO = [("pT = tl.math.exp2(sT * qk_scale - lse2[None, :])",
                   "pT = tl.math.exp2(sT * qk_scale) / tl.math.exp2(lse2[None, :])"),
                  ("p = tl.math.exp2(s * qk_scale - lse2[:, None])",
                   "p = tl.math.exp2(s * qk_scale) / tl.math.exp2(lse2[:, None])")]


def test_a_merge_that_overflows_for_large_lse_fails(tmp_path):
    folder = submissions.make(tmp_path, "naive-merge", edits={"phase3/merge.py": [NAIVE_MERGE]})
    proc, report, rows = submissions.grade(folder, 3, "-k", "merge_partials")
    assert report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert rows["merge_partials"]["outcome"] == "failed"
    assert "lse near +1000" in rows["merge_partials"]["message"]


NO_RUNNING_MAX = [("m_ij = tl.maximum(m_i, tl.max(qk, 1))\n", "m_ij = tl.zeros_like(m_i)\n"),
                  ("m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)\n", "m_ij = tl.zeros_like(m_i)\n")]


def test_a_forward_without_the_running_max_fails(tmp_path):
    """exp of the raw scores is exact for small ones and overflows float32 past 88."""
    folder = submissions.make(tmp_path, "no-running-max", edits={"phase3/forward.py": NO_RUNNING_MAX})
    proc, report, rows = submissions.grade(folder, 3, "-k", "forward and (large or fp32-N1 or Nq17)")
    assert report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert rows["forward[fp32-Nq17-Nk33-D16]"]["outcome"] == "passed"  # fine at small magnitudes
    assert rows["forward[fp32-causal-Nq40-Nk70-D32-large-logits-scale30]"]["outcome"] == "failed"


def test_a_backward_that_overflows_for_large_scores_fails(tmp_path):
    folder = submissions.make(tmp_path, "ratio-backward", edits={"phase4/backward.py": BACKWARD_RATIO})
    proc, report, rows = submissions.grade(folder, 4, "-k", "backward and (large or fp32-N16)")
    assert report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert rows["backward[fp32-N16-D16]"]["outcome"] == "passed"  # fine at small magnitudes
    assert rows["backward[fp32-causal-Nq30-Nk41-D32-large-logits-scale30]"]["outcome"] == "failed"


# ---------------------------------------------------------------- what autograd keeps
def test_p_hidden_in_a_container_of_the_autograd_context_is_found(tmp_path):
    keep_p = ("        ctx.save_for_backward(q, k, v, o, lse)",
              "        ctx.save_for_backward(q, k, v, o, lse)\n"
              "        ctx.kept = {'p': [torch.zeros(*q.shape[:3], k.shape[2], device=q.device)]}")
    folder = submissions.make(tmp_path, "p-in-a-dict", edits={"phase4/attention.py": [keep_p]})
    proc, report, rows = submissions.grade(folder, 4, "-k", "saves_no_n_by_n")
    assert report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    row = rows["saves_no_n_by_n_tensor"]
    assert row["outcome"] == "failed" and "shape (1, 2, 48, 40)" in row["message"], row


def test_the_reference_passes_every_check_above():
    """The rules cost an honest solution nothing: graded_call on plain kernels is unaffected."""
    code = textwrap.dedent("""
        import os; os.environ["TRITON_INTERPRET"] = "1"
        import torch
        from grader import bounds; bounds.install()
        from grader.honesty import graded_call, timed
        from solutions.phase0 import softmax
        x = torch.randn(5, 37)
        y = graded_call(softmax, x)
        assert torch.allclose(y, torch.softmax(x, -1), atol=1e-6)
        timed(lambda: softmax(x), x)()
        print("OK")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "OK" in proc.stdout, proc.stdout + proc.stderr
