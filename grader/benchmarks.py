"""`make bench PHASE=N`: the phase's kernels under pytest-benchmark, run after run.

Each run is timed with CUDA events (`grader.timing.cuda_event_clock` as the timer; L2 flushed
before every round, outside the timing), saved under `.benchmarks/` and compared with the run before
it, so a student sees what each change to their kernels did. The shapes are the standard sweep's
(16k tokens, hidden 2048) at N=4096, bf16. TFLOPS are added to each result's `extra_info`.
"""
import pytest
import torch

from grader import bench, cost, impl, settings
from grader.inputs import qkv, randn

# phase -> (label, mode, function of (api, q, k, v, do, causal) returning a zero-argument callable)
WORKLOADS = {
    1: [("tiled_attention", "fwd", lambda api, q, k, v, do, causal: lambda: api.tiled_attention(q, k, v))],
    2: [("flash_attention_v1", "fwd", lambda api, q, k, v, do, causal: lambda: api.flash_attention_v1(q, k, v))],
    3: [("forward", "fwd", lambda api, q, k, v, do, causal: lambda: api.flash_attention_forward(q, k, v, causal))],
}
BACKWARD_PHASES = (4, 5)


def _fwd_bwd(api, q, k, v, do, causal):
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    return lambda: torch.autograd.grad(api.flash_attention(qg, kg, vg, causal=causal), (qg, kg, vg), do)


def _bwd(api, q, k, v, do, causal):
    o, lse = api.flash_attention_forward(q, k, v, causal) if hasattr(api, "flash_attention_forward") else \
        impl.load(3).flash_attention_forward(q, k, v, causal)
    return lambda: api.flash_attention_backward(do, q, k, v, o, lse, causal=causal)


for _phase in BACKWARD_PHASES:
    WORKLOADS[_phase] = ([("forward", "fwd", WORKLOADS[3][0][2])] if _phase == 5 else []) + [
        ("backward", "bwd", _bwd), ("forward+backward", "fwd_bwd", _fwd_bwd)]


def _cases():
    phase = int(settings.BENCH_PHASE.get())
    causal_options = (False,) if phase in (1, 2) else (False, True)
    return [pytest.param(phase, label, mode, make, D, causal,
                         id=f"{label}-D{D}{'-causal' if causal else ''}")
            for label, mode, make in WORKLOADS.get(phase, []) for D in (64, 128) for causal in causal_options]


_FLUSH = None


def _flush_l2():
    global _FLUSH
    if _FLUSH is None:
        _FLUSH = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    _FLUSH.zero_()


@pytest.mark.parametrize("phase, label, mode, make, D, causal", _cases())
def test_kernel(benchmark, phase, label, mode, make, D, causal):
    B, H, N, _ = bench.standard_shape(4096, D)
    gen = torch.Generator().manual_seed(0)
    q, k, v = qkv(B, H, N, N, D, torch.bfloat16, "cuda", gen)
    do = randn((B, H, N, D), torch.bfloat16, "cuda", gen)
    run = make(impl.load(phase), q, k, v, do, causal)
    run()  # compile outside the measurement
    benchmark.group = f"phase {phase}: {label}"
    benchmark.pedantic(run, setup=_flush_l2, rounds=30, warmup_rounds=3, iterations=1)
    flops = cost.attention_flops(B, H, N, N, D, causal, mode)
    benchmark.extra_info.update(tflops_at_median=flops / benchmark.stats.stats.median / 1e12, shape=[B, H, N, D],
                                dtype="bfloat16", causal=causal)
