"""FLOP and HBM-byte counts for attention: one convention for every phase, benchmark and lesson.

FLOPs follow every attention benchmark: the two matmuls of the forward are 4*B*H*Nq*Nk*D
(softmax's exponentials are not counted), halved when causal; the backward is 2.5x the forward
(five matmuls instead of two) and forward+backward 3.5x.
"""

PASS_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}


def attention_flops(B, H, Nq, Nk, D, causal=False, mode="fwd") -> float:
    flops = 4.0 * B * H * Nq * Nk * D * PASS_FACTOR[mode]
    return flops / 2 if causal else flops


def qkvo_bytes(B, H, Nq, Nk, D, dtype_bytes=2) -> float:
    """Reading q, k, v once and writing o once: the least traffic any attention can have."""
    return float(dtype_bytes * B * H * D * (2 * Nq + 2 * Nk))


def score_matrix_bytes(B, H, Nq, Nk, dtype_bytes=2) -> float:
    """One B x H x Nq x Nk matrix (S or P) in HBM."""
    return float(dtype_bytes * B * H * Nq * Nk)


def naive_attention_bytes(B, H, Nq, Nk, D, dtype_bytes=2) -> float:
    """Three passes, each reading its inputs from HBM and writing its output there.

    S = q k^T writes S; P = softmax(S) reads S and writes P; o = P v reads P. That is four trips
    of an Nq x Nk matrix on top of q, k, v and o. The causal naive version still materializes the
    whole matrix (masked entries included), so its traffic does not halve.
    """
    return qkvo_bytes(B, H, Nq, Nk, D, dtype_bytes) + 4 * score_matrix_bytes(B, H, Nq, Nk, dtype_bytes)
