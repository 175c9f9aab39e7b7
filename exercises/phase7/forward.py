# Generated from solutions/phase7/forward.py by `make exercises`: fill in the TODOs below.
# Regenerating never overwrites a file you have edited (unless forced).
"""The forward pass of the attention current models run: Phase 3's kernel, generalized.

Four changes to Phase 3's `_attn_fwd`, each a few lines:
- grouped-query attention: query head h reads K/V head h // GROUP; nothing is copied, the
  GROUP query heads of a group simply read the same K/V rows (from L2, mostly);
- a band of visible keys instead of the causal triangle: query i sees keys i - WIN_LEFT ..
  i + WIN_RIGHT (causal is the band (unbounded, 0)); a query block visits only the key blocks
  that meet its band, in three sweeps: masked blocks on the left edge, whole blocks every row
  sees (no mask), masked blocks on the right edge (the diagonal, the end of K);
- logit soft-capping, softcap * tanh(s / softcap), applied to the scaled scores before the softmax;
- any head dim up to 256: tiles are BLOCK_D = next power of two wide, loads and stores masked to
  the HEAD_DIM real columns (the padded columns are zeros and add nothing to q k^T or p v).
Rows that see no key at all (a window that leaves them empty) get o = 0 and lse = -inf.
"""
import torch
import triton
import triton.language as tl

from .options import Options, attention_options, block_d, unit_last_stride


@triton.jit
def _tanh(x):
    # tanh(x) = sign(x) (1 - e^(-2|x|)) / (1 + e^(-2|x|)): e^(-2|x|) <= 1 never overflows.
    t = tl.math.exp2(-2.8853900817779268 * tl.abs(x))  # 2 * log2(e)
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -y, y)


@triton.jit
def _logits(qk, sm_scale, softcap, SOFTCAP: tl.constexpr):
    """The scores the softmax sees, in log2 units (ready for exp2), from the raw dot products q . k."""
    # TODO(phase 7, softcap): scale the raw scores, soft-cap them when SOFTCAP, return them in log2 units
    # Contract: s = qk * sm_scale; with SOFTCAP, s = softcap * tanh(s / softcap) (|s| < softcap, smooth);
    # the result is s * log2(e), so that exp2 of it is exp(s). The backward recomputes the same values.
    tl.static_assert(False, "phase 7: scale the raw scores, soft-cap them when SOFTCAP, return them in log2 units")


@triton.jit
def _softcap_grad(s2, softcap):
    """d(capped score)/d(scaled score) from the capped score in log2 units: 1 - tanh^2."""
    t = s2 * (0.6931471805599453 / softcap)  # the capped score over softcap, = tanh(s / softcap)
    return 1.0 - t * t


@triton.jit
def _visible(rows, cols, N_K, WIN_LEFT, WIN_RIGHT):
    """Broadcast booleans: key `cols` exists and lies in the band of query `rows`."""
    # TODO(phase 7, visible): which (query, key) pairs the softmax may see
    # Contract: True iff the key exists (col < N_K) and lies in the query's band, row - WIN_LEFT <= col
    # <= row + WIN_RIGHT ("unbounded" arrives as a huge number; a bottom-right band, shifted to rows,
    # may make either side negative). Works for any broadcastable shapes: (BLOCK_M, 1) rows with
    # (1, BLOCK_N) keys, or transposed.
    tl.static_assert(False, "phase 7: which (query, key) pairs the softmax may see")


