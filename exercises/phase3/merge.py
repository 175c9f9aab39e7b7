# Generated from solutions/phase3/merge.py by `make exercises`: fill in the TODOs below.
# Regenerating never overwrites a file you have edited (unless forced).
"""Merging two partial attentions through their logsumexps: what makes storing `lse` pay off.

Attention over keys split into chunks A and B can be computed chunk by chunk (on different
programs, GPUs or times) and combined exactly afterwards: each chunk's (o, lse) is all it takes.
"""
import torch


def merge_partials(o_a, lse_a, o_b, lse_b):
    """(o, lse) of attention over the keys of A and B together, from attention over each alone.

    o_a, o_b: (..., N, D) outputs of each chunk; lse_a, lse_b: (..., N) their natural-log
    logsumexps. Works in float32 and returns o in o_a's dtype and lse in float32.
    """
    for name, x in (("o_a", o_a), ("lse_a", lse_a), ("o_b", o_b), ("lse_b", lse_b)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor")
    if o_a.shape != o_b.shape:
        raise ValueError(f"o_a {tuple(o_a.shape)} and o_b {tuple(o_b.shape)} must have the same shape")
    if lse_a.shape != o_a.shape[:-1] or lse_b.shape != o_b.shape[:-1]:
        raise ValueError(f"lse_a {tuple(lse_a.shape)} and lse_b {tuple(lse_b.shape)} must be o's shape "
                         f"{tuple(o_a.shape[:-1])} without its last dimension")
    # TODO(phase 3, merge): merge two partial attentions into the attention over both chunks of keys
    # Contract: the exact (o, lse) of the union, in float32 (the return line casts o); no overflow for
    # any finite lse, however large; a chunk a row cannot see (lse = -inf) weighs 0, never NaN.
    raise NotImplementedError("phase 3: merge two partial attentions into the attention over both chunks of keys")
    return o.to(o_a.dtype), lse
