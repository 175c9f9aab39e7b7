"""The FlashAttention backward pass: recompute P from q, k and lse, never store it.

Three kernels, each with one job:
- `bwd_preprocess_kernel`: delta_i = rowsum(dO_i * O_i), and lse in base 2 for exp2;
- `bwd_dkdv_kernel`: one program per block of keys, streaming over the queries that see them;
  dK and dV are sums over queries, so each program owns its rows of dK and dV outright;
- `bwd_dq_kernel`: one program per block of queries, streaming over the keys they see; dQ is a
  sum over keys, so each program owns its rows of dQ.
No two programs write the same output row, so no atomics are needed; the price is that both
kernels recompute S = q k^T (and P) for every tile.
"""
import torch
import triton
import triton.language as tl

from ..phase0.checks import check_attention_inputs, check_float_tensor

# exp(x) = exp2(x * log2(e)): exp2 is the fast instruction. A tl.constexpr, so that kernels can use it
# (a plain float global runs in the interpreter but does not compile); host code reads LOG2E.value.
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def bwd_preprocess_kernel(O, DO, LSE, LSE2, DELTA,
                          stride_ob, stride_oh, stride_on, stride_dob, stride_doh, stride_don,
                          stride_lb, stride_lh, stride_ln, H, N_Q,
                          HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    bh = tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    in_q = offs_m < N_Q
    o = tl.load(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :],
                mask=in_q[:, None], other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_don + offs_d[None, :],
                 mask=in_q[:, None], other=0.0)
    lse = tl.load(LSE + b * stride_lb + h * stride_lh + offs_m * stride_ln, mask=in_q, other=0.0)
    # TODO(phase 4, delta): delta = rowsum(P * dP) from O(N * D) data, and lse in base 2
    # Contract: DELTA and LSE2 are float32 (B, H, N_Q) contiguous, one value per query row < N_Q, so
    # that the main kernels can recompute P with exp2 and apply the softmax backward without P or dP.
    ### BEGIN SOLUTION
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + bh * N_Q + offs_m, delta, mask=in_q)
    # The main kernels use exp2: p = exp2(s * sm_scale * log2(e) - lse * log2(e)).
    tl.store(LSE2 + bh * N_Q + offs_m, lse * LOG2E, mask=in_q)
    ### END SOLUTION


@triton.jit
def _dkdv_inner(dk, dv, k, v, Q, DO, LSE2, DELTA, stride_qn, stride_don,
                start_n, lo, hi, N_Q, qk_scale,
                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                MASK: tl.constexpr, PRECISION: tl.constexpr):
    """Add to dk, dv (BLOCK_N x HEAD_DIM) the contribution of queries lo..hi, BLOCK_M at a time.

    Works transposed (keys along rows) so that P^T and dS^T come straight out of tl.dot.
    A query row past N_Q loads q = dO = 0 and lse = +inf, so its p is exactly 0 and it adds nothing.
    """
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        in_q = offs_m < N_Q
        qT = tl.load(Q + offs_m[None, :] * stride_qn + offs_d[:, None], mask=in_q[None, :], other=0.0)
        do = tl.load(DO + offs_m[:, None] * stride_don + offs_d[None, :], mask=in_q[:, None], other=0.0)
        lse2 = tl.load(LSE2 + offs_m, mask=in_q, other=float("inf"))
        delta = tl.load(DELTA + offs_m, mask=in_q, other=0.0)
        # TODO(phase 4, dkdv-tile): add this query block's contribution to dk and dv (transposed tiles: keys along rows)
        # Contract: P^T is recomputed from k, q and lse2, never loaded; masked pairs (the causal diagonal
        # when MASK) contribute exactly 0; dk and dv accumulate in float32 (sm_scale is applied later).
        ### BEGIN SOLUTION
        sT = tl.dot(k, qT, input_precision=PRECISION)                # (BLOCK_N, BLOCK_M) = (S^T) / sm_scale
        pT = tl.math.exp2(sT * qk_scale - lse2[None, :])          # P^T, recomputed: never stored
        if MASK:  # the diagonal block: causal, key n is visible to query m only when n <= m
            pT = tl.where(offs_n[:, None] <= offs_m[None, :], pT, 0.0)
        dv += tl.dot(pT.to(do.dtype), do, input_precision=PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=PRECISION)      # dP^T = V dO^T
        dsT = pT * (dpT - delta[None, :])                         # the softmax Jacobian, row by row
        dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT), input_precision=PRECISION)
        ### END SOLUTION
    return dk, dv


