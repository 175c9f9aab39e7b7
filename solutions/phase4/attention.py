"""FlashAttention as a differentiable PyTorch function: the phase-3 forward, the phase-4 backward.

What autograd keeps between the two passes decides the memory of training. This function saves
q, k, v, o and the logsumexp lse: O(N * D) per head. It never saves S or P (O(N^2)); the backward
recomputes them, tile by tile, from q, k and lse.
"""
import torch

from ..phase3 import flash_attention_forward
from .backward import flash_attention_backward


class FlashAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, sm_scale):
        # TODO(phase 4, save): run the Phase 3 forward and save what the backward needs
        # Contract: o is returned; the context keeps O(N * D) tensors only, never S or P (O(N^2)).
        ### BEGIN SOLUTION
        o, lse = flash_attention_forward(q, k, v, causal=causal, sm_scale=sm_scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ### END SOLUTION
        ctx.causal, ctx.sm_scale = causal, sm_scale
        return o

    @staticmethod
    def backward(ctx, do):
        # TODO(phase 4, grads): the gradients of forward's inputs from dO
        # Contract: autograd expects one value per input of forward, in order; the backward is
        # flash_attention_backward on the saved tensors.
        ### BEGIN SOLUTION
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(do, q, k, v, o, lse, causal=ctx.causal, sm_scale=ctx.sm_scale)
        return dq, dk, dv, None, None
        ### END SOLUTION


def flash_attention(q, k, v, causal=False, sm_scale=None):
    """softmax(q k^T * sm_scale) v for (B, H, N, D) tensors, differentiable in q, k and v."""
    return FlashAttentionFunction.apply(q, k, v, causal, sm_scale)
