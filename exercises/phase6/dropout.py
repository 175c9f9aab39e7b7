# Generated from solutions/phase6/dropout.py by `make exercises`: fill in the TODOs below.
# Regenerating never overwrites a file you have edited (unless forced).
"""Attention dropout without a stored mask: the mask is a pure function of where an element is.

Dropout zeroes each probability P[i, j] with chance p and scales the survivors by 1/(1-p). A
training framework would draw a (B, H, Nq, Nk) tensor of random bits and keep it for the backward:
exactly the Nq x Nk memory FlashAttention exists to avoid. A counter-based generator (Philox,
`tl.rand`) needs no state instead: the random number of an element is a function of the seed and
of a counter, so any kernel that knows (seed, batch * head, row, column) draws the same number
again. The forward and both backward kernels call `dropout_keep`; nothing is stored.

`dropout_mask` runs the same helper in a tiny kernel of its own: a debug path that shows the mask
(the grader applies it to its float64 reference), never used by the attention itself.
"""
import torch
import triton
import triton.language as tl

from ..phase0.checks import check_triton_device


@triton.jit
def dropout_keep(seed, bh, rows, cols, MAX_Q, MAX_K, dropout_p):
    """True where element (row, col) of head `bh` survives dropout; rows and cols broadcast
    against each other ((BLOCK_M, 1) and (1, BLOCK_N), or transposed for a transposed tile).

    The counter of an element is its position in a (batch * heads, MAX_Q, MAX_K) array: every
    element of every head gets its own counter, and a kernel that walks the tiles in another
    order or shape (the backward works transposed, with other block sizes) draws the same numbers.
    """
    # TODO(phase 6, keep): the keep-mask of this tile, a pure function of (seed, bh, row, col)
    # Contract: True with probability 1 - dropout_p, independently for every element of every head; the
    # same (seed, bh, row, col) gives the same answer in any kernel, tile shape or order. The element's
    # counter is unique in a (batch * heads, MAX_Q, MAX_K) array, computed in int64 (it passes 2**31).
    tl.static_assert(False, "phase 6: the keep-mask of this tile, a pure function of (seed, bh, row, col)")


@triton.jit
def dropout_mask_kernel(MASK, seed, dropout_p, MAX_Q, MAX_K,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bh = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]
    cols = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    keep = dropout_keep(seed, bh, rows, cols, MAX_Q, MAX_K, dropout_p)
    inside = (rows < MAX_Q) & (cols < MAX_K)
    tl.store(MASK + (bh.to(tl.int64) * MAX_Q + rows) * MAX_K + cols, keep.to(tl.int8), mask=inside)


def check_dropout(dropout_p, seed):
    """dropout_p a float in [0, 1); seed None or an int in [0, 2**63)."""
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"dropout_p must be a float, got {type(dropout_p).__name__}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if seed is not None and not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return float(dropout_p)


def draw_seed() -> int:
    """A seed from torch's default generator: `torch.manual_seed` makes a run repeatable."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def dropout_mask(seed, dropout_p, batch_heads, max_seqlen_q, max_seqlen_k, device="cuda"):
    """The keep-mask the attention kernels draw for this seed: (batch_heads, max_seqlen_q,
    max_seqlen_k) booleans, True where P[bh, i, j] survives.

    Dense attention (B, H, Nq, Nk) uses head bh = b * H + h with max_seqlen = Nq, Nk; varlen uses
    bh = sequence * H + h, local row and column, and the max_seqlen values it was called with.
    """
    dropout_p = check_dropout(dropout_p, seed)
    if seed is None:
        raise ValueError("seed must be given: the mask of a random seed is of no use")
    for name, value in (("batch_heads", batch_heads), ("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    mask = torch.empty((batch_heads, max_seqlen_q, max_seqlen_k), dtype=torch.int8, device=device)
    check_triton_device(mask, "device")
    grid = (batch_heads, triton.cdiv(max_seqlen_q, 32), triton.cdiv(max_seqlen_k, 32))
    dropout_mask_kernel[grid](mask, seed, dropout_p, max_seqlen_q, max_seqlen_k, BLOCK_M=32, BLOCK_N=32)
    return mask.to(torch.bool)
