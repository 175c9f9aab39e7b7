"""The packed layout of variable-length batches, and the checks that keep a kernel from reading
past a sequence: flash-attn's `flash_attn_varlen_func` interface.

A batch of sequences of different lengths is stored packed, one token after another, with no
padding: q is (total_q, H, D), k and v (total_k, H, D). `cu_seqlens_q` (int32, batch + 1 entries)
holds the prefix sums of the lengths: sequence b owns rows cu_seqlens_q[b] .. cu_seqlens_q[b + 1].
`max_seqlen_q` is the longest length: the kernels size their grid with it without reading
cu_seqlens on the host. A wrong cu_seqlens is an out-of-bounds read or a silently wrong answer in a
kernel, so it is checked before any launch, in two steps: `check_varlen` (types, shapes, devices:
no value of cu_seqlens needed) at the start of a call, and `check_cu_seqlens` (the values, copied to
the host) right before the forward's launch. That copy is the call's one synchronization: the CPU
waits for the GPU to finish everything queued before it, and the GPU then idles until the next
launch, so only a launch may stand between the two.
"""
import torch

from ..phase0.checks import check_attention_inputs


def as_heads(x):
    """(total, H, D) seen as (1, H, total, D): the dense kernels' (B, H, N, D) view, no copy."""
    return x.unsqueeze(0).transpose(1, 2)


def check_packed_inputs(q, k, v):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if isinstance(x, torch.Tensor) and x.dim() != 3:
            raise ValueError(f"{name} must have 3 dimensions (total_tokens, H, D), got shape {tuple(x.shape)}")
    check_attention_inputs(*(as_heads(x) if isinstance(x, torch.Tensor) else x for x in (q, k, v)))


def _check_cu_type(cu_seqlens, name, device):
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of int32, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype != torch.int32:
        raise TypeError(f"{name} must have dtype int32, got {str(cu_seqlens.dtype).removeprefix('torch.')}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"{name} must be 1-D with batch + 1 >= 2 entries, got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != device:
        raise ValueError(f"{name} is on {cu_seqlens.device}, q on {device}")


def check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
    """Shapes, dtypes and devices of the packed inputs and of cu_seqlens, and max_seqlen's type:
    everything that needs no value of cu_seqlens (nothing waits for the GPU)."""
    check_packed_inputs(q, k, v)
    _check_cu_type(cu_seqlens_q, "cu_seqlens_q", q.device)
    _check_cu_type(cu_seqlens_k, "cu_seqlens_k", q.device)
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must describe one batch: {cu_seqlens_q.numel()} and "
                         f"{cu_seqlens_k.numel()} entries")
    for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _lengths(bounds, name, total):
    if bounds[0] != 0:
        raise ValueError(f"{name} must start at 0, got {bounds[0]}")
    lengths = [b - a for a, b in zip(bounds, bounds[1:])]
    if min(lengths) < 0:
        at = lengths.index(min(lengths))
        raise ValueError(f"{name} must be non-decreasing (prefix sums of lengths), but entry {at + 1} = "
                         f"{bounds[at + 1]} < entry {at} = {bounds[at]}")
    if bounds[-1] != total:
        raise ValueError(f"{name}'s last entry {bounds[-1]} must equal the number of packed tokens {total}")
    return lengths


def check_cu_seqlens(cu_seqlens_q, cu_seqlens_k, total_q, total_k, max_seqlen_q, max_seqlen_k):
    """The values of cu_seqlens (already through `check_varlen`): prefix sums from 0 to the number of
    packed tokens, no longer than max_seqlen. Returns (lengths of q, of k).

    One copy of both to the host, the call's only synchronization: call it last before the launch.
    """
    bounds = torch.cat((cu_seqlens_q, cu_seqlens_k)).tolist()  # one copy, one wait for the GPU
    n = cu_seqlens_q.numel()
    len_q = _lengths(bounds[:n], "cu_seqlens_q", total_q)
    len_k = _lengths(bounds[n:], "cu_seqlens_k", total_k)
    for name, value, lengths in (("max_seqlen_q", max_seqlen_q, len_q), ("max_seqlen_k", max_seqlen_k, len_k)):
        if value < max(lengths):
            raise ValueError(f"{name}={value} is smaller than the longest sequence ({max(lengths)} tokens): "
                             "the kernels would skip its last rows")
    return len_q, len_k
