"""Phase 8, first step: a warp-specialized attention forward for Hopper (sm_90) in Gluon.

Phase 5's kernel is one warpgroup that alternates two GEMMs with a softmax; Triton's compiler decides
when each load is issued and waits on it. Here the schedule is written out, as FlashAttention-3 does:
- a producer partition (one warp) asks the copy engine (TMA) for Q once, then for K and V tiles into
  rings of STAGES shared-memory buffers; each buffer has a `ready` barrier (the copy engine arrives
  when the bytes have landed) and an `empty` barrier (the consumer arrives when its wgmma is done
  with the buffer);
- the consumer partition (the kernel's `num_warps` warps: two warpgroups of 64 query rows each for
  BLOCK_M=128) waits on `ready`, runs S = Q K^T as an asynchronous wgmma from shared memory, the
  online softmax in exp2 in registers, O += P V with P from registers, and releases each buffer;
- the epilogue writes O through a TMA store (a 3-D descriptor per head, so the copy engine clips rows
  past N) and the natural-log lse with a masked store, Phase 3's contract.

Barrier phases: a ring slot is used for the i-th time at iteration j = i * STAGES + slot, and the
parity its barriers complete with is (j // STAGES) & 1. A fresh mbarrier counts as having completed
the phase before phase 0, so the producer's first wait on `empty` (parity 1) passes at once.

Kept here until Phase 8 becomes a phase (solutions/phase8/); checked and timed by
grader/lessons/experiments/phase8_gluon.py, which also compiles it ahead of time for sm_90 on a CPU.
Every variant compiles for sm_90 with Triton 3.6.0 (the GPU machine's) and 3.9.0, no spills; it has
not run on a GPU yet (see the experiment).
"""
import dataclasses
import math

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                               warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

LOG2E = 1.4426950408889634
# Names that moved between Triton 3.6 (the GPU machine's) and 3.9, same arguments and lowering:
# the partition-wide barrier, and the TMA copies (async_copy_* in 3.6, async_load / async_store in 3.9).
_partition_barrier = getattr(gl, "thread_barrier", None) or gl.barrier
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
_tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global


