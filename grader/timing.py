"""GPU measurements: time, bandwidth, peak memory, and the two ceilings of the device, measured
rather than taken from a datasheet. Shared by the graders and the lessons' measurements."""
import gc

import torch

from grader import gpulock


# Set in the grader's warm-up processes (grader.warmup), which only fill Triton's kernel cache: a
# timing there would run beside a dozen other processes on the same GPU and mean nothing.
compile_only = False


def median_ms(fn, warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median of repeated runs, timed with CUDA events and the L2 cache flushed between them.

    The GPU is ours alone while timing: other gradings on this machine wait (grader.gpulock).
    In a warm-up process: one call (it compiles what the timing would) and NaN, which fails any
    ratio it goes into.
    """
    if hasattr(fn, "remote_median_ms"):  # the graded code's calls, timed in the worker (grader.remote)
        return fn.remote_median_ms(warmup_ms, rep_ms)
    import triton.testing

    if compile_only:
        with gpulock.hold(exclusive=False):
            fn()
            torch.cuda.synchronize()
        return float("nan")
    with gpulock.hold(exclusive=True):
        return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def capture_graph(fn):
    """`fn()` captured in a CUDA graph: (graph, what the captured call returned). One call on a side stream
    first, as PyTorch asks (it compiles kernels and fills caches, which capture cannot do); the capture
    raises RuntimeError if `fn` waits for the GPU (`.item()`, `.tolist()`, a synchronize)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12


def gbs(nbytes: float, ms: float) -> float:
    """Bandwidth in GB/s (1 GB = 1e9 B) of `nbytes` moved in `ms` milliseconds."""
    return nbytes / (ms * 1e-3) / 1e9


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy, counting bytes read plus bytes written (GB/s, 1 GB = 1e9 B)."""
    src = torch.randn(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    return gbs(2 * nbytes, ms)


def peak_extra_bytes(fn) -> int:
    """The most CUDA memory `fn()` holds at once beyond what was allocated before it (bytes), its
    output included: what a kernel keeps alive (S and P, or only o), measured by PyTorch's allocator.
    Garbage from earlier tests is collected first: freed during `fn()` by Python's cycle collector, it
    would lower the allocated bytes under `before` and hide what `fn()` allocated (Phase 4's memory
    test read 4 MiB instead of 16 MiB once, graded after other tests). In the grading process, the
    graded code's calls run in the worker, which measures its own allocator (grader.remote)."""
    from grader import remote

    if remote.active():
        return remote.peak_extra_bytes(fn)
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    gc.disable()  # and none collected while it runs
    try:
        fn()
        torch.cuda.synchronize()
    finally:
        gc.enable()
    return torch.cuda.max_memory_allocated() - before


def matmul_tflops(n: int = 8192, dtype=torch.bfloat16) -> float:
    """A large square matmul on random data: the practical compute ceiling."""
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    ms = median_ms(lambda: a @ b)
    return tflops(2.0 * n**3, ms)


_CLOCK_ZERO = None


def cuda_event_clock() -> float:
    """Seconds on the GPU's own clock: an event recorded on the current stream, read once it has
    passed. Used as pytest-benchmark's timer (`make bench`), so that two readings around a call time
    the kernels it queued, not the Python that queued them."""
    global _CLOCK_ZERO
    if _CLOCK_ZERO is None:
        _CLOCK_ZERO = torch.cuda.Event(enable_timing=True)
        _CLOCK_ZERO.record()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    event.synchronize()
    return _CLOCK_ZERO.elapsed_time(event) / 1e3
