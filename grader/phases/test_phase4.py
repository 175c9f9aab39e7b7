"""Grader for Phase 4: the backward pass with recomputation, and attention as an autograd function.

The backward is graded on its own work: it gets `o` and `lse` from the float64 reference, so a
phase-3 mistake costs no points here. The autograd function, the saved-tensor check and the
training run use the student's own phase-3 forward: they are the integration.
"""
import copy

import pytest
import torch

from grader import aot, bench, cost, impl, numerics, runtime, timing
from grader.honesty import graded_call, tensors_in, timed
from grader.inputs import FLOAT, assert_accepts, assert_refuses, qkv, randn

PHASE = 4
gpu = pytest.mark.tier("gpu")


# ---------------------------------------------------------------- references
# The float64 truth and PyTorch's gradients in the same low precision, shared by every grader
# (grader/numerics.py); named here as the later phases' graders call them (phase4.sdpa_grads).
reference_grads = numerics.reference_gradients
sdpa_grads = numerics.sdpa_gradients


def check_grads(names, got, ref, baseline, dtype):
    # The shared rule (numerics.assert_close): 2x PyTorch's own error in the same precision plus a
    # dtype floor, flash-attn's multiplier. It holds for dq too: our kernels round P and dS to the
    # input dtype before each tl.dot, exactly as SDPA's flash and efficient backends do.
    # Every tensor is checked before the first failure is reported, and the message names each wrong
    # one (numerics.assert_each_close): dq comes from one kernel, dk and dv from the other.
    numerics.assert_each_close(zip(names, got, ref, baseline), dtype=dtype)
    for name, g in zip(names, got):
        if g.dtype != dtype:
            raise AssertionError(f"{name} has dtype {g.dtype}, expected the inputs' dtype {dtype}")


def _layout(x, layout):
    """The same values, stored (B, N, H, D) and viewed (B, H, N, D) when layout is bnhd."""
    return x.transpose(1, 2).contiguous().transpose(1, 2) if layout == "bnhd" else x.contiguous()


def _upstream(o_shape, dtype, device, gen, layout):
    B, H, N, D = o_shape
    if layout == "broadcast":  # what o.sum().backward() sends: one value, every stride 0
        return randn((1, 1, 1, 1), dtype, device, gen).expand(B, H, N, D)
    return _layout(randn(o_shape, dtype, device, gen), layout)


# ---------------------------------------------------------------- flash_attention_backward
BACKWARD_CASES = [
    # B, H, Nq, Nk, D, causal, dtype, sm_scale, layout of q/k/v, layout of dO
    pytest.param(1, 2, 16, 16, 16, False, "fp32", None, "bhnd", "bhnd", id="fp32-N16-D16"),
    pytest.param(1, 2, 37, 37, 32, True, "fp32", None, "bhnd", "bhnd", id="fp32-causal-N37-D32"),
    pytest.param(2, 2, 64, 64, 32, True, "fp16", None, "bhnd", "bhnd", id="fp16-causal-N64-D32"),
    pytest.param(1, 2, 40, 23, 64, True, "fp16", None, "bhnd", "bhnd", id="fp16-causal-Nq40-Nk23-D64"),
    pytest.param(2, 1, 19, 45, 16, True, "fp16", None, "bhnd", "bnhd", id="fp16-causal-Nq19-Nk45-D16"),
    pytest.param(1, 2, 23, 50, 128, False, "fp16", None, "bnhd", "bnhd", id="fp16-Nq23-Nk50-D128-noncontiguous"),
    pytest.param(1, 2, 33, 33, 64, False, "fp32", 0.3, "bnhd", "broadcast", id="fp32-N33-D64-scale0.3-dO-broadcast"),
    # scores in the hundreds: P must come from exp(s - lse), never from exp(s) / exp(lse)
    pytest.param(1, 2, 30, 41, 32, True, "fp32", 30.0, "bhnd", "bhnd",
                 id="fp32-causal-Nq30-Nk41-D32-large-logits-scale30"),
    pytest.param(2, 4, 1024, 1024, 128, True, "bf16", None, "bnhd", "bnhd", id="bf16-causal-N1024-D128", marks=gpu),
    pytest.param(1, 8, 1000, 777, 64, False, "bf16", None, "bhnd", "bhnd", id="bf16-Nq1000-Nk777-D64", marks=gpu),
    pytest.param(1, 8, 777, 1000, 64, True, "bf16", None, "bnhd", "bhnd", id="bf16-causal-Nq777-Nk1000-D64", marks=gpu),
    pytest.param(2, 4, 513, 513, 32, True, "fp16", None, "bhnd", "bnhd", id="fp16-causal-N513-D32", marks=gpu),
    pytest.param(2, 4, 300, 256, 16, False, "bf16", None, "bhnd", "broadcast", id="bf16-Nq300-Nk256-D16", marks=gpu),
    pytest.param(1, 4, 300, 300, 128, True, "fp32", None, "bnhd", "bhnd", id="fp32-causal-N300-D128", marks=gpu),
]


