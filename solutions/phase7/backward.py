"""The backward pass of Phase 7's attention: Phase 4's three kernels, generalized the same way.

- grouped-query attention: a K/V head serves GROUP query heads, so its dK and dV are sums over
  the query heads of the group. One dK/dV program owns a block of keys of one K/V head and loops
  over the group's query heads, accumulating on chip: no K/V is repeated per head, no per-head dK
  is written and summed afterwards, and no two programs write the same rows (no atomics). The
  programs are launched longest first (all heads' first key blocks, the longest under a causal
  mask, before any second block): with G times fewer, G times longer programs than dense
  attention, the order is what keeps the last wave from running alone (see DKDV_* below);
- the band: query i sees key j iff j - WIN_RIGHT <= i <= j + WIN_LEFT, so a key block is seen by a
  band of query blocks, found by the forward's `_key_range` with the roles of the two swapped;
- soft-capping: the chain rule through c = softcap * tanh(s / softcap) multiplies dS by
  dc/ds = 1 - tanh^2 = 1 - (c / softcap)^2, recomputed from the capped score itself;
- an empty row (lse = -inf) must contribute nothing: its lse becomes +inf for exp2, so p = 0.
"""
import torch
import triton
import triton.language as tl

from .forward import _key_range, _logits, _softcap_grad, _visible
from .options import Options, attention_options, block_d, check_like, unit_last_stride


@triton.jit
def _bwd_preprocess(O, DO, LSE, LSE2, DELTA,
                    stride_ob, stride_oh, stride_on, stride_dob, stride_doh, stride_don, H, N_Q,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    bh = tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    in_q = offs_m < N_Q
    ok = in_q[:, None] & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :], mask=ok, other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_don + offs_d[None, :],
                 mask=ok, other=0.0)
    lse = tl.load(LSE + bh.to(tl.int64) * N_Q + offs_m, mask=in_q, other=0.0)
    # TODO(phase 7, delta): delta = rowsum(dO * O), and lse in base 2 for the main kernels' exp2
    # Contract: as Phase 4 (DELTA and LSE2 float32 (B, H, N_Q) contiguous, one value per row < N_Q); a row
    # that saw no key in the forward (lse = -inf) gets an lse2 for which exp2(s - lse2) is 0, not inf (the
    # masks zero such a row's p too: this keeps every p finite before the mask, whatever path computes it).
    ### BEGIN SOLUTION
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + bh.to(tl.int64) * N_Q + offs_m, delta, mask=in_q)
    # p = exp2(s - lse2): an empty row's -inf would give exp2(+inf); +inf gives exp2(-inf) = 0.
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    tl.store(LSE2 + bh.to(tl.int64) * N_Q + offs_m, lse2, mask=in_q)
    ### END SOLUTION


@triton.jit
def _dkdv_inner(dk, dv, k, v, Q, DO, LSE2, DELTA, stride_qn, stride_don, offs_n, offs_d, lo, hi,
                N_Q, N_K, WIN_LEFT, WIN_RIGHT, sm_scale, softcap,
                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, MASK: tl.constexpr, SOFTCAP: tl.constexpr,
                PRECISION: tl.constexpr):
    """Add to dk, dv (BLOCK_N x BLOCK_D) the contribution of query rows lo..hi of one query head.

    Transposed tiles (keys along rows) as in Phase 4. A query row past N_Q loads q = dO = 0 and
    lse2 = +inf: its p is exactly 0. A key past N_K (in a last, partial key block) gets garbage that
    stays in its own row of dk and dv, which is never stored.
    """
    d_ok = offs_d < HEAD_DIM
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        in_q = offs_m < N_Q
        qT = tl.load(Q + offs_m[None, :] * stride_qn + offs_d[:, None], mask=in_q[None, :] & d_ok[:, None], other=0.0)
        do = tl.load(DO + offs_m[:, None] * stride_don + offs_d[None, :], mask=in_q[:, None] & d_ok[None, :],
                     other=0.0)
        lse2 = tl.load(LSE2 + offs_m, mask=in_q, other=float("inf"))
        delta = tl.load(DELTA + offs_m, mask=in_q, other=0.0)
        # TODO(phase 7, dkdv-tile): this query block's contribution to dk and dv, through the cap and the band
        # Contract: Phase 4's tile (P^T recomputed from k, q and lse2; dV += P^T dO; dS^T = P^T (dP^T - delta);
        # dK += dS^T Q, sm_scale applied later), with the scores of the forward (`_logits`), pairs outside the
        # band or past N_K weighing exactly 0 when MASK, and dS multiplied by the cap's derivative when SOFTCAP.
        ### BEGIN SOLUTION
        sT = _logits(tl.dot(k, qT, input_precision=PRECISION), sm_scale, softcap, SOFTCAP)  # (BLOCK_N, BLOCK_M)
        pT = tl.math.exp2(sT - lse2[None, :])
        if MASK:
            pT = tl.where(_visible(offs_m[None, :], offs_n[:, None], N_K, WIN_LEFT, WIN_RIGHT), pT, 0.0)
        dv += tl.dot(pT.to(do.dtype), do, input_precision=PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dsT = pT * (dpT - delta[None, :])
        if SOFTCAP:
            dsT = dsT * _softcap_grad(sT, softcap)  # through c = softcap * tanh(s / softcap)
        dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT), input_precision=PRECISION)
        ### END SOLUTION
    return dk, dv


