"""Grader for Phase 7: grouped-query attention, sliding windows, soft-capping, D up to 256, decoding
with a split KV cache, and ring attention.

Every variant is checked against attention written out with an explicit mask and repeated heads
(grader/variants.py), in float64, with the error allowed relative to the same formula computed in
the inputs' own precision (SDPA can express neither a soft-cap nor an empty row). The forward is
graded on (o, lse), the backward on its own (it gets o and lse from the float64 reference), the
autograd function as the integration, each with both causal alignments (top-left, the default, and
bottom-right by `alignment=`) for Nq < Nk and Nq > Nk. Under the interpreter the loads themselves are
watched: key blocks outside a window must never be read (grader/footprint.py), and K/V must be read in
place, never repeated per query head. Ring attention runs on several processes joined by torch.distributed
(gloo), each rank with its slice of the sequence, and must equal single-device attention.
"""
import hashlib

import pytest
import torch

from grader import aot, bench, distributed, footprint, graphs, impl, numerics, remote, ring, timing, variants
from grader.checks import blame_nan_on_reads, check_backward_negative_logits
from grader.honesty import HonestyError, graded_call, tensors_in, timed
from grader.inputs import FLOAT, assert_accepts, assert_refuses, randn

PHASE = 7
gpu = pytest.mark.tier("gpu")
interpreter_only = pytest.mark.tier("interpreter")


def inputs(B, H, H_kv, Nq, Nk, D, dtype, device, gen, layout="bhnd"):
    """q (B, H, Nq, D), k and v (B, H_kv, Nk, D); layout bnhd: (B, N, H, D) storage viewed as (B, H, N, D)."""
    def make(heads, n):
        if layout == "bnhd":
            return randn((B, n, heads, D), dtype, device, gen).transpose(1, 2)
        return randn((B, heads, n, D), dtype, device, gen)
    return make(H, Nq), make(H_kv, Nk), make(H_kv, Nk)


def check_lse(lse, ref_lse, base_lse, q):
    B, H, Nq = q.shape[:3]
    if not isinstance(lse, torch.Tensor) or lse.dtype != torch.float32 or tuple(lse.shape) != (B, H, Nq):
        raise AssertionError(f"lse must be a float32 tensor of shape (B, H, Nq) = {(B, H, Nq)}, got "
                             f"{getattr(lse, 'dtype', type(lse).__name__)} {tuple(getattr(lse, 'shape', ()))}")
    empty = torch.isinf(ref_lse)  # rows that see no key: lse = -inf
    if empty.any():
        wrong = empty & ~(lse == float("-inf"))
        if wrong.any():
            at = tuple(wrong.nonzero()[0].tolist())
            raise AssertionError(f"lse: a row that sees no key must have lse = -inf; {int(wrong.sum())} such rows "
                                 f"do not, first at {list(at)} (got {lse[at].item():.5g})")
    zero = lambda t: t.where(~empty, torch.zeros((), dtype=t.dtype, device=t.device))
    numerics.assert_close("lse", zero(lse), zero(ref_lse), zero(base_lse), dtype=q.dtype)


def check_forward(api, q, k, v, causal=False, window=None, softcap=None, sm_scale=None, ref_kv=None,
                  alignment="top-left"):
    out = graded_call(api.flash_attention_forward, q, k, v, causal=causal, sm_scale=sm_scale, window=window,
                      softcap=softcap, alignment=alignment)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise AssertionError(f"flash_attention_forward must return (o, lse), got {type(out).__name__}")
    o, lse = out
    rk, rv = ref_kv or (k, v)
    mask = variants.visible(q.shape[2], rk.shape[2], causal, window, q.device, alignment)
    ref_o, ref_lse = variants.reference(q, rk, rv, mask, sm_scale, softcap)
    base_o, base_lse = variants.baseline(q, rk, rv, mask, sm_scale, softcap)
    numerics.assert_close("o", o, ref_o, base_o, dtype=q.dtype)
    if o.dtype != q.dtype:
        raise AssertionError(f"o has dtype {o.dtype}, expected q's dtype {q.dtype}")
    check_lse(lse, ref_lse, base_lse, q)
    return o, lse


# ---------------------------------------------------------------- forward: (o, lse) against float64
FORWARD_CASES = [
    # B, H, H_kv, Nq, Nk, D, causal, window, softcap, dtype, sm_scale, layout
    pytest.param(1, 4, 2, 40, 40, 32, False, None, None, "fp32", None, "bhnd", id="fp32-gqa2-N40-D32"),
    pytest.param(1, 4, 1, 33, 50, 64, True, None, None, "fp16", None, "bhnd", id="fp16-mqa-causal-Nq33-Nk50-D64"),
    pytest.param(1, 2, 2, 70, 70, 16, False, (8, 4), None, "fp32", None, "bhnd", id="fp32-window8,4-N70"),
    pytest.param(1, 2, 1, 45, 30, 16, False, (-1, 5), None, "fp16", None, "bnhd", id="fp16-window-1,5-Nq45-Nk30"),
    # query i > 23 sees no key at all: o = 0 and lse = -inf there
    pytest.param(1, 2, 2, 60, 20, 16, False, (4, 4), None, "fp32", None, "bhnd", id="fp32-window4,4-empty-rows"),
    pytest.param(1, 2, 1, 50, 50, 80, True, (12, -1), 5.0, "fp16", None, "bhnd",
                 id="fp16-causal-window12-softcap5-D80"),
    # scores in the hundreds, capped at 10
    pytest.param(1, 2, 2, 40, 64, 32, False, None, 10.0, "fp32", 30.0, "bhnd", id="fp32-softcap10-scale30"),
    pytest.param(1, 2, 2, 20, 20, 256, False, None, 3.0, "fp32", None, "bhnd", id="fp32-softcap3-D256"),
    pytest.param(2, 6, 2, 37, 37, 96, True, None, None, "fp32", None, "bnhd", id="fp32-causal-gqa3-D96-noncontiguous"),
    pytest.param(1, 4, 1, 30, 30, 48, False, (0, 0), None, "fp16", None, "bhnd", id="fp16-window0,0-mqa-D48"),
    pytest.param(1, 2, 1, 45, 60, 16, True, (20, -1), None, "fp32", 30.0, "bhnd", id="fp32-causal-window20-scale30"),
    pytest.param(1, 2, 2, 1, 70, 8, False, (-1, 3), None, "fp16", None, "bhnd", id="fp16-Nq1-window-1,3-D8"),
    pytest.param(2, 16, 2, 1024, 1024, 128, True, None, None, "bf16", None, "bnhd", id="bf16-gqa8-causal-N1024-D128",
                 marks=gpu),
    pytest.param(1, 8, 8, 2048, 2048, 64, True, (256, -1), None, "bf16", None, "bhnd",
                 id="bf16-causal-window256-N2048-D64", marks=gpu),
    pytest.param(1, 8, 2, 3000, 3000, 96, False, (300, 300), None, "bf16", None, "bnhd",
                 id="bf16-window300,300-gqa4-N3000-D96", marks=gpu),
    pytest.param(2, 8, 1, 1024, 1024, 128, True, None, 30.0, "bf16", None, "bhnd", id="bf16-mqa-causal-softcap30-D128",
                 marks=gpu),
    pytest.param(1, 4, 2, 777, 777, 256, True, None, None, "bf16", None, "bnhd", id="bf16-causal-N777-D256", marks=gpu),
    pytest.param(1, 4, 4, 1000, 3001, 80, False, None, None, "bf16", None, "bhnd", id="bf16-Nq1000-Nk3001-D80",
                 marks=gpu),
    pytest.param(1, 4, 1, 600, 700, 256, False, (64, 64), 20.0, "fp16", None, "bhnd",
                 id="fp16-window64,64-softcap20-D256", marks=gpu),
    pytest.param(1, 4, 2, 513, 513, 80, True, (100, -1), None, "fp32", None, "bnhd", id="fp32-causal-window100-D80",
                 marks=gpu),
    pytest.param(1, 4, 2, 2000, 500, 64, False, (32, 32), None, "bf16", None, "bhnd", id="bf16-window32,32-empty-rows",
                 marks=gpu),
]


@pytest.mark.points(1)
@pytest.mark.parametrize("B, H, H_kv, Nq, Nk, D, causal, window, softcap, dtype, sm_scale, layout", FORWARD_CASES)
def test_forward(api, gen, device, B, H, H_kv, Nq, Nk, D, causal, window, softcap, dtype, sm_scale, layout):
    q, k, v = inputs(B, H, H_kv, Nq, Nk, D, FLOAT[dtype], device, gen, layout)
    check_forward(api, q, k, v, causal, window, softcap, sm_scale)


### BEGIN HIDDEN TESTS
@pytest.mark.points(1)
def test_forward_seeded_shapes(api, gen, device):
    """Shapes and options drawn from the seed: an instructor's secret seed makes them unknown in advance."""
    big = device == "cuda"
    for _ in range(3):
        draw = lambda n: int(torch.randint(0, n, (1,), generator=gen))
        n_q, n_k = 1 + draw(2000 if big else 60), 1 + draw(2000 if big else 60)
        D = (16, 32, 48, 64, 80, 96, 128, 256)[draw(8)]
        H_kv = (1, 2)[draw(2)]
        H = H_kv * (1, 2, 4)[draw(3)]
        window = (draw(n_k) - 1, draw(n_k) - 1) if draw(2) else None
        softcap = (None, 5.0)[draw(2)]
        causal = bool(draw(2))
        alignment = ("top-left", "bottom-right")[draw(2)]
        q, k, v = inputs(1, H, H_kv, n_q, n_k, D, torch.bfloat16 if big else torch.float16, device, gen, "bnhd")
        check_forward(api, q, k, v, causal, window, softcap, alignment=alignment)
