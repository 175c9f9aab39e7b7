"""Grader for Phase 3: the complete FlashAttention forward, (o, lse), causal block skipping.

The logsumexp has no SDPA counterpart, so its baseline is `torch.logsumexp` of the scores
computed in float32 from the same low-precision q and k: an almost exact baseline, which makes
the allowed lse error essentially the floor of the input dtype (1e-4 for fp16, 1e-3 for bf16, on a
GPU 2e-3 for fp32). The output o is judged against SDPA's own error, as in every phase.
"""
import pytest
import torch

from grader import aot, bench, numerics, remote, timing
from grader.checks import (FORWARD_CASES, check_causal_never_reads_invisible_keys, check_forward,
                           check_reads_nothing_past_nk, lse_baseline, refuses_bad_forward_input, standard_inputs)
from grader.honesty import graded_call, timed
from grader.inputs import FLOAT, qkv, qkv_past_int32

PHASE = 3
gpu = pytest.mark.tier("gpu")


# ---------------------------------------------------------------- output and lse


@pytest.mark.points(1)
@pytest.mark.parametrize("B, H, Nq, Nk, D, causal, dtype, sm_scale, layout", FORWARD_CASES)
def test_forward(api, gen, device, B, H, Nq, Nk, D, causal, dtype, sm_scale, layout):
    q, k, v = qkv(B, H, Nq, Nk, D, FLOAT[dtype], device, gen, layout)
    check_forward(api, q, k, v, causal, sm_scale)


### BEGIN HIDDEN TESTS
@pytest.mark.points(1)
def test_forward_seeded_shapes(api, gen, device):
    """Three shapes drawn from the seed: an instructor's secret seed makes them unknown in advance."""
    big = device == "cuda"
    for _ in range(3):
        n_q = int(torch.randint(1, 2000 if big else 80, (1,), generator=gen))
        n_k = int(torch.randint(1, 2000 if big else 80, (1,), generator=gen))
        D = (16, 32, 64, 128)[int(torch.randint(0, 4, (1,), generator=gen))]
        causal = bool(torch.randint(0, 2, (1,), generator=gen))
        q, k, v = qkv(1, 2, n_q, n_k, D, torch.float16, device, gen, "bnhd")
        check_forward(api, q, k, v, causal)
### END HIDDEN TESTS


@pytest.mark.points(2)
def test_causal_never_reads_invisible_keys(api, gen, device):
    check_causal_never_reads_invisible_keys(api, gen, device)


@pytest.mark.points(1)
def test_reads_nothing_past_nk(api, gen, device):
    check_reads_nothing_past_nk(api, gen, device)


# ---------------------------------------------------------------- the logsumexp merge
@pytest.mark.points(1)
def test_merge_partials(api, gen, device):
    """merge_partials on exact (float64) halves: the merge formula alone."""
    q, k, v = qkv(2, 2, 30, 50, 32, torch.float64, device, gen)
    s = 21
    o_a, lse_a = numerics.reference_attention(q, k[:, :, :s], v[:, :, :s])
    o_b, lse_b = numerics.reference_attention(q, k[:, :, s:], v[:, :, s:])
    ref_o, ref_lse = numerics.reference_attention(q, k, v)
    o, lse = api.merge_partials(o_a, lse_a, o_b, lse_b)
    if o.dtype != torch.float64 or lse.dtype != torch.float32:
        raise AssertionError(f"merge_partials returned o {o.dtype} and lse {lse.dtype}; expected o in o_a's "
                             "dtype (float64 here) and lse float32")
    numerics.assert_close("merged o", o, ref_o, ref_o.float(), dtype=torch.float32)
    numerics.assert_close("merged lse", lse, ref_lse, ref_lse.float(), dtype=torch.float32)
    # Large logits (a large sm_scale, long sequences) give lse far beyond float32's exp range (about
    # 88): the merge must stay finite and exact for lse near +1000 and -1000 too.
    for offset in (1000.0, -1000.0):
        big_a, big_b = ((offset + 5 * torch.randn(lse_a.shape, generator=gen)).to(device) for _ in range(2))
        a64, b64 = big_a.double(), big_b.double()  # the truth from exactly the float32 values given
        ref_lse = torch.logaddexp(a64, b64)
        ref_o = torch.exp(a64 - ref_lse)[..., None] * o_a + torch.exp(b64 - ref_lse)[..., None] * o_b
        o, lse = api.merge_partials(o_a, big_a, o_b, big_b)
        # The baseline is PyTorch's own float32 merge: near 1000 a float32 lse is rounded by 6e-5,
        # and so are the weights exp(lse_x - lse) of any float32 merge.
        lse32 = torch.logaddexp(big_a, big_b)
        o32 = torch.exp(big_a - lse32)[..., None] * o_a.float() + torch.exp(big_b - lse32)[..., None] * o_b.float()
        numerics.assert_close(f"merged lse (lse near {offset:+g})", lse, ref_lse, lse32, dtype=torch.float32)
        numerics.assert_close(f"merged o (lse near {offset:+g})", o, ref_o, o32, dtype=torch.float32)



