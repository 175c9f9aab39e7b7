"""The checks that several phases' graders run on the same contract, kept once.

Phase 3's contract (`flash_attention_forward -> (o, lse)`) is graded again by Phase 5, Phase 4's
(`flash_attention_backward`, the autograd `flash_attention`) by Phases 5 to 7: a check lives here,
and each grader imports it, so that a fix reaches every phase that grades the contract.
"""
import pytest
import torch

from grader import bench, diagnosis, numerics
from grader.honesty import graded_call, tensors_in
from grader.inputs import NEGATIVE_LOGITS_SCALE, assert_accepts, assert_refuses, qkv, qkv_negative_logits, randn


gpu = pytest.mark.tier("gpu")


# ---------------------------------------------------------------- the forward: (o, lse)
def lse_baseline(q, k, causal=False, sm_scale=None):
    """logsumexp of the scaled scores, in float32, from the low-precision q and k."""
    return numerics.scores_logsumexp(q.float(), k.float(), causal, sm_scale)


def check_lse(lse, q, k, causal, sm_scale, ref_lse):
    B, H, Nq = q.shape[:3]
    if lse.dtype != torch.float32:
        raise AssertionError(f"lse has dtype {lse.dtype}, expected float32")
    if tuple(lse.shape) != (B, H, Nq):
        raise AssertionError(f"lse has shape {tuple(lse.shape)}, expected (B, H, Nq) = {(B, H, Nq)}")
    numerics.assert_close("lse", lse, ref_lse, lse_baseline(q, k, causal, sm_scale), dtype=q.dtype)


def _probe(api):
    def forward(q, k, v, causal, sm_scale):
        return graded_call(api.flash_attention_forward, q, k, v, causal=causal, sm_scale=sm_scale)[0]
    return forward


def check_forward(api, q, k, v, causal=False, sm_scale=None, ref_kv=None):
    """Run the graded forward and compare (o, lse) with float64. `ref_kv` replaces k, v for the
    reference and baseline (used when k, v carry poisoned rows that must never be read)."""
    out = graded_call(api.flash_attention_forward, q, k, v, causal=causal, sm_scale=sm_scale)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise AssertionError(f"flash_attention_forward must return (o, lse), got {type(out).__name__}")
    o, lse = out
    rk, rv = ref_kv or (k, v)
    # A wrong o gets one more line: the condition its error follows, from probes (grader/diagnosis.py).
    with diagnosis.explained("flash_attention_forward", _probe(api), causal=causal, dtype=q.dtype, device=q.device):
        ref_lse = numerics.assert_attention_output(o, q, rk, rv, causal, sm_scale)
    check_lse(lse, q, rk, causal, sm_scale, ref_lse)
    return o, lse


def poisoned_tail(x, n_valid):
    """x with rows n_valid.. of its N dimension set to NaN (a clone)."""
    x = x.clone()
    x[:, :, n_valid:] = float("nan")
    return x


def blame_nan_on_reads(poisoned, clean, where: str, blame: str):
    """Run `poisoned` (NaN in memory the kernel must not read); a NaN there is blamed on reading that
    memory only if `clean` (the same call with finite values there) passes. Otherwise the NaN (a
    fully masked row, an off-by-one mask) is the kernel's own, and its message says so."""
    try:
        poisoned()
    except AssertionError as exc:
        if "NaN" not in str(exc):
            raise
        try:
            clean()
        except AssertionError as own:
            raise AssertionError(f"{own} (also with finite {where}: not from reading them)") from None
        raise AssertionError(blame) from None