@gluon.jit
def _producer(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready, v_empty,
              q_row, kv_row, n_blocks, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    """One warp: Q once, then K_j and V_j into slot j % STAGES once the consumer has released it."""
    mbarrier.expect(q_bar, q_desc.block_type.nbytes)
    _tma_load(q_desc, [q_row, 0], q_bar, q_smem)
    for j in range(n_blocks):
        slot = j % STAGES
        parity = (j // STAGES) & 1
        # K first: the consumer needs K_j for S_j while V_j can still be on its way.
        mbarrier.wait(k_empty.index(slot), parity ^ 1)
        mbarrier.expect(k_ready.index(slot), k_desc.block_type.nbytes)
        _tma_load(k_desc, [kv_row + j * BLOCK_N, 0], k_ready.index(slot), k_smem.index(slot))
        mbarrier.wait(v_empty.index(slot), parity ^ 1)
        mbarrier.expect(v_ready.index(slot), v_desc.block_type.nbytes)
        _tma_load(v_desc, [kv_row + j * BLOCK_N, 0], v_ready.index(slot), v_smem.index(slot))


@gluon.jit
def _release(bar):
    """Every warp of the consumer is past its wgmma wait before one thread hands the buffer back:
    wgmma completion is tracked per warpgroup, and the arrive is issued once for the partition."""
    _partition_barrier()
    mbarrier.arrive(bar, count=1)


@gluon.jit
def _softmax_update(s, m_i, l_i, j, masked, offs_m, offs_n, N_K, qk_scale,
                    BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr):
    """Phase 3's online-softmax step on the raw scores S_j, in log2 units: (p, alpha, l_i, m_i).
    `masked` is a constexpr (two loops) or a runtime flag (one pipelined loop)."""
    if masked:
        cols = j * BLOCK_N + offs_n
        # Rows past N_K are the next head's (the 2-D view) or zeros: never visible.
        visible = cols[None, :] < N_K
        if CAUSAL:
            visible = visible & (cols[None, :] <= offs_m[:, None])
        s = gl.where(visible, s * qk_scale, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 1))
        s = s - m_new[:, None]
    else:
        m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
        s = s * qk_scale - m_new[:, None]
    p = gl.exp2(s)
    alpha = gl.exp2(m_i - m_new)
    return p, alpha, l_i * alpha + gl.sum(p, 1), m_new


@gluon.jit
def _attend_blocks(acc, l_i, m_i, q_smem, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty,
                   lo, hi, offs_m, N_K, qk_scale,
                   BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, MASKED: gl.constexpr,
                   CAUSAL: gl.constexpr, s_layout: gl.constexpr, o_layout: gl.constexpr):
    """Key blocks lo .. hi one after another: S_j, its softmax, then P_j V_j, each GEMM waited on at once
    (the tensor cores idle while the softmax runs: Phase 5's schedule, written by hand)."""
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    for j in range(lo, hi):
        slot = j % STAGES
        parity = (j // STAGES) & 1
        k_buf = k_smem.index(slot)
        v_buf = v_smem.index(slot)

        mbarrier.wait(k_ready.index(slot), parity)
        s = warpgroup_mma(q_smem, k_buf.permute((1, 0)), s_zero, use_acc=False, is_async=True)
        s = warpgroup_mma_wait(num_outstanding=0, deps=(s, q_smem, k_buf))[0]
        _release(k_empty.index(slot))

        p, alpha, l_i, m_i = _softmax_update(s, m_i, l_i, j, MASKED, offs_m, offs_n, N_K, qk_scale, BLOCK_N, CAUSAL)
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
        p_op = gl.convert_layout(p.to(k_smem.dtype), p_layout)

        mbarrier.wait(v_ready.index(slot), parity)
        acc = warpgroup_mma(p_op, v_buf, acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, v_buf))[0]
        _release(v_empty.index(slot))
    return acc, l_i, m_i


@gluon.jit
def _attend_pipelined(acc, l_i, m_i, q_smem, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty,
                      n_full, n_blocks, offs_m, N_K, qk_scale,
                      BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr,
                      s_layout: gl.constexpr, o_layout: gl.constexpr):
    """FlashAttention-3's intra-warpgroup overlap: S_j = Q K_j^T and O += P_{j-1} V_{j-1} are issued
    together; the softmax of S_j runs while the tensor cores finish P_{j-1} V_{j-1}."""
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))

    mbarrier.wait(k_ready.index(0), 0)
    s = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(num_outstanding=0, deps=(s, q_smem, k_smem.index(0)))[0]
    _release(k_empty.index(0))
    p, alpha, l_i, m_i = _softmax_update(s, m_i, l_i, 0, n_full <= 0, offs_m, offs_n, N_K, qk_scale,
                                         BLOCK_N, CAUSAL)
    p_op = gl.convert_layout(p.to(k_smem.dtype), p_layout)
    for j in range(1, n_blocks):
        slot = j % STAGES
        prev = (j - 1) % STAGES
        k_buf = k_smem.index(slot)
        v_prev = v_smem.index(prev)

        mbarrier.wait(k_ready.index(slot), (j // STAGES) & 1)
        s = warpgroup_mma(q_smem, k_buf.permute((1, 0)), s_zero, use_acc=False, is_async=True)
        mbarrier.wait(v_ready.index(prev), ((j - 1) // STAGES) & 1)
        acc = warpgroup_mma(p_op, v_prev, acc, is_async=True)
        # wgmma groups complete in order: one left outstanding means S_j is done, P_{j-1} V_{j-1} may not be.
        s = warpgroup_mma_wait(num_outstanding=1, deps=(s, k_buf))[0]
        _release(k_empty.index(slot))
        p, alpha, l_i, m_i = _softmax_update(s, m_i, l_i, j, j >= n_full, offs_m, offs_n, N_K, qk_scale,
                                             BLOCK_N, CAUSAL)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, v_prev))[0]
        _release(v_empty.index(prev))
        acc = acc * gl.convert_layout(alpha, o_rows)[:, None]
        p_op = gl.convert_layout(p.to(k_smem.dtype), p_layout)

    last = (n_blocks - 1) % STAGES
    mbarrier.wait(v_ready.index(last), ((n_blocks - 1) // STAGES) & 1)
    acc = warpgroup_mma(p_op, v_smem.index(last), acc, is_async=True)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, v_smem.index(last)))[0]
    _release(v_empty.index(last))
    return acc, l_i, m_i


@gluon.jit
def _consumer(q_smem, k_smem, v_smem, o_smem, q_bar, k_ready, k_empty, v_ready, v_empty, o_desc, LSE,
              qk_scale, start_m, off_bh, N_Q, N_K, n_full, n_blocks,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr,
              CAUSAL: gl.constexpr, PIPELINE: gl.constexpr, num_warps: gl.constexpr):
    # One wgmma accumulator layout per GEMM: warps stacked along M (16 rows each), so a row's
    # reductions stay inside one warp; the instruction's N is the whole tile width.
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    offs_m = start_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=row_layout)
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, row_layout)
    l_i = gl.full([BLOCK_M], 0.0, gl.float32, row_layout)
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)

    mbarrier.wait(q_bar, 0)
    if PIPELINE:
        acc, l_i, m_i = _attend_pipelined(acc, l_i, m_i, q_smem, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty,
                                          n_full, n_blocks, offs_m, N_K, qk_scale, BLOCK_M, BLOCK_N, STAGES, CAUSAL,
                                          s_layout, o_layout)
    else:  # Phase 5's two loops: unmasked blocks, then the masked ones (the diagonal, the ragged end)
        acc, l_i, m_i = _attend_blocks(acc, l_i, m_i, q_smem, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty,
                                       0, n_full, offs_m, N_K, qk_scale, BLOCK_M, BLOCK_N, STAGES, False, CAUSAL,
                                       s_layout, o_layout)
        acc, l_i, m_i = _attend_blocks(acc, l_i, m_i, q_smem, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty,
                                       n_full, n_blocks, offs_m, N_K, qk_scale, BLOCK_M, BLOCK_N, STAGES, True,
                                       CAUSAL, s_layout, o_layout)

    lse = (m_i + gl.log2(l_i)) * 0.6931471805599453
    gl.store(LSE + off_bh.to(gl.int64) * N_Q + offs_m, lse, mask=offs_m < N_Q)
    o = acc / gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))[:, None]
    o_smem.reshape([BLOCK_M, HEAD_DIM]).store(o.to(o_smem.dtype))
    fence_async_shared()  # the generic-proxy stores above before the copy engine reads them
    _tma_store(o_desc, [off_bh, start_m * BLOCK_M, 0], o_smem)
    tma.store_wait(pendings=0)