@pytest.mark.points(1)
def test_merge_partials_lopsided(api, gen, device):
    """One chunk far heavier than the other (it holds the row's attention sink): lse_a and lse_b 200
    apart, either way round, row by row. The lighter chunk weighs exp(-200), zero in float32; a merge
    that subtracts one fixed side (lse_a) instead of the larger lse computes exp(+200) = inf on the way."""
    q, k, v = qkv(1, 2, 30, 40, 16, torch.float64, device, gen)
    o_a, lse_a = numerics.reference_attention(q, k[:, :, :20], v[:, :, :20])
    o_b, _ = numerics.reference_attention(q, k[:, :, 20:], v[:, :, 20:])
    side = torch.where(torch.rand(lse_a.shape, generator=gen) < 0.5, -1.0, 1.0).to(device)
    big_a = lse_a.float()
    big_b = big_a + 200.0 * side
    a64, b64 = big_a.double(), big_b.double()  # the truth from exactly the float32 values given
    ref_lse = torch.logaddexp(a64, b64)
    ref_o = torch.exp(a64 - ref_lse)[..., None] * o_a + torch.exp(b64 - ref_lse)[..., None] * o_b
    o, lse = api.merge_partials(o_a, big_a, o_b, big_b)
    lse32 = torch.logaddexp(big_a, big_b)  # PyTorch's own float32 merge: the baseline
    o32 = torch.exp(big_a - lse32)[..., None] * o_a.float() + torch.exp(big_b - lse32)[..., None] * o_b.float()
    numerics.assert_close("merged lse (chunks 200 apart)", lse, ref_lse, lse32, dtype=torch.float32)
    numerics.assert_close("merged o (chunks 200 apart)", o, ref_o, o32, dtype=torch.float32)

@pytest.mark.points(1)
def test_merge_partials_with_an_empty_chunk(api, gen, device):
    """A causal split: rows i < s see nothing of keys s.., whose chunk has lse = -inf there."""
    q, k, v = qkv(1, 2, 40, 40, 16, torch.float64, device, gen)
    s = 25
    ref_o, ref_lse = numerics.reference_attention(q, k, v, causal=True)
    o_a, lse_a = numerics.reference_attention(q, k[:, :, :s], v[:, :, :s], causal=True)
    # Chunk B (keys s..39) under the global causal mask: row i sees keys s..i, none when i < s.
    scores = torch.matmul(q, k[:, :, s:].transpose(-2, -1)) * 16 ** -0.5
    rows, cols = torch.arange(40)[:, None], torch.arange(s, 40)[None, :]
    scores = scores.masked_fill((cols > rows).to(scores.device), float("-inf"))
    lse_b = torch.logsumexp(scores, -1)
    o_b = torch.nan_to_num(torch.matmul(torch.exp(scores - lse_b[..., None]), v[:, :, s:]), nan=0.0)
    o, lse = api.merge_partials(o_a, lse_a, o_b, lse_b)
    numerics.assert_close("merged o", o, ref_o, ref_o.float(), dtype=torch.float32)
    numerics.assert_close("merged lse", lse, ref_lse, ref_lse.float(), dtype=torch.float32)


@pytest.mark.points(2)
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_lse_merges_halves(api, gen, device, dtype):
    """The kernel's (o, lse) over two halves of K/V, merged, equal attention over all of K/V."""
    Nq, Nk, split = 33, 80, 37  # the split is no multiple of any block size
    q, k, v = qkv(1, 2, Nq, Nk, 32, FLOAT[dtype], device, gen, "bnhd")
    o_a, lse_a = graded_call(api.flash_attention_forward, q, k[:, :, :split], v[:, :, :split])
    o_b, lse_b = graded_call(api.flash_attention_forward, q, k[:, :, split:], v[:, :, split:])
    ref_o, ref_lse = numerics.reference_attention(q, k, v)
    # Merged in float32 so that only the kernel's own rounding of each half shows.
    o, lse = api.merge_partials(o_a.float(), lse_a, o_b.float(), lse_b)
    numerics.assert_close("o merged from two halves", o, ref_o, numerics.sdpa(q, k, v), dtype=q.dtype)
    numerics.assert_close("lse merged from two halves", lse, ref_lse, lse_baseline(q, k), dtype=q.dtype)


# ---------------------------------------------------------------- bad input
@pytest.mark.points(1)
def test_refuses_bad_input(api, gen, device):
    refuses_bad_forward_input(api.flash_attention_forward, gen, device)


