"""Grader for Phase 2: online softmax, and the first fused attention kernel (no S or P in memory)."""
import pytest
import torch

from grader import aot, bench, diagnosis, numerics, remote, timing
from grader.honesty import graded_call, timed
from grader.inputs import (FLOAT, assert_accepts, assert_refuses, assert_rowwise_refusals, qkv, qkv_past_int32,
                           randn, rows_past_int32)

PHASE = 2
gpu = pytest.mark.tier("gpu")


# ---------------------------------------------------------------- online_softmax
SOFTMAX_CASES = [
    # shape, dtype, scale of the values, offset added to every value, layout
    pytest.param((1, 1), "fp32", 1.0, 0.0, "rows", id="fp32-1x1"),
    pytest.param((3, 7), "fp32", 1.0, 0.0, "rows", id="fp32-3x7"),
    pytest.param((5, 128), "fp16", 1.0, 0.0, "rows", id="fp16-5x128"),
    pytest.param((4, 300), "fp32", 1e4, 0.0, "rows", id="fp32-magnitude-1e4"),
    pytest.param((4, 5000), "fp32", 3.0, 1e4, "rows", id="fp32-all-near-1e4-wide"),
    pytest.param((3, 2000), "fp32", 3.0, -1e4, "rows", id="fp32-all-near-minus-1e4"),
    pytest.param((6, 96), "fp16", 1.0, 0.0, "transposed", id="fp16-noncontiguous"),
    pytest.param((2, 3, 500), "fp32", 1.0, 0.0, "padded", id="fp32-2x3x500-rows-apart"),
    pytest.param((2, 3, 1000), "fp32", 1.0, 0.0, "rows", id="fp32-2x3x1000"),
    pytest.param((2, 10000), "fp32", 1.0, 0.0, "rows", id="fp32-wide-10000"),
    pytest.param((3, 20000), "fp16", 10.0, 0.0, "rows", id="fp16-wide-20000"),
    pytest.param((4096, 4096), "bf16", 1.0, 0.0, "rows", id="bf16-4096x4096", marks=gpu),
    pytest.param((64, 100003), "bf16", 1.0, 0.0, "rows", id="bf16-wide-100003", marks=gpu),
    pytest.param((1000, 777), "fp16", 5.0, 0.0, "transposed", id="fp16-noncontiguous-1000x777", marks=gpu),
    pytest.param((256, 30000), "fp32", 1e4, 0.0, "rows", id="fp32-magnitude-1e4-wide", marks=gpu),
]


def softmax_input(shape, dtype, scale, offset, layout, device, gen):
    if layout == "transposed":  # rows of x are columns of a contiguous tensor
        x = randn(tuple(reversed(shape)), torch.float32, device, gen, scale).transpose(0, 1)
    elif layout == "padded":  # rows 37 elements further apart than their width: the row stride is not the width
        wide = randn((*shape[:-1], shape[-1] + 37), torch.float32, device, gen, scale)
        return (wide + offset).to(FLOAT[dtype])[..., :shape[-1]]  # sliced last: x + offset would be compact
    else:
        x = randn(shape, torch.float32, device, gen, scale)
    return (x + offset).to(FLOAT[dtype])


def check_softmax(api, x):
    numerics.assert_softmax_output(graded_call(api.online_softmax, x), x)


@pytest.mark.points(0.5)
@pytest.mark.parametrize("shape, dtype, scale, offset, layout", SOFTMAX_CASES)
def test_online_softmax(api, gen, device, shape, dtype, scale, offset, layout):
    check_softmax(api, softmax_input(shape, dtype, scale, offset, layout, device, gen))


@pytest.mark.points(1)
@pytest.mark.tier("gpu")
def test_online_softmax_int64_offsets(api, gen):
    """Row 2 starts past element 2**31 of the storage: row * stride overflows int32."""
    check_softmax(api, rows_past_int32(1000, torch.float16, gen))


@pytest.mark.points(1)
def test_online_softmax_refuses_bad_input(api, gen, device):
    x = randn((3, 40), torch.float32, device, gen)
    assert_accepts(lambda: api.online_softmax(x), "a float32 x of shape (3, 40)")
    assert_rowwise_refusals(api.online_softmax, device)


