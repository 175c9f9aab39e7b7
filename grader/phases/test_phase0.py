"""Grader for Phase 0: naive attention, the cost model, and a Triton softmax for any row width."""
import pytest
import torch

from grader import aot, bench, cost, numerics, timing
from grader.honesty import graded_call, timed
from grader.inputs import (FLOAT, assert_accepts, assert_refuses, assert_rowwise_refusals, qkv, randn,
                           rows_past_int32)

PHASE = 0
gpu = pytest.mark.tier("gpu")


# ---------------------------------------------------------------- attention_reference
REFERENCE_CASES = [
    # B, H, Nq, Nk, D, causal, dtype, sm_scale, layout
    pytest.param(1, 1, 1, 1, 16, False, "fp32", None, "bhnd", id="fp32-N1"),
    pytest.param(2, 3, 17, 33, 16, False, "fp32", None, "bhnd", id="fp32-Nq17-Nk33"),
    pytest.param(1, 2, 33, 17, 32, True, "fp32", None, "bhnd", id="fp32-causal-Nq33-Nk17"),
    pytest.param(2, 2, 64, 64, 64, True, "fp16", None, "bhnd", id="fp16-causal-N64"),
    pytest.param(2, 2, 16, 48, 128, False, "fp16", 0.3, "bnhd", id="fp16-D128-scale0.3-noncontiguous"),
    pytest.param(2, 4, 512, 512, 128, True, "bf16", None, "bnhd", id="bf16-causal-N512", marks=gpu),
    pytest.param(1, 8, 1024, 1000, 64, False, "bf16", None, "bhnd", id="bf16-N1024x1000", marks=gpu),
]


@pytest.mark.points(1)
@pytest.mark.parametrize("B, H, Nq, Nk, D, causal, dtype, sm_scale, layout", REFERENCE_CASES)
def test_attention_reference(api, gen, device, B, H, Nq, Nk, D, causal, dtype, sm_scale, layout):
    q, k, v = qkv(B, H, Nq, Nk, D, FLOAT[dtype], device, gen, layout)
    # Plain PyTorch by design: matmul and softmax are allowed, SDPA is not.
    o = graded_call(api.attention_reference, q, k, v, causal=causal, sm_scale=sm_scale,
                    forbid=("sdpa",), triton=False)
    numerics.assert_attention_output(o, q, k, v, causal, sm_scale)


@pytest.mark.points(1)
def test_attention_reference_refuses_bad_input(api, gen, device):
    q, k, v = qkv(1, 2, 8, 8, 16, torch.float32, device, gen)
    assert_accepts(lambda: api.attention_reference(q, k, v), "float32 q, k, v of shape (1, 2, 8, 16)")
    f = api.attention_reference
    assert_refuses(lambda: f(q[0], k, v), ValueError, "q", "q of rank 3")
    assert_refuses(lambda: f(q, k[:, :, :4], v), ValueError, "k", "k and v of different lengths")
    assert_refuses(lambda: f(q, k.int(), v), TypeError, "k", "integer k")


@pytest.mark.points(2)
@pytest.mark.tier("gpu")
def test_attention_reference_memory_grows_as_n_squared(api, gen):
    """Naive attention holds S and P: doubling N must roughly quadruple its peak extra memory."""
    extra = {}
    for n in (1024, 2048):
        q, k, v = qkv(1, 8, n, n, 64, torch.float16, "cuda", gen)
        extra[n] = timing.peak_extra_bytes(lambda: api.attention_reference(q, k, v))
    ratio = extra[2048] / max(extra[1024], 1)
    s_bytes = cost.score_matrix_bytes(1, 8, 2048, 2048, dtype_bytes=2)
    if not (3.0 <= ratio <= 5.0) or extra[2048] < s_bytes:
        raise AssertionError(f"peak extra memory {extra[1024] / 2**20:.0f} MiB at N=1024 and "
                             f"{extra[2048] / 2**20:.0f} MiB at N=2048 (x{ratio:.2f}); naive attention should "
                             f"grow about x4 and hold at least S ({s_bytes / 2**20:.0f} MiB at N=2048)")


# ---------------------------------------------------------------- attention_cost
COST_CASES = [
    pytest.param(1, 1, 1, 16, False, 2, id="tiny"),
    pytest.param(4, 16, 4096, 64, False, 2, id="B4-H16-N4k-D64"),
    pytest.param(1, 32, 16384, 128, True, 2, id="causal-N16k-D128"),
    pytest.param(2, 8, 1000, 128, False, 4, id="fp32-N1000"),
]


def expected_cost(B, H, N, D, causal, dtype_bytes):
    flops = cost.attention_flops(B, H, N, N, D, causal)
    fused = cost.qkvo_bytes(B, H, N, N, D, dtype_bytes)
    naive = cost.naive_attention_bytes(B, H, N, N, D, dtype_bytes)
    s = cost.score_matrix_bytes(B, H, N, N, dtype_bytes)
    return {"flops": flops, "s_bytes": s, "p_bytes": s, "fused_bytes": fused, "naive_bytes": naive,
            "fused_intensity": flops / fused, "naive_intensity": flops / naive}


@pytest.mark.points(1)
@pytest.mark.parametrize("B, H, N, D, causal, dtype_bytes", COST_CASES)
def test_attention_cost(api, B, H, N, D, causal, dtype_bytes):
    got = api.attention_cost(B, H, N, D, causal=causal, dtype_bytes=dtype_bytes)
    want = expected_cost(B, H, N, D, causal, dtype_bytes)
    missing = sorted(set(want) - set(got))
    if missing:
        raise AssertionError(f"attention_cost is missing keys {missing}")
    for key, value in want.items():
        if abs(float(got[key]) - value) > 1e-9 * abs(value):
            raise AssertionError(f"attention_cost(B={B}, H={H}, N={N}, D={D}, causal={causal}, "
                                 f"dtype_bytes={dtype_bytes})[{key!r}] = {got[key]:.6g}, expected {value:.6g}")


