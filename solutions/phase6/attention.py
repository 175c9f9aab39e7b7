"""Dense and variable-length FlashAttention with dropout, as differentiable PyTorch functions.

One kernel family serves both: `flash_attention_varlen` runs it on a packed batch, and dense
attention with dropout is the special case of B sequences of one length (a view, or one copy for
a layout that has none). Dense attention without dropout is Phase 4's function itself, so that
dropout_p = 0 gives exactly, bit for bit, what Phase 4 gives.
"""
import torch

from ..phase0.checks import check_attention_inputs
from ..phase3.forward import _check_options as check_options
from ..phase4 import flash_attention as phase4_flash_attention
from .backward import varlen_backward
from .dropout import check_dropout, draw_seed
from .forward import varlen_forward
from .varlen import check_varlen


class FlashAttentionVarlenFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, sm_scale,
                dropout_p, seed):
        # TODO(phase 6, autograd-forward): run the varlen forward and keep what the backward needs
        # Contract: o is returned; the context keeps q, k, v, o, lse and both cu_seqlens (saved tensors) and
        # the seed and the other options as plain values: never the dropout mask (Nq x Nk per head).
        ### BEGIN SOLUTION
        o, lse = varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, sm_scale,
                                dropout_p, seed)
        ctx.save_for_backward(q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k)
        ctx.options = (max_seqlen_q, max_seqlen_k, causal, sm_scale, dropout_p, seed)
        ### END SOLUTION
        return o

    @staticmethod
    def backward(ctx, do):
        # TODO(phase 6, autograd-backward): the gradients of forward's inputs from dO
        # Contract: the backward redraws the forward's very mask (the same seed and options); autograd
        # expects one value per input of forward, in order (None for all but q, k and v).
        ### BEGIN SOLUTION
        q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k = ctx.saved_tensors
        dq, dk, dv = varlen_backward(do, q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, *ctx.options)
        return dq, dk, dv, None, None, None, None, None, None, None, None
        ### END SOLUTION


def flash_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False,
                           sm_scale=None, dropout_p=0.0, seed=None):
    """Attention over each sequence of a packed batch, as flash-attn's `flash_attn_varlen_func`.

    q: (total_q, H, D), k and v: (total_k, H, D); sequence b owns rows cu_seqlens_q[b] ..
    cu_seqlens_q[b + 1] of q and cu_seqlens_k[b] .. cu_seqlens_k[b + 1] of k and v (int32 prefix
    sums, batch + 1 entries). max_seqlen_q / max_seqlen_k: at least the longest length. Causal is
    per sequence, top-left aligned (SDPA's is_causal). A sequence may be empty; one with queries and
    no keys gets o = 0. Dropout zeroes each probability with chance dropout_p (the mask drawn from
    `seed`, or from torch's generator when None) and scales the rest by 1 / (1 - dropout_p).
    Differentiable in q, k and v; returns o (total_q, H, D) in q's dtype.
    """
    check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    sm_scale = check_options(causal, sm_scale, q.shape[-1])
    dropout_p = check_dropout(dropout_p, seed)
    if dropout_p > 0.0 and seed is None:
        seed = draw_seed()
    return FlashAttentionVarlenFunction.apply(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                              causal, sm_scale, dropout_p, seed)


def _packed(x):
    """(B, H, N, D) -> (B * N, H, D): a view for the (B, N, H, D) layout of real models."""
    B, H, N, D = x.shape
    return x.transpose(1, 2).reshape(B * N, H, D)


def flash_attention(q, k, v, causal=False, sm_scale=None, dropout_p=0.0, seed=None):
    """Phase 4's softmax(q k^T * sm_scale) v for (B, H, N, D) tensors, plus attention dropout.

    dropout_p = 0 is Phase 4's function, bit for bit. Otherwise the (B, H, Nq, Nk) problem runs as B
    packed sequences; the mask of head (b, h) is `dropout_mask(seed, p, B * H, Nq, Nk)[b * H + h]`.
    """
    dropout_p = check_dropout(dropout_p, seed)
    if dropout_p == 0.0:
        return phase4_flash_attention(q, k, v, causal=causal, sm_scale=sm_scale)
    check_attention_inputs(q, k, v)
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    cu_q = torch.arange(0, (B + 1) * Nq, Nq, dtype=torch.int32, device=q.device)
    cu_k = torch.arange(0, (B + 1) * Nk, Nk, dtype=torch.int32, device=q.device)
    o = flash_attention_varlen(_packed(q), _packed(k), _packed(v), cu_q, cu_k, Nq, Nk, causal=causal,
                               sm_scale=sm_scale, dropout_p=dropout_p, seed=seed)
    return o.view(B, Nq, H, D).transpose(1, 2)
