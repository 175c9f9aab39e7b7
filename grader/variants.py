"""Attention with the semantics of Phase 7, written out with an explicit mask and repeated heads.

SDPA has no soft-capping and no window argument, and returns NaN for a row that sees no key; the
variants are therefore checked against the formula itself, computed in float64 (the truth) and, as
flash-attn's tests do, in the inputs' own precision (the baseline whose error sets the tolerance):

    s = sm_scale * q k^T               k, v repeated to every query head of their group
    s = softcap * tanh(s / softcap)    when soft-capping
    s = -inf where the mask hides a key
    o = softmax(s) v,  lse = logsumexp(s)   a row with no visible key: o = 0, lse = -inf

The mask (`visible`) is top-left aligned by default (query i and key j are positions i and j of one
sequence, SDPA's is_causal) and bottom-right aligned on request (query i is position i + Nk - Nq,
flash-attn's convention; PyTorch's `causal_lower_right`).
`grader/instructor/tests/test_variants.py` checks that without a window, a cap or grouped heads this is
exactly the float64 reference of the earlier phases (SDPA's math backend).
"""
import torch


def visible(n_q: int, n_k: int, causal=False, window=None, device="cpu", alignment="top-left") -> torch.Tensor:
    """(n_q, n_k) booleans: the query at position p sees key j iff p - left <= j <= p + right (-1: unbounded);
    causal sets right = 0. Query i is at position p = i ("top-left") or p = i + n_k - n_q ("bottom-right")."""
    if alignment not in ("top-left", "bottom-right"):
        raise ValueError(f"alignment must be 'top-left' or 'bottom-right', got {alignment!r}")
    left, right = window if window is not None else (-1, -1)
    if causal:
        right = 0
    first = n_k - n_q if alignment == "bottom-right" else 0  # the first query's position
    i = torch.arange(first, first + n_q, device=device)[:, None]
    j = torch.arange(n_k, device=device)[None, :]
    ok = torch.ones(n_q, n_k, dtype=torch.bool, device=device)
    if left >= 0:
        ok &= j >= i - left
    if right >= 0:
        ok &= j <= i + right
    return ok


def cache_visible(cache_seqlens: torch.Tensor, n_q: int, n_max: int, causal: bool = False) -> torch.Tensor:
    """(B, 1, n_q, n_max) booleans for decoding: every query row of sequence b sees its first
    cache_seqlens[b] keys; `causal` aligns the n_q queries bottom-right (query i is the key at position
    cache_seqlens[b] - n_q + i and sees the keys up to it, flash-attn's convention for a KV cache)."""
    j = torch.arange(n_max, device=cache_seqlens.device)[None, None, :]
    lengths = cache_seqlens.to(torch.int64)[:, None, None]
    ok = (j < lengths).expand(-1, n_q, n_max)
    if causal:
        i = torch.arange(n_q, device=cache_seqlens.device)[None, :, None]
        ok = ok & (j <= lengths - n_q + i)
    return ok.reshape(-1, 1, n_q, n_max)


def repeat_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, H_kv, N, D) -> (B, heads, N, D): K/V head h // (heads // H_kv) for query head h."""
    return x.repeat_interleave(heads // x.shape[1], dim=1)


def attention(q, k, v, mask, sm_scale=None, softcap=None):
    """(o, lse) computed in q's dtype, differentiable in q, k and v. `mask` broadcasts to
    (B, H, Nq, Nk); True = visible."""
    scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
    k, v = repeat_heads(k, q.shape[1]), repeat_heads(v, q.shape[1])
    s = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    mask = mask.expand(s.shape)
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    # A row with no visible key: softmax over all -inf is NaN (and so is its gradient); give the
    # softmax finite scores there and zero its probabilities afterwards.
    empty = ~mask.any(dim=-1, keepdim=True)
    p = torch.softmax(s.masked_fill(empty, 0.0), dim=-1).masked_fill(~mask, 0.0)
    o = torch.einsum("bhij,bhjd->bhid", p.to(v.dtype), v)
    return o, lse


def reference(q, k, v, mask, sm_scale=None, softcap=None):
    """(o, lse) in float64: the truth."""
    return attention(*(t.to(torch.float64) for t in (q, k, v)), mask, sm_scale, softcap)


def reference_grads(q, k, v, do, mask, sm_scale=None, softcap=None):
    """(o, lse, dq, dk, dv) in float64; dk and dv summed over each group's query heads by autograd."""
    q64, k64, v64 = (t.detach().to(torch.float64).requires_grad_() for t in (q, k, v))
    o, lse = attention(q64, k64, v64, mask, sm_scale, softcap)
    grads = torch.autograd.grad(o, (q64, k64, v64), do.to(torch.float64))
    return (o.detach(), lse.detach(), *grads)


def baseline(q, k, v, mask, sm_scale=None, softcap=None):
    """o in the inputs' precision (PyTorch's own rounding: scores, probabilities and output in q's
    dtype), and lse in float32 from the low-precision q and k: the errors to compare with."""
    o, _ = attention(q, k, v, mask, sm_scale, softcap)
    _, lse = attention(q.float(), k.float(), v.float(), mask, sm_scale, softcap)
    return o, lse


def baseline_grads(q, k, v, do, mask, sm_scale=None, softcap=None):
    """(o, dq, dk, dv) in the inputs' precision."""
    ql, kl, vl = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o, _ = attention(ql, kl, vl, mask, sm_scale, softcap)
    return (o.detach(), *torch.autograd.grad(o, (ql, kl, vl), do))