# Phase 3's cases of the forward, graded again by Phase 5.
FORWARD_CASES = [
    # B, H, Nq, Nk, D, causal, dtype, sm_scale, layout
    pytest.param(1, 1, 1, 1, 16, False, "fp32", None, "bhnd", id="fp32-N1-D16"),
    pytest.param(1, 2, 1, 1, 32, True, "fp16", None, "bhnd", id="fp16-causal-N1-D32"),
    pytest.param(2, 3, 17, 33, 16, False, "fp32", None, "bhnd", id="fp32-Nq17-Nk33-D16"),
    pytest.param(1, 2, 45, 20, 32, True, "fp32", None, "bhnd", id="fp32-causal-Nq45-Nk20-D32"),
    pytest.param(1, 2, 20, 45, 64, True, "fp32", None, "bhnd", id="fp32-causal-Nq20-Nk45-D64"),
    pytest.param(2, 2, 64, 64, 64, True, "fp16", None, "bhnd", id="fp16-causal-N64-D64"),
    pytest.param(1, 2, 50, 50, 128, False, "fp16", None, "bhnd", id="fp16-D128-N50"),
    pytest.param(1, 1, 1, 70, 16, True, "fp16", None, "bhnd", id="fp16-causal-Nq1-Nk70-D16"),
    pytest.param(2, 2, 40, 40, 32, True, "fp16", 0.3, "bnhd", id="fp16-causal-N40-D32-scale0.3-noncontiguous"),
    pytest.param(1, 3, 23, 71, 16, False, "fp32", 1.7, "bnhd", id="fp32-Nq23-Nk71-D16-scale1.7-noncontiguous"),
    # q, k and v each with strides of their own: the launch must pass each tensor's own
    pytest.param(2, 2, 40, 70, 32, True, "fp16", None, "mixed", id="fp16-causal-Nq40-Nk70-D32-mixed-layouts"),
    # scores in the hundreds: exp overflows float32 past 88, so the running max must be subtracted
    pytest.param(1, 2, 40, 70, 32, True, "fp32", 30.0, "bhnd", id="fp32-causal-Nq40-Nk70-D32-large-logits-scale30"),
    pytest.param(2, 4, 1024, 1024, 128, True, "bf16", None, "bnhd", id="bf16-causal-N1024-D128", marks=gpu),
    pytest.param(1, 2, 4096, 4096, 64, True, "bf16", None, "bhnd", id="bf16-causal-N4096-D64", marks=gpu),
    pytest.param(1, 2, 8192, 8192, 128, False, "bf16", None, "bnhd", id="bf16-N8192-D128", marks=gpu),
    pytest.param(1, 4, 1000, 3001, 64, False, "bf16", None, "bhnd", id="bf16-Nq1000-Nk3001-D64", marks=gpu),
    pytest.param(1, 4, 3001, 1000, 64, True, "bf16", None, "bnhd", id="bf16-causal-Nq3001-Nk1000-D64", marks=gpu),
    pytest.param(1, 4, 999, 2500, 128, True, "fp16", 0.05, "bhnd", id="fp16-causal-Nq999-Nk2500-D128", marks=gpu),
    pytest.param(2, 8, 777, 777, 16, True, "bf16", None, "bnhd", id="bf16-causal-D16-N777", marks=gpu),
    pytest.param(2, 8, 2048, 2048, 32, False, "fp16", None, "bhnd", id="fp16-D32-N2048", marks=gpu),
    pytest.param(1, 2, 600, 513, 64, True, "fp32", None, "bnhd", id="fp32-causal-Nq600-Nk513-D64", marks=gpu),
]


def check_causal_never_reads_invisible_keys(api, gen, device):
    """Under the causal mask no query sees keys j >= Nq; those rows of k and v hold NaN here.

    A kernel that visits their blocks and masks the scores still multiplies NaN values of v by a
    zero probability, and NaN * 0 = NaN: only skipping the blocks keeps o finite.
    """
    Nq, Nk = 128, 384  # Nq is a multiple of every BLOCK_M in use: the last query block ends at 128
    q, k, v = qkv(1, 2, Nq, Nk, 32, torch.float16, device, gen)
    kp, vp = poisoned_tail(k, Nq), poisoned_tail(v, Nq)
    blame_nan_on_reads(lambda: check_forward(api, q, kp, vp, causal=True, ref_kv=(k[:, :, :Nq], v[:, :, :Nq])),
                        lambda: check_forward(api, q, k, v, causal=True), "keys j >= Nq",
                        "o has NaN only when keys j >= Nq, which no query may see under the causal mask, hold NaN:"
                        " the kernel loads them; a causal kernel skips their blocks instead")