@gluon.jit
def attn_fwd_ws_kernel(q_desc, k_desc, v_desc, o_desc, LSE, qk_scale, N_Q, N_K,
                       BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                       STAGES: gl.constexpr, CAUSAL: gl.constexpr, PIPELINE: gl.constexpr,
                       num_warps: gl.constexpr):
    n_m_blocks = gl.cdiv(N_Q, BLOCK_M)
    pid = gl.program_id(0)
    start_m = n_m_blocks - 1 - pid % n_m_blocks  # Phase 3's order: heads together, longest blocks first
    off_bh = pid // n_m_blocks
    if CAUSAL:
        hi = gl.minimum((start_m + 1) * BLOCK_M, N_K)
        n_full = gl.minimum(start_m * BLOCK_M, hi) // BLOCK_N
    else:
        hi = N_K
        n_full = N_K // BLOCK_N
    n_blocks = gl.cdiv(hi, BLOCK_N)

    dtype: gl.constexpr = q_desc.dtype
    q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_DIM], q_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
    o_smem = gl.allocate_shared_memory(dtype, [1, BLOCK_M, HEAD_DIM], o_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(v_empty.index(i), count=1)

    gl.warp_specialize([
        (_consumer, (q_smem, k_smem, v_smem, o_smem, q_bar, k_ready, k_empty, v_ready, v_empty, o_desc, LSE,
                     qk_scale, start_m, off_bh, N_Q, N_K, n_full, n_blocks,
                     BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL, PIPELINE, num_warps)),
        (_producer, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready, v_empty,
                     off_bh * N_Q + start_m * BLOCK_M, off_bh * N_K, n_blocks, BLOCK_N, STAGES)),
    ], [1], [24])

    mbarrier.invalidate(q_bar)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(k_ready.index(i))
        mbarrier.invalidate(k_empty.index(i))
        mbarrier.invalidate(v_ready.index(i))
        mbarrier.invalidate(v_empty.index(i))


# ---------------------------------------------------------------------------- host side
@dataclasses.dataclass(frozen=True)
class Config:
    block_m: int = 128
    block_n: int = 128
    stages: int = 2
    num_warps: int = 8  # the consumer: num_warps // 4 warpgroups of 64 rows each
    maxnreg: int = 168  # (8 + 4) warps x 32 threads x 168 <= 64K registers; setmaxnreg shifts them to the consumer
    pipeline: bool = False  # FlashAttention-3's intra-warpgroup overlap (_attend_pipelined)


CONFIGS = {64: Config(stages=3), 128: Config(stages=2)}
GL_DTYPES = {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}