@triton.jit
def _key_range(start_m, N_Q, N_K, WIN_LEFT, WIN_RIGHT, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The key blocks query rows start_m .. start_m + BLOCK_M - 1 visit, as (lo, full_lo, full_hi, hi):
    [lo, full_lo) and [full_hi, hi) need a mask, [full_lo, full_hi) are whole blocks every row sees."""
    # TODO(phase 7, range): the key range of a query block under the band, split into masked and whole blocks
    # Contract: every key some row of the block may see lies in [lo, hi); no block outside it is loaded
    # (that is the work a window saves); lo, full_lo and full_hi are multiples of BLOCK_N with
    # lo <= full_lo <= full_hi and full_hi <= hi (or all four equal when no row sees a key); every key
    # of [full_lo, full_hi) exists and is visible to every row of the block (start_m .. the last row < N_Q).
    # Either side of the band may be negative (bottom-right alignment shifts it): the range is then empty
    # for rows whose band ends before key 0 or starts after the last key.
    tl.static_assert(False, "phase 7: the key range of a query block under the band, split into masked and whole blocks")
    return lo, full_lo, full_hi, hi


@triton.jit
def _load_rows(tile_ptrs, rows, N, offs_d, HEAD_DIM: tl.constexpr, MASK_ROWS: tl.constexpr):
    """A tile of `rows` x BLOCK_D: rows >= N (checked only when MASK_ROWS) and padding columns >= HEAD_DIM
    load as 0. When neither can occur the load is plain, as in Phase 3's hot loop."""
    if MASK_ROWS:
        return tl.load(tile_ptrs, mask=(rows[:, None] < N) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    elif HEAD_DIM == offs_d.shape[0]:
        return tl.load(tile_ptrs)
    else:
        return tl.load(tile_ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)


@triton.jit
def _empty_state(BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """The online softmax's state before any key, (m, l, acc) = (-inf, 0, 0), all float32."""
    zero = tl.zeros([BLOCK_M], tl.float32)
    return zero - float("inf"), zero, tl.zeros([BLOCK_M, BLOCK_D], tl.float32)


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, start_n, end_n, offs_m, offs_d,
                    N_K, WIN_LEFT, WIN_RIGHT, sm_scale, softcap,
                    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, SOFTCAP: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    """Stream key blocks [start_n, end_n) through the online softmax of (acc, l_i, m_i), in log2 units.

    MASKED=False: every key of these blocks exists and every row sees it (no mask at all).
    MASKED=True: keys past N_K and outside a row's band weigh exactly 0, and a row may have seen no
    key yet (m_i = -inf), even after this block.
    """
    for start in range(start_n, end_n, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        k = _load_rows(K + cols[:, None] * stride_kn + offs_d[None, :], cols, N_K, offs_d, HEAD_DIM, MASKED)
        s = _logits(tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION), sm_scale, softcap, SOFTCAP)
        # TODO(phase 7, block): one key block of the online softmax, with the band's mask when MASKED
        # Invariant (Phase 3's): m_i is the running max of the visible scores (log2 units), l_i the sum of
        # exp2(s - m_i), acc the sum of exp2(s - m_i) * v, over the keys seen so far. New here: when MASKED a
        # row may have no visible key yet, so m_i may stay -inf: no NaN may come out of -inf - -inf.
        tl.static_assert(False, "phase 7: one key block of the online softmax, with the band's mask when MASKED")
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, O, LSE, sm_scale, softcap,
              stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
              stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
              H, GROUP, N_Q, N_K, N_M_BLOCKS, WIN_LEFT, WIN_RIGHT,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # A 1-D grid, neighbouring programs on one query head; the GROUP heads of a group are neighbours
    # too (numbered from hk * GROUP on), so their programs read the same K/V while it sits in L2.
    pid = tl.program_id(0)
    start_m = (N_M_BLOCKS - 1 - pid % N_M_BLOCKS) * BLOCK_M
    off_bh = tl.program_id(0) // N_M_BLOCKS  # (batch, head) of this program
    off_b = off_bh // H
    off_h = off_bh % H
    # TODO(phase 7, heads): the base pointers of this program's q and o head, and of the K/V head it reads
    # Contract: q_base, o_base point at (batch off_b, head off_h) of Q and O; k_base, v_base at the K/V head
    # that serves query head off_h (the GROUP consecutive query heads h = hk * GROUP .. hk * GROUP + GROUP - 1
    # share K/V head hk). No K/V is copied per query head. Offsets in int64 (large tensors overflow int32).
    tl.static_assert(False, "phase 7: the base pointers of this program's q and o head, and of the K/V head it reads")

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)  # a power of two; columns HEAD_DIM.. are padding, loaded as 0
    io_ok = (offs_m[:, None] < N_Q) & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(q_base + offs_m[:, None] * stride_qn + offs_d[None, :], mask=io_ok, other=0.0)
    m_i, l_i, acc = _empty_state(BLOCK_M, BLOCK_D)

    lo, full_lo, full_hi, hi = _key_range(start_m, N_Q, N_K, WIN_LEFT, WIN_RIGHT, BLOCK_M, BLOCK_N)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, lo, full_lo, offs_m,
                                    offs_d, N_K, WIN_LEFT, WIN_RIGHT, sm_scale, softcap,
                                    HEAD_DIM, BLOCK_N, True, SOFTCAP, DOT_PRECISION)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, full_lo, full_hi, offs_m,
                                    offs_d, N_K, WIN_LEFT, WIN_RIGHT, sm_scale, softcap,
                                    HEAD_DIM, BLOCK_N, False, SOFTCAP, DOT_PRECISION)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, full_hi, hi, offs_m,
                                    offs_d, N_K, WIN_LEFT, WIN_RIGHT, sm_scale, softcap,
                                    HEAD_DIM, BLOCK_N, True, SOFTCAP, DOT_PRECISION)

    # TODO(phase 7, finish): store o and the natural-log lse; a row that saw no key gets o = 0, lse = -inf
    # Contract: as Phase 3 (o = acc / l_i in O's dtype, lse = ln 2 * (m_i + log2 l_i) in float32 at
    # LSE[(b * H + h) * N_Q + row], nothing stored for rows >= N_Q or columns >= HEAD_DIM), and no NaN
    # for an empty row (l_i = 0): o = 0 there and lse = -inf, which the backward and merges read as "no key".
    tl.static_assert(False, "phase 7: store o and the natural-log lse; a row that saw no key gets o = 0, lse = -inf")