def check_reads_nothing_past_nk(api, gen, device):
    """k and v are the first Nk rows of larger buffers whose further rows hold NaN."""
    Nq, Nk = 37, 45
    q, k, v = qkv(1, 2, Nq, Nk + 19, 64, torch.float16, device, gen)
    kp, vp = poisoned_tail(k, Nk)[:, :, :Nk], poisoned_tail(v, Nk)[:, :, :Nk]
    for causal in (False, True):
        blame_nan_on_reads(lambda: check_forward(api, q, kp, vp, causal=causal),
                            lambda: check_forward(api, q, k[:, :, :Nk], v[:, :, :Nk], causal=causal),
                            "keys j >= Nk", f"causal={causal}: o or lse has NaN only when the memory right after"
                            " k[:, :, :Nk] holds NaN: some load reads keys j >= Nk (mask them)")


def refuses_bad_forward_input(f, gen, device):
    """`f(q, k, v, causal=, sm_scale=)` (the forward's or the autograd function's contract) refuses
    bad input with a clear ValueError or TypeError naming the argument."""
    q, k, v = qkv(1, 2, 8, 8, 16, torch.float32, device, gen)
    assert_accepts(lambda: f(q, k, v), "float32 q, k, v of shape (1, 2, 8, 16)")
    assert_refuses(lambda: f(q[0], k, v), ValueError, "q", "q of rank 3")
    assert_refuses(lambda: f(q, k[:, :, :4], v), ValueError, "k", "k and v of different lengths")
    assert_refuses(lambda: f(q, k.half(), v), TypeError, "q", "q and k of different dtypes")
    assert_refuses(lambda: f(q, k.int(), v), TypeError, "k", "integer k")
    assert_refuses(lambda: f(q[..., :8], k[..., :8], v[..., :8]), ValueError, "D", "head dim 8")
    assert_refuses(lambda: f(q, k, v, causal="yes"), TypeError, "causal", "causal='yes'")
    assert_refuses(lambda: f(q, k, v, sm_scale="0.5"), TypeError, "sm_scale", "sm_scale='0.5'")
    assert_refuses(lambda: f(q, k, v, sm_scale=float("nan")), ValueError, "sm_scale", "sm_scale=nan")
    if device == "cuda":
        assert_refuses(lambda: f(q.cpu(), k.cpu(), v.cpu()), ValueError, "q", "CPU tensors on a GPU run")


def standard_inputs(gen, N, D, dtype=torch.bfloat16):
    """q, k, v of the standard sweep's shape (16k tokens, hidden 2048), (B, N, H, D) in memory."""
    B, H, N, D = bench.standard_shape(N, D)
    return qkv(B, H, N, N, D, dtype, "cuda", gen, "bnhd")


# ---------------------------------------------------------------- the backward: (dq, dk, dv)
# The float64 truth and PyTorch's gradients in the same low precision (grader/numerics.py).
reference_grads = numerics.reference_gradients
sdpa_grads = numerics.sdpa_gradients


def check_grads(names, got, ref, baseline, dtype):
    # The shared rule (numerics.assert_close): 2x PyTorch's own error in the same precision plus a
    # dtype floor, flash-attn's multiplier. It holds for dq too: our kernels round P and dS to the
    # input dtype before each tl.dot, exactly as SDPA's flash and efficient backends do.
    # Every tensor is checked before the first failure is reported, and the message names each wrong
    # one (numerics.assert_each_close): dq comes from one kernel, dk and dv from the other.
    numerics.assert_each_close(zip(names, got, ref, baseline), dtype=dtype)
    for name, g in zip(names, got):
        if g.dtype != dtype:
            raise AssertionError(f"{name} has dtype {g.dtype}, expected the inputs' dtype {dtype}")


def as_layout(x, layout):
    """The same values, stored (B, N, H, D) and viewed (B, H, N, D) when layout is bnhd."""
    return x.transpose(1, 2).contiguous().transpose(1, 2) if layout == "bnhd" else x.contiguous()


def upstream(o_shape, dtype, device, gen, layout):
    """dO for a backward: fresh values in `layout`, or one value broadcast (every stride 0)."""
    B, H, N, D = o_shape
    if layout == "broadcast":  # what o.sum().backward() sends: one value, every stride 0
        return randn((1, 1, 1, 1), dtype, device, gen).expand(B, H, N, D)
    return as_layout(randn(o_shape, dtype, device, gen), layout)