def _as_rows(x):
    """(B, H, N, D) as (B*H*N, D) rows: a view when the (B, H, N) strides allow it, else a copy."""
    return x.reshape(-1, x.shape[-1]) if x.stride(-1) == 1 else x.contiguous().reshape(-1, x.shape[-1])


def descriptors(q, k, v, o, cfg: Config):
    """Host tensor descriptors: Q, K, V as 2-D rows (a block that runs past a head reads the next
    head's rows, which the kernel masks or never stores), O per head in 3-D so that the copy engine
    clips the store at N instead of writing into the next head."""
    dtype = GL_DTYPES[q.dtype]
    D = q.shape[-1]

    def rows(x, block):
        x2 = _as_rows(x)
        return TensorDescriptor.from_tensor(x2, [block, D], gl.NVMMASharedLayout.get_default_for([block, D], dtype))

    o3 = o.view(-1, o.shape[2], D)
    o_desc = TensorDescriptor.from_tensor(o3, [1, cfg.block_m, D],
                                          gl.NVMMASharedLayout.get_default_for([1, cfg.block_m, D], dtype))
    return rows(q, cfg.block_m), rows(k, cfg.block_n), rows(v, cfg.block_n), o_desc


def check_inputs(q, k, v, sm_scale):
    if q.dtype not in GL_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"phase 8 forward: float16 or bfloat16 q, k, v of one dtype, got {q.dtype}, {k.dtype}, "
                        f"{v.dtype}")
    if q.dim() != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"phase 8 forward: (B, H, N, D) q, k, v, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if q.shape[-1] not in CONFIGS:
        raise ValueError(f"phase 8 forward: head dim in {sorted(CONFIGS)}, got {q.shape[-1]}")
    sm_scale = q.shape[-1] ** -0.5 if sm_scale is None else float(sm_scale)
    if not (sm_scale > 0 and math.isfinite(sm_scale)):
        raise ValueError(f"sm_scale must be a positive finite number, got {sm_scale}")
    return sm_scale


def launch_args(q, k, v, causal=False, sm_scale=None, cfg: Config | None = None):
    """(grid, args, constexprs and launch options) of one call: shared by the GPU path and the
    ahead-of-time compile, so that both see the same signature."""
    sm_scale = check_inputs(q, k, v, sm_scale)
    B, H, Nq, D = q.shape
    cfg = cfg or CONFIGS[D]
    o = torch.empty((B, H, Nq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, Nq), dtype=torch.float32, device=q.device)
    q_desc, k_desc, v_desc, o_desc = descriptors(q, k, v, o, cfg)
    args = (q_desc, k_desc, v_desc, o_desc, lse, sm_scale * LOG2E, Nq, k.shape[2])
    constexprs = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HEAD_DIM=D, STAGES=cfg.stages, CAUSAL=bool(causal),
                      PIPELINE=cfg.pipeline)
    options = dict(num_warps=cfg.num_warps, maxnreg=cfg.maxnreg)
    grid = (triton.cdiv(Nq, cfg.block_m) * B * H,)
    return grid, args, constexprs, options, (o, lse)


def forward(q, k, v, causal=False, sm_scale=None, cfg: Config | None = None):
    """(o, lse) as Phase 3's `flash_attention_forward`, on sm_90 only."""
    if q.device.type != "cuda" or torch.cuda.get_device_capability(q.device)[0] != 9:
        raise RuntimeError("phase 8 forward: a Hopper GPU (sm_90) is needed: the kernel uses wgmma and TMA")
    grid, args, constexprs, options, (o, lse) = launch_args(q, k, v, causal, sm_scale, cfg)
    attn_fwd_ws_kernel[grid](*args, **constexprs, **options)
    return o, lse


def compile_sm90(head_dim: int, causal: bool, dtype=torch.bfloat16, cfg: Config | None = None, n: int = 1024):
    """Compile the kernel ahead of time for sm_90 on any machine (no GPU): the signature comes from
    CPU tensors of the shape a call would pass. Returns Triton's compiled kernel (asm: ttgir, ptx, cubin)."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    q, k, v = (torch.empty(1, 2, n, head_dim, dtype=dtype) for _ in range(3))
    _, args, constexprs, options, _ = launch_args(q, k, v, causal, None, cfg)
    names = list(attn_fwd_ws_kernel.arg_names)
    signature = {name: mangle_type(arg) for name, arg in zip(names, args)}
    signature.update({name: "constexpr" for name in constexprs})
    signature["num_warps"] = "constexpr"
    constants = dict(constexprs, num_warps=options["num_warps"])
    source = GluonASTSource(attn_fwd_ws_kernel, signature, constants)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