### END HIDDEN TESTS


# Both alignments with Nq != Nk: top-left (the default, SDPA's is_causal: query i is position i) and
# bottom-right (flash-attn's: query i is position i + Nk - Nq, a prompt chunk against a cache). The
# kernels receive a bottom-right band shifted into row indices, with a side that may be negative.
ALIGNED_CASES = [
    # B, H, H_kv, Nq, Nk, D, causal, window, softcap, dtype, alignment
    pytest.param(1, 4, 2, 20, 70, 32, True, None, None, "fp16", "bottom-right", id="fp16-causal-Nq20-Nk70-br"),
    pytest.param(1, 4, 2, 20, 70, 32, True, None, None, "fp32", "top-left", id="fp32-causal-Nq20-Nk70-tl"),
    # the first 45 queries sit before key 0: no key, o = 0 and lse = -inf
    pytest.param(1, 2, 1, 70, 25, 16, True, None, None, "fp32", "bottom-right", id="fp32-causal-Nq70-Nk25-br"),
    pytest.param(1, 2, 1, 70, 25, 16, True, None, None, "fp16", "top-left", id="fp16-causal-Nq70-Nk25-tl"),
    pytest.param(1, 2, 2, 24, 90, 16, False, (10, 3), None, "fp32", "bottom-right", id="fp32-window10,3-Nq24-Nk90-br"),
    pytest.param(1, 2, 1, 80, 30, 48, False, (6, 6), 5.0, "fp16", "bottom-right",
                 id="fp16-window6,6-softcap5-Nq80-Nk30-br"),
    pytest.param(1, 4, 1, 30, 75, 16, True, (20, -1), None, "fp32", "bottom-right",
                 id="fp32-mqa-causal-window20-Nq30-Nk75-br"),
    pytest.param(1, 2, 2, 45, 30, 16, False, (-1, 5), None, "fp16", "bottom-right", id="fp16-window-1,5-Nq45-Nk30-br"),
    pytest.param(2, 16, 2, 1000, 3000, 128, True, None, None, "bf16", "bottom-right",
                 id="bf16-gqa8-causal-Nq1000-Nk3000-D128-br", marks=gpu),
    pytest.param(1, 8, 8, 2048, 700, 64, True, (256, -1), None, "bf16", "bottom-right",
                 id="bf16-causal-window256-Nq2048-Nk700-br", marks=gpu),
    pytest.param(1, 4, 1, 300, 1800, 256, False, (200, 50), 20.0, "bf16", "bottom-right",
                 id="bf16-mqa-window200,50-softcap20-D256-br", marks=gpu),
]


@pytest.mark.points(1)
@pytest.mark.parametrize("B, H, H_kv, Nq, Nk, D, causal, window, softcap, dtype, alignment", ALIGNED_CASES)
def test_forward_aligned(api, gen, device, B, H, H_kv, Nq, Nk, D, causal, window, softcap, dtype, alignment):
    q, k, v = inputs(B, H, H_kv, Nq, Nk, D, FLOAT[dtype], device, gen, "bnhd")
    check_forward(api, q, k, v, causal, window, softcap, alignment=alignment)


# ---------------------------------------------------------------- what the kernels must not read
def _band_check(what, window, call, q, k, v, extra=None, alignment="top-left"):
    """Run `call` (interpreter) recording loads of q, k, v (and `extra`), then check every program's rows."""
    left, right = window
    if alignment == "bottom-right":  # query row i is position i + shift: its band, in rows, moves right by shift
        shift = k.shape[2] - q.shape[2]
        left, right = left - shift, right + shift
    with footprint.record_loads(q=q, k=k, v=v, **(extra or {})) as fp:
        call()
    for name in ("k", "v"):
        if not fp.loaded(name):
            raise AssertionError(f"{what}: no kernel loaded anything from {name}'s own memory: K/V must be read in "
                                 "place (a copy per query head, or of the whole tensor, costs memory and bandwidth)")
    problem = footprint.band_violation(fp, left, right, slack=SLACK)
    if problem:
        raise AssertionError(f"{what}: {problem}: blocks outside a window must be skipped, not loaded and masked "
                             f"(rows up to {SLACK} past the band are allowed for the block size)")


SLACK = 128  # one key or query block of up to 128 rows around the band


@pytest.mark.points(2)
@interpreter_only
def test_forward_skips_blocks_outside_window(api, gen, device):
    """Queries i see keys i - 24 .. i + 8 of 256: a program must not load keys far outside its rows' bands."""
    window = (24, 8)
    q, k, v = inputs(1, 2, 1, 256, 256, 16, torch.float16, device, gen)
    _band_check("the forward", window, lambda: check_forward(api, q, k, v, window=window), q, k, v)


@pytest.mark.points(2)
@interpreter_only
def test_backward_skips_blocks_outside_window(api, gen, device):
    """The same band in the backward: the dQ kernel's key sweep and the dK/dV kernel's query sweep."""
    window = (8, 24)
    q, k, v = inputs(1, 2, 1, 256, 256, 16, torch.float16, device, gen)
    do = randn(q.shape, torch.float16, device, gen)
    _band_check("the backward", window, lambda: check_backward(api, q, k, v, do, window=window), q, k, v, {"do": do})


@pytest.mark.points(1)
@interpreter_only
def test_gqa_reads_kv_in_place(api, gen, device):
    """Four query heads per K/V head, forward and backward: the kernels read k and v themselves."""
    q, k, v = inputs(1, 8, 2, 24, 24, 32, torch.float16, device, gen)
    do = randn(q.shape, torch.float16, device, gen)
    _band_check("the forward (GQA)", (-1, -1), lambda: check_forward(api, q, k, v), q, k, v)
    _band_check("the backward (GQA)", (-1, -1), lambda: check_backward(api, q, k, v, do), q, k, v, {"do": do})


@pytest.mark.points(2)
@interpreter_only
def test_aligned_window_skips_blocks(api, gen, device):
    """Bottom-right, 128 queries against 512 keys: query i sees keys i + 360 .. i + 392. Neither the forward
    nor the backward may load the keys far left of that (the top-left band) or queries far from a key's."""
    window = (24, 8)
    q, k, v = inputs(1, 2, 1, 128, 512, 16, torch.float16, device, gen)
    do = randn(q.shape, torch.float16, device, gen)
    _band_check("the forward (bottom-right)", window,
                lambda: check_forward(api, q, k, v, window=window, alignment="bottom-right"), q, k, v,
                alignment="bottom-right")
    _band_check("the backward (bottom-right)", window,
                lambda: check_backward(api, q, k, v, do, window=window, alignment="bottom-right"), q, k, v,
                {"do": do}, alignment="bottom-right")


def _poisoned_rows(x, rows):
    """x with rows `rows` (a slice) of its N dimension set to NaN (a clone)."""
    x = x.clone()
    x[:, :, rows] = float("nan")
    return x


@pytest.mark.points(1)
def test_window_never_reads_keys_right_of_band(api, gen, device):
    """Queries 0..31 with window (4, 4) see keys 0..35; keys 256.. of k and v hold NaN. A kernel that loads
    them and masks the scores multiplies NaN values of v by p = 0: NaN. Skipping their blocks keeps o finite."""
    q, k, v = inputs(1, 2, 1, 32, 512, 32, torch.float16, device, gen)
    kp, vp = _poisoned_rows(k, slice(256, None)), _poisoned_rows(v, slice(256, None))
    blame_nan_on_reads(lambda: check_forward(api, q, kp, vp, window=(4, 4), ref_kv=(k, v)),
                       lambda: check_forward(api, q, k, v, window=(4, 4)), "keys 256..",
                       "o has NaN only when keys 256.., which no query sees under window (4, 4), hold NaN: the kernel "
                       "loads them; blocks outside the window must be skipped")


# ---------------------------------------------------------------- backward on its own
def check_grads(names, got, ref, baseline, dtype, shapes=None):
    for name, g, r, b in zip(names, got, ref, baseline):
        if not isinstance(g, torch.Tensor):
            raise AssertionError(f"{name} must be a tensor, got {type(g).__name__}")
        numerics.assert_close(name, g, r, b, dtype=dtype)
        if g.dtype != dtype:
            raise AssertionError(f"{name} has dtype {g.dtype}, expected the inputs' dtype {dtype}")


def check_backward(api, q, k, v, do, causal=False, window=None, softcap=None, sm_scale=None, alignment="top-left"):
    mask = variants.visible(q.shape[2], k.shape[2], causal, window, q.device, alignment)
    o64, lse64, *ref = variants.reference_grads(q, k, v, do, mask, sm_scale, softcap)
    got = graded_call(api.flash_attention_backward, do, q, k, v, o64.to(q.dtype), lse64.to(torch.float32),
                      causal=causal, sm_scale=sm_scale, window=window, softcap=softcap, alignment=alignment)
    if not isinstance(got, tuple) or len(got) != 3:
        raise AssertionError("flash_attention_backward must return a tuple (dq, dk, dv)")
    base = variants.baseline_grads(q, k, v, do, mask, sm_scale, softcap)[1:]
    check_grads(("dq", "dk", "dv"), got, ref, base, q.dtype)


