"""The cost model of attention: FLOPs, HBM traffic and arithmetic intensity, naive vs fused."""
from .checks import check_positive_ints


def attention_cost(B, H, N, D, causal=False, dtype_bytes=2):
    """Costs of one attention forward over (B, H, N, D) inputs with N queries and N keys.

    Returns a dict:
      flops            the two matmuls, 4*B*H*N*N*D, halved when causal (softmax not counted)
      s_bytes, p_bytes bytes of the N x N score matrix S and of the probabilities P
      fused_bytes      HBM traffic of a fused kernel: read q, k, v once, write o once
      naive_bytes      three passes: fused_bytes plus writing S, reading S, writing P, reading P
      fused_intensity, naive_intensity   flops per byte of HBM traffic
    The naive version materializes the whole N x N matrix even when causal.
    """
    check_positive_ints(B=B, H=H, N=N, D=D, dtype_bytes=dtype_bytes)
    # TODO(phase 0, flops): count the flops of the two matmuls and the bytes of the N x N score matrix S
    # Contract: flops is an int, halved when causal (softmax is not counted); P has S's size.
    ### BEGIN SOLUTION
    flops = 4 * B * H * N * N * D
    if causal:
        flops //= 2
    s_bytes = dtype_bytes * B * H * N * N
    ### END SOLUTION
    # TODO(phase 0, bytes): count the HBM bytes a fused kernel moves and what the naive three passes add
    # Contract: fused = each (B, H, N, D) tensor read or written once; naive = fused plus every trip
    # S and P make through HBM (the naive kernel materializes the full N x N matrix even when causal).
    ### BEGIN SOLUTION
    fused_bytes = dtype_bytes * 4 * B * H * N * D
    naive_bytes = fused_bytes + 4 * s_bytes
    ### END SOLUTION
    return {
        "flops": flops,
        "s_bytes": s_bytes,
        "p_bytes": s_bytes,
        "fused_bytes": fused_bytes,
        "naive_bytes": naive_bytes,
        "fused_intensity": flops / fused_bytes,
        "naive_intensity": flops / naive_bytes,
    }
