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
    ### BEGIN SOLUTION
    q32, k32, v32 = q.float(), k.float(), v.float()
    s = (q32 @ k32.transpose(-2, -1)) * sm_scale          # pass 1: S, an Nq x Nk matrix per head
    if causal:
        n_q, n_k = q.shape[-2], k.shape[-2]
        above_diagonal = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).triu(1)
        s = s.masked_fill(above_diagonal, float("-inf"))
    p = torch.softmax(s, dim=-1)                           # pass 2: P, another Nq x Nk matrix
    return (p @ v32).to(q.dtype)                           # pass 3: o
    ### END SOLUTION