BACKWARD_CASES = [
    # B, H, H_kv, Nq, Nk, D, causal, window, softcap, dtype, sm_scale, layout
    pytest.param(1, 4, 2, 40, 40, 32, False, None, None, "fp32", None, "bhnd", id="fp32-gqa2-N40-D32"),
    pytest.param(1, 4, 1, 33, 50, 64, True, None, None, "fp16", None, "bnhd", id="fp16-mqa-causal-Nq33-Nk50-D64"),
    pytest.param(1, 2, 2, 70, 70, 16, False, (8, 4), None, "fp32", None, "bhnd", id="fp32-window8,4-N70"),
    pytest.param(1, 2, 1, 60, 20, 16, False, (4, 4), None, "fp32", None, "bhnd", id="fp32-window4,4-empty-rows"),
    pytest.param(1, 2, 1, 50, 50, 80, True, (12, -1), 5.0, "fp16", None, "bhnd",
                 id="fp16-causal-window12-softcap5-D80"),
    pytest.param(1, 2, 2, 40, 64, 32, False, None, 10.0, "fp32", 30.0, "bhnd", id="fp32-softcap10-scale30"),
    pytest.param(1, 2, 2, 20, 20, 256, False, (-1, 6), 3.0, "fp32", None, "bhnd", id="fp32-window-1,6-softcap3-D256"),
    pytest.param(2, 6, 2, 37, 37, 96, True, None, None, "fp32", None, "bnhd", id="fp32-causal-gqa3-D96-noncontiguous"),
    pytest.param(2, 16, 2, 1024, 1024, 128, True, None, None, "bf16", None, "bnhd", id="bf16-gqa8-causal-N1024-D128",
                 marks=gpu),
    pytest.param(1, 8, 2, 2000, 2000, 64, True, (256, -1), None, "bf16", None, "bhnd",
                 id="bf16-gqa4-causal-window256-N2000-D64", marks=gpu),
    pytest.param(1, 8, 1, 1024, 1024, 96, False, (128, 128), 30.0, "bf16", None, "bhnd",
                 id="bf16-mqa-window128,128-softcap30-D96", marks=gpu),
    pytest.param(1, 4, 2, 600, 700, 256, True, None, None, "bf16", None, "bnhd", id="bf16-causal-Nq600-Nk700-D256",
                 marks=gpu),
    pytest.param(1, 4, 4, 500, 900, 80, False, (-1, 50), None, "fp16", None, "bhnd", id="fp16-window-1,50-D80",
                 marks=gpu),
    pytest.param(1, 4, 2, 300, 300, 128, True, (64, -1), None, "fp32", None, "bhnd", id="fp32-causal-window64-D128",
                 marks=gpu),
]


@pytest.mark.points(1)
@pytest.mark.parametrize("B, H, H_kv, Nq, Nk, D, causal, window, softcap, dtype, sm_scale, layout", BACKWARD_CASES)
def test_backward(api, gen, device, B, H, H_kv, Nq, Nk, D, causal, window, softcap, dtype, sm_scale, layout):
    q, k, v = inputs(B, H, H_kv, Nq, Nk, D, FLOAT[dtype], device, gen, layout)
    do = randn(q.shape, FLOAT[dtype], device, gen)
    check_backward(api, q, k, v, do, causal, window, softcap, sm_scale)


@pytest.mark.points(1)
@pytest.mark.parametrize("B, H, H_kv, Nq, Nk, D, causal, window, softcap, dtype, alignment", ALIGNED_CASES)
def test_backward_aligned(api, gen, device, B, H, H_kv, Nq, Nk, D, causal, window, softcap, dtype, alignment):
    q, k, v = inputs(B, H, H_kv, Nq, Nk, D, FLOAT[dtype], device, gen)
    do = randn(q.shape, FLOAT[dtype], device, gen)
    check_backward(api, q, k, v, do, causal, window, softcap, alignment=alignment)


# ---------------------------------------------------------------- flash_attention (autograd)
AUTOGRAD_CASES = [
    # B, H, H_kv, N, D, causal, window, softcap, dtype, sm_scale
    pytest.param(1, 4, 2, 40, 64, True, (10, -1), None, "fp16", None, id="fp16-gqa2-causal-window10-D64"),
    pytest.param(1, 2, 1, 30, 32, False, (5, 7), 4.0, "fp32", 0.3, id="fp32-mqa-window5,7-softcap4-scale0.3"),
    pytest.param(2, 8, 2, 1024, 128, True, None, None, "bf16", None, id="bf16-gqa4-causal-N1024-D128", marks=gpu),
    pytest.param(1, 8, 8, 1500, 96, False, (200, 200), 20.0, "bf16", None, id="bf16-window200-softcap20-D96",
                 marks=gpu),
]


@pytest.mark.points(2)
@pytest.mark.parametrize("B, H, H_kv, N, D, causal, window, softcap, dtype, sm_scale", AUTOGRAD_CASES)
def test_flash_attention_autograd(api, gen, device, B, H, H_kv, N, D, causal, window, softcap, dtype, sm_scale):
    """The forward and backward through autograd: every option must reach the backward too."""
    q, k, v = inputs(B, H, H_kv, N, N, D, FLOAT[dtype], device, gen, "bnhd")
    check_autograd(api, q, k, v, randn(q.shape, FLOAT[dtype], device, gen), causal, window, softcap, sm_scale)


def check_autograd(api, q, k, v, do, causal=False, window=None, softcap=None, sm_scale=None, alignment="top-left"):
    def run(q, k, v, do):
        qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))
        o = api.flash_attention(qg, kg, vg, causal=causal, sm_scale=sm_scale, window=window, softcap=softcap,
                                alignment=alignment)
        return (o.detach(), *torch.autograd.grad(o, (qg, kg, vg), do))
    got = graded_call(run, q, k, v, do, what="flash_attention forward + backward")
    mask = variants.visible(q.shape[2], k.shape[2], causal, window, q.device, alignment)
    o64, _, *ref = variants.reference_grads(q, k, v, do, mask, sm_scale, softcap)
    base = variants.baseline_grads(q, k, v, do, mask, sm_scale, softcap)
    check_grads(("o", "dq", "dk", "dv"), got, (o64, *ref), base, q.dtype)


@pytest.mark.points(1)
def test_backward_strongly_negative_logits(api, gen, device):
    """lse < -88 and a partial last key block, through autograd: the dQ kernel's padded keys must be
    masked (Phase 4's case, issue 21)."""
    check_backward_negative_logits(api, gen, device, through_autograd=True)


ALIGNED_AUTOGRAD_CASES = [
    # B, H, H_kv, Nq, Nk, D, causal, window, softcap, dtype, alignment
    pytest.param(1, 4, 2, 24, 60, 32, True, (10, -1), None, "fp16", "bottom-right",
                 id="fp16-gqa2-causal-window10-Nq24-Nk60-br"),
    pytest.param(1, 2, 1, 50, 20, 16, True, None, 4.0, "fp32", "bottom-right",
                 id="fp32-mqa-causal-softcap4-Nq50-Nk20-br"),
    pytest.param(1, 2, 1, 50, 20, 16, True, None, None, "fp32", "top-left", id="fp32-mqa-causal-Nq50-Nk20-tl"),
    pytest.param(2, 8, 2, 512, 2048, 128, True, None, None, "bf16", "bottom-right",
                 id="bf16-gqa4-causal-Nq512-Nk2048-D128-br", marks=gpu),
]


@pytest.mark.points(2)
@pytest.mark.parametrize("B, H, H_kv, Nq, Nk, D, causal, window, softcap, dtype, alignment", ALIGNED_AUTOGRAD_CASES)
def test_flash_attention_autograd_aligned(api, gen, device, B, H, H_kv, Nq, Nk, D, causal, window, softcap, dtype,
                                          alignment):
    """The alignment must reach the backward too: a bottom-right forward with a top-left backward has wrong
    gradients for every row whose band moved."""
    q, k, v = inputs(B, H, H_kv, Nq, Nk, D, FLOAT[dtype], device, gen, "bnhd")
    check_autograd(api, q, k, v, randn(q.shape, FLOAT[dtype], device, gen), causal, window, softcap,
                   alignment=alignment)


