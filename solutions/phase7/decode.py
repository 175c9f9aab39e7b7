"""Decoding with a KV cache: one new token (or a few) per sequence against everything cached so far.

A decode step has almost no queries: B * H rows of one token each. Phase 3's grid (one program per
block of query rows) would launch B * H programs that each stream a whole cache: at batch 1 that is
a few dozen programs on a GPU with 132 SMs, and the step runs at a fraction of the memory bandwidth,
which is all that matters here (every cached K/V element is read once and used for a handful of
FLOPs). Split-KV (flash-decoding) restores the parallelism:

- each program takes one split of the cache (a contiguous range of keys) for one K/V head, and the
  GROUP query heads that share that K/V head together (their rows packed into one tile: with GQA
  the cache is read once per K/V head, not once per query head);
- each split writes its partial (o, lse) in float32;
- a second kernel merges the splits of each row through their logsumexps: Phase 3's
  `merge_partials`, for S partials at once (`merge_splits_with_partials` below does it with
  `merge_partials` itself, pairwise; the lesson measures why one fused kernel is needed at batch 1).
"""
import functools

import torch
import triton
import triton.language as tl

from ..phase3 import merge_partials
from .forward import _attn_fwd_inner, _empty_state
from .options import UNBOUNDED, block_d, check_heads, check_sm_scale, next_power_of_2, unit_last_stride


@triton.jit
def _decode_split(Q, K, V, SEQLENS, O_PART, LSE_PART, sm_scale,
                  stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
                  H_KV, GROUP, N_Q, N_MAX, TOTAL_ROWS, NUM_SPLITS, BIG,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  DOT_PRECISION: tl.constexpr):
    split = tl.program_id(0)
    bhk = tl.program_id(1)
    b, hk = (bhk // H_KV).to(tl.int64), (bhk % H_KV).to(tl.int64)
    # Packed rows: row r of this K/V head is query head hk * GROUP + r // N_Q at position r % N_Q.
    rows_per_head = GROUP * N_Q
    rows = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < rows_per_head
    h = hk * GROUP + rows // N_Q
    pos = rows % N_Q
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + b * stride_qb + h[:, None] * stride_qh + pos[:, None] * stride_qn + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    K += b * stride_kb + hk * stride_kh
    V += b * stride_vb + hk * stride_vh
    # Clamped into the cache: the launcher checks the lengths only after the launch (a bad one raises
    # then), so the kernel must be safe for any value: it never reads outside sequence b's cache.
    seqlen = tl.minimum(tl.maximum(tl.load(SEQLENS + b), 0), N_MAX).to(tl.int32)
    m_i, l_i, acc = _empty_state(BLOCK_M, BLOCK_D)
    # TODO(phase 7, split): this program's share of sequence b's cache, through the online softmax
    # Contract: the NUM_SPLITS splits of a sequence partition its keys 0 .. seqlen - 1 (this sequence's own
    # length, not the cache's capacity) into contiguous ranges, each starting on a multiple of BLOCK_N;
    # none is read twice, none past seqlen (a split may be empty); whole blocks go unmasked. Phase 3's
    # inner loop (`_attn_fwd_inner`, its band unbounded: BIG) does the streaming.
    ### BEGIN SOLUTION
    chunk = tl.cdiv(tl.cdiv(seqlen, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * chunk
    end = tl.minimum(start + chunk, seqlen)
    full = start + tl.maximum(end - start, 0) // BLOCK_N * BLOCK_N
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, start, full, rows, offs_d,
                                    end, BIG, BIG, sm_scale, 1.0, HEAD_DIM, BLOCK_N, False, False, DOT_PRECISION)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, full, end, rows, offs_d,
                                    end, BIG, BIG, sm_scale, 1.0, HEAD_DIM, BLOCK_N, True, False, DOT_PRECISION)
    ### END SOLUTION
    # The split's partial (o, lse) in float32; an empty split (or a sequence of length 0) writes o = 0 and
    # lse = -inf, which weighs nothing in the merge.
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    flat = split.to(tl.int64) * TOTAL_ROWS + bhk.to(tl.int64) * rows_per_head + rows  # = (b * H + h) * N_Q + pos
    tl.store(O_PART + flat[:, None] * HEAD_DIM + offs_d[None, :], acc / l_safe[:, None],
             mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE_PART + flat, tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453),
             mask=row_ok)


