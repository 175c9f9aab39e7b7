# Generated from solutions/phase7/attention.py by `make exercises`: fill in the TODOs below.
# Regenerating never overwrites a file you have edited (unless forced).
"""Phase 7's attention as a differentiable PyTorch function (Phase 4's contract, more options).

The context keeps q, k, v, o and lse, as in Phase 4: with grouped heads k and v are the H_kv-head
tensors the caller gave, never a copy repeated per query head.
"""
import torch

from .backward import attention_backward
from .forward import attention_forward
from .options import attention_options


class FlashAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, opts):
        # TODO(phase 7, save): run the forward and keep what the backward needs
        # Contract: o is returned; the context keeps q, k, v (as given: H_kv heads), o, lse and the options,
        # nothing of size Nq x Nk and no K/V repeated per query head.
        raise NotImplementedError("phase 7: run the forward and keep what the backward needs")
        return o

    @staticmethod
    def backward(ctx, do):
        # TODO(phase 7, grads): the gradients of forward's inputs from dO
        # Contract: one value per input of forward, in order (None for the options); the backward runs with
        # the same options as the forward (causal, scale, window, cap all change the gradients).
        raise NotImplementedError("phase 7: the gradients of forward's inputs from dO")


def flash_attention(q, k, v, causal=False, sm_scale=None, window=None, softcap=None, alignment="top-left"):
    """Attention for (B, H, Nq, D) queries and (B, H_kv, Nk, D) keys and values, differentiable in all three.

    Grouped-query (H_kv dividing H) and multi-query (H_kv = 1) attention, causal masking, sliding windows
    `window=(left, right)` (the query at position p sees keys p - left .. p + right, -1 unbounded), logit
    soft-capping `softcap` (s -> softcap * tanh(s / softcap)), any head dim 1 <= D <= 256. `alignment`
    places query i at position i ("top-left", the default, SDPA's) or i + Nk - Nq ("bottom-right",
    flash-attn's). See `flash_attention_forward` for the details.
    """
    opts = attention_options(q, k, v, causal, sm_scale, window, softcap, alignment)
    return FlashAttentionFunction.apply(q, k, v, opts)