@pytest.mark.points(2)
def test_autograd_keeps_grouped_kv_only(api, gen, device):
    """What autograd keeps between the passes: q, k and v as given (H_kv heads), o and lse; no Nq x Nk
    tensor and no K/V repeated per query head."""
    B, H, H_kv, N, D = 1, 8, 2, 24, 16
    q, k, v = (t.requires_grad_() for t in inputs(B, H, H_kv, N, N, D, torch.float32, device, gen))
    o = api.flash_attention(q, k, v, causal=True, window=(6, -1))
    if o.grad_fn is None:
        raise AssertionError("flash_attention's output has no grad_fn: it must be differentiable")
    saved = tensors_in(list(o.grad_fn.saved_tensors) + list(vars(o.grad_fn).values()))
    allowed = 4 * (2 * B * H * N * D + 2 * B * H_kv * N * D + B * H * N)  # q, o; k, v; lse (float32)
    total = sum(t.numel() * t.element_size() for t in saved)
    for t in saved:
        if t.dim() == 4 and t.shape[1] == H and t.shape[2] == N and t.data_ptr() not in (q.data_ptr(), o.data_ptr()) \
                and t.shape[-1] == D and total > allowed:
            raise AssertionError(f"flash_attention saves a tensor of shape {tuple(t.shape)} besides q and o: K or V "
                                 f"repeated to the {H} query heads? k and v have {H_kv} heads")
    if total > allowed:
        raise AssertionError(f"flash_attention saves {total} bytes for the backward ({len(saved)} tensors); q, k, v "
                             f"(H_kv={H_kv} heads), o and lse take {allowed}")
    do = randn(q.shape, torch.float32, device, gen)
    got = (o.detach(), *torch.autograd.grad(o, (q, k, v), do))
    mask = variants.visible(N, N, True, (6, -1), q.device)
    o64, _, *ref = variants.reference_grads(q, k, v, do, mask)
    check_grads(("o", "dq", "dk", "dv"), got, (o64, *ref), variants.baseline_grads(q, k, v, do, mask), q.dtype)


# ---------------------------------------------------------------- bad input
@pytest.mark.points(1)
def test_refuses_bad_input(api, gen, device):
    q, k, v = inputs(1, 4, 2, 8, 8, 16, torch.float32, device, gen)
    f = api.flash_attention
    assert_accepts(lambda: f(q, k, v, causal=True, window=(3, -1), softcap=5.0),
                   "q of 4 heads, k and v of 2, window (3, -1), softcap 5")
    assert_refuses(lambda: f(q[:, :3], k, v), ValueError, "H_kv", "H=3 query heads for H_kv=2 K/V heads")
    assert_refuses(lambda: f(q, k, v[:, :1]), ValueError, "v", "k and v of different head counts")
    assert_refuses(lambda: f(q, k, v, window=(-2, 0)), ValueError, "window", "window=(-2, 0)")
    assert_refuses(lambda: f(q, k, v, window=(4, -3)), ValueError, "window", "window=(4, -3)")
    assert_refuses(lambda: f(q, k, v, window=(4,)), TypeError, "window", "window=(4,)")
    assert_refuses(lambda: f(q, k, v, window=(1.5, 2)), TypeError, "window", "window=(1.5, 2)")
    assert_refuses(lambda: f(q, k, v, softcap=-1.0), ValueError, "softcap", "softcap=-1")
    assert_refuses(lambda: f(q, k, v, softcap="5"), TypeError, "softcap", "softcap='5'")
    big = randn((1, 2, 8, 272), torch.float32, device, gen)
    assert_refuses(lambda: f(big, big, big), ValueError, "D", "head dim 272")
    assert_refuses(lambda: f(q, k, v, causal="yes"), TypeError, "causal", "causal='yes'")
    assert_accepts(lambda: f(q, k[:, :, :5], v[:, :, :5], causal=True, alignment="bottom-right"),
                   "causal bottom-right with Nq=8 > Nk=5 (the first 3 queries see no key)")
    assert_refuses(lambda: f(q, k, v, causal=True, alignment="lower-right"), ValueError, "alignment",
                   "alignment='lower-right'")
    assert_refuses(lambda: f(q, k, v, causal=True, alignment=True), TypeError, "alignment", "alignment=True")
    assert_refuses(lambda: f(q, k.half(), v), TypeError, "dtype", "q and k of different dtypes")
    if device == "cuda":
        assert_refuses(lambda: f(q.cpu(), k.cpu(), v.cpu()), ValueError, "q", "CPU tensors on a GPU run")


# ---------------------------------------------------------------- flash_decode
def check_decode(api, q, k_cache, v_cache, seqlens, sm_scale=None, num_splits=None, ref_cache=None):
    o = graded_call(api.flash_decode, q, k_cache, v_cache, seqlens, sm_scale=sm_scale, num_splits=num_splits)
    rk, rv = ref_cache or (k_cache, v_cache)
    mask = variants.cache_visible(seqlens, q.shape[2], k_cache.shape[2])
    _check_decode_output(o, q, rk, rv, mask, sm_scale)
    return o


def _check_decode_output(o, q, k, v, mask, sm_scale=None, what="o"):
    ref_o, _ = variants.reference(q, k, v, mask, sm_scale)
    base_o, _ = variants.baseline(q, k, v, mask, sm_scale)
    numerics.assert_close(what, o, ref_o, base_o, dtype=q.dtype)
    if o.dtype != q.dtype:
        raise AssertionError(f"o has dtype {o.dtype}, expected q's dtype {q.dtype}")


def _logical(cache, table):
    """A paged cache (pages, H_kv, page, D) seen as (B, H_kv, pages per sequence x page, D): row b gathers
    the pages table[b] lists, in order. A contiguous cache (table None) as it is."""
    if table is None:
        return cache
    pages = cache[table.long()]                      # (B, P, H_kv, page, D)
    B, P, H_kv, page, D = pages.shape
    return pages.transpose(1, 2).reshape(B, H_kv, P * page, D)


def check_kvcache(api, q, k_cache, v_cache, seqlens, k_new=None, v_new=None, causal=False, block_table=None):
    """flash_decode with flash_attn_with_kvcache's options: k_new / v_new appended in place at each sequence's
    length, queries causal bottom-right, a paged cache. Checks o against float64 attention over the cache as
    it should be after the call, and that the call wrote the new tokens there and nothing else."""
    n_new = 0 if k_new is None else k_new.shape[2]
    want_k, want_v = _logical(k_cache, block_table).clone(), _logical(v_cache, block_table).clone()
    for b, n in enumerate(seqlens.tolist()):
        if n_new:
            want_k[b, :, n:n + n_new], want_v[b, :, n:n + n_new] = k_new[b], v_new[b]
    o = graded_call(api.flash_decode, q, k_cache=k_cache, v_cache=v_cache, cache_seqlens=seqlens, k_new=k_new,
                    v_new=v_new, causal=causal, block_table=block_table, mutable=("k_cache", "v_cache"))
    for name, cache, want in (("k_cache", k_cache, want_k), ("v_cache", v_cache, want_v)):
        got = _logical(cache, block_table)
        wrong = (got != want).any(dim=-1).any(dim=1)  # (B, positions) written wrong
        if wrong.any():
            b, j = (int(x) for x in wrong.nonzero()[0])
            n = int(seqlens[b])
            where = (f"new token {j - n} of sequence {b} (cache position {j} = cache_seqlens[{b}] + {j - n}) was not "
                     "written there" if n <= j < n + n_new else
                     f"cache position {j} of sequence {b} changed, outside the {n_new} new tokens at "
                     f"{n} .. {n + n_new - 1}")
            raise AssertionError(f"{name} after the call: {where}" + (" (through block_table's pages)"
                                                                      if block_table is not None else ""))
    mask = variants.cache_visible(seqlens + n_new, q.shape[2], want_k.shape[2], causal)
    _check_decode_output(o, q, want_k, want_v, mask)
    return o


DECODE_CASES = [
    # B, H, H_kv, Nq, N_max, D, lengths, num_splits, dtype, sm_scale, layout
    pytest.param(3, 4, 2, 1, 64, 32, [5, 37, 64], None, "fp32", None, "bhnd", id="fp32-gqa2-splits-auto"),
    pytest.param(3, 4, 2, 1, 64, 32, [5, 37, 64], 3, "fp32", None, "bhnd", id="fp32-gqa2-3-splits"),
    # a sequence of length 0 (o = 0) and splits that get no key
    pytest.param(3, 4, 4, 1, 64, 16, [0, 37, 64], 8, "fp16", None, "bhnd", id="fp16-empty-sequence-8-splits"),
    pytest.param(2, 4, 1, 2, 50, 80, [50, 17], 4, "fp16", None, "bnhd", id="fp16-mqa-Nq2-D80-4-splits"),
    # logits in the hundreds: the splits' lse lie far apart
    pytest.param(2, 8, 2, 3, 90, 64, [90, 1], 5, "fp32", 30.0, "bhnd", id="fp32-gqa4-Nq3-scale30-5-splits"),
    pytest.param(2, 2, 1, 1, 40, 256, [40, 23], 2, "fp32", None, "bhnd", id="fp32-D256-2-splits"),
    pytest.param(4, 32, 8, 1, 4096, 128, [4096, 1, 2500, 3333], None, "bf16", None, "bhnd",
                 id="bf16-gqa4-N4096-D128-splits-auto", marks=gpu),
    pytest.param(16, 8, 1, 1, 2048, 64, "random", 7, "bf16", None, "bnhd", id="bf16-mqa-B16-D64-7-splits", marks=gpu),
    pytest.param(2, 16, 2, 4, 3000, 256, [3000, 1234], None, "bf16", None, "bhnd", id="bf16-Nq4-D256-splits-auto",
                 marks=gpu),
    pytest.param(3, 8, 8, 1, 1500, 96, [0, 1500, 7], 16, "fp16", None, "bhnd", id="fp16-D96-16-splits", marks=gpu),
]


