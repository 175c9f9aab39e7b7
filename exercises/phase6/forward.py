# Generated from solutions/phase6/forward.py by `make exercises`: fill in the TODOs below.
# Regenerating never overwrites a file you have edited (unless forced).
"""The forward pass over a packed batch of sequences of different lengths, with dropout.

Phase 3's kernel with two changes. Where a (batch, head) started at batch * stride, a sequence
starts where `cu_seqlens` says, and its length is read from there too: the grid is sized by the
longest sequence, and programs past the end of a shorter one return at once. And each probability,
after it has entered the row sum l_i, is kept or dropped by `dropout_keep` before it meets V.
"""
import torch
import triton
import triton.language as tl

from ..phase3.forward import _config as phase3_config
from .dropout import dropout_keep
from .varlen import as_heads


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, start_n, end_n, offs_m, offs_n, N_K,
               qk_scale, seed, bh, MAX_Q, MAX_K, dropout_p,
               BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
               DOT_PRECISION: tl.constexpr):
    """Stream key blocks [start_n, end_n) of one sequence through the online softmax (Phase 3)."""
    k_ptrs += start_n * stride_kn
    v_ptrs += start_n * stride_vn
    for start in range(start_n, end_n, BLOCK_N):
        # TODO(phase 6): Phase 3's step for one key block, up to the matmul with V: cols, the block's key indices; load k (rows >= N_K as 0 when MASKED), the scores, -inf where MASKED hides a key (past N_K, or after the row when CAUSAL), the new running max m_ij, p, alpha, l_i and acc rescaled, and v loaded; every index is local to the sequence
        tl.static_assert(False, "phase 6: Phase 3's step for one key block, up to the matmul with V: cols, the block's key indices; load k (rows >= N_K as 0 when MASKED), the scores, -inf where MASKED hides a key (past N_K, or after the row when CAUSAL), the new running max m_ij, p, alpha, l_i and acc rescaled, and v loaded; every index is local to the sequence")
        # TODO(phase 6): where dropout enters O: when DROPOUT, zero the dropped probabilities (dropout_keep of this tile: rows offs_m, columns cols, head bh) after they went into l_i (the softmax normalizes over every key, dropped or not) and before acc += p v (p in v's dtype); the 1/(1-p) comes once, at the end
        tl.static_assert(False, "phase 6: where dropout enters O: when DROPOUT, zero the dropped probabilities (dropout_keep of this tile: rows offs_m, columns cols, head bh) after they went into l_i (the softmax normalizes over every key, dropped or not) and before acc += p v (p in v's dtype); the 1/(1-p) comes once, at the end")
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    return acc, l_i, m_i


@triton.jit
def varlen_fwd_kernel(Q, K, V, O, LSE, CU_Q, CU_K, sm_scale, seed, dropout_p,
                      stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
                      H, TOTAL_Q, MAX_Q, MAX_K, N_M_BLOCKS,
                      HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # A 1-D grid, as in Phase 3: (sequence * H + head) major, query blocks last first within it.
    pid = tl.program_id(0)
    start_m = N_M_BLOCKS - 1 - pid % N_M_BLOCKS
    bh = pid // N_M_BLOCKS
    seq = bh // H
    h = bh % H
    # TODO(phase 6): the varlen offsets: the sequence's first rows in the packed q and k (q_start, k_start, from CU_Q and CU_K) and its lengths N_Q and N_K; return at once when this query block starts at or past N_Q (the grid is sized for the longest sequence)
    tl.static_assert(False, "phase 6: the varlen offsets: the sequence's first rows in the packed q and k (q_start, k_start, from CU_Q and CU_K) and its lengths N_Q and N_K; return at once when this query block starts at or past N_Q (the grid is sized for the longest sequence)")
    # int64: a packed tensor of many long sequences passes 2**31 elements.
    q_base = Q + q_start.to(tl.int64) * stride_qt + h.to(tl.int64) * stride_qh
    k_base = K + k_start.to(tl.int64) * stride_kt + h.to(tl.int64) * stride_kh
    v_base = V + k_start.to(tl.int64) * stride_vt + h.to(tl.int64) * stride_vh
    o_base = O + q_start.to(tl.int64) * stride_ot + h.to(tl.int64) * stride_oh

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m[:, None] < N_Q
    q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=row_ok, other=0.0)
    k_ptrs = k_base + offs_n[:, None] * stride_kt + offs_d[None, :]
    v_ptrs = v_base + offs_n[:, None] * stride_vt + offs_d[None, :]
    qk_scale = sm_scale * 1.4426950408889634

    # TODO(phase 6): Phase 3's running state and key range for this query block of the sequence: m_i, l_i, acc (float32) and end / full (causal per sequence, top-left: row i sees keys 0..i of its own sequence)
    tl.static_assert(False, "phase 6: Phase 3's running state and key range for this query block of the sequence: m_i, l_i, acc (float32) and end / full (causal per sequence, top-left: row i sees keys 0..i of its own sequence)")
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt, 0, full, offs_m, offs_n,
                               N_K, qk_scale, seed, bh, MAX_Q, MAX_K, dropout_p,
                               BLOCK_N, False, CAUSAL, DROPOUT, DOT_PRECISION)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt, full, end, offs_m, offs_n,
                               N_K, qk_scale, seed, bh, MAX_Q, MAX_K, dropout_p,
                               BLOCK_N, True, CAUSAL, DROPOUT, DOT_PRECISION)

    # TODO(phase 6): finish: o = acc / l_i, times 1 / (1 - dropout_p) when DROPOUT (the survivors' scale), stored in O's dtype for rows < N_Q; a row that saw no key at all (a sequence with N_K = 0) has l_i = 0 and gets o = 0, not NaN; lse from m_i and l_i as in Phase 3, stored at LSE[h, q_start + row] (an (H, TOTAL_Q) float32 array)
    tl.static_assert(False, "phase 6: finish: o = acc / l_i, times 1 / (1 - dropout_p) when DROPOUT (the survivors' scale), stored in O's dtype for rows < N_Q; a row that saw no key at all (a sequence with N_K = 0) has l_i = 0 and gets o = 0, not NaN; lse from m_i and l_i as in Phase 3, stored at LSE[h, q_start + row] (an (H, TOTAL_Q) float32 array)")


def varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, sm_scale,
                   dropout_p, seed, config=None):
    """(o, lse) of packed, already checked inputs: o (total_q, H, D) in q's dtype, lse (H, total_q) float32.

    `config` = (BLOCK_M, BLOCK_N, num_warps, num_stages) overrides Phase 3's tuned choice.
    """
    total_q, H, D = q.shape
    n_seq = cu_seqlens_q.numel() - 1
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((H, total_q), dtype=torch.float32, device=q.device)
    # Phase 3's tuned blocks for one sequence of the longest length.
    long_k = torch.empty((1, H, max_seqlen_k, D), device="meta")  # a shape, no memory
    block_m, block_n, num_warps, num_stages = config or phase3_config(as_heads(q), long_k, causal)
    n_m_blocks = triton.cdiv(max_seqlen_q, block_m)
    dropout = dropout_p > 0.0
    varlen_fwd_kernel[(n_m_blocks * n_seq * H,)](
        q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, sm_scale, seed if dropout else 0, dropout_p,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), o.stride(0), o.stride(1),
        H, total_q, max_seqlen_q, max_seqlen_k, n_m_blocks,
        HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal, DROPOUT=dropout,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps, num_stages=num_stages)
    return o, lse
