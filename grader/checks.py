"""The checks that several phases' graders run on the same contract, kept once.

Phase 3's contract (`flash_attention_forward -> (o, lse)`) is graded again by Phase 5, Phase 4's
(`flash_attention_backward`, the autograd `flash_attention`) by Phases 5 to 7: a check lives here,
and each grader imports it, so that a fix reaches every phase that grades the contract.
"""
import torch

from grader import bench, numerics
from grader.honesty import graded_call
from grader.inputs import NEGATIVE_LOGITS_SCALE, assert_accepts, assert_refuses, qkv, qkv_negative_logits, randn


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


def check_forward(api, q, k, v, causal=False, sm_scale=None, ref_kv=None):
    """Run the graded forward and compare (o, lse) with float64. `ref_kv` replaces k, v for the
    reference and baseline (used when k, v carry poisoned rows that must never be read)."""
    out = graded_call(api.flash_attention_forward, q, k, v, causal=causal, sm_scale=sm_scale)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise AssertionError(f"flash_attention_forward must return (o, lse), got {type(out).__name__}")
    o, lse = out
    rk, rv = ref_kv or (k, v)
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
    for name, g, r, b in zip(names, got, ref, baseline):
        numerics.assert_close(name, g, r, b, dtype=dtype)
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


def check_backward_negative_logits(api, gen, device, dtype=torch.float16, through_autograd=False):
    """Every score near -130 (lse < -88) and Nk no multiple of the key block: a dQ kernel that does not
    mask the padded keys of its last block computes exp(-lse) = inf for them, and inf * (k = 0) = NaN."""
    B, H, Nq, Nk, D = NEGATIVE_LOGITS_SHAPE
    q, k, v = qkv_negative_logits(B, H, Nq, Nk, D, dtype, device, gen)
    do = randn((B, H, Nq, D), dtype, device, gen)
    try:
        if through_autograd:
            check_autograd(api, q, k, v, do, sm_scale=NEGATIVE_LOGITS_SCALE)
        else:
            check_backward(api, q, k, v, do, sm_scale=NEGATIVE_LOGITS_SCALE)
    except AssertionError as exc:
        if "NaN" not in str(exc):
            raise
        raise AssertionError(f"{exc}. Every score here is near -130, so lse < -88; Nk = {Nk} leaves the last key "
                             "block partial. A padded key (k = v = 0) has p = exp(-lse) = inf in float32 unless "
                             "it is masked, and inf * 0 = NaN: mask keys >= Nk in the dQ kernel") from None


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
    """o (SDPA, the inputs' dtype) and lse (float32), one batch entry at a time: no float64 N x N."""
    o = numerics.sdpa(q, k, v, causal)
    return o, torch.stack([numerics.scores_logsumexp(q[b].float(), k[b].float(), causal) for b in range(q.shape[0])])
