"""Numerical agreement the way attention libraries test it.

The truth is a float64 computation. A low-precision result is judged against the error that
PyTorch's own implementation makes in the same precision (SDPA for attention, torch.softmax for
softmax): the student's error may be at most `MULTIPLIER` times PyTorch's, plus a small floor that
keeps the rule meaningful where PyTorch happens to be almost exact. gradcheck is never used: it
probes finite differences in float64, which says nothing about a kernel's float16 rounding.
"""
import math

import torch

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


def _visible(q, k, causal, visible):
    """The keys each query may see, broadcastable to (..., Nq, Nk), or None when it is every key."""
    if causal:
        mask = causal_visible(q.shape[-2], k.shape[-2], q.device)
        return mask if visible is None else mask & visible.to(q.device)
    return None if visible is None else visible.to(q.device)


def _query_heads(x, q):
    """k or v with one head per query head: grouped-query attention shares each of its H_kv heads
    among H / H_kv consecutive query heads (SDPA's enable_gqa, flash-attn's convention)."""
    heads, kv_heads = q.shape[-3], x.shape[-3]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads cannot share {kv_heads} key/value heads")
    return x if heads == kv_heads else x.repeat_interleave(heads // kv_heads, dim=-3)


def scaled_scores(q, k, sm_scale=None):
    """q k^T * sm_scale in the inputs' dtype (a float64 truth for float64 inputs)."""
    sm_scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
    return torch.einsum("...id,...jd->...ij", q, _query_heads(k, q)) * sm_scale


def scores_logsumexp(q, k, causal=False, sm_scale=None, visible=None):
    """logsumexp over the keys of the scaled scores (masked when causal or `visible` says so), in q's
    dtype: the lse that Phase 3 returns, computed by PyTorch (a baseline in float32, the truth in
    float64). A row that sees no key has lse -inf."""
    scores = scaled_scores(q, k, sm_scale)
    mask = _visible(q, k, causal, visible)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.special.logsumexp(scores, dim=-1)


def reference_attention(q, k, v, causal=False, sm_scale=None, *, visible=None, dropout_mask=None, dropout_p=0.0):
    """(o, lse) in float64, with SDPA's semantics: the one reference every grader uses.

    o is SDPA's math backend run in float64 (plain ATen operations, differentiable, on any device);
    lse comes from `scores_logsumexp`. Beyond causal (top-left) and sm_scale:
    - grouped-query attention: k and v may have fewer heads than q, dividing them;
    - `visible`: booleans broadcastable to (..., Nq, Nk), True where a query may see a key (a
      sliding window, the sequences of a packed batch); a row that sees no key gets o = 0, lse -inf;
    - dropout: `dropout_mask` (booleans shaped like the scores, True = kept) scales the kept
      probabilities by 1 / (1 - dropout_p), after the softmax; lse is that of the scores, before it.
    `grader/instructor/tests/test_numerics.py` checks all of them against the explicit formula
    softmax(q k^T * sm_scale) v.
    """
    q, k, v = (t.to(torch.float64) for t in (q, k, v))
    _query_heads(k, q)  # a clear error for heads that cannot be grouped
    mask = _visible(q, k, causal, visible)
    bias = None
    if visible is not None:
        # An additive mask: -inf where a key is hidden. A row that sees no key is computed over every
        # key (finite values, finite gradients) and zeroed below, where its gradient stops.
        empty = ~mask.any(dim=-1, keepdim=True)
        bias = torch.zeros(mask.shape, dtype=torch.float64, device=q.device).masked_fill(~mask | empty, float("-inf"))
        bias = bias.masked_fill(empty, 0.0)
    o, probs = torch.ops.aten._scaled_dot_product_attention_math(
        q, k, v, bias, 0.0, causal and bias is None, None, scale=sm_scale, enable_gqa=k.shape[-3] != q.shape[-3])
    if dropout_mask is not None:
        kept = probs * dropout_mask.to(device=q.device, dtype=torch.float64) / (1.0 - dropout_p)
        o = torch.matmul(kept, _query_heads(v, q))
    if bias is not None:
        o = o.masked_fill(empty, 0.0)
    return o, scores_logsumexp(q, k, causal, sm_scale, visible)


def reference_gradients(q, k, v, do, causal=False, sm_scale=None, **options):
    """(o, lse, dq, dk, dv) in float64: autograd through `reference_attention` (same options)."""
    q64, k64, v64 = (t.detach().to(torch.float64).requires_grad_() for t in (q, k, v))
    o64, lse64 = reference_attention(q64, k64, v64, causal, sm_scale, **options)
    grads = torch.autograd.grad(o64, (q64, k64, v64), do.to(torch.float64))
    return (o64.detach(), lse64.detach(), *grads)


def sdpa(q, k, v, causal=False, sm_scale=None):
    """PyTorch's attention in the inputs' own precision: the baseline error to compare with."""
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=sm_scale,
                                                            enable_gqa=k.shape[-3] != q.shape[-3])


def sdpa_gradients(q, k, v, do, causal=False, sm_scale=None):
    """(o, dq, dk, dv) by PyTorch in the inputs' own precision: the baseline error of each gradient."""
    ql, kl, vl = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o = sdpa(ql, kl, vl, causal, sm_scale)
    return (o.detach(), *torch.autograd.grad(o, (ql, kl, vl), do))


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
            f"{str(dtype).removeprefix('torch.')} error {baseline_err:.2e} + {floor:.0e}" + _ratio_hint(got64, ref64)
        )
    return worst, allowed


# got / expected constant over a tensor, at one of these values, is a known slip of units.
KNOWN_RATIOS = ((math.log2(math.e), "log2(e): got is in base 2 (log2); lse must be the natural log"),
                (math.log(2.0), "ln(2): got is the natural log where base 2 was expected"))


def _ratio_hint(got64: torch.Tensor, ref64: torch.Tensor) -> str:
    """'; got / expected = log2(e): ...' when every value is off by the same known factor, else ''."""
    usable = ref64.abs() > 0.1  # away from 0, where rounding alone moves the ratio
    if int(usable.sum()) < 2:
        return ""
    ratio = got64[usable] / ref64[usable]
    for value, meaning in KNOWN_RATIOS:
        if ((ratio - value).abs() <= 1e-2 * value).all():
            return f"; got / expected = {meaning}"
    return ""


def assert_each_close(checks, dtype=None):
    """assert_close on each (name, got, ref, baseline), and one failure that names every tensor that is
    wrong and every one that is right: a causal off-by-one in a backward breaks dk and dv (one kernel)
    but not dq (another), and a message about dk alone would hide that."""
    wrong, right = [], []
    for name, got, ref, baseline in checks:
        try:
            assert_close(name, got, ref, baseline, dtype=dtype)
            right.append(name)
        except AssertionError as exc:
            wrong.append((name, str(exc)))
    if wrong:
        verdict = f"wrong: {', '.join(name for name, _ in wrong)}" + (f"; right: {', '.join(right)}" if right else "")
        raise AssertionError(f"{verdict}. " + " | ".join(message for _, message in wrong))


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
