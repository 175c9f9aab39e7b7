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
from .varlen import as_heads, check_cu_seqlens


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, start_n, end_n, offs_m, offs_n, N_K,
               qk_scale, seed, bh, MAX_Q, MAX_K, dropout_p,
               BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
               DOT_PRECISION: tl.constexpr):
    """Stream key blocks [start_n, end_n) of one sequence through the online softmax (Phase 3)."""
    k_ptrs += start_n * stride_kn
    v_ptrs += start_n * stride_vn
    for start in range(start_n, end_n, BLOCK_N):
        # TODO(phase 6, fwd-block): Phase 3's online-softmax step for one key block, up to the load of v
        # Invariant: Phase 3's (m_i, l_i, acc) in log2 units, with l_i and acc rescaled to the new max m_ij;
        # every index is local to the sequence (key j of this sequence, not of the pack); when MASKED, keys
        # >= N_K and (causal) keys after the row weigh exactly 0. cols: this block's key indices.
        tl.static_assert(False, "phase 6: Phase 3's online-softmax step for one key block, up to the load of v")
        # TODO(phase 6, fwd-dropout): where dropout enters O: acc += p v, the dropped probabilities left out
        # Contract: l_i already holds every key's p, dropped or not (the softmax normalizes over all keys);
        # when DROPOUT, only the elements kept by dropout_keep (head bh, rows offs_m, columns cols) reach
        # acc, and their 1/(1-p) comes once, in the finish; p meets v in v's dtype; m_i moves to m_ij.
        tl.static_assert(False, "phase 6: where dropout enters O: acc += p v, the dropped probabilities left out")
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
    # TODO(phase 6, fwd-offsets): the forward program's sequence: where it lives in the pack, and its lengths
    # Contract: q_start and k_start (its first rows in q and in k, v) and N_Q, N_K come from CU_Q and CU_K
    # (the host never reads them); a program whose query block starts at or past N_Q returns without
    # storing anything (the grid is sized for the longest sequence).
    tl.static_assert(False, "phase 6: the forward program's sequence: where it lives in the pack, and its lengths")
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

    # TODO(phase 6, fwd-start): Phase 3's running state and key range [0, full) + [full, end) for this block
    # Contract: as Phase 3's init and range, with this sequence's N_K: causal is per sequence and
    # top-left (row i sees keys 0..i of its own sequence); no key block that no row may see is visited.
    tl.static_assert(False, "phase 6: Phase 3's running state and key range [0, full) + [full, end) for this block")
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt, 0, full, offs_m, offs_n,
                               N_K, qk_scale, seed, bh, MAX_Q, MAX_K, dropout_p,
                               BLOCK_N, False, CAUSAL, DROPOUT, DOT_PRECISION)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt, full, end, offs_m, offs_n,
                               N_K, qk_scale, seed, bh, MAX_Q, MAX_K, dropout_p,
                               BLOCK_N, True, CAUSAL, DROPOUT, DOT_PRECISION)

    # TODO(phase 6, fwd-finish): store o and lse for the rows < N_Q of this sequence
    # Contract: o = acc / l_i, times 1/(1-p) when DROPOUT, in O's dtype; a row that saw no key (N_K = 0)
    # gets o = 0, not NaN, and lse = -inf; lse is the natural-log logsumexp over every key (dropout does
    # not change it), float32, at LSE[h, q_start + row] of an (H, TOTAL_Q) array.
    tl.static_assert(False, "phase 6: store o and lse for the rows < N_Q of this sequence")


def varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, sm_scale,
                   dropout_p, seed, config=None):
    """(o, lse) of packed inputs that passed `check_varlen`: o (total_q, H, D) in q's dtype, lse (H, total_q)
    float32. The values of cu_seqlens are checked here, right before the launch.

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
    # The values of cu_seqlens, last before the launch: the GPU, drained by this check's copy to the
    # host, idles only until the kernel below starts.
    check_cu_seqlens(cu_seqlens_q, cu_seqlens_k, total_q, k.shape[0], max_seqlen_q, max_seqlen_k)
    varlen_fwd_kernel[(n_m_blocks * n_seq * H,)](
        q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, sm_scale, seed if dropout else 0, dropout_p,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), o.stride(0), o.stride(1),
        H, total_q, max_seqlen_q, max_seqlen_k, n_m_blocks,
        HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal, DROPOUT=dropout,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps, num_stages=num_stages)
    return o, lse