@triton.jit
def bwd_dkdv_kernel(Q, K, V, DO, LSE2, DELTA, DK, DV,
                    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                    stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
                    stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
                    H, N_Q, N_K, sm_scale, qk_scale,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    MASK_BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    bh = tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)  # int64: large tensors overflow int32 offsets
    start_n = tl.program_id(0) * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    in_k = offs_n[:, None] < N_K
    k = tl.load(K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :],
                mask=in_k, other=0.0)
    v = tl.load(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :],
                mask=in_k, other=0.0)
    Q += b * stride_qb + h * stride_qh
    DO += b * stride_dob + h * stride_doh
    LSE2 += bh * N_Q
    DELTA += bh * N_Q
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    # TODO(phase 4, dkdv-sweep): sweep the query blocks that see this key block
    # Contract: every query that sees a key of this block is visited exactly once; queries that see
    # none are skipped (causal); only the causal diagonal goes through the masked path (MASK=True).
    ### BEGIN SOLUTION
    if CAUSAL:
        # Queries m < start_n see none of these keys: skipped. The diagonal block is masked, in
        # smaller steps (less wasted work on the masked half); every query after it sees every key.
        dk, dv = _dkdv_inner(dk, dv, k, v, Q, DO, LSE2, DELTA, stride_qn, stride_don,
                             start_n, start_n, start_n + BLOCK_N, N_Q, qk_scale,
                             HEAD_DIM, MASK_BLOCK_M, BLOCK_N, True, PRECISION)
        lo = start_n + BLOCK_N
    else:
        lo = 0
    dk, dv = _dkdv_inner(dk, dv, k, v, Q, DO, LSE2, DELTA, stride_qn, stride_don,
                         start_n, lo, N_Q, N_Q, qk_scale,
                         HEAD_DIM, BLOCK_M, BLOCK_N, False, PRECISION)
    ### END SOLUTION
    dk *= sm_scale  # S = sm_scale * q k^T, so dK = sm_scale * dS^T q
    tl.store(DK + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=in_k)
    tl.store(DV + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=in_k)


@triton.jit
def _dq_inner(dq, q, do, lse2, delta, K, V, stride_kn, stride_vn,
              start_m, lo, hi, N_K, qk_scale,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              MASK: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """Add to dq (BLOCK_M x HEAD_DIM) the contribution of keys lo..hi, BLOCK_N at a time.

    MASK=True marks the blocks that need it: the causal diagonal and the last, partial key block.
    A key past N_K loads k = v = 0, so its score is 0 and p = exp2(-lse2), not 0. That alone would
    do no harm (its dS is multiplied by k = 0); the harm is overflow: when lse < -88 (every score of
    the row strongly negative), exp2(-lse2) = inf in float32, and inf * 0 = NaN lands in dq.
    """
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_k = offs_n[None, :] < N_K
        if MASK:
            kT = tl.load(K + offs_n[None, :] * stride_kn + offs_d[:, None], mask=in_k, other=0.0)
            vT = tl.load(V + offs_n[None, :] * stride_vn + offs_d[:, None], mask=in_k, other=0.0)
        else:
            kT = tl.load(K + offs_n[None, :] * stride_kn + offs_d[:, None])
            vT = tl.load(V + offs_n[None, :] * stride_vn + offs_d[:, None])
        # TODO(phase 4, dq-tile): add this key block's contribution to dq
        # Contract: P is recomputed from q, k and lse2, never loaded; keys >= N_K and (causal) keys after
        # the row contribute exactly 0 when MASK; dq accumulates in float32 (sm_scale is applied later).
        ### BEGIN SOLUTION
        s = tl.dot(q, kT, input_precision=PRECISION)
        p = tl.math.exp2(s * qk_scale - lse2[:, None])
        if MASK:
            keep = in_k
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None])
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, vT, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kT.dtype), tl.trans(kT), input_precision=PRECISION)
        ### END SOLUTION
    return dq