def _cache(B, H_kv, n_max, D, dtype, device, gen, layout):
    if layout == "bnhd":
        return randn((B, n_max, H_kv, D), dtype, device, gen).transpose(1, 2)
    return randn((B, H_kv, n_max, D), dtype, device, gen)


@pytest.mark.points(1)
@pytest.mark.parametrize("B, H, H_kv, Nq, N_max, D, lengths, num_splits, dtype, sm_scale, layout", DECODE_CASES)
def test_decode(api, gen, device, B, H, H_kv, Nq, N_max, D, lengths, num_splits, dtype, sm_scale, layout):
    q = randn((B, H, Nq, D), FLOAT[dtype], device, gen)
    k_cache, v_cache = (_cache(B, H_kv, N_max, D, FLOAT[dtype], device, gen, layout) for _ in range(2))
    if lengths == "random":
        seqlens = torch.randint(0, N_max + 1, (B,), generator=gen).to(device=device, dtype=torch.int32)
    else:
        seqlens = torch.tensor(lengths, dtype=torch.int64, device=device)
    check_decode(api, q, k_cache, v_cache, seqlens, sm_scale, num_splits)


@pytest.mark.points(1)
def test_decode_reads_nothing_past_seqlen(api, gen, device):
    """Cache rows past each sequence's length hold NaN (stale entries of a reused cache): a kernel that
    reads them and masks the scores gets NaN * 0 = NaN; one that stops at the length does not."""
    B, H, H_kv, N_max, D = 3, 4, 2, 80, 32
    q = randn((B, H, 1, D), torch.float16, device, gen)
    k, v = (randn((B, H_kv, N_max, D), torch.float16, device, gen) for _ in range(2))
    seqlens = torch.tensor([33, 80, 7], device=device)
    kp, vp = k.clone(), v.clone()
    for b, n in enumerate(seqlens.tolist()):
        kp[b, :, n:], vp[b, :, n:] = float("nan"), float("nan")
    for splits in (1, 4):
        blame_nan_on_reads(
            lambda: check_decode(api, q, kp, vp, seqlens, num_splits=splits, ref_cache=(k, v)),
            lambda: check_decode(api, q, k, v, seqlens, num_splits=splits), "cache rows past the length",
            f"num_splits={splits}: o has NaN only when the cache rows past each sequence's length hold NaN: the "
            "kernel loads keys past cache_seqlens[b]; stop at the sequence's own length")


KVCACHE_CASES = [
    # B, H, H_kv, Nq, N_new, lengths (before the call), causal, page (0: contiguous), capacity, D, dtype
    pytest.param(3, 4, 2, 1, 1, [5, 37, 63], False, 0, 64, 32, "fp32", id="fp32-append1"),
    pytest.param(3, 4, 2, 3, 3, [0, 20, 61], True, 0, 64, 32, "fp16", id="fp16-append3-causal"),
    pytest.param(3, 4, 1, 4, 0, [4, 30, 64], True, 0, 64, 16, "fp32", id="fp32-causal-Nq4-no-append"),
    pytest.param(2, 6, 2, 2, 2, [0, 45], True, 16, 64, 32, "fp16", id="fp16-paged16-append2-causal"),
    pytest.param(3, 2, 2, 1, 0, [64, 1, 33], False, 32, 96, 64, "fp32", id="fp32-paged32"),
    pytest.param(4, 32, 8, 1, 1, [3000, 1, 2047, 511], False, 256, 3072, 128, "bf16", id="bf16-paged256-append1",
                 marks=gpu),
    pytest.param(2, 16, 4, 8, 8, [1000, 4088], True, 0, 4096, 128, "bf16", id="bf16-append8-causal-D128",
                 marks=gpu),
]


@pytest.mark.points(1)
@pytest.mark.parametrize("B, H, H_kv, Nq, N_new, lengths, causal, page, capacity, D, dtype", KVCACHE_CASES)
def test_decode_kvcache(api, gen, device, B, H, H_kv, Nq, N_new, lengths, causal, page, capacity, D, dtype):
    """flash-attn's KV-cache call: new tokens' K/V appended in place at each sequence's length, several new
    queries causal bottom-right against the cache (speculative decoding, chunked prefill), a paged cache."""
    dtype = FLOAT[dtype]
    q = randn((B, H, Nq, D), dtype, device, gen)
    k_new, v_new = ((randn((B, H_kv, N_new, D), dtype, device, gen) for _ in range(2)) if N_new else (None, None))
    table = None
    if page:  # the pages of all sequences, shuffled, plus two spare ones no sequence owns
        per_seq = capacity // page
        n_pages = B * per_seq + 2
        table = torch.randperm(n_pages, generator=gen)[:B * per_seq].reshape(B, per_seq).to(torch.int32).to(device)
        k_cache, v_cache = (randn((n_pages, H_kv, page, D), dtype, device, gen) for _ in range(2))
    else:
        k_cache, v_cache = (randn((B, H_kv, capacity, D), dtype, device, gen) for _ in range(2))
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=device)
    check_kvcache(api, q, k_cache, v_cache, seqlens, k_new, v_new, causal, table)


@pytest.mark.points(1)
def test_decode_kvcache_refuses_bad_input(api, gen, device):
    B, H, H_kv, D = 2, 4, 2, 16
    q = randn((B, H, 1, D), torch.float32, device, gen)
    k, v = (randn((B, H_kv, 32, D), torch.float32, device, gen) for _ in range(2))
    lens = torch.tensor([10, 30], dtype=torch.int32, device=device)
    kn, vn = (randn((B, H_kv, 2, D), torch.float32, device, gen) for _ in range(2))
    pages = [randn((5, H_kv, 16, D), torch.float32, device, gen) for _ in range(2)]
    table = torch.tensor([[0, 1], [3, 2]], dtype=torch.int32, device=device)
    f = api.flash_decode
    assert_accepts(lambda: f(q, k, v, lens, k_new=kn.clone(), v_new=vn.clone()), "two new tokens appended")
    assert_accepts(lambda: f(q, *pages, lens, block_table=table), "a paged cache of 5 pages of 16")
    assert_refuses(lambda: f(q, k, v, lens, k_new=kn), ValueError, "v_new", "k_new without v_new")
    assert_refuses(lambda: f(q, k, v, lens, k_new=kn[:, :1], v_new=vn[:, :1]), ValueError, "k_new",
                   "k_new with 1 head for H_kv = 2")
    assert_refuses(lambda: f(q, k, v, lens, causal="yes"), TypeError, "causal", "causal='yes'")
    assert_refuses(lambda: f(q, *pages, lens, block_table=table.float()), TypeError, "block_table",
                   "float page indices")
    assert_refuses(lambda: f(q, *pages, lens, block_table=table[:1]), ValueError, "block_table",
                   "a block_table for 1 sequence of 2")
    odd = [randn((5, H_kv, 20, D), torch.float32, device, gen) for _ in range(2)]
    assert_refuses(lambda: f(q, *odd, lens, block_table=table), ValueError, "k_cache", "pages of 20 tokens")
    # Values live on the device: reported by the call, or at the latest by check_decode_lengths()
    full = torch.tensor([10, 31], dtype=torch.int32, device=device)
    assert_refuses(lambda: _decode_then_check(api, q, k, v, full, k_new=kn.clone(), v_new=vn.clone()), ValueError,
                   "cache_seqlens", "a length of 31 with 2 new tokens in a cache of 32")
    bad_page = torch.tensor([[0, 1], [3, 5]], dtype=torch.int32, device=device)
    assert_refuses(lambda: _decode_then_check(api, q, *pages, torch.tensor([10, 30], dtype=torch.int32,
                                                                           device=device), block_table=bad_page),
                   ValueError, "block_table", "page 5 of a cache of 5 pages")


### BEGIN HIDDEN TESTS
@pytest.mark.points(1)
def test_decode_seeded_shapes(api, gen, device):
    big = device == "cuda"
    for _ in range(2):
        draw = lambda n: int(torch.randint(0, n, (1,), generator=gen))
        B, H_kv, n_max = 1 + draw(6), (1, 2, 4)[draw(3)], 1 + draw(5000 if big else 90)
        H, D, Nq = H_kv * (1, 2, 4)[draw(3)], (32, 64, 80, 128)[draw(4)], 1 + draw(3)
        q = randn((B, H, Nq, D), torch.bfloat16 if big else torch.float16, device, gen)
        k_cache, v_cache = (randn((B, H_kv, n_max, D), q.dtype, device, gen) for _ in range(2))
        seqlens = torch.randint(0, n_max + 1, (B,), generator=gen).to(device)
        check_decode(api, q, k_cache, v_cache, seqlens, num_splits=(None, 1 + draw(9))[draw(2)])
### END HIDDEN TESTS


def _decode_then_check(api, q, k, v, lengths, **options):
    """A call with bad values must raise ValueError by the time check_decode_lengths() returns: from the call
    itself (the CPU, or a kernel that checks on the host) or from the check, which waits for the GPU (the
    values are checked on the device, without a host round trip that would break CUDA-graph capture)."""
    api.flash_decode(q, k, v, lengths, **options)
    api.check_decode_lengths()


