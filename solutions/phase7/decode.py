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

What an inference engine's KV-cache call (flash-attn's `flash_attn_with_kvcache`) adds, each a few lines
here: the new tokens' K/V appended into the cache in place (`_append_kv`, before the splits read it),
several new queries causal among themselves, aligned bottom-right against the cache, and a paged cache
whose pages a `block_table` lists (`_stream_keys` looks up a key block's page). Nothing here waits for
the GPU, so a decoding step can be captured in a CUDA graph: the values only the GPU knows (lengths,
page indices) are checked by the kernels, which clamp them and raise a flag the host reads later
(`LengthFlag`).
"""
import collections
import functools

import torch
import triton
import triton.language as tl

from ..phase3 import merge_partials
from .forward import _attn_fwd_inner, _empty_state
from .options import (UNBOUNDED, block_d, check_heads, check_like, check_sm_scale, next_power_of_2,
                      unit_last_stride)


@triton.jit
def _stream_keys(acc, l_i, m_i, q, K, V, TABLE_ROW, stride_kp, stride_kn, stride_vp, stride_vn, lo, hi, offs_m,
                 offs_d, N_K, WIN_RIGHT, BIG, N_PAGES, BAD_INPUT, sm_scale,
                 HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, MASKED: tl.constexpr,
                 DOT_PRECISION: tl.constexpr):
    """Keys [lo, hi) of one sequence (lo a multiple of BLOCK_N) through Phase 3's inner loop: query row r
    (at position offs_m[r]) sees key j < N_K with j <= offs_m[r] + WIN_RIGHT. A contiguous cache is one
    stream; a paged one (PAGE_SIZE > 0, a multiple of BLOCK_N) is streamed block by block, each key block
    inside one page, whose index TABLE_ROW[j // PAGE_SIZE] says where it lies. A page index outside
    0 .. N_PAGES - 1 raises the flag and reads page 0 instead (never outside the cache)."""
    if PAGE_SIZE == 0:
        acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, lo, hi, offs_m, offs_d,
                                        N_K, BIG, WIN_RIGHT, sm_scale, 1.0, HEAD_DIM, BLOCK_N, MASKED, False,
                                        DOT_PRECISION)
    else:
        for start in range(lo, hi, BLOCK_N):
            page = tl.load(TABLE_ROW + start // PAGE_SIZE)
            bad = (page < 0) | (page >= N_PAGES)
            tl.store(BAD_INPUT, 1, mask=bad)
            page = tl.where(bad, 0, page).to(tl.int64)
            first = start // PAGE_SIZE * PAGE_SIZE  # the page's first key: K + shift + j * stride lands in it
            k_page = K + page * stride_kp - first * stride_kn.to(tl.int64)
            v_page = V + page * stride_vp - first * stride_vn.to(tl.int64)
            acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_page, v_page, stride_kn, stride_vn, start,
                                            start + BLOCK_N, offs_m, offs_d, N_K, BIG, WIN_RIGHT, sm_scale, 1.0,
                                            HEAD_DIM, BLOCK_N, MASKED, False, DOT_PRECISION)
    return acc, l_i, m_i


@triton.jit
def _append_kv(K_NEW, V_NEW, K, V, SEQLENS, TABLE, stride_nb, stride_nh, stride_nn, stride_wb, stride_wh, stride_wn,
               stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_tb, H_KV, N_NEW, N_MAX, N_PAGES,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr):
    """k_new, v_new (B, H_kv, N_NEW, D) written into the caches at positions cache_seqlens[b] .. + N_NEW - 1."""
    bhk = tl.program_id(0)
    b, hk = (bhk // H_KV).to(tl.int64), (bhk % H_KV).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    given = tl.load(SEQLENS + b)
    # A length whose new tokens would not fit is reported by the split kernel (the flag); nothing is written.
    fits = (given >= 0) & (given + N_NEW <= N_MAX)
    ok = rows < tl.where(fits, N_NEW, 0)
    mask = ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    k_new = tl.load(K_NEW + b * stride_nb + hk * stride_nh + rows[:, None] * stride_nn + offs_d[None, :], mask=mask)
    v_new = tl.load(V_NEW + b * stride_wb + hk * stride_wh + rows[:, None] * stride_wn + offs_d[None, :], mask=mask)
    # TODO(phase 7, append): where row i of k_new / v_new goes in the caches
    # Contract: new token i of sequence b is cache position cache_seqlens[b] + i (given + rows here). A contiguous
    # cache holds position j of sequence b at row j of its batch entry b; a paged cache (PAGE_SIZE > 0) at row
    # j % PAGE_SIZE of page TABLE[b * stride_tb + j // PAGE_SIZE], a page being what the batch stride steps over.
    # A page index outside 0 .. N_PAGES - 1 writes nothing (the split kernel reports it). Rows not `ok`: no store.
    ### BEGIN SOLUTION
    pos = given + rows
    if PAGE_SIZE == 0:
        k_rows = b * stride_kb + pos * stride_kn
        v_rows = b * stride_vb + pos * stride_vn
    else:
        page = tl.load(TABLE + b * stride_tb + pos // PAGE_SIZE, mask=ok, other=0).to(tl.int64)
        mask = mask & ((page >= 0) & (page < N_PAGES))[:, None]
        k_rows = page * stride_kb + (pos % PAGE_SIZE) * stride_kn
        v_rows = page * stride_vb + (pos % PAGE_SIZE) * stride_vn
    tl.store(K + hk * stride_kh + k_rows[:, None] + offs_d[None, :], k_new, mask=mask)
    tl.store(V + hk * stride_vh + v_rows[:, None] + offs_d[None, :], v_new, mask=mask)
    ### END SOLUTION


@triton.jit
def _decode_split(Q, K, V, SEQLENS, TABLE, BAD_INPUT, O_PART, LSE_PART, sm_scale,
                  stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
                  stride_tb, H_KV, GROUP, N_Q, N_NEW, N_MAX, N_PAGES, TOTAL_ROWS, NUM_SPLITS, BIG,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  PAGE_SIZE: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr):
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
    K += hk * stride_kh
    V += hk * stride_vh
    if PAGE_SIZE == 0:  # a contiguous cache: sequence b's rows; a paged one: TABLE's row b says where they lie
        K += b * stride_kb
        V += b * stride_vb
    # The lengths are checked here, on the GPU (LengthFlag: no host round trip, a CUDA graph can replay the
    # step): one that leaves no room for the N_NEW appended tokens raises the flag, and is clamped into the
    # cache so that no value reads outside it. The sequence then holds seqlen keys, the new ones last.
    given = tl.load(SEQLENS + b)
    first = (split == 0) & (hk == 0) & (tl.program_id(2) == 0)  # one program per sequence reports
    tl.store(BAD_INPUT, 1, mask=first & ((given < 0) | (given > N_MAX - N_NEW)))
    seqlen = tl.minimum(tl.maximum(given, 0) + N_NEW, N_MAX).to(tl.int32)
    table_row = TABLE + b * stride_tb
    m_i, l_i, acc = _empty_state(BLOCK_M, BLOCK_D)
    # TODO(phase 7, split): this program's share of sequence b's cache, through the online softmax
    # Contract: the NUM_SPLITS splits of a sequence partition its keys 0 .. seqlen - 1 (this sequence's own
    # length, not the cache's capacity) into contiguous ranges, each starting on a multiple of BLOCK_N;
    # none is read twice, none past seqlen (a split may be empty). CAUSAL aligns the N_Q new queries
    # bottom-right: query position p (0 .. N_Q - 1) is key position seqlen - N_Q + p and sees the keys up to
    # it. Blocks every row sees whole go unmasked. `_stream_keys` streams keys [lo, hi) (paged or not) for
    # rows at the positions it is given, its band open on the left (BIG) and WIN_RIGHT keys wide on the right.
    ### BEGIN SOLUTION
    chunk = tl.cdiv(tl.cdiv(seqlen, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * chunk
    end = tl.minimum(start + chunk, seqlen)
    full = start + tl.maximum(end - start, 0) // BLOCK_N * BLOCK_N
    if CAUSAL:
        at = seqlen - N_Q + pos  # bottom-right: the last query is the last key
        right = 0
        full = tl.maximum(tl.minimum(full, tl.maximum(seqlen - N_Q + 1, 0) // BLOCK_N * BLOCK_N), start)
    else:
        at = rows
        right = BIG
    acc, l_i, m_i = _stream_keys(acc, l_i, m_i, q, K, V, table_row, stride_kb, stride_kn, stride_vb, stride_vn,
                                 start, full, at, offs_d, end, right, BIG, N_PAGES, BAD_INPUT, sm_scale, HEAD_DIM,
                                 BLOCK_N, PAGE_SIZE, False, DOT_PRECISION)
    acc, l_i, m_i = _stream_keys(acc, l_i, m_i, q, K, V, table_row, stride_kb, stride_kn, stride_vb, stride_vn,
                                 full, end, at, offs_d, end, right, BIG, N_PAGES, BAD_INPUT, sm_scale, HEAD_DIM,
                                 BLOCK_N, PAGE_SIZE, True, DOT_PRECISION)
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


class LengthFlag:
    """The check of cache_seqlens' values, made on the GPU: a decoding step never waits for the host.

    Reading the lengths on the host would cost a round trip per call (longer than the whole step at
    batch 1) and, worse, makes the step impossible to capture in a CUDA graph, which is how inference
    engines replay a decoding step. So the split kernel checks them itself: it clamps every length into
    0 .. N_max (it never reads outside the cache, whatever the values) and, for a length outside that
    range, raises this device's flag (an int32 on the GPU). The host learns of it without waiting:

        flag = LengthFlag.of(device)
        flag.report()                   # ValueError if an earlier call's flag has landed raised
        kernel[grid](..., flag.flag)    # raises the flag for a bad length
        flag.after_launch()             # queues a copy of the flag to pinned host memory (not in a graph)

    so a bad length raises ValueError from the next call on that device, once the GPU has run the bad one,
    or from `check_decode_lengths()`, which waits for the GPU (after replaying a graph, say). On the CPU
    (the interpreter) the values are on the host already and are checked before the launch.
    """

    SLOTS = 64  # copies of the flag in flight; the host waits only if the GPU is this many calls behind
    _by_device: dict = {}

    def __init__(self, device):
        self.flag = torch.zeros(1, dtype=torch.int32, device=device)
        self.host = torch.zeros(self.SLOTS, dtype=torch.int32, pin_memory=True)
        self.pending = collections.deque()  # (slot, event): copies queued, not yet seen by the host
        self.next_slot = 0

    @classmethod
    def of(cls, device) -> "LengthFlag":
        index = _index(device)
        if index not in cls._by_device:
            cls._by_device[index] = cls(torch.device("cuda", index))
        return cls._by_device[index]

    def after_launch(self) -> None:
        if torch.cuda.is_current_stream_capturing():
            return  # a graph replays the kernels, not this host code: check_decode_lengths() reads the flag
        if len(self.pending) == self.SLOTS:
            self.pending[0][1].synchronize()  # the GPU is SLOTS calls behind: wait for the oldest copy
            self.report()
        slot = self.next_slot
        self.next_slot = (slot + 1) % self.SLOTS
        self.host[slot:slot + 1].copy_(self.flag, non_blocking=True)
        self.pending.append((slot, torch.cuda.current_stream(self.flag.device).record_event()))

    def report(self, wait: bool = False) -> None:
        """ValueError if a copy of the flag that has landed shows it raised; with `wait`, the flag as the GPU
        leaves it once everything queued has run (the flag stays raised until reported: one read suffices)."""
        if torch.cuda.is_current_stream_capturing():
            return
        if wait:
            torch.cuda.synchronize(self.flag.device)
            self.pending.clear()
            raised = bool(self.flag.item())
        else:
            raised = False
            while self.pending and self.pending[0][1].query():
                slot, _ = self.pending.popleft()
                raised = raised or bool(self.host[slot])
        if raised:
            self.flag.zero_()
            self.pending.clear()
            raise ValueError(_BAD_INPUT)


_BAD_INPUT = ("cache_seqlens or block_table of an earlier flash_decode call was out of range (a length outside "
              "0 .. N_max - N_new, or a page index outside the paged cache): the kernels clamped it, so that call's "
              "output is wrong. These values are checked on the GPU without waiting for it, and reported by the "
              "next call (or by check_decode_lengths())")


def check_decode_lengths(device=None) -> None:
    """Wait for the GPU and raise ValueError if any flash_decode call so far on `device` (default: the
    current one) was given a length outside its cache: the check to make after replaying a CUDA graph."""
    if torch.cuda.is_available():
        LengthFlag.of(torch.device("cuda") if device is None else torch.device(device)).report(wait=True)


def _check_lengths_on_host(cache_seqlens, most, n_new) -> None:
    """The CPU (the interpreter): the lengths are host memory, checked before the launch."""
    values = cache_seqlens.tolist()
    low, high = min(values, default=0), max(values, default=0)
    if low < 0 or high > most:
        room = f" - N_new = {most} (room for the {n_new} appended tokens)" if n_new else f" = {most}"
        raise ValueError(f"cache_seqlens must lie in 0 .. N_max{room}, got values from {low} to {high}")


def _check_decode_inputs(q, k_cache, v_cache, cache_seqlens, num_splits, k_new, v_new, causal, block_table):
    """Everything but the values of cache_seqlens and block_table (the kernels check those: LengthFlag), so
    nothing waits for the GPU. Returns (group, capacity): the query heads per K/V head, and how many keys
    one sequence's cache holds (N_max, or pages per sequence x page size for a paged cache)."""
    paged = block_table is not None
    group = check_heads(q, k_cache, v_cache, names=("q", "k_cache", "v_cache"), same_batch=not paged)
    B, D = q.shape[0], q.shape[-1]
    if not isinstance(cache_seqlens, torch.Tensor):
        raise TypeError(f"cache_seqlens must be a torch.Tensor of lengths, got {type(cache_seqlens).__name__}")
    if cache_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cache_seqlens must hold int32 or int64 lengths, got {cache_seqlens.dtype}")
    if tuple(cache_seqlens.shape) != (B,):
        raise ValueError(f"cache_seqlens must have shape (B,) = ({B},), got {tuple(cache_seqlens.shape)}")
    if cache_seqlens.device != q.device:
        raise ValueError(f"cache_seqlens is on {cache_seqlens.device}, q on {q.device}")
    if num_splits is not None and (isinstance(num_splits, bool) or not isinstance(num_splits, int)
                                   or not 1 <= num_splits <= 1024):
        raise ValueError(f"num_splits must be None or an int in 1 .. 1024, got {num_splits!r}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if (k_new is None) != (v_new is None):
        raise ValueError("k_new and v_new come together: the new tokens' keys and values, or neither")
    if k_new is not None:
        if not isinstance(k_new, torch.Tensor) or k_new.dim() != 4 or k_new.shape[2] < 1:
            raise ValueError(f"k_new must be a (B, H_kv, N_new, D) tensor with N_new >= 1, got "
                             f"{tuple(k_new.shape) if isinstance(k_new, torch.Tensor) else type(k_new).__name__}")
        shape = (B, k_cache.shape[1], k_new.shape[2], D)
        check_like(k_new, "k_new", k_cache, "k_cache", shape=shape)
        check_like(v_new, "v_new", v_cache, "v_cache", shape=shape)
    if not paged:
        return group, k_cache.shape[2]
    if not isinstance(block_table, torch.Tensor) or block_table.dtype != torch.int32:
        raise TypeError(f"block_table must be an int32 tensor of page indices, got "
                        f"{block_table.dtype if isinstance(block_table, torch.Tensor) else type(block_table).__name__}")
    if block_table.dim() != 2 or block_table.shape[0] != B or block_table.shape[1] < 1:
        raise ValueError(f"block_table must have shape (B, pages per sequence) = ({B}, P >= 1), got "
                         f"{tuple(block_table.shape)}")
    if block_table.device != q.device:
        raise ValueError(f"block_table is on {block_table.device}, q on {q.device}")
    page_size = k_cache.shape[2]
    if page_size % 16:
        raise ValueError(f"a paged cache's pages (k_cache dim 2) must hold a multiple of 16 tokens, got {page_size}")
    return group, block_table.shape[1] * page_size


def _launch(q, k_cache, v_cache, cache_seqlens, sm_scale, num_splits, config, k_new=None, v_new=None, causal=False,
            block_table=None):
    """Checks the arguments, appends k_new/v_new, launches the split kernel: (o_part, lse_part, splits, report),
    `report()` to be called once the caller has queued its own kernels (the flag's copy, or the CPU's check)."""
    group, capacity = _check_decode_inputs(q, k_cache, v_cache, cache_seqlens, num_splits, k_new, v_new, causal,
                                           block_table)
    sm_scale = check_sm_scale(sm_scale, q.shape[-1])
    B, H, N_Q, D = q.shape
    H_kv = k_cache.shape[1]
    n_new = 0 if k_new is None else k_new.shape[2]
    page_size = 0 if block_table is None else k_cache.shape[2]
    n_pages = k_cache.shape[0]
    table = block_table if block_table is not None else cache_seqlens  # a pointer the kernels never read
    q, k_cache, v_cache = (unit_last_stride(x) for x in (q, k_cache, v_cache))
    rows_per_head = group * N_Q
    block_m = max(16, min(64, next_power_of_2(rows_per_head)))
    row_blocks = triton.cdiv(rows_per_head, block_m)
    splits = num_splits or choose_num_splits(B * H_kv * row_blocks, capacity, q.device)
    block_n, num_warps, num_stages = config or decode_config(q)
    if page_size:
        block_n = min(block_n, page_size & -page_size)  # a key block never straddles two pages
    total_rows = B * H * N_Q
    o_part = torch.empty((splits, total_rows, D), dtype=torch.float32, device=q.device)
    lse_part = torch.empty((splits, total_rows), dtype=torch.float32, device=q.device)
    if q.is_cuda:
        flag = LengthFlag.of(q.device)
        flag.report()  # an earlier call's bad lengths or pages, if the GPU has run it by now
        bad_input, report = flag.flag, flag.after_launch
    else:  # the interpreter: the values are host memory, the kernels have run when the launch returns
        _check_lengths_on_host(cache_seqlens, capacity - n_new, n_new)
        bad_input = torch.zeros(1, dtype=torch.int32)
        report = lambda: _raise_if(bad_input)
    if k_new is not None:
        k_new, v_new = unit_last_stride(k_new), unit_last_stride(v_new)
        _append_kv[(B * H_kv, triton.cdiv(n_new, 16))](
            k_new, v_new, k_cache, v_cache, cache_seqlens, table, *k_new.stride()[:3], *v_new.stride()[:3],
            *k_cache.stride()[:3], *v_cache.stride()[:3], table.stride(0), H_kv, n_new, capacity, n_pages,
            HEAD_DIM=D, BLOCK_D=block_d(D), BLOCK_N=16, PAGE_SIZE=page_size)
    _decode_split[(splits, B * H_kv, row_blocks)](
        q, k_cache, v_cache, cache_seqlens, table, bad_input, o_part, lse_part, sm_scale,
        *q.stride()[:3], *k_cache.stride()[:3], *v_cache.stride()[:3], table.stride(0),
        H_kv, group, N_Q, n_new, capacity, n_pages, total_rows, splits, UNBOUNDED,
        HEAD_DIM=D, BLOCK_D=block_d(D), BLOCK_M=block_m, BLOCK_N=block_n, PAGE_SIZE=page_size, CAUSAL=causal,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", num_warps=num_warps, num_stages=num_stages)
    return o_part, lse_part, splits, report


def _raise_if(bad_input) -> None:
    if bad_input.item():
        raise ValueError(_BAD_INPUT.replace("an earlier flash_decode call", "this flash_decode call"))


def decode_partials(q, k_cache, v_cache, cache_seqlens, sm_scale=None, num_splits=None, config=None, **options):
    """The split kernel alone: (o_part (S, B*H*Nq, D) float32, lse_part (S, B*H*Nq) float32, S)."""
    o_part, lse_part, splits, report = _launch(q, k_cache, v_cache, cache_seqlens, sm_scale, num_splits, config,
                                               **options)
    report()
    return o_part, lse_part, splits


def flash_decode(q, k_cache, v_cache, cache_seqlens, sm_scale=None, num_splits=None, k_new=None, v_new=None,
                 causal=False, block_table=None):
    """Attention of a few new query tokens per sequence over a KV cache, split across programs: flash-attn's
    `flash_attn_with_kvcache` in the course's (B, H, N, D) layout.

    q: (B, H, Nq, D), Nq small (1 for plain decoding). k_cache, v_cache: (B, H_kv, N_max, D), H_kv dividing H;
    or, with `block_table`, a paged cache (num_pages, H_kv, page_size, D), page_size a multiple of 16, whose
    row b of block_table (B, pages per sequence; int32) lists the pages of sequence b in order (vLLM's layout,
    flash-attn's once transposed). cache_seqlens: (B,) int32/int64 on q's device, the tokens each sequence
    holds before this call. k_new, v_new (B, H_kv, N_new, D), optional: written into the cache in place at
    positions cache_seqlens[b] .. cache_seqlens[b] + N_new - 1 (cache_seqlens itself is not changed). The
    queries of sequence b then attend to its first cache_seqlens[b] + N_new keys: all of them, or with
    `causal`, bottom-right aligned (query i of Nq is the key at position length - Nq + i and sees the keys up
    to it: speculative decoding, chunked prefill). num_splits: how many programs share one sequence's cache
    (None: enough to fill the GPU). Returns o (B, H, Nq, D) in q's dtype; a query that sees no key gets 0.

    Nothing waits for the GPU, so a step can be captured in a CUDA graph: bad values (a length with no room
    for the new tokens, a page index outside the cache) are clamped by the kernels and reported as ValueError
    by the next call, or by `check_decode_lengths()`. Not differentiable (decoding needs no gradient).
    """
    o_part, lse_part, splits, report = _launch(q, k_cache, v_cache, cache_seqlens, sm_scale, num_splits, None, k_new,
                                               v_new, causal, block_table)
    B, H, N_Q, D = q.shape
    o = torch.empty((B, H, N_Q, D), dtype=q.dtype, device=q.device)
    _combine_splits[(B * H * N_Q,)](
        o_part, lse_part, o, *o.stride()[:3], H, N_Q, B * H * N_Q, splits,
        HEAD_DIM=D, BLOCK_D=block_d(D), BLOCK_S=max(2, next_power_of_2(splits)), num_warps=1 if D <= 64 else 4)
    report()
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

