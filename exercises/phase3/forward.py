# Generated from solutions/phase3/forward.py by `make exercises`: fill in the TODOs below.
# Regenerating never overwrites a file you have edited (unless forced).
"""The complete FlashAttention forward: K/V streamed through on-chip memory, causal block
skipping, any lengths and strides, and the logsumexp that the backward pass and split-KV merges need.

One program owns BLOCK_M query rows of one (batch, head). It walks the key blocks in two loops:
the blocks every row of the program sees in full (no mask at all), then the few blocks that need
one (the causal diagonal, and a last block that runs past Nk). Key blocks that no row of the
program may see are never visited: that is where causal attention saves half the work.
"""

import torch
import triton
import triton.language as tl

from ..phase0.checks import check_attention_inputs, check_sm_scale


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
                    start_n, end_n, offs_m, offs_n, N_K, qk_scale,
                    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    """Stream key blocks [start_n, end_n) through the online softmax of (acc, l_i, m_i).

    m_i is the running row maximum of the scores in log2 units (scores * sm_scale * log2(e)),
    l_i the running sum of exp2(score - m_i), acc the running sum of exp2(score - m_i) * v.
    MASKED=False is the hot loop: no bounds checks, no mask, every key valid for every row.
    """
    k_ptrs += start_n * stride_kn
    v_ptrs += start_n * stride_vn
    for start in range(start_n, end_n, BLOCK_N):
        # TODO(phase 3, block): one key block of the online softmax (MASKED: the tail and the causal diagonal)
        # Invariant kept (as in Phase 2): m_i is the running max of the scores in log2 units, l_i the sum
        # of exp2(score - m_i), acc the sum of exp2(score - m_i) * v, over every key seen so far that the
        # row may see. When MASKED, keys >= N_K and (causal) keys after the row weigh exactly 0.
        tl.static_assert(False, "phase 3: one key block of the online softmax (MASKED: the tail and the causal diagonal)")
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, O, LSE, sm_scale,
              stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
              stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
              H, N_Q, N_K, N_M_BLOCKS,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # A 1-D grid (a 2-D one caps batch*heads at 65535). Neighbouring programs share a head, so
    # they read the same K and V while it sits in L2. Within a head the query blocks go last
    # first: under a causal mask they are the longest, and starting them early shortens the tail.
    pid = tl.program_id(0)
    offs_d = tl.arange(0, HEAD_DIM)  # the head dimension: D contiguous values per row
    # TODO(phase 3, setup): this program's query block and (batch, head), base pointers, the q block and the first K and V tiles
    # Contract: decode pid the way flash_attention_forward numbers its 1-D grid: the N_M_BLOCKS query
    # blocks of one (batch, head) are neighbours, last block first; off_bh = b * H + h. q_base, k_base,
    # v_base, o_base point at element [b, h, 0, 0] through the batch and head strides, in int64; rows
    # are stride_*n apart, D contiguous (offs_d). offs_m: the block's query rows; offs_n: 0 .. BLOCK_N-1;
    # row_ok: rows < N_Q. q: the (BLOCK_M, HEAD_DIM) query block, rows past N_Q read as 0; k_ptrs and
    # v_ptrs: the (BLOCK_N, HEAD_DIM) tiles of keys 0 .. BLOCK_N-1 (the inner loop moves them on).
    tl.static_assert(False, "phase 3: this program's query block and (batch, head), base pointers, the q block and the first K and V tiles")

    # TODO(phase 3, init): start the online softmax's running state
    # Contract: m_i, l_i (BLOCK_M,) and acc (BLOCK_M, HEAD_DIM), float32, hold 'no key seen yet', so
    # that the first key block goes through the same update as every other.
    tl.static_assert(False, "phase 3: start the online softmax's running state")
    qk_scale = sm_scale * 1.4426950408889634  # log2(e): scores in log2 units, so exp2 does exp

    # TODO(phase 3, range): the key range of this query block: [0, full) unmasked, [full, end) masked
    # Contract: no key block that no row of this program may see is ever visited (causal: that is the
    # saved half); blocks in [0, full) are whole and visible to every row; full is a multiple of BLOCK_N.
    tl.static_assert(False, "phase 3: the key range of this query block: [0, full) unmasked, [full, end) masked")
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
                                    0, full, offs_m, offs_n, N_K, qk_scale,
                                    BLOCK_N, False, CAUSAL, DOT_PRECISION)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
                                    full, end, offs_m, offs_n, N_K, qk_scale,
                                    BLOCK_N, True, CAUSAL, DOT_PRECISION)

    # TODO(phase 3, finish): store o and the natural-log logsumexp of each row
    # Contract: o = acc normalised, in O's dtype; lse = log(sum_j exp(s_ij * sm_scale)) in float32, at
    # LSE[(b * H + h) * N_Q + row]; rows >= N_Q are not stored. Remember m_i and l_i are in log2 units.
    tl.static_assert(False, "phase 3: store o and the natural-log logsumexp of each row")