@pytest.mark.points(1)
def test_decode_refuses_bad_input(api, gen, device):
    q = randn((2, 4, 1, 16), torch.float32, device, gen)
    k, v = (randn((2, 2, 32, 16), torch.float32, device, gen) for _ in range(2))
    lens = torch.tensor([10, 32], device=device)
    f = api.flash_decode
    assert_accepts(lambda: f(q, k, v, lens), "q (2, 4, 1, 16), caches (2, 2, 32, 16), lengths [10, 32]")
    for bad, what in (([10, 33], "a length past N_max = 32"), ([-1, 3], "a negative length")):
        lengths = torch.tensor(bad, device=device)
        assert_refuses(lambda: _decode_then_check(api, q, k, v, lengths), ValueError, "cache_seqlens", what)
        assert_accepts(lambda: f(q, k, v, lens), f"a good call after {what}: the error is reported once")
    assert_refuses(lambda: f(q, k, v, torch.tensor([10.0, 3.0], device=device)), TypeError, "cache_seqlens",
                   "float lengths")
    assert_refuses(lambda: f(q, k, v, torch.tensor([10, 3, 4], device=device)), ValueError, "cache_seqlens",
                   "3 lengths for a batch of 2")
    assert_refuses(lambda: f(q[:, :3], k, v, lens), ValueError, "H_kv", "H=3 query heads for H_kv=2")
    assert_refuses(lambda: f(q, k, v[:, :, :16], lens), ValueError, "v_cache", "caches of different lengths")
    assert_refuses(lambda: f(q, k, v, lens, num_splits=0), ValueError, "num_splits", "num_splits=0")


# ---------------------------------------------------------------- ring attention, several processes
RING_CASES = {
    # tier: (ranks of the one process group, {name: (ring size W, layout, B, H, H_kv, tokens per rank, D, causal,
    # dtype)}). A ring smaller than the group runs on a subgroup of its last W ranks (grader.ring).
    # zigzag: W = 2, 3, 4 causal (every kind of block: whole halves, causal diagonal, skipped) and one plain.
    "interpreter": (4, {"fp32-causal-gqa2": (3, "contiguous", 1, 4, 2, 8, 16, True, torch.float32),
                        "fp16-mha": (3, "contiguous", 1, 2, 2, 12, 32, False, torch.float16),
                        "zigzag-W2-fp32-causal": (2, "zigzag", 1, 2, 1, 8, 16, True, torch.float32),
                        "zigzag-W3-fp16-causal-gqa2": (3, "zigzag", 1, 4, 2, 8, 16, True, torch.float16),
                        "zigzag-W4-fp32-causal": (4, "zigzag", 1, 2, 2, 6, 16, True, torch.float32),
                        "zigzag-W4-fp32": (4, "zigzag", 1, 2, 1, 4, 16, False, torch.float32)}),
    "gpu": (2, {"bf16-causal-gqa4-D128": (2, "contiguous", 1, 8, 2, 512, 128, True, torch.bfloat16),
                "bf16-D64": (2, "contiguous", 2, 4, 4, 300, 64, False, torch.bfloat16),
                "zigzag-bf16-causal-gqa4-D128": (2, "zigzag", 1, 8, 2, 512, 128, True, torch.bfloat16)}),
}
_RING_RESULTS = {}


def _ring_results(device):
    if device not in _RING_RESULTS:
        world, cases = RING_CASES["gpu" if device == "cuda" else "interpreter"]
        from grader.plugin import base_seed

        seed = int.from_bytes(hashlib.sha256(f"{base_seed()[0]}:ring".encode()).digest()[:4], "little")
        gen = torch.Generator().manual_seed(seed)
        payload = {"device": device, "tree": impl.tree(), "cases": {}}
        for name, (ring_world, layout, B, H, H_kv, n, D, causal, dtype) in cases.items():
            q, k, v = inputs(B, H, H_kv, n * ring_world, n * ring_world, D, dtype, "cpu", gen)
            payload["cases"][name] = {"q": q, "k": k, "v": v, "do": randn(q.shape, dtype, "cpu", gen),
                                      "causal": causal, "world": ring_world, "layout": layout}
        try:
            ranks = distributed.run("grader.ring:rank_main", world, payload, timeout=240)
            _RING_RESULTS[device] = ("ok", world, payload, ranks)
        except distributed.RankError as exc:
            _RING_RESULTS[device] = ("error", world, exc)
        except distributed.Timeout as exc:
            _RING_RESULTS[device] = ("timeout", world, exc)
    found = _RING_RESULTS[device]
    if found[0] == "error":
        exc = found[2]
        if exc.cheat:
            raise HonestyError(f"rank {exc.rank} of {found[1]}: {exc}", cheat=True, function=exc.function)
        raise AssertionError(f"rank {exc.rank} of {found[1]}: {exc}")
    if found[0] == "timeout":
        raise AssertionError(str(found[2]))
    return found[1:]


def _unshard(slices, layout):
    """The full-sequence tensor from the ring's per-rank slices (dim 2), placed by grader.ring's layout."""
    n_total = sum(t.shape[2] for t in slices)
    full = torch.empty((*slices[0].shape[:2], n_total, *slices[0].shape[3:]), dtype=slices[0].dtype)
    for r, t in enumerate(slices):
        full[:, :, ring.held_positions(n_total, r, len(slices), layout)] = t
    return full


@pytest.mark.points(3)
@pytest.mark.parametrize("case", [pytest.param(name, marks=interpreter_only) for name in RING_CASES["interpreter"][1]]
                         + [pytest.param(name, marks=gpu) for name in RING_CASES["gpu"][1]])
@pytest.mark.parametrize("part", ["forward", "backward"])
def test_ring_attention(api, device, case, part):
    """ring_attention on several processes (gloo), each rank holding its slice of the sequence (contiguous or
    zigzag), equals attention over the whole sequence on one device: o, and the gradients of every slice.
    The forward case also checks the exported shard_sequence and unshard_sequence against the layout."""
    world, payload, ranks = _ring_results(device)
    inputs_ = payload["cases"][case]
    q, k, v, do = (inputs_[t] for t in ("q", "k", "v", "do"))
    members = ring.ring_ranks(world, inputs_["world"])
    got = [_unshard([ranks[r][case][i] for r in members], inputs_["layout"]) for i in range(4)]
    if part == "forward":
        layout, n_world = inputs_["layout"], inputs_["world"]
        slices = [q[:, :, ring.held_positions(q.shape[2], r, n_world, layout)] for r in range(n_world)]
        for r, expected in enumerate(slices):
            assert torch.equal(api.shard_sequence(q, r, n_world, layout, dim=2), expected), (
                f"shard_sequence(q, rank={r}, world={n_world}, layout={layout!r}) is not rank {r}'s slice")
        assert torch.equal(api.unshard_sequence(slices, layout, dim=2), q), (
            f"unshard_sequence of {n_world} {layout} slices is not the sequence they came from")
    mask = variants.visible(q.shape[2], k.shape[2], inputs_["causal"])
    o64, _, *ref = variants.reference_grads(q, k, v, do, mask)
    base = variants.baseline_grads(q, k, v, do, mask)
    where = f" ({inputs_['world']} ranks, {inputs_['layout']} layout, {q.shape[2] // inputs_['world']} tokens each)"
    names = ("o",) if part == "forward" else ("dq", "dk", "dv")
    picked = slice(0, 1) if part == "forward" else slice(1, 4)
    try:
        check_grads(names, got[picked], (o64, *ref)[picked], base[picked], q.dtype)
    except AssertionError as exc:
        raise AssertionError(f"{exc}{where}") from None


# ---------------------------------------------------------------- compile tier
def _ptrs(names, t):
    return {n: f"*{t}" for n in names}


def _ints(names, t="i32"):
    return {n: t for n in names}


def _strides(*tensors):
    return [f"stride_{x}{s}" for x in tensors for s in "bhn"]


def _forward_spec(module, dtype, D, cfg, softcap, arch):
    block_m, block_n, warps, stages = cfg
    sig = _ptrs("QKVO", dtype) | {"LSE": "*fp32", "sm_scale": "fp32", "softcap": "fp32"}
    sig |= _ints(_strides("q", "k", "v", "o"))
    sig |= _ints(["H", "GROUP", "N_Q", "N_K", "N_M_BLOCKS", "WIN_LEFT", "WIN_RIGHT"])
    consts = {"HEAD_DIM": D, "BLOCK_D": module.block_d(D), "BLOCK_M": block_m, "BLOCK_N": block_n,
              "SOFTCAP": softcap, "DOT_PRECISION": "ieee" if dtype == "fp32" else "tf32"}
    sig |= {c: "constexpr" for c in consts}
    label = f"{dtype} D={D}{' softcap' if softcap else ''} {block_m}x{block_n} w{warps} s{stages} (for sm_{arch})"
    return aot.KernelSpec("forward", "_attn_fwd", sig, consts, warps, stages, label, archs=(arch,))