@triton.jit
def _bwd_dkdv(Q, K, V, DO, LSE2, DELTA, DK, DV, sm_scale, softcap,
              stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
              stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
              stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
              H, GROUP, N_Q, N_K, WIN_LEFT, WIN_RIGHT,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              SOFTCAP: tl.constexpr, PRECISION: tl.constexpr, HEADS_FASTEST: tl.constexpr,
              GROUP_SPLITS: tl.constexpr):
    # Programs start in the order of their ids, axis 0 fastest. HEADS_FASTEST: every (batch, K/V head)'s
    # key block 0 first, then every block 1, ...: the longest programs under a causal mask go first.
    if HEADS_FASTEST:
        heads, block = tl.program_id(0), tl.program_id(1)
    else:
        block, heads = tl.program_id(0), tl.program_id(1)
    start_n = block * BLOCK_N
    # GROUP_SPLITS > 1: the group's query heads are shared among that many programs (heads g_lo .. g_hi - 1
    # each), which add their dk and dv into float32 DK and DV with atomics.
    bhk = heads // GROUP_SPLITS
    g_lo = heads % GROUP_SPLITS * (GROUP // GROUP_SPLITS)
    g_hi = g_lo + GROUP // GROUP_SPLITS
    H_KV = H // GROUP
    b, hk = (bhk // H_KV).to(tl.int64), (bhk % H_KV).to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_ok = (offs_n[:, None] < N_K) & (offs_d[None, :] < HEAD_DIM)
    k = tl.load(K + b * stride_kb + hk * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_ok,
                other=0.0)
    v = tl.load(V + b * stride_vb + hk * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_ok,
                other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    # TODO(phase 7, dkdv-group): dK and dV of this K/V head: the sum over the query heads g_lo .. g_hi - 1
    # Contract: every query row of every head g_lo .. g_hi - 1 of the group (all GROUP of them unless the
    # launcher splits the group) that sees a key of this block is visited exactly once (the masked edges
    # with MASK=True, the whole blocks without); query blocks that see none of these keys are never loaded;
    # the sum stays on chip (no copy of K/V, no per-head dK written and summed later).
    ### BEGIN SOLUTION
    # Query i sees key j iff j - WIN_RIGHT <= i <= j + WIN_LEFT: the forward's band, transposed.
    lo, full_lo, full_hi, hi = _key_range(start_n, N_K, N_Q, WIN_RIGHT, WIN_LEFT, BLOCK_N, BLOCK_M)
    for g in range(g_lo, g_hi):
        h = hk * GROUP + g
        q_head = Q + b * stride_qb + h * stride_qh
        do_head = DO + b * stride_dob + h * stride_doh
        lse2_head = LSE2 + (b * H + h) * N_Q
        delta_head = DELTA + (b * H + h) * N_Q
        dk, dv = _dkdv_inner(dk, dv, k, v, q_head, do_head, lse2_head, delta_head, stride_qn, stride_don, offs_n,
                             offs_d, lo, full_lo, N_Q, N_K, WIN_LEFT, WIN_RIGHT, sm_scale, softcap,
                             HEAD_DIM, BLOCK_M, True, SOFTCAP, PRECISION)
        dk, dv = _dkdv_inner(dk, dv, k, v, q_head, do_head, lse2_head, delta_head, stride_qn, stride_don, offs_n,
                             offs_d, full_lo, full_hi, N_Q, N_K, WIN_LEFT, WIN_RIGHT, sm_scale, softcap,
                             HEAD_DIM, BLOCK_M, False, SOFTCAP, PRECISION)
        dk, dv = _dkdv_inner(dk, dv, k, v, q_head, do_head, lse2_head, delta_head, stride_qn, stride_don, offs_n,
                             offs_d, full_hi, hi, N_Q, N_K, WIN_LEFT, WIN_RIGHT, sm_scale, softcap,
                             HEAD_DIM, BLOCK_M, True, SOFTCAP, PRECISION)
    ### END SOLUTION
    dk *= sm_scale  # s = sm_scale * q k^T (before the cap): dK = sm_scale * dS^T q
    dk_ptrs = DK + b * stride_dkb + hk * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :]
    dv_ptrs = DV + b * stride_dvb + hk * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :]
    if GROUP_SPLITS > 1:  # DK and DV are float32, zeroed: the GROUP_SPLITS programs of this block add up
        tl.atomic_add(dk_ptrs, dk, mask=kv_ok, sem="relaxed")
        tl.atomic_add(dv_ptrs, dv, mask=kv_ok, sem="relaxed")
    else:
        tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=kv_ok)
        tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=kv_ok)


