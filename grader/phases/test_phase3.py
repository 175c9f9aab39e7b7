"""Grader for Phase 3: the complete FlashAttention forward, (o, lse), causal block skipping.

The logsumexp has no SDPA counterpart, so its baseline is `torch.logsumexp` of the scores
computed in float32 from the same low-precision q and k: an almost exact baseline, which makes
the allowed lse error essentially the floor of the input dtype (1e-4 for fp16, 1e-3 for bf16, on a
GPU 2e-3 for fp32). The output o is judged against SDPA's own error, as in every phase.
"""
import pytest
import torch

from grader import aot, bench, diagnosis, impl, numerics, timing
from grader.honesty import graded_call, timed
from grader.inputs import FLOAT, assert_accepts, assert_refuses, qkv, qkv_past_int32

PHASE = 3
gpu = pytest.mark.tier("gpu")


def lse_baseline(q, k, causal=False, sm_scale=None):
    """logsumexp of the scaled scores, in float32, from the low-precision q and k."""
    return numerics.scores_logsumexp(q.float(), k.float(), causal, sm_scale)


def check_lse(lse, q, k, causal, sm_scale, ref_lse):
    B, H, Nq = q.shape[:3]
    if lse.dtype != torch.float32:
        raise AssertionError(f"lse has dtype {lse.dtype}, expected float32")
    if tuple(lse.shape) != (B, H, Nq):
        raise AssertionError(f"lse has shape {tuple(lse.shape)}, expected (B, H, Nq) = {(B, H, Nq)}")
    numerics.assert_close("lse", lse, ref_lse, lse_baseline(q, k, causal, sm_scale), dtype=q.dtype)


def _probe(api):
    def forward(q, k, v, causal, sm_scale):
        return graded_call(api.flash_attention_forward, q, k, v, causal=causal, sm_scale=sm_scale)[0]
    return forward


def check_forward(api, q, k, v, causal=False, sm_scale=None, ref_kv=None):
    """Run the graded forward and compare (o, lse) with float64. `ref_kv` replaces k, v for the
    reference and baseline (used when k, v carry poisoned rows that must never be read)."""
    out = graded_call(api.flash_attention_forward, q, k, v, causal=causal, sm_scale=sm_scale)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise AssertionError(f"flash_attention_forward must return (o, lse), got {type(out).__name__}")
    o, lse = out
    rk, rv = ref_kv or (k, v)
    # A wrong o gets one more line: the condition its error follows, from probes (grader/diagnosis.py).
    with diagnosis.explained("flash_attention_forward", _probe(api), causal=causal, dtype=q.dtype, device=q.device):
        ref_lse = numerics.assert_attention_output(o, q, rk, rv, causal, sm_scale)
    check_lse(lse, q, rk, causal, sm_scale, ref_lse)
    return o, lse