# (BLOCK_M, BLOCK_N, num_warps, num_stages) per padded head dim. 16-bit inputs on sm_90 first; the
# D=256 tiles are smaller because q, the K/V pipeline and acc (BLOCK_M x 256 float32) must fit.
# The compile tier checks each against the chip's shared memory.
CONFIGS_SM90 = {16: (128, 64, 4, 3), 32: (128, 64, 4, 3), 64: (128, 64, 4, 3), 128: (128, 64, 8, 3),
                256: (64, 64, 8, 2)}
CONFIGS_SM80 = {16: (128, 64, 4, 2), 32: (128, 64, 4, 2), 64: (128, 64, 4, 2), 128: (128, 64, 8, 2),
                256: (64, 32, 8, 2)}
# float32 is graded for correctness only (exact dots run on CUDA cores): small tiles compile fast.
CONFIG_FP32 = {d: (32, 32, 4, 2) for d in (16, 32, 64, 128)} | {256: (16, 32, 4, 1)}
# Under the interpreter programs run one after another as numpy: small blocks keep it quick, and two
# query blocks per key block width make the masked edges of a band span several blocks, as on a GPU.
CONFIG_INTERPRETER = (32, 16, 4, 1)


def forward_config(q) -> tuple:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for these inputs."""
    if q.device.type != "cuda":
        return CONFIG_INTERPRETER
    bd = block_d(q.shape[-1])
    if q.dtype == torch.float32:
        return CONFIG_FP32[bd]
    return (CONFIGS_SM90 if torch.cuda.get_device_capability(q.device)[0] >= 9 else CONFIGS_SM80)[bd]


def attention_forward(q, k, v, opts: Options, out_dtype=None, config=None):
    """(o, lse) for checked inputs and options; o in `out_dtype` (default q's: ring attention asks for
    float32 partial outputs, which it merges before rounding)."""
    B, H, N_Q, D = q.shape
    N_K = k.shape[2]
    q, k, v = (unit_last_stride(x) for x in (q, k, v))
    o = torch.empty((B, H, N_Q, D), dtype=out_dtype or q.dtype, device=q.device)
    lse = torch.empty((B, H, N_Q), dtype=torch.float32, device=q.device)
    block_m, block_n, num_warps, num_stages = config or forward_config(q)
    n_m_blocks = triton.cdiv(N_Q, block_m)
    _attn_fwd[(n_m_blocks * B * H,)](
        q, k, v, o, lse, opts.sm_scale, opts.softcap or 1.0,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],  # the last strides are 1
        H, opts.group, N_Q, N_K, n_m_blocks, opts.left, opts.right,
        HEAD_DIM=D, BLOCK_D=block_d(D), BLOCK_M=block_m, BLOCK_N=block_n, SOFTCAP=opts.softcap > 0,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps, num_stages=num_stages)
    return o, lse


def flash_attention_forward(q, k, v, causal=False, sm_scale=None, window=None, softcap=None, alignment="top-left",
                            config=None):
    """softmax(mask(cap(q k^T * sm_scale))) v and its logsumexp.

    q: (B, H, Nq, D); k and v: (B, H_kv, Nk, D) with H_kv dividing H (grouped-query attention; H_kv = 1
    is multi-query); 1 <= D <= 256; float16, bfloat16 or float32; any strides.
    alignment: where query i sits among the keys when Nq != Nk. "top-left" (default, SDPA's is_causal):
    at position i. "bottom-right" (flash-attn's, a prompt chunk against a cache): at position
    i + Nk - Nq, so the last query is the last key. The same for Nq == Nk.
    causal: the query at position p sees keys j <= p.
    window=(left, right): the query at position p sees keys p - left .. p + right, -1 = unbounded on that
    side (flash-attn's window_size); with causal=True the right side is 0.
    softcap: scores s = sm_scale * q.k become softcap * tanh(s / softcap) before the softmax (Gemma 2).
    Returns o (B, H, Nq, D) in q's dtype and lse (B, H, Nq) float32; a row that sees no key (bottom-right
    causal with Nq > Nk: the first Nq - Nk rows; a narrow window) gets o = 0 and lse = -inf.
    """
    opts = attention_options(q, k, v, causal, sm_scale, window, softcap, alignment)
    return attention_forward(q, k, v, opts, config=config)