def _backward_specs(module, dtype, D, cfg, softcap, arch):
    (m1, n1, w1, s1), (m2, n2, w2, s2) = cfg
    common = {"HEAD_DIM": D, "BLOCK_D": module.block_d(D), "SOFTCAP": softcap,
              "PRECISION": "ieee" if dtype == "fp32" else "tf32"}
    tail = _ints(["H", "GROUP", "N_Q", "N_K", "WIN_LEFT", "WIN_RIGHT"])
    sig = _ptrs(["Q", "K", "V", "DO"], dtype) | _ptrs(["LSE2", "DELTA"], "fp32") | _ptrs(["DK", "DV"], dtype)
    sig |= {"sm_scale": "fp32", "softcap": "fp32"} | _ints(_strides("q", "k", "v", "do", "dk", "dv"), "i64") | tail
    consts = common | {"BLOCK_M": m1, "BLOCK_N": n1, "HEADS_FASTEST": True, "GROUP_SPLITS": 1}
    label = f"{dtype} D={D}{' softcap' if softcap else ''}"
    specs = [aot.KernelSpec("backward", "_bwd_dkdv", sig | {c: "constexpr" for c in consts}, consts, w1, s1,
                            f"{label} {m1}x{n1} w{w1} s{s1} (for sm_{arch})", archs=(arch,))]
    sig = _ptrs(["Q", "K", "V", "DO"], dtype) | _ptrs(["LSE2", "DELTA"], "fp32") | _ptrs(["DQ"], dtype)
    sig |= {"sm_scale": "fp32", "softcap": "fp32"} | _ints(_strides("q", "k", "v", "do", "dq"), "i64") | tail
    consts = common | {"BLOCK_M": m2, "BLOCK_N": n2}
    specs.append(aot.KernelSpec("backward", "_bwd_dq", sig | {c: "constexpr" for c in consts}, consts, w2, s2,
                                f"{label} {m2}x{n2} w{w2} s{s2} (for sm_{arch})", archs=(arch,)))
    return specs


def _decode_specs(module, dtype, D, cfg, arch, page_size=0, causal=False):
    block_n, warps, stages = cfg
    sig = _ptrs("QKV", dtype) | _ptrs(["SEQLENS", "TABLE", "BAD_INPUT"], "i32") | _ptrs(["O_PART", "LSE_PART"], "fp32")
    sig |= {"sm_scale": "fp32"} | _ints(_strides("q", "k", "v") + ["stride_tb"])
    sig |= _ints(["H_KV", "GROUP", "N_Q", "N_NEW", "N_MAX", "N_PAGES", "TOTAL_ROWS", "NUM_SPLITS", "BIG"])
    consts = {"HEAD_DIM": D, "BLOCK_D": module.block_d(D), "BLOCK_M": 16, "BLOCK_N": block_n, "PAGE_SIZE": page_size,
              "CAUSAL": causal, "DOT_PRECISION": "ieee" if dtype == "fp32" else "tf32"}
    what = f"{dtype} D={D} BLOCK_N={block_n}" + (f" pages of {page_size}" if page_size else "")
    what += " causal" if causal else ""
    specs = [aot.KernelSpec("decode", "_decode_split", sig | {c: "constexpr" for c in consts}, consts, warps, stages,
                            f"{what} w{warps} s{stages} (for sm_{arch})", archs=(arch,))]
    sig = _ptrs(["O_PART", "LSE_PART"], "fp32") | _ptrs(["O"], dtype) | _ints(["stride_ob", "stride_oh", "stride_on"])
    sig |= _ints(["H", "N_Q", "TOTAL_ROWS", "NUM_SPLITS"])
    consts = {"HEAD_DIM": D, "BLOCK_D": module.block_d(D), "BLOCK_S": 64}
    specs.append(aot.KernelSpec("decode", "_combine_splits", sig | {c: "constexpr" for c in consts}, consts, 4, 1,
                                f"{dtype} D={D} 64 splits (for sm_{arch})", archs=(arch,)))
    sig = _ptrs(["K_NEW", "V_NEW", "K", "V"], dtype) | _ptrs(["SEQLENS", "TABLE"], "i32")
    sig |= _ints(_strides("n", "w", "k", "v") + ["stride_tb", "H_KV", "N_NEW", "N_MAX", "N_PAGES"])
    consts = {"HEAD_DIM": D, "BLOCK_D": module.block_d(D), "BLOCK_N": 16, "PAGE_SIZE": page_size}
    specs.append(aot.KernelSpec("decode", "_append_kv", sig | {c: "constexpr" for c in consts}, consts, 4, 1,
                                f"{dtype} D={D}{f' pages of {page_size}' if page_size else ''} (for sm_{arch})",
                                archs=(arch,)))
    return specs


def _compile_specs():
    """The kernels and configurations that matter most (each compile takes seconds on a CPU): sm_90's
    launches at D = 96 (padded), 128 and 256 with and without the cap, and sm_80's D = 256, where the
    tiles come closest to the shared memory."""
    options = remote.load_module(PHASE, "options")
    fwd, bwd = remote.load_module(PHASE, "forward"), remote.load_module(PHASE, "backward")
    specs = [_forward_spec(options, "bf16", D, fwd.CONFIGS_SM90[options.block_d(D)], softcap, 90)
             for D, softcap in ((128, False), (256, False), (96, True))]
    specs += _backward_specs(options, "bf16", 128, bwd.CONFIGS_SM90[128], False, 90)
    specs += _backward_specs(options, "bf16", 256, bwd.CONFIGS_SM90[256], False, 90)
    specs += _backward_specs(options, "bf16", 80, bwd.CONFIGS_SM90[128], True, 90)[:1]
    specs += _decode_specs(options, "bf16", 128, (64, 4, 3), 90)
    specs += _decode_specs(options, "bf16", 128, (64, 4, 3), 90, page_size=256, causal=True)
    specs.append(_forward_spec(options, "bf16", 256, fwd.CONFIGS_SM80[256], False, 80))
    specs += _backward_specs(options, "bf16", 256, bwd.CONFIGS_SM80[256], False, 80)
    return specs


SHARED_LIMIT = {"sm_80": 166912, "sm_90": 232448}  # bytes of shared memory one program may use


@pytest.mark.points(3)
@pytest.mark.tier("compile")
def test_kernels_compile(record_property):
    """The forward (D = 64, 96 padded to 128, 128 and 256), the backward's kernels and the decode kernels
    compile for sm_80 and sm_90 with the configurations they launch there, and fit the SM's shared memory."""
    results = aot.compile_all(PHASE, impl.tree(), _compile_specs())
    record_property("compiled", results)
    for r in results:
        if "error" in r:
            raise AssertionError(f"{r['kernel']} [{r['label']}] does not compile for {r['arch']}: {r['error']}")
        if r["shared_bytes"] > SHARED_LIMIT[r["arch"]]:
            raise AssertionError(f"{r['kernel']} [{r['label']}] needs {r['shared_bytes']} B of shared memory, more "
                                 f"than {r['arch']}'s {SHARED_LIMIT[r['arch']]} B")