# (BLOCK_M, BLOCK_N, num_warps, num_stages) for 16-bit inputs on sm_90, keyed by (head dim, causal,
# long = Nk >= 8192). Chosen by `phase3.tune()` in grader/lessons (table in the lesson): the same
# kernel runs up to 3.6x slower under a poor configuration.
HOPPER_CONFIGS = {
    (D, causal, long): (128, 64, 8, 3) for D in (16, 32, 64, 128) for causal in (False, True) for long in (False, True)
}
HOPPER_CONFIGS[(64, True, True)] = (128, 64, 4, 3)


def _config(q, k, causal):
    """Block sizes and launch options for these inputs: (BLOCK_M, BLOCK_N, num_warps, num_stages)."""
    D = q.shape[-1]
    if q.device.type != "cuda":
        # The interpreter runs programs one after another: small blocks keep it quick, and with
        # BLOCK_M = 2 * BLOCK_N the causal diagonal spans two key blocks, as on a GPU.
        return 32, 16, 4, 1
    if q.dtype == torch.float32:
        return 32, 32, 4, 2  # correctness only: exact fp32 dots run on CUDA cores, not tensor cores
    if torch.cuda.get_device_capability(q.device)[0] >= 9:
        return HOPPER_CONFIGS[(D, causal, k.shape[2] >= 8192)]
    # Ampere and Ada have less shared memory per SM (up to 164 KB) than Hopper (227 KB).
    return (128, 64, 4 if D <= 64 else 8, 2)


def _check_options(causal, sm_scale, D):
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    return check_sm_scale(sm_scale, D)


def flash_attention_forward(q, k, v, causal=False, sm_scale=None, config=None):
    """softmax(q k^T * sm_scale) v and its logsumexp, with SDPA's semantics.

    q: (B, H, Nq, D), k and v: (B, H, Nk, D), float16/bfloat16/float32, any strides.
    Returns o (B, H, Nq, D) in q's dtype and lse (B, H, Nq) float32, the natural-log logsumexp
    of each row of scaled scores. `causal` masks keys j > i (top-left aligned, as SDPA's
    is_causal). `config` = (BLOCK_M, BLOCK_N, num_warps, num_stages) overrides the tuned choice.
    """
    check_attention_inputs(q, k, v)
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    sm_scale = _check_options(causal, sm_scale, D)
    # Any strides for B, H and N; the kernel reads rows of D contiguous values (a rare view with a
    # strided last dimension is copied once rather than loaded element by element).
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    block_m, block_n, num_warps, num_stages = config or _config(q, k, causal)
    if block_m % block_n:
        raise ValueError(f"config: BLOCK_M={block_m} must be a multiple of BLOCK_N={block_n}")
    # TODO(phase 3, launch): allocate o and lse and launch _attn_fwd on a 1-D grid: every query block of every (batch, head)
    # Contract: o is a new (B, H, Nq, D) tensor in q's dtype, lse a new (B, H, Nq) float32 tensor, both
    # contiguous on q's device (the kernel stores lse at (b * H + h) * Nq + row); one program per
    # (query block, batch, head), the partial last block included, numbered as the kernel decodes pid;
    # the batch, head and row strides of q, k, v and o are passed (D is contiguous); block sizes and
    # launch options from the chosen config; float32 inputs get exact dots (DOT_PRECISION "ieee").
    raise NotImplementedError("phase 3: allocate o and lse and launch _attn_fwd on a 1-D grid: every query block of every (batch, head)")
    return o, lse