# Phase 4's cases of the backward, graded again by Phase 5.
BACKWARD_CASES = [
    # B, H, Nq, Nk, D, causal, dtype, sm_scale, layout of q/k/v, layout of dO
    pytest.param(1, 2, 16, 16, 16, False, "fp32", None, "bhnd", "bhnd", id="fp32-N16-D16"),
    pytest.param(1, 2, 37, 37, 32, True, "fp32", None, "bhnd", "bhnd", id="fp32-causal-N37-D32"),
    pytest.param(2, 2, 64, 64, 32, True, "fp16", None, "bhnd", "bhnd", id="fp16-causal-N64-D32"),
    pytest.param(1, 2, 40, 23, 64, True, "fp16", None, "bhnd", "bhnd", id="fp16-causal-Nq40-Nk23-D64"),
    pytest.param(2, 1, 19, 45, 16, True, "fp16", None, "bhnd", "bnhd", id="fp16-causal-Nq19-Nk45-D16"),
    pytest.param(1, 2, 23, 50, 128, False, "fp16", None, "bnhd", "bnhd", id="fp16-Nq23-Nk50-D128-noncontiguous"),
    pytest.param(1, 2, 33, 33, 64, False, "fp32", 0.3, "bnhd", "broadcast", id="fp32-N33-D64-scale0.3-dO-broadcast"),
    # scores in the hundreds: P must come from exp(s - lse), never from exp(s) / exp(lse)
    pytest.param(1, 2, 30, 41, 32, True, "fp32", 30.0, "bhnd", "bhnd",
                 id="fp32-causal-Nq30-Nk41-D32-large-logits-scale30"),
    pytest.param(2, 4, 1024, 1024, 128, True, "bf16", None, "bnhd", "bnhd", id="bf16-causal-N1024-D128", marks=gpu),
    pytest.param(1, 8, 1000, 777, 64, False, "bf16", None, "bhnd", "bhnd", id="bf16-Nq1000-Nk777-D64", marks=gpu),
    pytest.param(1, 8, 777, 1000, 64, True, "bf16", None, "bnhd", "bhnd", id="bf16-causal-Nq777-Nk1000-D64", marks=gpu),
    pytest.param(2, 4, 513, 513, 32, True, "fp16", None, "bhnd", "bnhd", id="fp16-causal-N513-D32", marks=gpu),
    pytest.param(2, 4, 300, 256, 16, False, "bf16", None, "bhnd", "broadcast", id="bf16-Nq300-Nk256-D16", marks=gpu),
    pytest.param(1, 4, 300, 300, 128, True, "fp32", None, "bnhd", "bhnd", id="fp32-causal-N300-D128", marks=gpu),
]


def check_backward(api, q, k, v, do, causal=False, sm_scale=None, layout="bhnd"):
    """The graded backward from the float64 reference's o and lse (Phase 3's outputs, exact)."""
    o64, lse64, *ref = reference_grads(q, k, v, do, causal, sm_scale)
    o, lse = as_layout(o64.to(q.dtype), layout), lse64.to(torch.float32)
    got = graded_call(api.flash_attention_backward, do, q, k, v, o, lse, causal=causal, sm_scale=sm_scale)
    if not isinstance(got, tuple) or len(got) != 3:
        raise AssertionError("flash_attention_backward must return a tuple (dq, dk, dv)")
    check_grads(("dq", "dk", "dv"), got, ref, sdpa_grads(q, k, v, do, causal, sm_scale)[1:], q.dtype)


def forward_backward(api, causal, sm_scale=None):
    """(q, k, v, do) -> (o, dq, dk, dv) through the autograd `api.flash_attention`."""
    def run(q, k, v, do):
        qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))
        o = api.flash_attention(qg, kg, vg, causal=causal, sm_scale=sm_scale)
        return (o.detach(), *torch.autograd.grad(o, (qg, kg, vg), do))
    return run


def check_autograd(api, q, k, v, do, causal=False, sm_scale=None):
    """o and the three gradients through `api.flash_attention`, against float64."""
    got = graded_call(forward_backward(api, causal, sm_scale), q, k, v, do, what="flash_attention forward + backward")
    o64, _, *ref = reference_grads(q, k, v, do, causal, sm_scale)
    check_grads(("o", "dq", "dk", "dv"), got, (o64, *ref), sdpa_grads(q, k, v, do, causal, sm_scale), q.dtype)


# Nk = 45 is no multiple of any key block in use (16 to 128): the dQ kernel's last key block is
# partial, and its padded keys load k = v = 0, whose p = exp(-lse) overflows when lse < -88.
NEGATIVE_LOGITS_SHAPE = (1, 2, 24, 45, 32)  # B, H, Nq, Nk, D