# ---------------------------------------------------------------- output and lse
FORWARD_CASES = [
    # B, H, Nq, Nk, D, causal, dtype, sm_scale, layout
    pytest.param(1, 1, 1, 1, 16, False, "fp32", None, "bhnd", id="fp32-N1-D16"),
    pytest.param(1, 2, 1, 1, 32, True, "fp16", None, "bhnd", id="fp16-causal-N1-D32"),
    pytest.param(2, 3, 17, 33, 16, False, "fp32", None, "bhnd", id="fp32-Nq17-Nk33-D16"),
    pytest.param(1, 2, 45, 20, 32, True, "fp32", None, "bhnd", id="fp32-causal-Nq45-Nk20-D32"),
    pytest.param(1, 2, 20, 45, 64, True, "fp32", None, "bhnd", id="fp32-causal-Nq20-Nk45-D64"),
    pytest.param(2, 2, 64, 64, 64, True, "fp16", None, "bhnd", id="fp16-causal-N64-D64"),
    pytest.param(1, 2, 50, 50, 128, False, "fp16", None, "bhnd", id="fp16-D128-N50"),
    pytest.param(1, 1, 1, 70, 16, True, "fp16", None, "bhnd", id="fp16-causal-Nq1-Nk70-D16"),
    pytest.param(2, 2, 40, 40, 32, True, "fp16", 0.3, "bnhd", id="fp16-causal-N40-D32-scale0.3-noncontiguous"),
    pytest.param(1, 3, 23, 71, 16, False, "fp32", 1.7, "bnhd", id="fp32-Nq23-Nk71-D16-scale1.7-noncontiguous"),
    # q, k and v each with strides of their own: the launch must pass each tensor's own
    pytest.param(2, 2, 40, 70, 32, True, "fp16", None, "mixed", id="fp16-causal-Nq40-Nk70-D32-mixed-layouts"),
    # scores in the hundreds: exp overflows float32 past 88, so the running max must be subtracted
    pytest.param(1, 2, 40, 70, 32, True, "fp32", 30.0, "bhnd", id="fp32-causal-Nq40-Nk70-D32-large-logits-scale30"),
    pytest.param(2, 4, 1024, 1024, 128, True, "bf16", None, "bnhd", id="bf16-causal-N1024-D128", marks=gpu),
    pytest.param(1, 2, 4096, 4096, 64, True, "bf16", None, "bhnd", id="bf16-causal-N4096-D64", marks=gpu),
    pytest.param(1, 2, 8192, 8192, 128, False, "bf16", None, "bnhd", id="bf16-N8192-D128", marks=gpu),
    pytest.param(1, 4, 1000, 3001, 64, False, "bf16", None, "bhnd", id="bf16-Nq1000-Nk3001-D64", marks=gpu),
    pytest.param(1, 4, 3001, 1000, 64, True, "bf16", None, "bnhd", id="bf16-causal-Nq3001-Nk1000-D64", marks=gpu),
    pytest.param(1, 4, 999, 2500, 128, True, "fp16", 0.05, "bhnd", id="fp16-causal-Nq999-Nk2500-D128", marks=gpu),
    pytest.param(2, 8, 777, 777, 16, True, "bf16", None, "bnhd", id="bf16-causal-D16-N777", marks=gpu),
    pytest.param(2, 8, 2048, 2048, 32, False, "fp16", None, "bhnd", id="fp16-D32-N2048", marks=gpu),
    pytest.param(1, 2, 600, 513, 64, True, "fp32", None, "bnhd", id="fp32-causal-Nq600-Nk513-D64", marks=gpu),
]


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


# ---------------------------------------------------------------- what the kernel must not read
def _poisoned_tail(x, n_valid):
    """x with rows n_valid.. of its N dimension set to NaN (a clone)."""
    x = x.clone()
    x[:, :, n_valid:] = float("nan")
    return x


@pytest.mark.points(2)
def test_causal_never_reads_invisible_keys(api, gen, device):
    """Under the causal mask no query sees keys j >= Nq; those rows of k and v hold NaN here.

    A kernel that visits their blocks and masks the scores still multiplies NaN values of v by a
    zero probability, and NaN * 0 = NaN: only skipping the blocks keeps o finite.
    """
    Nq, Nk = 128, 384  # Nq is a multiple of every BLOCK_M in use: the last query block ends at 128
    q, k, v = qkv(1, 2, Nq, Nk, 32, torch.float16, device, gen)
    kp, vp = _poisoned_tail(k, Nq), _poisoned_tail(v, Nq)
    _blame_nan_on_reads(lambda: check_forward(api, q, kp, vp, causal=True, ref_kv=(k[:, :, :Nq], v[:, :, :Nq])),
                        lambda: check_forward(api, q, k, v, causal=True), "keys j >= Nq",
                        "o has NaN only when keys j >= Nq, which no query may see under the causal mask, hold NaN:"
                        " the kernel loads them; a causal kernel skips their blocks instead")