def check_backward(api, q, k, v, do, causal=False, sm_scale=None, layout="bhnd"):
    o64, lse64, *ref = reference_grads(q, k, v, do, causal, sm_scale)
    o, lse = _layout(o64.to(q.dtype), layout), lse64.to(torch.float32)  # phase 3's outputs, exact
    got = graded_call(api.flash_attention_backward, do, q, k, v, o, lse, causal=causal, sm_scale=sm_scale)
    if not isinstance(got, tuple) or len(got) != 3:
        raise AssertionError("flash_attention_backward must return a tuple (dq, dk, dv)")
    check_grads(("dq", "dk", "dv"), got, ref, sdpa_grads(q, k, v, do, causal, sm_scale)[1:], q.dtype)


@pytest.mark.points(1)
@pytest.mark.parametrize("B, H, Nq, Nk, D, causal, dtype, sm_scale, layout, do_layout", BACKWARD_CASES)
def test_backward(api, gen, device, B, H, Nq, Nk, D, causal, dtype, sm_scale, layout, do_layout):
    q, k, v = qkv(B, H, Nq, Nk, D, FLOAT[dtype], device, gen, layout)
    do = _upstream((B, H, Nq, D), FLOAT[dtype], device, gen, do_layout)
    check_backward(api, q, k, v, do, causal, sm_scale, layout)


### BEGIN HIDDEN TESTS
@pytest.mark.points(1)
def test_backward_seeded_shapes(api, gen, device):
    """Shapes drawn from the seed: an instructor's secret seed makes them unknown in advance."""
    dtype = torch.float16 if runtime.interpreting() else torch.bfloat16
    top = 48 if runtime.interpreting() else 700
    for _ in range(2):
        nq, nk = (int(torch.randint(1, top, (1,), generator=gen)) for _ in range(2))
        D = (16, 32, 64, 128)[int(torch.randint(0, 4, (1,), generator=gen))]
        causal = bool(torch.randint(0, 2, (1,), generator=gen))
        q, k, v = qkv(1, 2, nq, nk, D, dtype, device, gen)
        check_backward(api, q, k, v, randn((1, 2, nq, D), dtype, device, gen), causal)
### END HIDDEN TESTS


@pytest.mark.points(1)
def test_backward_refuses_bad_input(api, gen, device):
    q, k, v = qkv(1, 2, 20, 20, 16, torch.float32, device, gen)
    do = randn(q.shape, torch.float32, device, gen)
    o, lse = (t.float() for t in numerics.reference_attention(q, k, v))
    f = api.flash_attention_backward
    assert_accepts(lambda: f(do, q, k, v, o, lse), "float32 do, q, k, v, o of shape (1, 2, 20, 16) and their lse")
    assert_refuses(lambda: f(do[:, :, :5], q, k, v, o, lse), ValueError, "do", "do of another shape than q")
    assert_refuses(lambda: f(do, q, k, v, o[0], lse), ValueError, "o", "o of rank 3")
    assert_refuses(lambda: f(do, q, k, v, o, lse[..., :7]), ValueError, "lse", "lse of another length than q")
    assert_refuses(lambda: f(do.half(), q, k, v, o, lse), TypeError, "do", "do in float16 with q in float32")
    assert_refuses(lambda: f(do, q, k, v, o, lse.int()), TypeError, "lse", "an integer lse")


# ---------------------------------------------------------------- flash_attention (autograd)
AUTOGRAD_CASES = [
    # B, H, Nq, Nk, D, causal, dtype, layout
    pytest.param(1, 2, 33, 33, 32, True, "fp16", "bnhd", id="fp16-causal-N33-D32-noncontiguous"),
    pytest.param(1, 2, 20, 45, 16, False, "fp32", "bhnd", id="fp32-Nq20-Nk45-D16"),
    pytest.param(2, 4, 1024, 1024, 64, True, "bf16", "bnhd", id="bf16-causal-N1024-D64", marks=gpu),
    pytest.param(2, 4, 600, 900, 128, False, "bf16", "bhnd", id="bf16-Nq600-Nk900-D128", marks=gpu),
]


