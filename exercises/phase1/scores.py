# Generated from solutions/phase1/scores.py by `make exercises`: fill in the TODOs below.
# Regenerating never overwrites a file you have edited (unless forced).
"""S = q k^T * sm_scale, one BLOCK_M x BLOCK_N tile of S per program.

A program owns a tile of query rows *and* a tile of key rows, so what it keeps on chip is
(BLOCK_M + BLOCK_N) * D inputs and BLOCK_M * BLOCK_N scores, whatever N is. The lesson works out
why tiling only one side does not fit in shared memory.
"""
import torch
import triton
import triton.language as tl

from ..phase0.checks import check_attention_inputs, check_sm_scale

# S is written in float32 whatever the inputs are: it is the unnormalized logits that softmax
# exponentiates, and rounding them to fp16/bf16 would cost more accuracy than SDPA loses.
S_DTYPE = torch.float32


def dot_precision(dtype):
    """float32 inputs get exact products ("ieee"); on a GPU tl.dot would otherwise round them to
    TF32 (10-bit mantissa). fp16/bf16 run on tensor cores whatever this says."""
    return "ieee" if dtype == torch.float32 else "tf32"


def tile_sizes(Nq, Nk):
    """Square-ish tiles of 64 (tensor cores want >= 16 on every side of a tl.dot)."""
    return 64, 64


@triton.jit
def scores_kernel(q_ptr, k_ptr, s_ptr, sm_scale,
                  stride_qb, stride_qh, stride_qm, stride_qd,
                  stride_kb, stride_kh, stride_kn, stride_kd,
                  stride_sb, stride_sh, stride_sm, stride_sn,
                  H, N_Q, N_K,
                  D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    # TODO(phase 1, tile-pointers): which tile of S this program owns, and q, k, s moved to its (batch, head)
    # Contract: the program ids match the grid that tiled_scores launches; q_ptr, k_ptr and s_ptr point at
    # element [b, h, 0, 0] of their tensor, through the stride arguments (any layout); offs_m, offs_n are
    # the query and key rows of the tile, offs_d = 0 .. D-1. Invariant: batch and head offsets are int64.
    tl.static_assert(False, "phase 1: which tile of S this program owns, and q, k, s moved to its (batch, head)")
    # TODO(phase 1, score-tile): compute and store this program's (BLOCK_M, BLOCK_N) tile of S = q k^T * sm_scale
    # Contract: any strides for q, k and s (read them from the stride arguments); scores accumulate in
    # float32 (PRECISION for tl.dot); nothing outside 0..N_Q x 0..N_K is read or written.
    tl.static_assert(False, "phase 1: compute and store this program's (BLOCK_M, BLOCK_N) tile of S = q k^T * sm_scale")


def tiled_scores(q, k, sm_scale=None):
    """S = q k^T * sm_scale for q (B, H, Nq, D) and k (B, H, Nk, D), any strides.

    Returns a float32 tensor (B, H, Nq, Nk), whatever the input dtype (see S_DTYPE).
    """
    check_attention_inputs(q, k, k)
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    sm_scale = check_sm_scale(sm_scale, D)
    # TODO(phase 1, launch-scores): allocate S and launch scores_kernel, one program per tile of S per (batch, head)
    # Contract: s is a new (B, H, Nq, Nk) tensor of dtype S_DTYPE on q's device; the grid covers every
    # tile, partial tiles at the ends included; q, k and s are passed with their own four strides, so
    # any layout of q and k works (a transposed view included); block sizes from tile_sizes().
    raise NotImplementedError("phase 1: allocate S and launch scores_kernel, one program per tile of S per (batch, head)")
    return s