# ---------------------------------------------------------------- flash_attention_v1
FLASH_CASES = [
    # B, H, Nq, Nk, D, dtype, sm_scale, layout
    pytest.param(1, 1, 1, 1, 16, "fp32", None, "bhnd", id="fp32-N1-D16"),
    pytest.param(2, 3, 17, 33, 16, "fp32", None, "bhnd", id="fp32-Nq17-Nk33-D16"),
    pytest.param(1, 2, 65, 300, 32, "fp32", 0.3, "bnhd", id="fp32-Nq65-Nk300-D32-scale0.3-noncontiguous"),
    pytest.param(2, 2, 100, 70, 64, "fp16", None, "bhnd", id="fp16-D64-Nq100-Nk70"),
    pytest.param(1, 2, 130, 128, 64, "fp16", None, "bnhd", id="fp16-Nq130-Nk128-D64-noncontiguous"),
    pytest.param(1, 2, 33, 150, 128, "fp16", 0.05, "bnhd", id="fp16-Nq33-Nk150-D128-scale0.05-noncontiguous"),
    pytest.param(1, 2, 40, 200, 64, "fp16", 2.0, "bhnd", id="fp16-Nq40-Nk200-D64-large-logits-scale2"),
    # q, k and v each with strides of their own: the launch must pass each tensor's own
    pytest.param(2, 2, 40, 70, 32, "fp16", None, "mixed", id="fp16-Nq40-Nk70-D32-mixed-layouts"),
    pytest.param(2, 4, 512, 512, 128, "bf16", None, "bnhd", id="bf16-D128-N512", marks=gpu),
    pytest.param(1, 8, 1000, 777, 64, "bf16", 0.2, "bhnd", id="bf16-D64-Nq1000-Nk777", marks=gpu),
    pytest.param(2, 4, 2048, 2048, 32, "fp16", None, "bnhd", id="fp16-D32-N2048", marks=gpu),
    pytest.param(1, 16, 4096, 4096, 128, "bf16", None, "bhnd", id="bf16-D128-N4096", marks=gpu),
    pytest.param(1, 4, 333, 8191, 16, "bf16", None, "bhnd", id="bf16-D16-Nq333-Nk8191", marks=gpu),
]


def _probe(api):
    def forward(q, k, v, causal, sm_scale):  # no causal mask in Phase 2: its probes are all non-causal
        return graded_call(api.flash_attention_v1, q, k, v, sm_scale=sm_scale)
    return forward


def check_flash(api, q, k, v, sm_scale):
    o = graded_call(api.flash_attention_v1, q, k, v, sm_scale=sm_scale)
    # A wrong o gets one more line: the condition its error follows, from probes (grader/diagnosis.py).
    with diagnosis.explained("flash_attention_v1", _probe(api), causal=False, dtype=q.dtype, device=q.device):
        numerics.assert_attention_output(o, q, k, v, sm_scale=sm_scale)


@pytest.mark.points(1)
@pytest.mark.parametrize("B, H, Nq, Nk, D, dtype, sm_scale, layout", FLASH_CASES)
def test_flash_attention_v1(api, gen, device, B, H, Nq, Nk, D, dtype, sm_scale, layout):
    q, k, v = qkv(B, H, Nq, Nk, D, FLOAT[dtype], device, gen, layout)
    check_flash(api, q, k, v, sm_scale)


@pytest.mark.points(1)
@pytest.mark.tier("gpu")
def test_flash_attention_v1_int64_offsets(api, gen):
    """Batch 2 starts past element 2**31 of the storage: batch * stride overflows int32."""
    q, k, v = qkv_past_int32(2, 256, 64, torch.bfloat16, gen)
    check_flash(api, q, k, v, None)


@pytest.mark.points(1)
def test_flash_attention_v1_refuses_bad_input(api, gen, device):
    q, k, v = qkv(1, 2, 8, 8, 16, torch.float32, device, gen)
    f = api.flash_attention_v1
    assert_accepts(lambda: f(q, k, v), "float32 q, k, v of shape (1, 2, 8, 16)")
    assert_refuses(lambda: f(q[0], k, v), ValueError, "q", "q of rank 3")
    assert_refuses(lambda: f(q, k, v[:, :, :4]), ValueError, "v", "k and v of different lengths")
    assert_refuses(lambda: f(q, k, v.double()), TypeError, "v", "float64 v")
    big = tuple(torch.zeros(1, 1, 4, 256, device=device) for _ in range(3))
    assert_refuses(lambda: f(*big), ValueError, "D", "head dim 256")
    assert_refuses(lambda: f(q, k, v, sm_scale=[0.1]), TypeError, "sm_scale", "a list sm_scale")
    if device == "cuda":
        assert_refuses(lambda: f(q.cpu(), k.cpu(), v.cpu()), ValueError, "q", "CPU tensors on a GPU run")


### BEGIN HIDDEN TESTS
@pytest.mark.points(1)
def test_phase2_seeded_shapes(api, gen, device):
    """Shapes drawn from the seed: an instructor's secret seed makes them unknown in advance."""
    for _ in range(2):
        nq, nk = (int(torch.randint(1, 300, (1,), generator=gen)) for _ in range(2))
        d = (16, 32, 64, 128)[int(torch.randint(0, 4, (1,), generator=gen))]
        q, k, v = qkv(1, 2, nq, nk, d, torch.float16, device, gen, "bnhd")
        check_flash(api, q, k, v, None)
        rows, cols = int(torch.randint(1, 9, (1,), generator=gen)), int(torch.randint(1, 12000, (1,), generator=gen))
        check_softmax(api, randn((rows, cols), torch.float32, device, gen, scale=100.0))
### END HIDDEN TESTS


