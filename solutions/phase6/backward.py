"""The backward pass over a packed batch, with dropout: Phase 4's two kernels, varlen offsets and
the forward's dropout mask regenerated tile by tile.

With a keep-mask M (0 or 1) and P_drop = P * M / (1 - p), the forward computes O = P_drop V. Then
    dV = P_drop^T dO                       the dropped probabilities, scaled, as the forward used them;
    dP = (dO V^T) * M / (1 - p)            the gradient reaches P only through the kept elements;
    dS = P * (dP - delta),  delta_i = sum_j P_ij dP_ij = rowsum(dO * O)   (Phase 4's delta, unchanged).
Both kernels call `dropout_keep` with the forward's (seed, head, row, column): the same mask, drawn
again, never stored. Phase 4's preprocess kernel (delta, lse in log2 units) is reused as it is.
"""
import torch
import triton
import triton.language as tl

from ..phase4.backward import PRE_BLOCK, backward_config, bwd_preprocess_kernel
from .dropout import dropout_keep
from .varlen import as_heads

LOG2E = tl.constexpr(1.4426950408889634)  # a constexpr, usable in kernels; LOG2E.value on the host


@triton.jit
def _dkdv_inner(dk, dv, k, v, Q, DO, LSE2, DELTA, stride_qt, stride_dot, start_n, lo, hi, N_Q, qk_scale,
                seed, bh, MAX_Q, MAX_K, dropout_p,
                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr,
                DROPOUT: tl.constexpr, PRECISION: tl.constexpr):
    """Phase 4's transposed sweep over queries lo..hi of one sequence, with dropout."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        in_q = offs_m < N_Q
        qT = tl.load(Q + offs_m[None, :] * stride_qt + offs_d[:, None], mask=in_q[None, :], other=0.0)
        do = tl.load(DO + offs_m[:, None] * stride_dot + offs_d[None, :], mask=in_q[:, None], other=0.0)
        lse2 = tl.load(LSE2 + offs_m, mask=in_q, other=float("inf"))
        delta = tl.load(DELTA + offs_m, mask=in_q, other=0.0)
        # TODO(phase 6, dkdv-recompute): Phase 4's P^T of this tile, recomputed, and dP^T = v dO^T
        # Contract: P^T from k, q and lse2 (never loaded), exactly 0 above the causal diagonal when MASK;
        # dP^T before dropout (the next TODO applies the mask); indices local to the sequence.
        ### BEGIN SOLUTION
        sT = tl.dot(k, qT, input_precision=PRECISION)
        pT = tl.math.exp2(sT * qk_scale - lse2[None, :])
        if MASK:
            pT = tl.where(offs_n[:, None] <= offs_m[None, :], pT, 0.0)
        dpT = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        ### END SOLUTION
        # TODO(phase 6, dkdv-dropout): add this tile to dv and dk, with dropout where it belongs
        # Contract: without DROPOUT, Phase 4's dv += P^T dO, dS^T = P^T (dP^T - delta), dk += dS^T q. With it,
        # the forward's mask of this tile, transposed (same seed, bh, row, col): dv gets the kept P^T only
        # (its 1/(1-p) is applied once, after the sweep); dP^T keeps only the kept elements, times 1/(1-p),
        # before delta is subtracted; dS^T multiplies the full, undropped P^T.
        ### BEGIN SOLUTION
        if DROPOUT:
            keepT = dropout_keep(seed, bh, offs_m[None, :], offs_n[:, None], MAX_Q, MAX_K, dropout_p)
            dv += tl.dot(tl.where(keepT, pT, 0.0).to(do.dtype), do, input_precision=PRECISION)
            dpT = tl.where(keepT, dpT * (1.0 / (1.0 - dropout_p)), 0.0)
        else:
            dv += tl.dot(pT.to(do.dtype), do, input_precision=PRECISION)
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT), input_precision=PRECISION)
        ### END SOLUTION
    return dk, dv


@triton.jit
def varlen_dkdv_kernel(Q, K, V, DO, LSE2, DELTA, DK, DV, CU_Q, CU_K, sm_scale, qk_scale, seed, dropout_p,
                       stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
                       stride_dkt, stride_dkh, stride_dvt, stride_dvh,
                       H, TOTAL_Q, MAX_Q, MAX_K, N_N_BLOCKS,
                       HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       MASK_BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
                       PRECISION: tl.constexpr):
    # A 1-D grid, the key blocks of one (sequence, head) on neighbouring programs, the order of Phase
    # 4's (key block, head) grid: the programs that run together sweep the same q and dO, which stay
    # in L2. (Head first, every running program streamed another head's q and dO from memory; and a
    # second grid axis stops at 65535 programs, which sequences * H may pass.)
    pid = tl.program_id(0)
    bh = pid // N_N_BLOCKS
    seq = bh // H
    h = (bh % H).to(tl.int64)
    start_n = (pid % N_N_BLOCKS) * BLOCK_N
    # TODO(phase 6, dkdv-offsets): the dK/dV program's sequence: where it lives in the pack, and its lengths
    # Contract: q_start, N_Q, k_start, N_K from CU_Q and CU_K, as in the forward; a program whose key
    # block starts at or past N_K returns without storing anything.
    ### BEGIN SOLUTION
    q_start = tl.load(CU_Q + seq)
    N_Q = tl.load(CU_Q + seq + 1) - q_start
    k_start = tl.load(CU_K + seq)
    N_K = tl.load(CU_K + seq + 1) - k_start
    if start_n >= N_K:
        return
    ### END SOLUTION
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    in_k = offs_n[:, None] < N_K
    # The sequence's first rows, once per program in int64 (a pack may pass 2**31 elements); the
    # offsets of rows within the sequence stay 32-bit, as in Phase 4.
    K += k_start.to(tl.int64) * stride_kt + h * stride_kh
    V += k_start.to(tl.int64) * stride_vt + h * stride_vh
    DK += k_start.to(tl.int64) * stride_dkt + h * stride_dkh
    DV += k_start.to(tl.int64) * stride_dvt + h * stride_dvh
    k = tl.load(K + offs_n[:, None] * stride_kt + offs_d[None, :], mask=in_k, other=0.0)
    v = tl.load(V + offs_n[:, None] * stride_vt + offs_d[None, :], mask=in_k, other=0.0)
    Q += q_start.to(tl.int64) * stride_qt + h * stride_qh
    DO += q_start.to(tl.int64) * stride_dot + h * stride_doh
    LSE2 += h * TOTAL_Q + q_start
    DELTA += h * TOTAL_Q + q_start
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    # TODO(phase 6, dkdv-sweep): sweep the query blocks of this sequence that see this key block
    # Contract: Phase 4's sweep, over this sequence's N_Q queries: every query that sees a key of this
    # block is visited exactly once; causal skips the queries before start_n and masks only the diagonal
    # block, in steps of MASK_BLOCK_M.
    ### BEGIN SOLUTION
    if CAUSAL:
        dk, dv = _dkdv_inner(dk, dv, k, v, Q, DO, LSE2, DELTA, stride_qt, stride_dot,
                             start_n, start_n, start_n + BLOCK_N, N_Q, qk_scale, seed, bh, MAX_Q, MAX_K, dropout_p,
                             HEAD_DIM, MASK_BLOCK_M, BLOCK_N, True, DROPOUT, PRECISION)
        lo = start_n + BLOCK_N
    else:
        lo = 0
    dk, dv = _dkdv_inner(dk, dv, k, v, Q, DO, LSE2, DELTA, stride_qt, stride_dot,
                         start_n, lo, N_Q, N_Q, qk_scale, seed, bh, MAX_Q, MAX_K, dropout_p,
                         HEAD_DIM, BLOCK_M, BLOCK_N, False, DROPOUT, PRECISION)
    ### END SOLUTION
    if DROPOUT:
        dv *= 1.0 / (1.0 - dropout_p)  # P_drop = P * M / (1 - p): the scale of dV, once per key row
    dk *= sm_scale
    tl.store(DK + offs_n[:, None] * stride_dkt + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=in_k)
    tl.store(DV + offs_n[:, None] * stride_dvt + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=in_k)


@triton.jit
def _dq_inner(dq, q, do, lse2, delta, K, V, stride_kt, stride_vt, start_m, lo, hi, N_K, qk_scale,
              seed, bh, MAX_Q, MAX_K, dropout_p,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr,
              CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr):
    """Phase 4's sweep over keys lo..hi of one sequence for a block of queries, with dropout."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_k = offs_n[None, :] < N_K
        if MASK:
            kT = tl.load(K + offs_n[None, :] * stride_kt + offs_d[:, None], mask=in_k, other=0.0)
            vT = tl.load(V + offs_n[None, :] * stride_vt + offs_d[:, None], mask=in_k, other=0.0)
        else:
            kT = tl.load(K + offs_n[None, :] * stride_kt + offs_d[:, None])
            vT = tl.load(V + offs_n[None, :] * stride_vt + offs_d[:, None])
        # TODO(phase 6, dq-recompute): Phase 4's P of this tile, recomputed, and dP = dO v^T
        # Contract: P from q, k and lse2 (never loaded), exactly 0 where MASK hides a key (>= N_K, or after
        # the row when CAUSAL); dP before dropout (the next TODO applies the mask).
        ### BEGIN SOLUTION
        s = tl.dot(q, kT, input_precision=PRECISION)
        p = tl.math.exp2(s * qk_scale - lse2[:, None])
        if MASK:
            keep = in_k
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None])
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, vT, input_precision=PRECISION)
        ### END SOLUTION
        # TODO(phase 6, dq-dropout): add this tile to dq, with dropout where it belongs
        # Contract: without DROPOUT, Phase 4's dS = P (dP - delta), dq += dS k. With it, dP keeps only the
        # forward's kept elements of this tile (same seed, bh, row, col), times 1/(1-p), before delta is
        # subtracted; dS multiplies the undropped P.
        ### BEGIN SOLUTION
        if DROPOUT:
            kept = dropout_keep(seed, bh, offs_m[:, None], offs_n[None, :], MAX_Q, MAX_K, dropout_p)
            dp = tl.where(kept, dp * (1.0 / (1.0 - dropout_p)), 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kT.dtype), tl.trans(kT), input_precision=PRECISION)
        ### END SOLUTION
    return dq