def negative_logits_inputs(gen, device, dtype=torch.float16):
    """q, k, v and dO (B, H, Nq, Nk, D = NEGATIVE_LOGITS_SHAPE) whose every score, at sm_scale
    NEGATIVE_LOGITS_SCALE, is near -130: lse < -88 on every row."""
    B, H, Nq, Nk, D = NEGATIVE_LOGITS_SHAPE
    q, k, v = qkv_negative_logits(B, H, Nq, Nk, D, dtype, device, gen)
    return q, k, v, randn((B, H, Nq, D), dtype, device, gen)


def assert_negative_logits_grads(got, q, k, v, do):
    """Judge (dq, dk, dv) of negative_logits_inputs: finite, and close to float64.

    What this case grades is the overflow, not precision: q and k of norm 12 along one direction make
    the gradients ill-conditioned (a kernel that rounds dS to the input dtype before its matmuls, as every
    FlashAttention does, is a few units in the last place off where SDPA's CPU math backend, which does
    not round, is half of one). So every gradient must be finite and within 8 units of the input dtype's
    precision of the sum of the absolute values of its terms (the textbook bound for a rounded sum that
    cancels); the other cases grade precision against SDPA's own error."""
    Nk = k.shape[2]
    _, _, *ref = reference_grads(q, k, v, do, False, NEGATIVE_LOGITS_SCALE)
    magnitudes = _gradient_term_magnitudes(q, k, v, do, NEGATIVE_LOGITS_SCALE)
    for name, g, r in zip(("dq", "dk", "dv"), got, ref):
        bad = int((~torch.isfinite(g)).sum())
        if bad:
            raise AssertionError(f"{name}: {bad} of {g.numel()} values are NaN or inf. Every score here is near -130, "
                                 f"so lse < -88; Nk = {Nk} leaves the last key block partial. A padded key (k = v = 0) "
                                 "has p = exp(-lse) = inf in float32 unless it is masked, and inf * 0 = NaN: mask keys "
                                 ">= Nk in the dQ kernel")
        error = float((g.double() - r).abs().max())
        allowed = 8 * torch.finfo(q.dtype).eps * float(magnitudes[name].max())
        if error > allowed:
            raise AssertionError(f"{name}: max |error| {error:.2e} against float64, allowed {allowed:.2e} (8 eps of "
                                 f"the sum of its terms' absolute values) with every score near -130 and Nk = {Nk}")


def check_backward_negative_logits(api, gen, device, through_autograd=False):
    """Every score near -130 (lse < -88) and Nk no multiple of the key block: a dQ kernel that does not
    mask the padded keys of its last block computes exp(-lse) = inf for them, and inf * (k = 0) = NaN.
    The backward gets float64's o and lse, or (through_autograd) runs after the student's forward."""
    q, k, v, do = negative_logits_inputs(gen, device)
    if through_autograd:
        got = graded_call(forward_backward(api, False, NEGATIVE_LOGITS_SCALE), q, k, v, do,
                          what="flash_attention forward + backward")[1:]
    else:
        o64, lse64 = numerics.reference_attention(q, k, v, sm_scale=NEGATIVE_LOGITS_SCALE)
        got = graded_call(api.flash_attention_backward, do, q, k, v, o64.to(q.dtype), lse64.to(torch.float32),
                          sm_scale=NEGATIVE_LOGITS_SCALE)
    assert_negative_logits_grads(got, q, k, v, do)


def _gradient_term_magnitudes(q, k, v, do, sm_scale):
    """Per element of dq, dk, dv: the sum of the absolute values of the terms that add up to it (float64)."""
    q, k, v, do = (t.double() for t in (q, k, v, do))
    p = torch.softmax(sm_scale * q @ k.transpose(-2, -1), dim=-1)
    dp = do @ v.transpose(-2, -1)
    ds = (p * (dp - (p * dp).sum(-1, keepdim=True))).abs()
    return {"dq": sm_scale * ds @ k.abs(), "dk": sm_scale * ds.transpose(-2, -1) @ q.abs(),
            "dv": p.transpose(-2, -1) @ do.abs()}