@triton.jit
def _dq_inner(dq, q, do, lse2, delta, K, V, stride_kn, stride_vn, offs_m, offs_d, lo, hi,
              N_K, WIN_LEFT, WIN_RIGHT, sm_scale, softcap,
              HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr, SOFTCAP: tl.constexpr,
              PRECISION: tl.constexpr):
    """Add to dq (BLOCK_M x BLOCK_D) the contribution of keys lo..hi (MASK: the band's edges, the end of K)."""
    d_ok = offs_d < HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if MASK:
            kv_ok = d_ok[:, None] & (offs_n[None, :] < N_K)
        else:
            kv_ok = d_ok[:, None]
        kT = tl.load(K + offs_n[None, :] * stride_kn + offs_d[:, None], mask=kv_ok, other=0.0)
        vT = tl.load(V + offs_n[None, :] * stride_vn + offs_d[:, None], mask=kv_ok, other=0.0)
        # TODO(phase 7, dq-tile): this key block's contribution to dq, through the cap and the band
        # Contract: Phase 4's tile (P from q, k and lse2; dS = P (dP - delta); dQ += dS K, sm_scale applied
        # later), with the forward's scores, pairs outside the band or past N_K weighing exactly 0 when MASK,
        # and dS multiplied by the cap's derivative when SOFTCAP.
        ### BEGIN SOLUTION
        s = _logits(tl.dot(q, kT, input_precision=PRECISION), sm_scale, softcap, SOFTCAP)
        p = tl.math.exp2(s - lse2[:, None])
        if MASK:
            p = tl.where(_visible(offs_m[:, None], offs_n[None, :], N_K, WIN_LEFT, WIN_RIGHT), p, 0.0)
        dp = tl.dot(do, vT, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        if SOFTCAP:
            ds = ds * _softcap_grad(s, softcap)
        dq += tl.dot(ds.to(kT.dtype), tl.trans(kT), input_precision=PRECISION)
        ### END SOLUTION
    return dq


@triton.jit
def _bwd_dq(Q, K, V, DO, LSE2, DELTA, DQ, sm_scale, softcap,
            stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
            stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
            stride_dqb, stride_dqh, stride_dqn,
            H, GROUP, N_Q, N_K, WIN_LEFT, WIN_RIGHT,
            HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
            SOFTCAP: tl.constexpr, PRECISION: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    hk = h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    in_q = offs_m < N_Q
    ok = in_q[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :], mask=ok, other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_don + offs_d[None, :], mask=ok,
                 other=0.0)
    lse2 = tl.load(LSE2 + bh.to(tl.int64) * N_Q + offs_m, mask=in_q, other=float("inf"))
    delta = tl.load(DELTA + bh.to(tl.int64) * N_Q + offs_m, mask=in_q, other=0.0)
    K += b * stride_kb + hk * stride_kh
    V += b * stride_vb + hk * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    lo, full_lo, full_hi, hi = _key_range(start_m, N_Q, N_K, WIN_LEFT, WIN_RIGHT, BLOCK_M, BLOCK_N)
    dq = _dq_inner(dq, q, do, lse2, delta, K, V, stride_kn, stride_vn, offs_m, offs_d, lo, full_lo,
                   N_K, WIN_LEFT, WIN_RIGHT, sm_scale, softcap, HEAD_DIM, BLOCK_N, True, SOFTCAP, PRECISION)
    dq = _dq_inner(dq, q, do, lse2, delta, K, V, stride_kn, stride_vn, offs_m, offs_d, full_lo, full_hi,
                   N_K, WIN_LEFT, WIN_RIGHT, sm_scale, softcap, HEAD_DIM, BLOCK_N, False, SOFTCAP, PRECISION)
    dq = _dq_inner(dq, q, do, lse2, delta, K, V, stride_kn, stride_vn, offs_m, offs_d, full_hi, hi,
                   N_K, WIN_LEFT, WIN_RIGHT, sm_scale, softcap, HEAD_DIM, BLOCK_N, True, SOFTCAP, PRECISION)
    dq *= sm_scale
    tl.store(DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqn + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=ok)


# ---------------------------------------------------------------------------- host side
# ((BLOCK_M1, BLOCK_N1, warps, stages) of the dK/dV kernel, (BLOCK_M2, BLOCK_N2, warps, stages) of dQ),
# per padded head dim. Up to 128: Phase 4's tuned choices; 256 holds BLOCK_N x 256 float32 dk and dv
# (dK/dV) or BLOCK_M x 256 dq (dQ) in registers, hence the narrow tiles.
CONFIGS_SM90 = {16: ((32, 128, 4, 3), (128, 64, 8, 3)), 32: ((32, 128, 4, 3), (128, 64, 8, 3)),
                64: ((32, 128, 4, 3), (128, 64, 8, 3)), 128: ((32, 64, 4, 3), (64, 32, 4, 4)),
                256: ((16, 32, 4, 2), (32, 32, 4, 2))}
CONFIGS_SM80 = {d: ((32, 64, 4, 2), (64, 32, 4, 2)) for d in (16, 32, 64, 128)} | {256: ((16, 32, 4, 2),
                                                                                        (32, 16, 4, 2))}
CONFIG_FP32 = {d: ((16, 32, 4, 2), (32, 16, 4, 2)) for d in (16, 32, 64, 128)} | {256: ((16, 16, 4, 1),
                                                                                       (16, 16, 4, 1))}
CONFIG_INTERPRETER = ((16, 32, 1, 1), (32, 16, 1, 1))
PRE_BLOCK = 32
# The dK/dV grid. With GQA there are G times fewer programs than with dense attention, each G times
# longer; under a causal mask their lengths range from 1 to N / BLOCK_M query blocks, and in the order
# of Phase 4's grid (key blocks fastest) the long programs of the last heads start late and run alone
# at the end. DKDV_HEADS_FASTEST launches every head's block 0, then every block 1, ...: longest first.
# DKDV_GROUP_SPLITS > 1 shares each group among that many programs (float32 atomics, then a cast).
# On an H100 (assets/phase7/decode-gqa-variants.json, from experiments/phase7_variants), GQA fwd+bwd
# against dense: 0.90x in Phase 4's order, 1.02x heads fastest; splits gained nothing beyond noise and
# make dK/dV depend on the atomics' order.
DKDV_HEADS_FASTEST = True
DKDV_GROUP_SPLITS = 1


def group_splits(group: int) -> int:
    """The largest divisor of `group` not above DKDV_GROUP_SPLITS."""
    return max(s for s in range(1, min(DKDV_GROUP_SPLITS, group) + 1) if group % s == 0)


def backward_config(q) -> tuple:
    if q.device.type != "cuda":
        return CONFIG_INTERPRETER
    bd = block_d(q.shape[-1])
    if q.dtype == torch.float32:
        return CONFIG_FP32[bd]
    return (CONFIGS_SM90 if torch.cuda.get_device_capability(q.device)[0] >= 9 else CONFIGS_SM80)[bd]


def attention_backward(do, q, k, v, o, lse, opts: Options, grad_dtype=None, config=None):
    """(dq, dk, dv) for checked inputs; gradients in `grad_dtype` (default: the inputs'; ring attention
    asks for float32, which it sums over the ring before rounding)."""
    B, H, N_Q, D = q.shape
    H_kv, N_K = k.shape[1], k.shape[2]
    q, k, v, o, do = (unit_last_stride(x) for x in (q, k, v, o, do))
    lse = lse.to(torch.float32).contiguous()
    (m1, n1, warps1, stages1), (m2, n2, warps2, stages2) = config or backward_config(q)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    bd = block_d(D)
    softcap = opts.softcap or 1.0

    lse2 = torch.empty((B, H, N_Q), device=q.device, dtype=torch.float32)
    delta = torch.empty_like(lse2)
    _bwd_preprocess[(triton.cdiv(N_Q, PRE_BLOCK), B * H)](
        o, do, lse, lse2, delta, *o.stride()[:3], *do.stride()[:3], H, N_Q,
        HEAD_DIM=D, BLOCK_D=bd, BLOCK_M=PRE_BLOCK)

    dtype = grad_dtype or q.dtype
    dq = torch.empty(q.shape, dtype=dtype, device=q.device)
    splits = group_splits(opts.group)
    if splits > 1:
        dk = torch.zeros(k.shape, dtype=torch.float32, device=q.device)
        dv = torch.zeros(v.shape, dtype=torch.float32, device=q.device)
    else:
        dk = torch.empty(k.shape, dtype=dtype, device=q.device)
        dv = torch.empty(v.shape, dtype=dtype, device=q.device)
    grid = (triton.cdiv(N_K, n1), B * H_kv * splits)
    _bwd_dkdv[grid[::-1] if DKDV_HEADS_FASTEST else grid](
        q, k, v, do, lse2, delta, dk, dv, opts.sm_scale, softcap,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dk.stride()[:3], *dv.stride()[:3],
        H, opts.group, N_Q, N_K, opts.left, opts.right,
        HEAD_DIM=D, BLOCK_D=bd, BLOCK_M=m1, BLOCK_N=n1, SOFTCAP=opts.softcap > 0, PRECISION=precision,
        HEADS_FASTEST=DKDV_HEADS_FASTEST, GROUP_SPLITS=splits, num_warps=warps1, num_stages=stages1)
    _bwd_dq[(triton.cdiv(N_Q, m2), B * H)](
        q, k, v, do, lse2, delta, dq, opts.sm_scale, softcap,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dq.stride()[:3],
        H, opts.group, N_Q, N_K, opts.left, opts.right,
        HEAD_DIM=D, BLOCK_D=bd, BLOCK_M=m2, BLOCK_N=n2, SOFTCAP=opts.softcap > 0, PRECISION=precision,
        num_warps=warps2, num_stages=stages2)
    if splits > 1:
        dk, dv = dk.to(dtype), dv.to(dtype)
    return dq, dk, dv


def check_backward_inputs(do, q, o, lse) -> None:
    check_like(do, "do", q, "q")
    check_like(o, "o", q, "q")
    check_like(lse, "lse", q, "q", shape=q.shape[:3], dtypes=(torch.float32, torch.float64))


def flash_attention_backward(do, q, k, v, o, lse, causal=False, sm_scale=None, window=None, softcap=None,
                             alignment="top-left", config=None):
    """(dq, dk, dv) of `flash_attention_forward`'s o, from dO, the inputs, o and its lse.

    The options mean what they mean in the forward. dk and dv have k's shape (B, H_kv, Nk, D): each is the
    sum over the query heads of its group. Nothing of size Nq x Nk is allocated, nothing of K/V repeated.
    """
    opts = attention_options(q, k, v, causal, sm_scale, window, softcap, alignment)
    check_backward_inputs(do, q, o, lse)
    return attention_backward(do, q, k, v, o, lse, opts, config=config)