# ---------------------------------------------------------------- compile tier
def _flash_specs():
    from_solution = remote.load_module(PHASE, "flash")
    strides = {f"stride_{t}{a}": "i32" for t, axes in (("q", "bhmd"), ("k", "bhnd"), ("v", "bhnd"), ("o", "bhmd"))
               for a in axes}
    specs = []
    for t in ("fp16", "bf16"):
        for D, (block_m, block_n, warps, stages) in from_solution.CONFIGS.items():
            sig = {"q_ptr": f"*{t}", "k_ptr": f"*{t}", "v_ptr": f"*{t}", "o_ptr": f"*{t}", "qk_scale": "fp32",
                   **strides, "H": "i32", "N_Q": "i32", "N_K": "i32", "D": "constexpr", "BLOCK_M": "constexpr",
                   "BLOCK_N": "constexpr", "EVEN_N": "constexpr", "PRECISION": "constexpr"}
            for even in (True, False):
                specs.append(aot.KernelSpec("flash", "flash_v1_kernel", sig,
                                            {"D": D, "BLOCK_M": block_m, "BLOCK_N": block_n, "EVEN_N": even,
                                             "PRECISION": "tf32"},
                                            num_warps=warps, num_stages=stages,
                                            label=f"{t}, D={D}, {block_m}x{block_n}, EVEN_N={even}"))
    return specs


SOFTMAX_SPECS = [
    aot.KernelSpec("online_softmax", "online_softmax_kernel",
                   {"x_ptr": f"*{t}", "y_ptr": f"*{t}", "n_cols": "i32", "x_row_stride": "i32",
                    "y_row_stride": "i32", "BLOCK": "constexpr"},
                   {"BLOCK": block}, num_warps=warps, label=f"{t}, BLOCK={block}")
    for t, block, warps in (("fp16", 4096, 8), ("bf16", 1024, 4), ("fp32", 128, 4))
]


@pytest.mark.points(1)
@pytest.mark.tier("compile")
def test_online_softmax_kernel_compiles(record_property):
    aot.assert_compiles(PHASE, SOFTMAX_SPECS, record_property)


@pytest.mark.points(2)
@pytest.mark.tier("compile")
def test_flash_kernel_compiles(record_property):
    """Every configuration the wrapper can launch, fp16 and bf16, with and without the key-tail mask."""
    aot.assert_compiles(PHASE, _flash_specs(), record_property, no_spills=True)


# ---------------------------------------------------------------- GPU tier
@pytest.mark.points(2)
@pytest.mark.tier("gpu")
def test_flash_attention_v1_memory_grows_as_n_d(api, gen):
    """No S or P in memory: doubling N must about double the peak extra memory (o only), not x4."""
    extra = {}
    B, H, D = 1, 8, 64
    for n in (4096, 8192):
        q, k, v = qkv(B, H, n, n, D, torch.bfloat16, "cuda", gen)
        check_flash(api, q[:, :, :64], k, v, None)
        extra[n] = timing.peak_extra_bytes(lambda: api.flash_attention_v1(q, k, v))
    o_bytes = B * H * 8192 * D * 2
    ratio = extra[8192] / max(extra[4096], 1)
    if extra[8192] > 2 * o_bytes or ratio > 2.5:
        raise AssertionError(f"peak extra memory {extra[4096] / 2**20:.1f} MiB at N=4096 and "
                             f"{extra[8192] / 2**20:.1f} MiB at N=8192 (x{ratio:.2f}); a fused kernel needs only o "
                             f"({o_bytes / 2**20:.0f} MiB at N=8192) and grows about x2 (S alone would be "
                             f"{B * H * 8192 * 8192 * 4 / 2**20:.0f} MiB)")


# ---------------------------------------------------------------- throughput tier
@pytest.mark.points(2)
@pytest.mark.tier("throughput")
def test_online_softmax_bandwidth(api, gen, record_property):
    """Statistics in one sweep, output in a second: one HBM read and one write when a row stays in cache."""
    x = randn((32768, 4096), torch.float16, "cuda", gen)
    check_softmax(api, x[:64])
    row = bench.bandwidth(timed(lambda: api.online_softmax(x), x), 2 * x.numel() * x.element_size(),
                          "online_softmax", 0.5, shape=list(x.shape), dtype="fp16")
    record_property("throughput", row)
    bench.assert_bandwidth(row)


@pytest.mark.points(3)
@pytest.mark.tier("throughput")
@pytest.mark.parametrize("D", [64, 128])
def test_flash_attention_v1_throughput(api, gen, record_property, D):
    B, H, N, _ = bench.standard_shape(4096, D)
    q, k, v = qkv(B, H, N, N, D, torch.bfloat16, "cuda", gen)
    check_flash(api, q[:1, :, :256], k[:1], v[:1], None)
    row = bench.measure(timed(lambda: api.flash_attention_v1(q, k, v), q, k, v), q, k, v, baselines=("flash", "cudnn"))
    record_property("throughput", {**row, "required_ratio": 0.5,
                                   "summary": bench.describe(row) + " (needs 0.50x); "
                                              f"cuDNN {row.get('cudnn_tflops', float('nan')):.0f} TFLOPS"})
    bench.assert_ratio(row, 0.5)
