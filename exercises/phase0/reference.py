# Generated from solutions/phase0/reference.py by `make exercises`: fill in the TODOs below.
# Regenerating never overwrites a file you have edited (unless forced).
"""Naive attention in plain PyTorch: three passes, with S and P materialized in memory."""
import torch

from .checks import check_attention_inputs


def attention_reference(q, k, v, causal=False, sm_scale=None):
    """softmax(q k^T * sm_scale) v for (B, H, N, D) tensors, SDPA's semantics, no SDPA.

    Causal masking is top-left aligned like SDPA's `is_causal`: query i sees keys 0..i.
    Half-precision inputs are computed in float32 (as SDPA's math backend does) and the result
    is returned in the input dtype.
    """
    check_attention_inputs(q, k, v, triton=False)
    sm_scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
    # TODO(phase 0, reference): softmax(q k^T * sm_scale) v with SDPA's semantics, in plain PyTorch, in q's dtype
    # Contract: S and P are materialized (that is the point of this baseline); computed in float32 whatever
    # the input dtype; causal is top-left aligned (query i sees keys 0..i). No SDPA, no shortcut.
    raise NotImplementedError("phase 0: softmax(q k^T * sm_scale) v with SDPA's semantics, in plain PyTorch, in q's dtype")