@triton.jit
def _combine_splits(O_PART, LSE_PART, O, stride_ob, stride_oh, stride_on, H, N_Q, TOTAL_ROWS, NUM_SPLITS,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    row = tl.program_id(axis=0).to(tl.int64)  # (b * H + h) * N_Q + pos
    b, h, pos = row // (H * N_Q), (row // N_Q) % H, row % N_Q
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < NUM_SPLITS
    d_ok = offs_d < HEAD_DIM
    lse = tl.load(LSE_PART + offs_s * TOTAL_ROWS + row, mask=s_ok, other=float("-inf"))
    o_parts = tl.load(O_PART + (offs_s[:, None] * TOTAL_ROWS + row) * HEAD_DIM + offs_d[None, :],
                      mask=s_ok[:, None] & d_ok[None, :], other=0.0)
    # TODO(phase 7, combine): merge the NUM_SPLITS partials of this row into its attention output
    # Contract: Phase 3's merge_partials for all splits at once: each split weighs exp(lse_s - lse) where
    # lse = logsumexp over the splits; no overflow for any finite lse; an empty split (lse = -inf) weighs 0;
    # a row whose splits are all empty (a sequence of length 0) gets o = 0, never NaN. o in O's dtype.
    ### BEGIN SOLUTION
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp(lse - m)                          # exp(lse_s - m) <= 1; 0 for an empty split
    total = tl.sum(w, 0)
    o = tl.sum(o_parts * w[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    ### END SOLUTION
    tl.store(O + b * stride_ob + h * stride_oh + pos * stride_on + offs_d, o.to(O.dtype.element_ty), mask=d_ok)


# Each split should stream at least this many keys: fewer, and the writes and merge of the partials
# cost more than the parallelism gains.
MIN_SPLIT_KEYS = 256
MAX_SPLITS = 128
# How many split programs the grid aims at per SM (the lesson's measurements chose it).
PROGRAMS_PER_SM = 4  # 4 beat 2 and 8 on an H100: assets/phase7/decode-gqa-variants.json (experiments/phase7_variants)


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.cache
def _major(device_index: int) -> int:
    return torch.cuda.get_device_capability(device_index)[0]


def _index(device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def choose_num_splits(programs: int, n_max: int, device) -> int:
    """Enough splits for about PROGRAMS_PER_SM programs per SM, each split at least MIN_SPLIT_KEYS long."""
    sms = _sm_count(_index(device)) if device.type == "cuda" else 4
    want = triton.cdiv(PROGRAMS_PER_SM * sms, programs)
    return max(1, min(want, triton.cdiv(n_max, MIN_SPLIT_KEYS), MAX_SPLITS))


def decode_config(q) -> tuple:
    """(BLOCK_N, num_warps, num_stages) of the split kernel."""
    if q.device.type != "cuda":
        return 16, 1, 1
    bd = block_d(q.shape[-1])
    if q.dtype == torch.float32:
        return 32, 4, 2
    # Memory-bound: what matters is bytes in flight per SM. 64-key tiles in 3 stages let several programs
    # share an SM (the grid aims at PROGRAMS_PER_SM); two warps stream a 64-key tile as fast as four on
    # an H100 and leave room for more programs; D=256 halves the tile.
    big_smem = _major(_index(q.device)) >= 9
    return (32 if bd >= 256 else 64), (4 if bd >= 256 else 2), (3 if big_smem else 2)


class SeqlensCheck:
    """The values of cache_seqlens, checked on the host after the kernels are queued: reading them before
    the launch would leave the GPU idle for a round trip, longer than the whole step at batch 1.

        check = SeqlensCheck(cache_seqlens, n_max)   # before the launch
        kernel[grid](...)                            # safe for any value: it clamps each length
        check.finish()                               # ValueError if a length lies outside 0 .. n_max

    The copy to the host queues behind the kernels on the same stream, so the host waits for the step
    to end (decoding needs its result next anyway) and the GPU never waits for the host. (Phase 6
    copies on a side stream instead, beside a kernel long enough to hide it; here the kernels last tens
    of microseconds and the side stream's wait measured longer than the step.)
    """

    def __init__(self, cache_seqlens, n_max):
        self.seqlens, self.n_max = cache_seqlens, n_max

    def finish(self) -> None:
        if not self.seqlens.is_cuda:  # CPU (the interpreter): the values are already on the host
            values = self.seqlens.tolist()
        else:
            host = torch.empty(self.seqlens.shape, dtype=self.seqlens.dtype, pin_memory=True)
            host.copy_(self.seqlens, non_blocking=True)
            landed = torch.cuda.current_stream(self.seqlens.device).record_event()
            landed.synchronize()
            values = host.tolist()
        low, high = min(values, default=0), max(values, default=0)
        if low < 0 or high > self.n_max:
            # A length past the cache would have read other memory, silently: the kernel clamped it.
            raise ValueError(f"cache_seqlens must lie in 0 .. N_max = {self.n_max} (the cache's length), got "
                             f"values from {low} to {high}")


def _check_decode_inputs(q, k_cache, v_cache, cache_seqlens, num_splits):
    """Everything but the lengths' values (see SeqlensCheck): no device-to-host copy before the launch."""
    group = check_heads(q, k_cache, v_cache, names=("q", "k_cache", "v_cache"))
    if not isinstance(cache_seqlens, torch.Tensor):
        raise TypeError(f"cache_seqlens must be a torch.Tensor of lengths, got {type(cache_seqlens).__name__}")
    if cache_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cache_seqlens must hold int32 or int64 lengths, got {cache_seqlens.dtype}")
    if tuple(cache_seqlens.shape) != (q.shape[0],):
        raise ValueError(f"cache_seqlens must have shape (B,) = ({q.shape[0]},), got {tuple(cache_seqlens.shape)}")
    if cache_seqlens.device != q.device:
        raise ValueError(f"cache_seqlens is on {cache_seqlens.device}, q on {q.device}")
    if num_splits is not None and (isinstance(num_splits, bool) or not isinstance(num_splits, int)
                                   or not 1 <= num_splits <= 1024):
        raise ValueError(f"num_splits must be None or an int in 1 .. 1024, got {num_splits!r}")
    return group


def _launch_split(q, k_cache, v_cache, cache_seqlens, sm_scale, num_splits, config):
    """Checks the arguments and launches the split kernel: (o_part, lse_part, splits, the SeqlensCheck)."""
    group = _check_decode_inputs(q, k_cache, v_cache, cache_seqlens, num_splits)
    sm_scale = check_sm_scale(sm_scale, q.shape[-1])
    B, H, N_Q, D = q.shape
    H_kv, n_max = k_cache.shape[1], k_cache.shape[2]
    q, k_cache, v_cache = (unit_last_stride(x) for x in (q, k_cache, v_cache))
    rows_per_head = group * N_Q
    block_m = max(16, min(64, next_power_of_2(rows_per_head)))
    row_blocks = triton.cdiv(rows_per_head, block_m)
    splits = num_splits or choose_num_splits(B * H_kv * row_blocks, n_max, q.device)
    block_n, num_warps, num_stages = config or decode_config(q)
    total_rows = B * H * N_Q
    o_part = torch.empty((splits, total_rows, D), dtype=torch.float32, device=q.device)
    lse_part = torch.empty((splits, total_rows), dtype=torch.float32, device=q.device)
    check = SeqlensCheck(cache_seqlens, n_max)
    _decode_split[(splits, B * H_kv, row_blocks)](
        q, k_cache, v_cache, cache_seqlens, o_part, lse_part, sm_scale,
        *q.stride()[:3], *k_cache.stride()[:3], *v_cache.stride()[:3],
        H_kv, group, N_Q, n_max, total_rows, splits, UNBOUNDED,
        HEAD_DIM=D, BLOCK_D=block_d(D), BLOCK_M=block_m, BLOCK_N=block_n,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", num_warps=num_warps, num_stages=num_stages)
    return o_part, lse_part, splits, check


def decode_partials(q, k_cache, v_cache, cache_seqlens, sm_scale=None, num_splits=None, config=None):
    """The split kernel alone: (o_part (S, B*H*Nq, D) float32, lse_part (S, B*H*Nq) float32, S)."""
    o_part, lse_part, splits, check = _launch_split(q, k_cache, v_cache, cache_seqlens, sm_scale, num_splits, config)
    check.finish()
    return o_part, lse_part, splits


def flash_decode(q, k_cache, v_cache, cache_seqlens, sm_scale=None, num_splits=None):
    """Attention of a few new query tokens per sequence over a KV cache, split across programs.

    q: (B, H, Nq, D), Nq small (1 for plain decoding); k_cache, v_cache: (B, H_kv, N_max, D), H_kv dividing H;
    cache_seqlens: (B,) int32/int64 on q's device, 0 <= cache_seqlens[b] <= N_max. Every query row of
    sequence b attends to keys 0 .. cache_seqlens[b] - 1 of its cache (the new tokens' own K/V already
    appended; no mask among them). num_splits: how many programs share one sequence's cache (None: enough
    to fill the GPU, from the shape). Returns o (B, H, Nq, D) in q's dtype; a sequence of length 0 gets 0.
    Not differentiable (decoding needs no gradient).
    """
    o_part, lse_part, splits, check = _launch_split(q, k_cache, v_cache, cache_seqlens, sm_scale, num_splits, None)
    B, H, N_Q, D = q.shape
    o = torch.empty((B, H, N_Q, D), dtype=q.dtype, device=q.device)
    _combine_splits[(B * H * N_Q,)](
        o_part, lse_part, o, *o.stride()[:3], H, N_Q, B * H * N_Q, splits,
        HEAD_DIM=D, BLOCK_D=block_d(D), BLOCK_S=max(2, next_power_of_2(splits)), num_warps=1 if D <= 64 else 4)
    check.finish()  # both kernels are queued: the GPU works while the host reads the lengths
    return o


def merge_splits_with_partials(o_part, lse_part):
    """The splits merged with Phase 3's merge_partials itself: halves of the splits at a time (log2 S calls,
    each a dozen PyTorch operations). Same result as `_combine_splits`; the lesson times both."""
    while o_part.shape[0] > 1:
        half = o_part.shape[0] // 2
        o, lse = merge_partials(o_part[:half], lse_part[:half], o_part[half:2 * half], lse_part[half:2 * half])
        o_part = torch.cat([o, o_part[2 * half:]])
        lse_part = torch.cat([lse, lse_part[2 * half:]])
    return o_part[0], lse_part[0]