@triton.jit
def bwd_dq_kernel(Q, K, V, DO, LSE2, DELTA, DQ,
                  stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                  stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
                  stride_dqb, stride_dqh, stride_dqn,
                  H, N_Q, N_K, sm_scale, qk_scale,
                  HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  MASK_BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    bh = tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    # Causal: the last query blocks see the most keys; launching them first shortens the tail.
    if CAUSAL:
        start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
    else:
        start_m = tl.program_id(0) * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    in_q = offs_m < N_Q
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :],
                mask=in_q[:, None], other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_don + offs_d[None, :],
                 mask=in_q[:, None], other=0.0)
    lse2 = tl.load(LSE2 + bh * N_Q + offs_m, mask=in_q, other=0.0)
    delta = tl.load(DELTA + bh * N_Q + offs_m, mask=in_q, other=0.0)
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    # TODO(phase 4, dq-sweep): sweep the key blocks this query block sees
    # Contract: every visible key is visited exactly once; whole, fully visible blocks go unmasked
    # (MASK=False), the partial last block and the causal diagonal masked; invisible blocks skipped.
    ### BEGIN SOLUTION
    n_k_full = (N_K // BLOCK_N) * BLOCK_N      # key blocks that lie wholly inside 0..N_K
    if CAUSAL:
        # Keys n < start_m are seen by every query of the block; keys past start_m + BLOCK_M by
        # none (skipped); the diagonal in between is masked. BLOCK_M is a multiple of BLOCK_N, so
        # the unmasked sweep ends exactly where the diagonal starts.
        mid = tl.minimum(start_m, n_k_full)
        hi = tl.minimum(start_m + BLOCK_M, N_K)
    else:
        mid = n_k_full
        hi = N_K
    dq = _dq_inner(dq, q, do, lse2, delta, K, V, stride_kn, stride_vn, start_m, 0, mid, N_K, qk_scale,
                   HEAD_DIM, BLOCK_M, BLOCK_N, False, CAUSAL, PRECISION)
    dq = _dq_inner(dq, q, do, lse2, delta, K, V, stride_kn, stride_vn, start_m, mid, hi, N_K, qk_scale,
                   HEAD_DIM, BLOCK_M, MASK_BLOCK_N, True, CAUSAL, PRECISION)
    ### END SOLUTION
    dq *= sm_scale  # dQ = sm_scale * dS k
    tl.store(DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqn + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=in_q[:, None])


# ---------------------------------------------------------------------------- host side
# Block sizes, warps and stages per head dim and causality, chosen by the sweep in the lesson
# (grader/lessons/phase4.py: tune) on an H100: the best configuration at D=128 is 3x faster than
# the worst. The dK/dV kernel keeps a BLOCK_N x D tile of k, v, dk and dv resident; the dQ kernel a
# BLOCK_M x D tile of q, dO and dq. Constraints: BLOCK_N1 % MASK_BLOCK_M1 == 0 and
# BLOCK_M2 % BLOCK_N2 == 0 == BLOCK_M2 % MASK_BLOCK_N2.
#   (D, causal): (BLOCK_M1, BLOCK_N1, MASK_BLOCK_M1, warps, stages), (BLOCK_M2, BLOCK_N2, MASK_BLOCK_N2, warps, stages)
CONFIGS_SM90 = {
    (16, False): ((32, 128, 32, 4, 3), (128, 64, 32, 8, 3)),
    (16, True): ((32, 128, 32, 4, 3), (128, 64, 32, 8, 3)),
    (32, False): ((32, 128, 32, 4, 3), (128, 64, 32, 8, 3)),
    (32, True): ((32, 128, 32, 4, 3), (128, 64, 32, 8, 3)),
    (64, False): ((32, 128, 32, 4, 3), (128, 64, 32, 8, 3)),
    (64, True): ((32, 64, 16, 4, 4), (128, 64, 32, 8, 3)),
    (128, False): ((32, 64, 16, 4, 3), (64, 32, 16, 4, 4)),
    (128, True): ((64, 128, 32, 8, 2), (64, 32, 16, 4, 4)),
}
# Older GPUs (sm_80: at most 163 KB of shared memory per block) get smaller tiles.
CONFIGS_SMALL = {d: ((32, 64, 32, 4, 2), (64, 32, 32, 4, 2)) for d in (16, 32, 64, 128)}
# float32 is graded for correctness only. Its exact dots run on CUDA cores, unrolled per thread:
# at D=128 the tiles above take Triton 3.6 half a minute to compile (the longest step of a cold
# grading); these compile in seconds.
CONFIG_FP32 = ((16, 32, 16, 4, 2), (32, 16, 16, 4, 2))
# Under the interpreter every program runs as numpy, one after another: small blocks, many loop trips.
CONFIG_INTERPRETER = ((16, 32, 16, 1, 1), (32, 16, 16, 1, 1))
PRE_BLOCK = 64


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def backward_config(D: int, dtype: torch.dtype, device, causal: bool) -> tuple:
    if _interpreting():
        return CONFIG_INTERPRETER
    if dtype == torch.float32:
        return CONFIG_FP32
    if torch.cuda.get_device_capability(device)[0] >= 9:
        return CONFIGS_SM90[(D, causal)]
    return CONFIGS_SMALL[D]


def _unit_last_stride(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def _check_backward_inputs(do, q, k, v, o, lse):
    check_attention_inputs(q, k, v)
    for name, x in (("do", do), ("o", o)):
        check_float_tensor(x, name)
        if x.shape != q.shape:
            raise ValueError(f"{name} must have q's shape {tuple(q.shape)}, got {tuple(x.shape)}")
        if x.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {x.dtype}, expected q's dtype {q.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device}, q on {q.device}")
    check_float_tensor(lse, "lse", (torch.float32, torch.float64))
    if lse.shape != q.shape[:3]:
        raise ValueError(f"lse must have shape (B, H, Nq) = {tuple(q.shape[:3])}, got {tuple(lse.shape)}")
    if lse.device != q.device:
        raise ValueError(f"lse is on {lse.device}, q on {q.device}")


def flash_attention_backward(do, q, k, v, o, lse, causal=False, sm_scale=None, config=None):
    """(dq, dk, dv) of o = softmax(q k^T * sm_scale) v, from dO, the inputs, o and lse.

    `lse` is the natural-log logsumexp of the scaled scores, (B, H, Nq) float32, as
    `flash_attention_forward` returns it. Nothing of size Nq x Nk is ever allocated.
    `config` overrides `backward_config` (the lesson's tuning sweep uses it).
    """
    _check_backward_inputs(do, q, k, v, o, lse)
    B, H, N_Q, D = q.shape
    N_K = k.shape[2]
    sm_scale = D ** -0.5 if sm_scale is None else float(sm_scale)
    q, k, v, o, do = (_unit_last_stride(x) for x in (q, k, v, o, do))
    lse = lse.to(torch.float32)
    dkdv_config, dq_config = config or backward_config(D, q.dtype, q.device, causal)
    (m1, n1, mask_m1, warps1, stages1), (m2, n2, mask_n2, warps2, stages2) = dkdv_config, dq_config
    precision = "ieee" if q.dtype == torch.float32 else "tf32"  # fp32 stays exact-ish; ignored for fp16/bf16

    lse2 = torch.empty((B, H, N_Q), device=q.device, dtype=torch.float32)
    delta = torch.empty_like(lse2)
    bwd_preprocess_kernel[(triton.cdiv(N_Q, PRE_BLOCK), B * H)](
        o, do, lse, lse2, delta, *o.stride()[:3], *do.stride()[:3], *lse.stride(), H, N_Q,
        HEAD_DIM=D, BLOCK_M=PRE_BLOCK)

    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    qk_scale = sm_scale * LOG2E.value
    bwd_dkdv_kernel[(triton.cdiv(N_K, n1), B * H)](
        q, k, v, do, lse2, delta, dk, dv,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dk.stride()[:3], *dv.stride()[:3],
        H, N_Q, N_K, sm_scale, qk_scale,
        HEAD_DIM=D, BLOCK_M=m1, BLOCK_N=n1, MASK_BLOCK_M=mask_m1, CAUSAL=causal, PRECISION=precision,
        num_warps=warps1, num_stages=stages1)
    bwd_dq_kernel[(triton.cdiv(N_Q, m2), B * H)](
        q, k, v, do, lse2, delta, dq,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dq.stride()[:3],
        H, N_Q, N_K, sm_scale, qk_scale,
        HEAD_DIM=D, BLOCK_M=m2, BLOCK_N=n2, MASK_BLOCK_N=mask_n2, CAUSAL=causal, PRECISION=precision,
        num_warps=warps2, num_stages=stages2)
    return dq, dk, dv