# ---------------------------------------------------------------- GPU: int64 offsets
@pytest.mark.points(2)
@pytest.mark.tier("gpu")
def test_int64_offsets(api, gen):
    """Batch 2 starts past element 2**31 of the storage: batch * stride overflows int32."""
    q, k, v = qkv_past_int32(2, 256, 64, torch.bfloat16, gen)
    check_forward(api, q, k, v, causal=True)


# ---------------------------------------------------------------- compile tier
def _spec(dtype, D, causal, config, arch):
    block_m, block_n, warps, stages = config
    sig = {"Q": f"*{dtype}", "K": f"*{dtype}", "V": f"*{dtype}", "O": f"*{dtype}", "LSE": "*fp32", "sm_scale": "fp32"}
    for t in "qkvo":
        sig |= {f"stride_{t}b": "i32", f"stride_{t}h": "i32", f"stride_{t}n": "i32"}
    sig |= {"H": "i32", "N_Q": "i32", "N_K": "i32", "N_M_BLOCKS": "i32"}
    consts = {"HEAD_DIM": D, "BLOCK_M": block_m, "BLOCK_N": block_n, "CAUSAL": causal,
              "DOT_PRECISION": "ieee" if dtype == "fp32" else "tf32"}
    sig |= {name: "constexpr" for name in consts}
    label = (f"{dtype} D={D}{' causal' if causal else ''} {block_m}x{block_n} w{warps} s{stages} (for sm_{arch})")
    return aot.KernelSpec("forward", "_attn_fwd", sig, consts, num_warps=warps, num_stages=stages, label=label,
                          runs_on=(arch,))


def _compile_specs():
    forward = remote.load_module(PHASE, "forward")
    specs, seen = [], set()
    for (D, causal, _), config in sorted(getattr(forward, "HOPPER_CONFIGS", {}).items()):
        for dtype in (("fp16", "bf16") if D in (64, 128) else ("bf16",)):
            if (dtype, D, causal, config) not in seen:  # configurations shared by short and long N
                seen.add((dtype, D, causal, config))
                specs.append(_spec(dtype, D, causal, config, 90))
    specs.append(_spec("fp16", 128, True, (128, 64, 8, 2), 80))
    specs.append(_spec("bf16", 64, False, (128, 64, 4, 2), 80))
    specs.append(_spec("fp32", 128, True, (32, 32, 4, 2), 80))
    return specs


@pytest.mark.points(2)
@pytest.mark.tier("compile")
def test_forward_kernel_compiles(record_property):
    """Every configuration the forward launches compiles for sm_80 and sm_90 and fits its SM."""
    aot.assert_compiles(PHASE, _compile_specs(), record_property)


# ---------------------------------------------------------------- throughput tier
@pytest.mark.points(2)
@pytest.mark.tier("throughput")
@pytest.mark.parametrize("D", [64, 128])
def test_causal_skips_work(api, gen, record_property, D):
    """Causal attention does half the work: it must take at most 0.65x the non-causal time."""
    q, k, v = standard_inputs(gen, 4096, D)
    check_forward(api, q[:1, :2], k[:1, :2], v[:1, :2], causal=True)
    full_ms = timing.median_ms(timed(lambda: api.flash_attention_forward(q, k, v, causal=False), q, k, v))
    causal_ms = timing.median_ms(timed(lambda: api.flash_attention_forward(q, k, v, causal=True), q, k, v))
    ratio = causal_ms / full_ms
    record_property("throughput", {"full_ms": full_ms, "causal_ms": causal_ms, "ratio": ratio, "required": 0.65,
                                   "summary": f"N=4096 D={D} bf16: causal {causal_ms:.3f} ms / non-causal "
                                              f"{full_ms:.3f} ms = {ratio:.2f} (needs <= 0.65)"})
    if ratio > 0.65:
        raise AssertionError(f"causal took {ratio:.2f}x the non-causal time at N=4096, D={D} ({causal_ms:.3f} vs "
                             f"{full_ms:.3f} ms); skipping key blocks above the diagonal should bring it near 0.5x")


@pytest.mark.points(3)
@pytest.mark.tier("throughput")
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_forward_throughput(api, gen, record_property, D, causal):
    """At least 0.6x SDPA's flash backend (FlashAttention-2) at N=4096, 16k tokens, hidden 2048, bf16."""
    q, k, v = standard_inputs(gen, 4096, D)
    check_forward(api, q[:1, :2], k[:1, :2], v[:1, :2], causal=causal)
    row = bench.measure(timed(lambda: api.flash_attention_forward(q, k, v, causal=causal), q, k, v), q, k, v, causal,
                        baselines=("flash", "cudnn"))
    record_property("throughput", {**row, "required_ratio": 0.6,
                                   "summary": bench.describe(row) + f" (needs 0.60x); cuDNN "
                                              f"{row.get('cudnn_tflops', float('nan')):.0f} TFLOPS"})
    bench.assert_ratio(row, 0.6)
