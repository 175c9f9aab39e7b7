"""Tiled attention in three kernels: S = q k^T (scores.py), P = softmax(S) tile by tile, o = P v.

Every matmul runs on tiles that fit on chip, but S (float32) and P still make a round trip
through HBM: that traffic is what Phase 2 removes.
"""
import torch
import triton
import triton.language as tl

from ..phase0.checks import check_attention_inputs
from ..phase0.checks import check_sm_scale
from .scores import dot_precision, tiled_scores


@triton.jit
def softmax_tiles_kernel(s_ptr, p_ptr, n_rows, N_K, stride_s_row, stride_p_row,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # BLOCK_M rows of S per program, swept left to right in (BLOCK_M, BLOCK_N) tiles: a row of
    # any length never has to fit on chip.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    cols = tl.arange(0, BLOCK_N)
    s_rows = s_ptr + rows[:, None] * stride_s_row
    p_rows = p_ptr + rows[:, None] * stride_p_row
    # TODO(phase 1, row-max): sweep 1 over S: the max of each of this program's rows
    # Contract: m_i (BLOCK_M,) float32 holds max_j S[i, j] over the whole row, read tile by tile;
    # masked lanes never win, and a row past n_rows ends with a finite m_i (no NaN later).
    ### BEGIN SOLUTION
    m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)
    for start_n in range(0, N_K, BLOCK_N):
        mask = row_ok[:, None] & (start_n + cols[None, :] < N_K)
        s = tl.load(s_rows + start_n + cols[None, :], mask=mask, other=-float("inf"))
        m_i = tl.maximum(m_i, tl.max(s, axis=1))
    # Rows past n_rows saw only -inf; give them a finite max so that exp() below stays NaN-free.
    m_i = tl.where(row_ok, m_i, 0.0)
    ### END SOLUTION
    # TODO(phase 1, normalize): sweeps 2 and 3 over S: the row sums, then P = softmax(S) stored in p_ptr's dtype
    # Contract: every valid element of the row's P is written, nothing past n_rows or N_K; the rows
    # of P sum to 1.
    ### BEGIN SOLUTION
    l_i = tl.zeros([BLOCK_M], tl.float32)
    for start_n in range(0, N_K, BLOCK_N):
        mask = row_ok[:, None] & (start_n + cols[None, :] < N_K)
        s = tl.load(s_rows + start_n + cols[None, :], mask=mask, other=-float("inf"))
        l_i += tl.sum(tl.exp(s - m_i[:, None]), axis=1)
    l_i = tl.where(row_ok, l_i, 1.0)
    for start_n in range(0, N_K, BLOCK_N):
        mask = row_ok[:, None] & (start_n + cols[None, :] < N_K)
        s = tl.load(s_rows + start_n + cols[None, :], mask=mask, other=-float("inf"))
        p = tl.exp(s - m_i[:, None]) / l_i[:, None]
        tl.store(p_rows + start_n + cols[None, :], p.to(p_ptr.dtype.element_ty), mask=mask)
    ### END SOLUTION


@triton.jit
def pv_kernel(p_ptr, v_ptr, o_ptr,
              stride_pb, stride_ph, stride_pm, stride_pn,
              stride_vb, stride_vh, stride_vn, stride_vd,
              stride_ob, stride_oh, stride_om, stride_od,
              H, N_Q, N_K,
              D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    start_m = tl.program_id(0)
    off_bh = tl.program_id(1).to(tl.int64)
    off_b = off_bh // H
    off_h = off_bh % H
    p_ptr += off_b * stride_pb + off_h * stride_ph
    v_ptr += off_b * stride_vb + off_h * stride_vh
    o_ptr += off_b * stride_ob + off_h * stride_oh
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    # TODO(phase 1, pv): o = P v for this program's query rows, one key tile at a time
    # Contract: acc (BLOCK_M, D) float32 accumulates over every key tile; padded keys contribute 0;
    # o is stored in its dtype for rows < N_Q only.
    ### BEGIN SOLUTION
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for start_n in range(0, N_K, BLOCK_N):
        cols = start_n + offs_n
        p = tl.load(p_ptr + offs_m[:, None] * stride_pm + cols[None, :] * stride_pn,
                    mask=(offs_m[:, None] < N_Q) & (cols[None, :] < N_K), other=0.0)
        v = tl.load(v_ptr + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                    mask=cols[:, None] < N_K, other=0.0)
        acc += tl.dot(p, v, input_precision=PRECISION)  # zero-padded keys add nothing
    tl.store(o_ptr + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
             acc.to(o_ptr.dtype.element_ty), mask=offs_m[:, None] < N_Q)
    ### END SOLUTION


def softmax_tiles(s, dtype):
    """P = softmax(S) over the last dimension of a contiguous float32 S, stored in `dtype`."""
    p = torch.empty(s.shape, dtype=dtype, device=s.device)
    n_rows, n_k = s.numel() // s.shape[-1], s.shape[-1]
    BLOCK_M, BLOCK_N = 16, 256
    softmax_tiles_kernel[(triton.cdiv(n_rows, BLOCK_M),)](s, p, n_rows, n_k, n_k, n_k,
                                                          BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=4)
    return p


def tiled_pv(p, v):
    """o = P v for P (B, H, Nq, Nk) and v (B, H, Nk, D); o in v's dtype."""
    B, H, Nq, Nk = p.shape
    D = v.shape[-1]
    o = torch.empty((B, H, Nq, D), dtype=v.dtype, device=v.device)
    BLOCK_M, BLOCK_N = 64, 64
    pv_kernel[(triton.cdiv(Nq, BLOCK_M), B * H)](p, v, o, *p.stride(), *v.stride(), *o.stride(), H, Nq, Nk,
                                                 D=D, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                                                 PRECISION=dot_precision(v.dtype), num_warps=4)
    return o


def tiled_attention(q, k, v, sm_scale=None):
    """softmax(q k^T * sm_scale) v in three tiled kernels; S (float32) and P go through HBM.

    P is stored in v's dtype, so that the P v tile product runs on tensor cores in fp16/bf16
    (as FlashAttention does); o comes back in q's dtype (q, k and v share one dtype).
    """
    check_attention_inputs(q, k, v)
    sm_scale = check_sm_scale(sm_scale, q.shape[-1])
    s = tiled_scores(q, k, sm_scale)   # pass 1: q, k in; S (float32) out to HBM
    p = softmax_tiles(s, v.dtype)      # pass 2: S back in (three sweeps), P out to HBM
    return tiled_pv(p, v)              # pass 3: P and v in, o out