def _blame_nan_on_reads(poisoned, clean, where: str, blame: str):
    """Run `poisoned` (NaN in memory the kernel must not read); a NaN there is blamed on reading that
    memory only if `clean` (the same call with finite values there) passes. Otherwise the NaN (a
    fully masked row, an off-by-one mask) is the kernel's own, and its message says so."""
    try:
        poisoned()
    except AssertionError as exc:
        if "NaN" not in str(exc):
            raise
        try:
            clean()
        except AssertionError as own:
            raise AssertionError(f"{own} (also with finite {where}: not from reading them)") from None
        raise AssertionError(blame) from None


@pytest.mark.points(1)
def test_reads_nothing_past_nk(api, gen, device):
    """k and v are the first Nk rows of larger buffers whose further rows hold NaN."""
    Nq, Nk = 37, 45
    q, k, v = qkv(1, 2, Nq, Nk + 19, 64, torch.float16, device, gen)
    kp, vp = _poisoned_tail(k, Nk)[:, :, :Nk], _poisoned_tail(v, Nk)[:, :, :Nk]
    for causal in (False, True):
        _blame_nan_on_reads(lambda: check_forward(api, q, kp, vp, causal=causal),
                            lambda: check_forward(api, q, k[:, :, :Nk], v[:, :, :Nk], causal=causal),
                            "keys j >= Nk", f"causal={causal}: o or lse has NaN only when the memory right after"
                            " k[:, :, :Nk] holds NaN: some load reads keys j >= Nk (mask them)")


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
    q, k, v = qkv(1, 2, 8, 8, 16, torch.float32, device, gen)
    f = api.flash_attention_forward
    assert_accepts(lambda: f(q, k, v), "float32 q, k, v of shape (1, 2, 8, 16)")
    assert_refuses(lambda: f(q[0], k, v), ValueError, "q", "q of rank 3")
    assert_refuses(lambda: f(q, k[:, :, :4], v), ValueError, "k", "k and v of different lengths")
    assert_refuses(lambda: f(q, k.half(), v), TypeError, "q", "q and k of different dtypes")
    assert_refuses(lambda: f(q, k.int(), v), TypeError, "k", "integer k")
    assert_refuses(lambda: f(q[..., :8], k[..., :8], v[..., :8]), ValueError, "D", "head dim 8")
    assert_refuses(lambda: f(q, k, v, causal="yes"), TypeError, "causal", "causal='yes'")
    assert_refuses(lambda: f(q, k, v, sm_scale="0.5"), TypeError, "sm_scale", "sm_scale='0.5'")
    assert_refuses(lambda: f(q, k, v, sm_scale=float("nan")), ValueError, "sm_scale", "sm_scale=nan")
    if device == "cuda":
        assert_refuses(lambda: f(q.cpu(), k.cpu(), v.cpu()), ValueError, "q", "CPU tensors on a GPU run")


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
    forward = impl.load_module(PHASE, "forward")
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
def _standard_inputs(gen, N, D, dtype=torch.bfloat16):
    B, H, N, D = bench.standard_shape(N, D)
    return qkv(B, H, N, N, D, dtype, "cuda", gen, "bnhd")


@pytest.mark.points(2)
@pytest.mark.tier("throughput")
@pytest.mark.parametrize("D", [64, 128])
def test_causal_skips_work(api, gen, record_property, D):
    """Causal attention does half the work: it must take at most 0.65x the non-causal time."""
    q, k, v = _standard_inputs(gen, 4096, D)
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
    q, k, v = _standard_inputs(gen, 4096, D)
    check_forward(api, q[:1, :2], k[:1, :2], v[:1, :2], causal=causal)
    row = bench.measure(timed(lambda: api.flash_attention_forward(q, k, v, causal=causal), q, k, v), q, k, v, causal,
                        baselines=("flash", "cudnn"))
    record_property("throughput", {**row, "required_ratio": 0.6,
                                   "summary": bench.describe(row) + f" (needs 0.60x); cuDNN "
                                              f"{row.get('cudnn_tflops', float('nan')):.0f} TFLOPS"})
    bench.assert_ratio(row, 0.6)