# Phase 4's cases of the autograd function, graded again by Phase 5.
AUTOGRAD_CASES = [
    # B, H, Nq, Nk, D, causal, dtype, layout
    pytest.param(1, 2, 33, 33, 32, True, "fp16", "bnhd", id="fp16-causal-N33-D32-noncontiguous"),
    pytest.param(1, 2, 20, 45, 16, False, "fp32", "bhnd", id="fp32-Nq20-Nk45-D16"),
    pytest.param(2, 4, 1024, 1024, 64, True, "bf16", "bnhd", id="bf16-causal-N1024-D64", marks=gpu),
    pytest.param(2, 4, 600, 900, 128, False, "bf16", "bhnd", id="bf16-Nq600-Nk900-D128", marks=gpu),
]


def check_saves_no_n_by_n_tensor(api, gen, device):
    """What autograd keeps between the passes: q, k, v, o and lse, nothing of size Nq x Nk."""
    B, H, Nq, Nk, D = 1, 2, 48, 40, 16
    q, k, v = (t.requires_grad_() for t in qkv(B, H, Nq, Nk, D, torch.float32, device, gen))
    o = api.flash_attention(q, k, v, causal=True)
    node = o.grad_fn
    if node is None:
        raise AssertionError("flash_attention's output has no grad_fn: it must be differentiable")
    saved = tensors_in(list(node.saved_tensors) + list(vars(node).values()))
    allowed = 4 * B * H * max(Nq, Nk) * D * 4 + B * H * Nq * 4  # q, k, v, o and a float32 lse
    for t in saved:
        if t.numel() >= B * H * Nq * Nk or (Nq in t.shape and Nk in t.shape):
            raise AssertionError(f"flash_attention saves a tensor of shape {tuple(t.shape)} for the backward: "
                                 f"that is an Nq x Nk matrix ({Nq} x {Nk}); recompute P in the backward instead")
    total = sum(t.numel() * t.element_size() for t in saved)
    if total > allowed:
        raise AssertionError(f"flash_attention saves {total} bytes for the backward ({len(saved)} tensors); "
                             f"q, k, v, o and lse take {allowed}")
    do = randn((B, H, Nq, D), torch.float32, device, gen)
    got = (o.detach(), *torch.autograd.grad(o, (q, k, v), do))
    o64, _, *ref = reference_grads(q, k, v, do, True, None)
    check_grads(("o", "dq", "dk", "dv"), got, (o64, *ref), sdpa_grads(q, k, v, do, True, None), q.dtype)


def refuses_bad_backward_input(f, gen, device):
    """`f(do, q, k, v, o, lse)` refuses bad input with a clear error naming the argument."""
    q, k, v = qkv(1, 2, 20, 20, 16, torch.float32, device, gen)
    do = randn(q.shape, torch.float32, device, gen)
    o, lse = (t.float() for t in numerics.reference_attention(q, k, v))
    assert_accepts(lambda: f(do, q, k, v, o, lse), "float32 do, q, k, v, o of shape (1, 2, 20, 16) and their lse")
    assert_refuses(lambda: f(do[:, :, :5], q, k, v, o, lse), ValueError, "do", "do of another shape than q")
    assert_refuses(lambda: f(do, q, k, v, o[0], lse), ValueError, "o", "o of rank 3")
    assert_refuses(lambda: f(do, q, k, v, o, lse[..., :7]), ValueError, "lse", "lse of another length than q")
    assert_refuses(lambda: f(do.half(), q, k, v, o, lse), TypeError, "do", "do in float16 with q in float32")
    assert_refuses(lambda: f(do, q, k, v, o, lse.int()), TypeError, "lse", "an integer lse")


def o_lse(q, k, v, causal):
    """o (SDPA, the inputs' dtype) and lse (float32), a few heads at a time: float32 scores of at most
    2**28 elements (1 GiB) at once, and no float64 N x N at all."""
    o = numerics.sdpa(q, k, v, causal)
    B, H, Nq, _ = q.shape
    heads = max(1, 2**28 // (Nq * k.shape[2]))
    lse = torch.empty((B, H, Nq), dtype=torch.float32, device=q.device)
    for b in range(B):
        for h in range(0, H, heads):
            lse[b, h:h + heads] = numerics.scores_logsumexp(q[b, h:h + heads].float(), k[b, h:h + heads].float(),
                                                            causal)
    return o, lse