def _forward_backward(api, causal, sm_scale=None):
    def run(q, k, v, do):
        qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))
        o = api.flash_attention(qg, kg, vg, causal=causal, sm_scale=sm_scale)
        return (o.detach(), *torch.autograd.grad(o, (qg, kg, vg), do))
    return run


@pytest.mark.points(2)
@pytest.mark.parametrize("B, H, Nq, Nk, D, causal, dtype, layout", AUTOGRAD_CASES)
def test_flash_attention_autograd(api, gen, device, B, H, Nq, Nk, D, causal, dtype, layout):
    q, k, v = qkv(B, H, Nq, Nk, D, FLOAT[dtype], device, gen, layout)
    do = _upstream((B, H, Nq, D), FLOAT[dtype], device, gen, layout)
    got = graded_call(_forward_backward(api, causal), q, k, v, do, what="flash_attention forward + backward")
    o64, _, *ref = reference_grads(q, k, v, do, causal, None)
    check_grads(("o", "dq", "dk", "dv"), got, (o64, *ref), sdpa_grads(q, k, v, do, causal, None), q.dtype)


@pytest.mark.points(1)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_flash_attention_autograd_with_scale(api, gen, device, causal):
    """A non-default sm_scale must reach the backward as well as the forward (the cases above use the
    default, which a backward falls back to when the scale is dropped on the way)."""
    sm_scale = 0.3
    q, k, v = qkv(1, 2, 24, 40, 32, torch.float32, device, gen)
    do = randn(q.shape, torch.float32, device, gen)
    got = graded_call(_forward_backward(api, causal, sm_scale), q, k, v, do, what="flash_attention forward + backward")
    o64, _, *ref = reference_grads(q, k, v, do, causal, sm_scale)
    check_grads(("o", "dq", "dk", "dv"), got, (o64, *ref), sdpa_grads(q, k, v, do, causal, sm_scale), q.dtype)


@pytest.mark.points(2)
def test_saves_no_n_by_n_tensor(api, gen, device):
    """What autograd keeps between the passes: q, k, v, o and lse, nothing of size Nq x Nk."""
    B, H, Nq, Nk, D = 1, 2, 48, 40, 16
    q, k, v = (t.requires_grad_() for t in qkv(B, H, Nq, Nk, D, torch.float32, device, gen))
    o = api.flash_attention(q, k, v, causal=True)
    node = o.grad_fn
    if node is None:
        raise AssertionError("flash_attention's output has no grad_fn: it must be differentiable")
    saved = tensors_in(list(node.saved_tensors) + list(vars(node).values()))
    allowed = 4 * B * H * max(Nq, Nk) * D * 4 + B * H * Nq * 4  # q, k, v, o and a float32 lse
    for t in saved:
        if t.numel() >= B * H * Nq * Nk or (Nq in t.shape and Nk in t.shape):
            raise AssertionError(f"flash_attention saves a tensor of shape {tuple(t.shape)} for the backward: "
                                 f"that is an Nq x Nk matrix ({Nq} x {Nk}); recompute P in the backward instead")
    total = sum(t.numel() * t.element_size() for t in saved)
    if total > allowed:
        raise AssertionError(f"flash_attention saves {total} bytes for the backward ({len(saved)} tensors); "
                             f"q, k, v, o and lse take {allowed}")
    do = randn((B, H, Nq, D), torch.float32, device, gen)
    got = (o.detach(), *torch.autograd.grad(o, (q, k, v), do))
    o64, _, *ref = reference_grads(q, k, v, do, True, None)
    check_grads(("o", "dq", "dk", "dv"), got, (o64, *ref), sdpa_grads(q, k, v, do, True, None), q.dtype)