# ---------------------------------------------------------------- softmax
SOFTMAX_CASES = [
    # shape, dtype, scale of the values, layout
    pytest.param((1, 1), "fp32", 1.0, "rows", id="fp32-1x1"),
    pytest.param((3, 7), "fp32", 1.0, "rows", id="fp32-3x7"),
    pytest.param((5, 128), "fp16", 1.0, "rows", id="fp16-5x128"),
    pytest.param((2, 3, 1000), "fp32", 1.0, "rows", id="fp32-2x3x1000"),
    pytest.param((4, 300), "fp32", 1e3, "rows", id="fp32-large-logits"),
    pytest.param((6, 96), "fp16", 1.0, "transposed", id="fp16-noncontiguous"),
    pytest.param((2, 3, 500), "fp32", 1.0, "padded", id="fp32-2x3x500-rows-apart"),
    pytest.param((2, 10000), "fp32", 1.0, "rows", id="fp32-wide-10000"),
    pytest.param((3, 20000), "fp16", 10.0, "rows", id="fp16-wide-20000"),
    pytest.param((4096, 4096), "bf16", 1.0, "rows", id="bf16-4096x4096", marks=gpu),
    pytest.param((64, 100003), "bf16", 1.0, "rows", id="bf16-wide-100003", marks=gpu),
    pytest.param((1000, 777), "fp16", 5.0, "transposed", id="fp16-noncontiguous-1000x777", marks=gpu),
]


def _softmax_input(shape, dtype, scale, layout, device, gen):
    if layout == "transposed":  # rows of x are columns of a contiguous tensor
        return randn(tuple(reversed(shape)), FLOAT[dtype], device, gen, scale).transpose(0, 1)
    if layout == "padded":  # rows 37 elements further apart than their width: the row stride is not the width
        return randn((*shape[:-1], shape[-1] + 37), FLOAT[dtype], device, gen, scale)[..., :shape[-1]]
    return randn(shape, FLOAT[dtype], device, gen, scale)


def check_softmax(api, x):
    numerics.assert_softmax_output(graded_call(api.softmax, x), x)


@pytest.mark.points(1)
@pytest.mark.parametrize("shape, dtype, scale, layout", SOFTMAX_CASES)
def test_softmax(api, gen, device, shape, dtype, scale, layout):
    check_softmax(api, _softmax_input(shape, dtype, scale, layout, device, gen))


### BEGIN HIDDEN TESTS
@pytest.mark.points(1)
def test_softmax_seeded_shapes(api, gen, device):
    """Three shapes drawn from the seed: an instructor's secret seed makes them unknown in advance."""
    for _ in range(3):
        rows = int(torch.randint(1, 9, (1,), generator=gen))
        cols = int(torch.randint(1, 12000, (1,), generator=gen))
        check_softmax(api, randn((rows, cols), torch.float32, device, gen, scale=4.0))
### END HIDDEN TESTS


@pytest.mark.points(1)
@pytest.mark.tier("gpu")
def test_softmax_int64_offsets(api, gen):
    """Row 2 starts past element 2**31 of the storage: row * stride overflows int32."""
    check_softmax(api, rows_past_int32(1000, torch.float16, gen))


@pytest.mark.points(1)
def test_softmax_refuses_bad_input(api, gen, device):
    x = randn((3, 40), torch.float32, device, gen)
    assert_accepts(lambda: api.softmax(x), "a float32 x of shape (3, 40)")
    assert_rowwise_refusals(api.softmax, device)


SOFTMAX_KERNELS = [
    aot.KernelSpec("softmax", "softmax_kernel",
                   {"x_ptr": f"*{t}", "y_ptr": f"*{t}", "n_cols": "i32", "x_row_stride": "i64",
                    "y_row_stride": "i64", "BLOCK": "constexpr", "ONE_BLOCK": "constexpr"},
                   {"BLOCK": block, "ONE_BLOCK": one}, num_warps=warps, label=f"{t}, BLOCK={block}, ONE_BLOCK={one}")
    for t, block, one, warps in (("fp16", 4096, True, 8), ("fp32", 8192, False, 16), ("bf16", 1024, True, 4))
]


@pytest.mark.points(2)
@pytest.mark.tier("compile")
def test_softmax_kernel_compiles(record_property):
    aot.assert_compiles(PHASE, SOFTMAX_KERNELS, record_property)


@pytest.mark.points(3)
@pytest.mark.tier("throughput")
def test_softmax_bandwidth(api, gen, record_property):
    """A memory-bound kernel is judged by bandwidth: one read and one write of x, against a copy."""
    x = randn((32768, 4096), torch.float16, "cuda", gen)
    check_softmax(api, x[:64])
    nbytes = 2 * x.numel() * x.element_size()
    row = bench.bandwidth(timed(lambda: api.softmax(x), x), nbytes, "softmax", 0.6, shape=list(x.shape), dtype="fp16")
    row["torch_softmax_gbs"] = timing.gbs(nbytes, timing.median_ms(lambda: torch.softmax(x, dim=-1)))
    row["summary"] += f"; torch.softmax {row['torch_softmax_gbs']:.0f} GB/s"
    record_property("throughput", row)
    bench.assert_bandwidth(row)