@triton.jit
def varlen_dq_kernel(Q, K, V, DO, LSE2, DELTA, DQ, CU_Q, CU_K, sm_scale, qk_scale, seed, dropout_p,
                     stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
                     stride_dqt, stride_dqh,
                     H, TOTAL_Q, MAX_Q, MAX_K, N_M_BLOCKS,
                     HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     MASK_BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
                     PRECISION: tl.constexpr):
    # As the dK/dV kernel: a 1-D grid, the query blocks of one (sequence, head) side by side, sharing
    # its k and v in L2. Causal: the last query blocks see the most keys; launched first (Phase 4).
    pid = tl.program_id(0)
    bh = pid // N_M_BLOCKS
    seq = bh // H
    h = (bh % H).to(tl.int64)
    block = pid % N_M_BLOCKS
    if CAUSAL:
        block = N_M_BLOCKS - 1 - block
    start_m = block * BLOCK_M
    # TODO(phase 6, dq-offsets): the dQ program's sequence: where it lives in the pack, and its lengths
    # Contract: q_start, N_Q, k_start, N_K from CU_Q and CU_K; a program whose query block starts at or
    # past N_Q returns without storing anything.
    ### BEGIN SOLUTION
    q_start = tl.load(CU_Q + seq)
    N_Q = tl.load(CU_Q + seq + 1) - q_start
    k_start = tl.load(CU_K + seq)
    N_K = tl.load(CU_K + seq + 1) - k_start
    if start_m >= N_Q:
        return
    ### END SOLUTION
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    in_q = offs_m < N_Q
    Q += q_start.to(tl.int64) * stride_qt + h * stride_qh  # int64 once per program, as in the dK/dV kernel
    DO += q_start.to(tl.int64) * stride_dot + h * stride_doh
    DQ += q_start.to(tl.int64) * stride_dqt + h * stride_dqh
    q = tl.load(Q + offs_m[:, None] * stride_qt + offs_d[None, :], mask=in_q[:, None], other=0.0)
    do = tl.load(DO + offs_m[:, None] * stride_dot + offs_d[None, :], mask=in_q[:, None], other=0.0)
    lse2 = tl.load(LSE2 + h * TOTAL_Q + q_start + offs_m, mask=in_q, other=0.0)
    delta = tl.load(DELTA + h * TOTAL_Q + q_start + offs_m, mask=in_q, other=0.0)
    K += k_start.to(tl.int64) * stride_kt + h * stride_kh
    V += k_start.to(tl.int64) * stride_vt + h * stride_vh
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    # TODO(phase 6, dq-sweep): sweep the key blocks of this sequence that this query block sees
    # Contract: Phase 4's sweep, over this sequence's N_K keys: every visible key visited exactly once;
    # whole visible blocks unmasked, the partial last block and the causal diagonal masked, in steps of
    # MASK_BLOCK_N; blocks no row sees skipped.
    ### BEGIN SOLUTION
    n_k_full = (N_K // BLOCK_N) * BLOCK_N
    if CAUSAL:
        mid = tl.minimum(start_m, n_k_full)
        hi = tl.minimum(start_m + BLOCK_M, N_K)
    else:
        mid = n_k_full
        hi = N_K
    dq = _dq_inner(dq, q, do, lse2, delta, K, V, stride_kt, stride_vt, start_m, 0, mid, N_K, qk_scale,
                   seed, bh, MAX_Q, MAX_K, dropout_p, HEAD_DIM, BLOCK_M, BLOCK_N, False, CAUSAL, DROPOUT, PRECISION)
    dq = _dq_inner(dq, q, do, lse2, delta, K, V, stride_kt, stride_vt, start_m, mid, hi, N_K, qk_scale,
                   seed, bh, MAX_Q, MAX_K, dropout_p, HEAD_DIM, BLOCK_M, MASK_BLOCK_N, True, CAUSAL, DROPOUT,
                   PRECISION)
    ### END SOLUTION
    dq *= sm_scale
    tl.store(DQ + offs_m[:, None] * stride_dqt + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=in_q[:, None])


def varlen_backward(do, q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, sm_scale,
                    dropout_p, seed, config=None):
    """(dq, dk, dv) of packed inputs from dO, o and lse (H, total_q) as `varlen_forward` returned them."""
    total_q, H, D = q.shape
    n_seq = cu_seqlens_q.numel() - 1
    q, k, v, o, do = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v, o, do))
    (m1, n1, mask_m1, warps1, stages1), (m2, n2, mask_n2, warps2, stages2) = \
        config or backward_config(D, q.dtype, q.device, causal)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    # Phase 4's preprocess on the (1, H, total_q, D) view: delta and lse2 come out (H, total_q).
    lse2, delta = torch.empty_like(lse), torch.empty_like(lse)
    lse3 = lse.unsqueeze(0)
    bwd_preprocess_kernel[(triton.cdiv(total_q, PRE_BLOCK), H)](
        as_heads(o), as_heads(do), lse3, lse2, delta, *as_heads(o).stride()[:3], *as_heads(do).stride()[:3],
        *lse3.stride(), H, total_q, HEAD_DIM=D, BLOCK_M=PRE_BLOCK)

    dq, dk, dv = (torch.empty_like(x, memory_format=torch.contiguous_format) for x in (q, k, v))
    dropout = dropout_p > 0.0
    common = (sm_scale, sm_scale * LOG2E.value, seed if dropout else 0, dropout_p)
    strides = (*q.stride()[:2], *k.stride()[:2], *v.stride()[:2], *do.stride()[:2])
    n_n_blocks, n_m_blocks = triton.cdiv(max_seqlen_k, n1), triton.cdiv(max_seqlen_q, m2)
    varlen_dkdv_kernel[(n_seq * H * n_n_blocks,)](
        q, k, v, do, lse2, delta, dk, dv, cu_seqlens_q, cu_seqlens_k, *common,
        *strides, *dk.stride()[:2], *dv.stride()[:2], H, total_q, max_seqlen_q, max_seqlen_k, n_n_blocks,
        HEAD_DIM=D, BLOCK_M=m1, BLOCK_N=n1, MASK_BLOCK_M=mask_m1, CAUSAL=causal, DROPOUT=dropout,
        PRECISION=precision, num_warps=warps1, num_stages=stages1)
    varlen_dq_kernel[(n_seq * H * n_m_blocks,)](
        q, k, v, do, lse2, delta, dq, cu_seqlens_q, cu_seqlens_k, *common,
        *strides, *dq.stride()[:2], H, total_q, max_seqlen_q, max_seqlen_k, n_m_blocks,
        HEAD_DIM=D, BLOCK_M=m2, BLOCK_N=n2, MASK_BLOCK_N=mask_n2, CAUSAL=causal, DROPOUT=dropout,
        PRECISION=precision, num_warps=warps2, num_stages=stages2)
    return dq, dk, dv
