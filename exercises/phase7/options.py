# Generated from solutions/phase7/options.py by `make exercises`: fill in the TODOs below.
# Regenerating never overwrites a file you have edited (unless forced).
"""Input checks and option normalization for Phase 7: grouped heads, windows, soft-capping, any D <= 256.

Every public function of the phase goes through `attention_options`, so that bad input reads the
same everywhere (a ValueError or TypeError naming the argument) and the kernels receive only
plain numbers: the band of visible keys as two integers (in row indices), the soft-cap as a float.

Alignment: by default query row i and key row j are positions i and j of one sequence (top-left, as
SDPA's is_causal and every earlier phase of the course). `alignment="bottom-right"` puts query i at
position i + Nk - Nq instead (flash-attn's convention, and every engine's for queries appended to a
cache: the last query is the last key); with Nq == Nk both agree. `window=(left, right)` lets the
query at position p see keys p - left .. p + right, -1 meaning unbounded on that side; `causal=True`
sets right = 0. The kernels know only top-left: a bottom-right band is the same band shifted by
Nk - Nq (`kernel_band`), which may leave one side negative.
"""
import math
from dataclasses import dataclass

from ..phase0.checks import FLOAT_DTYPES, check_float_tensor, check_sm_scale, check_triton_device

MAX_HEAD_DIM = 256


@dataclass(frozen=True)
class Options:
    sm_scale: float
    left: int        # query row i sees keys j >= i - left  (kernel value, top-left: "unbounded" = no limit;
    right: int       # ... and j <= i + right                   either side may be negative once aligned)
    softcap: float   # 0.0 = no soft-capping
    group: int       # query heads per K/V head: H // H_kv

    @property
    def local(self) -> bool:
        """Some key of some row is hidden by the band (causal or a window), not only by the end of K."""
        return self.left < UNBOUNDED or self.right < UNBOUNDED


# Larger than any distance between a query and a key (N < 2**30 keeps every sum in int32).
UNBOUNDED = 2**30


def next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def block_d(D: int) -> int:
    """The padded head dim the kernels work on: tl.arange needs a power of two, tl.dot at least 16."""
    return max(16, next_power_of_2(D))


def check_heads(q, k, v, triton=True, names=("q", "k", "v"), same_batch=True) -> int:
    """q: (B, H, Nq, D), k and v: (B, H_kv, Nk, D) with H_kv dividing H; returns the group size H // H_kv.
    `names` are the arguments' names in the messages (flash_decode's are k_cache and v_cache); a paged cache's
    first dimension counts pages, not sequences (same_batch=False)."""
    nq, nk, nv = names
    for name, x in ((nq, q), (nk, k), (nv, v)):
        check_float_tensor(x, name)
        if x.dim() != 4:
            raise ValueError(f"{name} must have 4 dimensions (B, H, N, D), got shape {tuple(x.shape)}")
        if triton:
            check_triton_device(x, name)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{nq}, {nk} and {nv} must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"{nk} and {nv} must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if (same_batch and q.shape[0] != k.shape[0]) or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{nq} {tuple(q.shape)} and {nk} {tuple(k.shape)} must agree in B and D")
    H, H_kv = q.shape[1], k.shape[1]
    if H_kv == 0 or H % H_kv:
        raise ValueError(f"the heads of {nk} and {nv} (H_kv={H_kv}) must divide the heads of {nq} (H={H}): "
                         "each K/V head serves a group of H // H_kv query heads")
    D = q.shape[-1]
    if not 1 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"head dim D={D} of {nq} is not supported: 1 <= D <= {MAX_HEAD_DIM}")
    if q.shape[2] == 0 or k.shape[2] == 0:
        raise ValueError(f"{nq} and {nk} need at least one row, got {q.shape[2]} and {k.shape[2]}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"{nq}, {nk} and {nv} must be on one device, got {q.device}, {k.device} and {v.device}")
    return H // H_kv


def check_window(window, causal) -> tuple[int, int]:
    """(left, right) as the user means them: -1 = unbounded; causal sets right to 0."""
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if window is None:
        left, right = -1, -1
    else:
        if not isinstance(window, (tuple, list)) or len(window) != 2:
            raise TypeError(f"window must be None or a pair (left, right) of ints, got {window!r}")
        if any(isinstance(w, bool) or not isinstance(w, int) for w in window):
            raise TypeError(f"window must be a pair (left, right) of ints, got {window!r}")
        left, right = window
        if left < -1 or right < -1:
            raise ValueError(f"window={tuple(window)}: each side must be >= 0, or -1 for unbounded")
    if causal:
        right = 0
    return left, right


ALIGNMENTS = ("top-left", "bottom-right")


def check_alignment(alignment) -> str:
    if not isinstance(alignment, str):
        raise TypeError(f"alignment must be one of {ALIGNMENTS}, got {type(alignment).__name__} {alignment!r}")
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be 'top-left' (SDPA's is_causal: query i is position i) or "
                         f"'bottom-right' (flash-attn's: query i is position i + Nk - Nq), got {alignment!r}")
    return alignment


def kernel_band(left: int, right: int, n_q: int, n_k: int, alignment: str) -> tuple[int, int]:
    """The band (WIN_LEFT, WIN_RIGHT) the kernels apply to query row i and key row j (top-left), from the
    user's band (left, right) around the query's position (-1: unbounded) under `alignment`."""
    # TODO(phase 7, align): the user's band, in the row indices the kernels compare
    # Contract: the kernels let row i see key j iff i - WIN_LEFT <= j <= i + WIN_RIGHT. Top-left, row i is
    # position i; bottom-right, row i is position i + n_k - n_q, and sees keys (i + n_k - n_q) - left ..
    # (i + n_k - n_q) + right. An unbounded side (-1) becomes UNBOUNDED and stays so whatever the alignment
    # (a huge number plus a shift could overflow int32); a bounded side may come out negative.
    raise NotImplementedError("phase 7: the user's band, in the row indices the kernels compare")
    return win_left, win_right


def check_softcap(softcap) -> float:
    if softcap is None:
        return 0.0
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
        raise TypeError(f"softcap must be a float or None, got {type(softcap).__name__}")
    if not math.isfinite(softcap) or softcap < 0:
        raise ValueError(f"softcap must be a positive finite float (0 or None: off), got {softcap!r}")
    return float(softcap)


def attention_options(q, k, v, causal=False, sm_scale=None, window=None, softcap=None, alignment="top-left",
                      triton=True) -> Options:
    group = check_heads(q, k, v, triton)
    window, alignment = check_window(window, causal), check_alignment(alignment)
    sm_scale, softcap = check_sm_scale(sm_scale, q.shape[-1]), check_softcap(softcap)
    left, right = kernel_band(*window, q.shape[2], k.shape[2], alignment)
    return Options(sm_scale=sm_scale, left=left, right=right, softcap=softcap, group=group)


def unit_last_stride(x):
    """The kernels read rows of D contiguous values; a rare view with a strided last dim is copied once."""
    return x if x.stride(-1) == 1 else x.contiguous()


def check_like(x, name: str, ref, ref_name: str, shape=None, dtypes=None) -> None:
    """x must be a tensor of ref's shape (or `shape`), ref's dtype (or one of `dtypes`) and ref's device."""
    check_float_tensor(x, name, dtypes or FLOAT_DTYPES)
    want = tuple(ref.shape) if shape is None else tuple(shape)
    if tuple(x.shape) != want:
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if dtypes is None and x.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {x.dtype}, expected {ref_name}'s dtype {ref.dtype}")
    if x.device != ref.device:
        raise ValueError(f"{name} is on {x.device}, {ref_name} on {ref.device}")
