"""GPU timing and the two ceilings of the device, measured rather than taken from a datasheet."""
import torch


def median_ms(fn, warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median of repeated runs, timed with CUDA events and the L2 cache flushed between them."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy, counting bytes read plus bytes written (GB/s, 1 GB = 1e9 B)."""
    src = torch.randn(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def matmul_tflops(n: int = 8192, dtype=torch.bfloat16) -> float:
    """A large square matmul on random data: the practical compute ceiling."""
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    ms = median_ms(lambda: a @ b)
    return tflops(2.0 * n**3, ms)