# ---------------------------------------------------------------- end to end: a block that trains
class Block(torch.nn.Module):
    """A pre-norm transformer block (causal self-attention and an MLP) with pluggable attention."""

    def __init__(self, d_model, heads, attention):
        super().__init__()
        self.heads, self.attention = heads, attention
        self.ln1, self.ln2 = torch.nn.LayerNorm(d_model), torch.nn.LayerNorm(d_model)
        self.qkv = torch.nn.Linear(d_model, 3 * d_model)
        self.proj = torch.nn.Linear(d_model, d_model)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d_model, 4 * d_model), torch.nn.GELU(),
                                       torch.nn.Linear(4 * d_model, d_model))

    def forward(self, x):
        B, N, C = x.shape
        # (B, N, 3, H, D) -> three (B, H, N, D) views with non-unit strides, as in real models
        q, k, v = self.qkv(self.ln1(x)).view(B, N, 3, self.heads, C // self.heads).unbind(2)
        a = self.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + self.proj(a.transpose(1, 2).reshape(B, N, C))
        return x + self.mlp(self.ln2(x))


def _train(model, x, y, steps):
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.points(3)
def test_training_matches_sdpa(api, gen, device):
    """A small block trains for a few dozen steps; its loss curve must follow the same block on SDPA."""
    B, N, C, heads, steps = (4, 24, 32, 2, 25) if runtime.interpreting() else (8, 256, 256, 4, 40)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    sdpa_block = Block(C, heads, lambda q, k, v: numerics.sdpa(q, k, v, causal=True)).to(device)
    ours = copy.deepcopy(sdpa_block)
    ours.attention = lambda q, k, v: api.flash_attention(q, k, v, causal=True)
    # Synthetic task that needs attention: each token's target is the running mean of a projection
    # of the tokens up to it (a causal average), plus the token itself.
    x = randn((B, N, C), torch.float32, device, gen)
    w = randn((C, C), torch.float32, device, gen, scale=C ** -0.5)
    y = torch.cumsum(x @ w, dim=1) / torch.arange(1, N + 1, device=device)[:, None] + x
    theirs = _train(sdpa_block, x, y, steps)
    mine = _train(ours, x, y, steps)
    # float32 on both sides; tolerance covers TF32-free rounding differences compounding over Adam steps
    tol = 1e-3 if runtime.interpreting() else 2e-2
    for step, (a, b) in enumerate(zip(mine, theirs)):
        if not abs(a - b) <= tol * abs(b) + 1e-6:
            raise AssertionError(f"step {step}: loss {a:.6f} with flash_attention, {b:.6f} with SDPA "
                                 f"(relative difference {abs(a - b) / abs(b):.1e}, allowed {tol:.0e}); "
                                 f"losses so far {[round(z, 5) for z in mine[:step + 1]]}")
    if not mine[-1] < 0.7 * mine[0]:
        raise AssertionError(f"the block did not learn: loss {mine[0]:.4f} -> {mine[-1]:.4f} in {steps} steps")


# ---------------------------------------------------------------- compile tier
def _kernel_specs():
    cfg = impl.load_module(PHASE, "backward")
    ptr = lambda t: f"*{t}"
    stride3 = lambda p: [f"stride_{p}{s}" for s in "bhn"]
    specs = []
    # The Hopper tiles are compiled for sm_80 too (an error shows there as well) but launched, and so
    # held to the shared memory of one SM, on sm_90 only; older GPUs launch CONFIGS_SMALL, float32
    # everywhere launches CONFIG_FP32. D=16 and 32 use smaller tiles than these and run in the GPU tier.
    cases = [("bf16", D, c, cfg.CONFIGS_SM90[(D, c)], aot.ARCHS, (90,)) for D in (64, 128) for c in (False, True)]
    cases += [("fp16", 128, c, cfg.CONFIGS_SMALL[128], (80,), (80,)) for c in (False, True)]
    cases += [("fp32", 128, True, cfg.CONFIG_FP32, aot.ARCHS, None)]
    for t, D, causal, ((m1, n1, mm1, w1, s1), (m2, n2, mn2, w2, s2)), archs, runs_on in cases:
        precision = "ieee" if t == "fp32" else "tf32"
        label = f"{t}, D={D}, {'causal' if causal else 'not causal'}"
        sig = {"Q": ptr(t), "K": ptr(t), "V": ptr(t), "DO": ptr(t), "LSE2": "*fp32", "DELTA": "*fp32",
               "DK": ptr(t), "DV": ptr(t)}
        for p in ("q", "k", "v", "do", "dk", "dv"):
            sig.update({s: "i64" for s in stride3(p)})
        sig.update({"H": "i32", "N_Q": "i32", "N_K": "i32", "sm_scale": "fp32", "qk_scale": "fp32"})
        consts = {"HEAD_DIM": D, "BLOCK_M": m1, "BLOCK_N": n1, "MASK_BLOCK_M": mm1, "CAUSAL": causal,
                  "PRECISION": precision}
        sig.update({c: "constexpr" for c in consts})
        specs.append(aot.KernelSpec("backward", "bwd_dkdv_kernel", sig, consts, w1, s1,
                                    f"{label}, BLOCK_M={m1}, BLOCK_N={n1}, diagonal {mm1}", archs, runs_on))
        sig = {"Q": ptr(t), "K": ptr(t), "V": ptr(t), "DO": ptr(t), "LSE2": "*fp32", "DELTA": "*fp32", "DQ": ptr(t)}
        for p in ("q", "k", "v", "do", "dq"):
            sig.update({s: "i64" for s in stride3(p)})
        sig.update({"H": "i32", "N_Q": "i32", "N_K": "i32", "sm_scale": "fp32", "qk_scale": "fp32"})
        consts = {"HEAD_DIM": D, "BLOCK_M": m2, "BLOCK_N": n2, "MASK_BLOCK_N": mn2, "CAUSAL": causal,
                  "PRECISION": precision}
        sig.update({c: "constexpr" for c in consts})
        specs.append(aot.KernelSpec("backward", "bwd_dq_kernel", sig, consts, w2, s2,
                                    f"{label}, BLOCK_M={m2}, BLOCK_N={n2}, diagonal {mn2}", archs, runs_on))
    for t, D in (("bf16", 128),):
        sig = {"O": ptr(t), "DO": ptr(t), "LSE": "*fp32", "LSE2": "*fp32", "DELTA": "*fp32"}
        for p in ("o", "do", "l"):
            sig.update({s: "i64" for s in stride3(p)})
        sig.update({"H": "i32", "N_Q": "i32", "HEAD_DIM": "constexpr", "BLOCK_M": "constexpr"})
        specs.append(aot.KernelSpec("backward", "bwd_preprocess_kernel", sig,
                                    {"HEAD_DIM": D, "BLOCK_M": cfg.PRE_BLOCK}, 4, 1, f"{t}, D={D}"))
    return specs


@pytest.mark.points(2)
@pytest.mark.tier("compile")
def test_backward_kernels_compile(record_property):
    aot.assert_compiles(PHASE, _kernel_specs(), record_property)  # compiles on every core


# ---------------------------------------------------------------- GPU: memory and throughput
def _fwd_bwd_extra_bytes(api, gen, B, H, N, D):
    q, k, v = (t.requires_grad_() for t in qkv(B, H, N, N, D, torch.bfloat16, "cuda", gen))
    do = randn((B, H, N, D), torch.bfloat16, "cuda", gen)

    def step():
        o = api.flash_attention(q, k, v, causal=True)
        torch.autograd.grad(o, (q, k, v), do)
    step()  # warm-up: compile outside the measurement
    return timing.peak_extra_bytes(step)


@pytest.mark.points(2)
@pytest.mark.tier("gpu")
def test_memory_grows_linearly(api, gen):
    """Forward + backward at N and 4N: linear memory grows x4, a stored P would grow x16."""
    B, H, D = 1, 8, 64
    extra = {n: _fwd_bwd_extra_bytes(api, gen, B, H, n, D) for n in (4096, 16384)}
    ratio = extra[16384] / max(extra[4096], 1)
    p_bytes = cost.score_matrix_bytes(B, H, 16384, 16384, dtype_bytes=2)
    if ratio > 6 or extra[16384] > p_bytes / 4:
        raise AssertionError(f"forward + backward takes {extra[4096] / 2**20:.0f} MiB beyond its inputs at N=4096 "
                             f"and {extra[16384] / 2**20:.0f} MiB at N=16384 (x{ratio:.1f}): linear memory grows "
                             f"x4; one bf16 P at N=16384 is {p_bytes / 2**20:.0f} MiB")


def _o_lse(q, k, v, causal):
    """o (SDPA, the inputs' dtype) and lse (float32), one batch entry at a time: no float64 N x N."""
    o = numerics.sdpa(q, k, v, causal)
    return o, torch.stack([numerics.scores_logsumexp(q[b].float(), k[b].float(), causal) for b in range(q.shape[0])])


@pytest.mark.points(2)
@pytest.mark.tier("throughput")
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_backward_throughput(api, gen, record_property, D, causal):
    B, H, N, _ = bench.standard_shape(4096, D)
    q, k, v = qkv(B, H, N, N, D, torch.bfloat16, "cuda", gen)
    do = randn((B, H, N, D), torch.bfloat16, "cuda", gen)
    o, lse = _o_lse(q, k, v, causal)
    small = (t[:1, :2, :512] for t in (q, k, v, do))  # correct first, on a slice
    check_backward(api, *small, causal=causal)
    row = bench.measure(timed(lambda: api.flash_attention_backward(do, q, k, v, o, lse, causal=causal), do, q, k, v),
                        q, k, v, causal, mode="bwd", baselines=("flash",))
    record_property("throughput", {**row, "required_ratio": 0.4, "summary": bench.describe(row) + " (needs 0.40x)"})
    bench.assert_ratio(row, 0.4)
