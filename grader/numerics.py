"""Numerical agreement the way attention libraries test it.

The truth is a float64 computation. A low-precision result is judged against the error that
PyTorch's own implementation makes in the same precision (SDPA for attention, torch.softmax for
softmax): the student's error may be at most `MULTIPLIER` times PyTorch's, plus a small floor that
keeps the rule meaningful where PyTorch happens to be almost exact. gradcheck is never used: it
probes finite differences in float64, which says nothing about a kernel's float16 rounding.
"""
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from grader import poison, runtime

# flash-attn's own tests allow twice PyTorch's error.
MULTIPLIER = 2.0


def absolute_floor(dtype: torch.dtype) -> float:
    """The smallest error always allowed, for outputs of magnitude about one."""
    if dtype == torch.float32:
        # Triton's float32 tl.dot runs in TF32 on a GPU (10-bit mantissa) and exactly under the
        # interpreter: the floor follows what the hardware does, not what SDPA does.
        return 1e-5 if runtime.interpreting() else 2e-3
    return {torch.float16: 1e-4, torch.bfloat16: 1e-3}[dtype]


def causal_visible(n_q: int, n_k: int, device) -> torch.Tensor:
    """(n_q, n_k) booleans, True where query i may see key j under SDPA's top-left mask: j <= i."""
    return torch.arange(n_k, device=device)[None, :] <= torch.arange(n_q, device=device)[:, None]


def scores_logsumexp(q, k, causal=False, sm_scale=None):
    """logsumexp over the keys of the scaled scores (masked when causal), in q's dtype: the lse that
    Phase 3 returns, computed by PyTorch (a baseline in float32, the truth in float64)."""
    sm_scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
    scores = torch.einsum("...id,...jd->...ij", q, k) * sm_scale
    if causal:
        scores = scores.where(causal_visible(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    return torch.special.logsumexp(scores, dim=-1)


def reference_attention(q, k, v, causal=False, sm_scale=None):
    """(o, lse) in float64, with SDPA's semantics (top-left causal mask).

    o is SDPA's math backend run in float64 (plain ATen operations, differentiable, on any device);
    lse comes from `scores_logsumexp`. `grader/instructor/tests/test_numerics.py` checks both once against the
    explicit formula softmax(q k^T * sm_scale) v.
    """
    q, k, v = (t.to(torch.float64) for t in (q, k, v))
    with sdpa_kernel(SDPBackend.MATH):
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=sm_scale)
    return o, scores_logsumexp(q, k, causal, sm_scale)


def sdpa(q, k, v, causal=False, sm_scale=None):
    """PyTorch's attention in the inputs' own precision: the baseline error to compare with."""
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=sm_scale)


def _where(index: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(i) for i in index) + "]"


def non_finite(got: torch.Tensor) -> str:
    """What the NaN and inf values of `got` are: never written (the grader's NaN poison, recognised
    by its bits in got's own dtype) or computed by the code."""
    unwritten, undecidable = poison.classify(got)
    computed_nan = torch.isnan(got) & ~unwritten & ~undecidable
    parts = []
    for mask, what in (
        (unwritten, "never written (still the NaN the grader fills torch.empty outputs with)"),
        (undecidable, f"NaN, never written or computed (in {str(got.dtype).removeprefix('torch.')} the bits"
                      " cannot tell here)"),
        (computed_nan, "NaN computed by the code (not the grader's poison: 0/0, inf - inf, a fully masked row?)"
         if poison.recognisable(got.dtype) else "NaN"),
        (torch.isinf(got), "inf"),
    ):
        if mask.any():
            parts.append(f"{int(mask.sum())} {what}, first at {_where(tuple(mask.nonzero()[0].tolist()))}")
    return "; ".join(parts)


def assert_close(name: str, got: torch.Tensor, ref: torch.Tensor, baseline: torch.Tensor, dtype=None):
    """Fail with one readable line unless |got - ref| <= MULTIPLIER * |baseline - ref| + floor.

    `ref` is the float64 truth, `baseline` PyTorch's low-precision result for the same inputs.
    """
    dtype = dtype or baseline.dtype
    if tuple(got.shape) != tuple(ref.shape):
        raise AssertionError(f"{name}: shape {tuple(got.shape)}, expected {tuple(ref.shape)}")
    got64 = got.detach().to(torch.float64)
    ref64 = ref.detach().to(torch.float64)
    bad = ~torch.isfinite(got64)
    if bad.any():
        raise AssertionError(f"{name}: {int(bad.sum())} of {got.numel()} values are NaN or inf: "
                             + non_finite(got.detach()))
    err = (got64 - ref64).abs()
    baseline_err = (baseline.detach().to(torch.float64) - ref64).abs().max().item()
    floor = absolute_floor(dtype)
    allowed = MULTIPLIER * baseline_err + floor
    worst = err.max().item() if err.numel() else 0.0
    if worst > allowed:
        index = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
        raise AssertionError(
            f"{name}: max |error| {worst:.2e} at {_where(index)} (got {got64[index].item():.5g}, "
            f"expected {ref64[index].item():.5g}); allowed {allowed:.2e} = {MULTIPLIER:g} x PyTorch's "
            f"{str(dtype).removeprefix('torch.')} error {baseline_err:.2e} + {floor:.0e}"
        )
    return worst, allowed


def _assert_dtype(name, got, expected, of):
    if got.dtype != expected:
        raise AssertionError(f"{name} has dtype {got.dtype}, expected {of}'s dtype {expected}")


def assert_attention_output(o, q, k, v, causal=False, sm_scale=None):
    """o against float64 attention under the SDPA-relative rule, in q's dtype; returns the float64 lse."""
    ref, lse = reference_attention(q, k, v, causal, sm_scale)
    assert_close("o", o, ref, sdpa(q, k, v, causal, sm_scale))
    _assert_dtype("o", o, q.dtype, "q")
    return lse


def assert_softmax_output(y, x):
    """y against float64 softmax over the last dimension, relative to torch.softmax's own error, in x's dtype."""
    assert_close("y", y, torch.softmax(x.double(), dim=-1), torch.softmax(x, dim=-1))
    _assert_dtype("y", y, x.dtype, "x")