# ---------------------------------------------------------------- GPU: memory and throughput
@pytest.mark.points(2)
@pytest.mark.tier("gpu")
def test_gqa_memory(api, gen):
    """Forward + backward with 4 K/V heads for 32 query heads allocates what the outputs and gradients need,
    not K/V repeated to every query head (which alone would be as large as q and o together)."""
    B, H, H_kv, N, D = 1, 32, 4, 8192, 128
    q, k, v = (t.requires_grad_() for t in inputs(B, H, H_kv, N, N, D, torch.bfloat16, "cuda", gen))
    do = randn(q.shape, torch.bfloat16, "cuda", gen)

    def step():
        o = api.flash_attention(q, k, v, causal=True)
        torch.autograd.grad(o, (q, k, v), do)
    step()  # compile outside the measurement
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    q_bytes, kv_bytes = q.numel() * 2, k.numel() * 2
    needed = 2 * q_bytes + 2 * kv_bytes + 3 * 4 * B * H * N  # o, dq; dk, dv; lse, lse2, delta (float32)
    repeated = 2 * (H // H_kv - 1) * kv_bytes
    if extra > needed + repeated / 2:
        raise AssertionError(f"forward + backward with H={H}, H_kv={H_kv}, N={N}, D={D} allocates "
                             f"{extra / 2**20:.0f} MiB beyond its inputs; o, dq, dk, dv and the float32 row "
                             f"statistics take {needed / 2**20:.0f} MiB; K and V repeated to every query head would "
                             f"add {repeated / 2**20:.0f} MiB")


def _fwd_bwd(api, **options):
    def run(q, k, v, do):
        qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
        o = api.flash_attention(qg, kg, vg, **options)
        return torch.autograd.grad(o, (qg, kg, vg), do)
    return run


GQA_BAR = 0.95  # grouped at least as fast as dense at equal FLOPs, within 5% of run-to-run noise


@pytest.mark.points(2)
@pytest.mark.tier("throughput")
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_gqa_throughput(api, gen, record_property, mode):
    """32 query heads on 4 K/V heads against 32 on 32 (the same FLOPs): at least as fast. Beside it,
    SDPA on K/V repeated to every head (what a model without a GQA kernel does)."""
    B, H, N, D = 2, 32, 4096, 128
    dense = inputs(B, H, H, N, N, D, torch.bfloat16, "cuda", gen, "bnhd")
    grouped = inputs(B, H, 4, N, N, D, torch.bfloat16, "cuda", gen, "bnhd")
    check_forward(api, grouped[0][:1, :8, :512], grouped[1][:1, :1, :512], grouped[2][:1, :1, :512], causal=True)
    do = randn(dense[0].shape, torch.bfloat16, "cuda", gen)
    ms = {}
    for name, (q, k, v) in (("dense", dense), ("grouped", grouped)):
        if mode == "fwd":
            call = timed(lambda: api.flash_attention_forward(q, k, v, causal=True), q, k, v)
        else:
            call = timed(lambda: _fwd_bwd(api, causal=True)(q, k, v, do), q, k, v)
        ms[name] = timing.median_ms(call)
    q, k, v = grouped
    kr, vr = variants.repeat_heads(k, H), variants.repeat_heads(v, H)
    row = bench.measure(None, q, kr, vr, True, mode=mode, baselines=("cudnn", "flash"))
    flops = row["flops"]
    ratio = ms["dense"] / ms["grouped"]
    summary = (f"{mode} B={B} H={H} N={N} D={D} causal bf16: H_kv=4 {timing.tflops(flops, ms['grouped']):.0f} TFLOPS, "
               f"H_kv=32 {timing.tflops(flops, ms['dense']):.0f} = {ratio:.2f}x (needs {GQA_BAR:.2f}x); SDPA on "
               f"repeated K/V: cuDNN {row.get('cudnn_tflops', float('nan')):.0f}, flash "
               f"{row.get('flash_tflops', float('nan')):.0f} TFLOPS")
    record_property("throughput", {"grouped_ms": ms["grouped"], "dense_ms": ms["dense"], "ratio": ratio,
                                   "required": GQA_BAR, "sdpa_repeated": row, "summary": summary})
    if ratio < GQA_BAR:
        raise AssertionError(summary)


def visible_pairs(n, left, right) -> int:
    """Query-key pairs of an n x n band (-1: unbounded)."""
    i = torch.arange(n, dtype=torch.int64)
    lo = (i - left).clamp(min=0) if left >= 0 else torch.zeros_like(i)
    hi = (i + right).clamp(max=n - 1) if right >= 0 else torch.full_like(i, n - 1)
    return int((hi - lo + 1).clamp(min=0).sum())


WINDOW_BAR = 0.6  # at least 60% of the speed-up the skipped work allows


@pytest.mark.points(2)
@pytest.mark.tier("throughput")
@pytest.mark.parametrize("causal, window", [(True, (2048, -1)), (False, (1024, 1024))],
                         ids=["causal-window2048", "window1024,1024"])
def test_window_throughput(api, gen, record_property, causal, window):
    """At N=16384 a window skips most of the work: the time must shrink in proportion."""
    B, H, N, D = 1, 16, 16384, 128
    q, k, v = inputs(B, H, H, N, N, D, torch.bfloat16, "cuda", gen, "bnhd")
    check_forward(api, q[:, :2, :3000], k[:, :2, :3000], v[:, :2, :3000], causal, (256, 256))
    full_ms = timing.median_ms(timed(lambda: api.flash_attention_forward(q, k, v, causal=causal), q, k, v))
    win_ms = timing.median_ms(timed(lambda: api.flash_attention_forward(q, k, v, causal=causal, window=window),
                                    q, k, v))
    work = visible_pairs(N, window[0], 0 if causal else window[1]) / visible_pairs(N, -1, 0 if causal else -1)
    ratio = win_ms / full_ms
    required = work / WINDOW_BAR
    summary = (f"N={N} D={D} bf16{' causal' if causal else ''}: window {window} {win_ms:.3f} ms / full {full_ms:.3f} "
               f"ms = {ratio:.3f}; the window keeps {work:.3f} of the work (needs <= {required:.3f})")
    record_property("throughput", {"window_ms": win_ms, "full_ms": full_ms, "ratio": ratio, "work": work,
                                   "required": required, "summary": summary})
    if ratio > required:
        raise AssertionError(summary + ": blocks outside the window must be skipped")


def _captured_decode(api, q, k, v, seqlens):
    """flash_decode captured in a CUDA graph, as inference engines run a decoding step (grader.graphs). The
    capture must launch Triton kernels, and a replay must give what an eager call gives."""
    eager = api.flash_decode(q, k, v, seqlens)
    try:
        captured = graphs.capture(api.flash_decode, q, k, v, seqlens)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise AssertionError(f"flash_decode could not be captured in a CUDA graph ({first}): a decoding step must "
                             "not wait for the GPU (no .item(), .tolist(), .cpu() or synchronize of device values, "
                             "such as reading cache_seqlens on the host; check them on the GPU)") from None
    if captured.launches == 0:
        raise HonestyError("flash_decode launched no Triton kernel while captured in a CUDA graph",
                           cheat=True, function="flash_decode")
    o = captured.replay()
    if not torch.equal(o, eager):
        raise AssertionError(f"replaying the captured flash_decode gave another o than an eager call on the same "
                             f"inputs: max |difference| {(o.float() - eager.float()).abs().max().item():.3g}")
    return captured


@pytest.mark.points(2)
@gpu
def test_decode_cuda_graph(api, gen):
    """Captured once in a CUDA graph and replayed on new values in the same buffers (q, the caches and the
    lengths), the step computes attention on the new values: what a decoding engine relies on."""
    B, H, H_kv, N, D = 3, 16, 4, 2000, 128
    q = randn((B, H, 1, D), torch.bfloat16, "cuda", gen)
    k, v = (randn((B, H_kv, N, D), torch.bfloat16, "cuda", gen) for _ in range(2))
    seqlens = torch.tensor([N, 1, 1234], dtype=torch.int32, device="cuda")
    check_decode(api, q, k, v, seqlens)
    captured = _captured_decode(api, q, k, v, seqlens)
    q, k, v = (randn(tuple(x.shape), x.dtype, "cuda", gen) for x in (q, k, v))
    seqlens = torch.tensor([17, N, 999], dtype=torch.int32, device="cuda")
    o = captured.replay({0: q, 1: k, 2: v, 3: seqlens})
    mask = variants.cache_visible(seqlens, 1, N)
    _check_decode_output(o, q, k, v, mask, what="o of a replay on new values (q, caches and lengths changed in place)")
    api.check_decode_lengths()  # good lengths throughout: nothing to report


# Decoding reads the cache once, for a handful of FLOPs per element: memory-bound. Both bars are on the step
# replayed from a CUDA graph, as engines run it (the eager time, host included, is reported beside it).
DECODE_BAR = 0.7  # of the device's copy bandwidth at 32k cached tokens (SDPA: 63% on the H200, 70% on the H100)
DECODE_SDPA_BAR = 1.2  # at most this times SDPA's time at 1k cached tokens, where launches and the merge weigh most


@pytest.mark.points(3)
@pytest.mark.tier("throughput")
@pytest.mark.parametrize("N", [32768, 1024], ids=["N32768", "N1024"])
def test_decode_bandwidth(api, gen, record_property, N):
    """Batch 1, 32 query heads on 8 K/V heads, D=128 (a Llama-3-8B layer), the step replayed from a CUDA
    graph: at 32k cached tokens the cache must stream at 70% or more of the device's copy bandwidth; at 1k,
    the step may take at most 1.2x SDPA's (SDPA replayed from a graph too)."""
    B, H, H_kv, D = 1, 32, 8, 128
    q = randn((B, H, 1, D), torch.bfloat16, "cuda", gen)
    k, v = (randn((B, H_kv, N, D), torch.bfloat16, "cuda", gen) for _ in range(2))
    seqlens = torch.full((B,), N, dtype=torch.int32, device="cuda")
    check_decode(api, q, k, v, seqlens)
    ms = _captured_decode(api, q, k, v, seqlens).median_ms()
    eager_ms = timing.median_ms(timed(lambda: api.flash_decode(q, k, v, seqlens), q, k, v))
    sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    sdpa_eager_ms = timing.median_ms(sdpa)
    try:
        sdpa_ms, sdpa_how = timing.median_ms(timing.capture_graph(sdpa)[0].replay), "replayed"
    except RuntimeError:  # a backend that cannot be captured: compared with its eager time, said so below
        sdpa_ms, sdpa_how = sdpa_eager_ms, "eager (it could not be captured)"
    nbytes = 2 * k.numel() * k.element_size()
    gbs = timing.gbs(nbytes, ms)
    copy = timing.copy_bandwidth_gbs()
    share = gbs / copy
    summary = (f"decode B={B} H={H} H_kv={H_kv} N={N} D={D} bf16, CUDA graph: {ms * 1e3:.0f} us, {gbs:.0f} GB/s = "
               f"{share:.0%} of copy {copy:.0f} GB/s; SDPA {sdpa_how} {sdpa_ms * 1e3:.0f} us = "
               f"{ms / sdpa_ms:.2f}x its time "
               + (f"(needs {DECODE_BAR:.0%} of copy)" if N > 4096 else f"(needs <= {DECODE_SDPA_BAR:.1f}x)")
               + f"; eager {eager_ms * 1e3:.0f} us, SDPA eager {sdpa_eager_ms * 1e3:.0f} us")
    record_property("throughput", {"N": N, "ms": ms, "eager_ms": eager_ms, "gbs": gbs, "copy_gbs": copy,
                                   "share": share, "sdpa_ms": sdpa_ms, "sdpa_eager_ms": sdpa_eager_ms,
                                   "required": DECODE_BAR if N > 4096 else DECODE_SDPA_BAR, "summary": summary})
    if (share < DECODE_BAR) if N > 4096 else (ms > DECODE_SDPA_BAR * sdpa_ms):
        raise AssertionError(summary)
