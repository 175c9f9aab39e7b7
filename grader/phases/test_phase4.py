"""Grader for Phase 4: the backward pass with recomputation, and attention as an autograd function.

The backward is graded on its own work: it gets `o` and `lse` from the float64 reference, so a
phase-3 mistake costs no points here. The autograd function, the saved-tensor check and the
training run use the student's own phase-3 forward: they are the integration.
"""
import copy

import pytest
import torch

from grader import aot, bench, cost, numerics, remote, runtime, timing
from grader.checks import (AUTOGRAD_CASES, BACKWARD_CASES, check_autograd, check_backward,
                           check_backward_negative_logits, check_saves_no_n_by_n_tensor, o_lse,
                           refuses_bad_backward_input, upstream)
from grader.honesty import timed
from grader.inputs import FLOAT, qkv, randn

PHASE = 4
gpu = pytest.mark.tier("gpu")


# ---------------------------------------------------------------- flash_attention_backward


@pytest.mark.points(1)
@pytest.mark.parametrize("B, H, Nq, Nk, D, causal, dtype, sm_scale, layout, do_layout", BACKWARD_CASES)
def test_backward(api, gen, device, B, H, Nq, Nk, D, causal, dtype, sm_scale, layout, do_layout):
    q, k, v = qkv(B, H, Nq, Nk, D, FLOAT[dtype], device, gen, layout)
    do = upstream((B, H, Nq, D), FLOAT[dtype], device, gen, do_layout)
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
def test_backward_strongly_negative_logits(api, gen, device):
    """lse < -88 and a partial last key block: the padded keys of the dQ kernel must be masked."""
    check_backward_negative_logits(api, gen, device)


@pytest.mark.points(1)
def test_backward_refuses_bad_input(api, gen, device):
    refuses_bad_backward_input(api.flash_attention_backward, gen, device)


# ---------------------------------------------------------------- flash_attention (autograd)


@pytest.mark.points(2)
@pytest.mark.parametrize("B, H, Nq, Nk, D, causal, dtype, layout", AUTOGRAD_CASES)
def test_flash_attention_autograd(api, gen, device, B, H, Nq, Nk, D, causal, dtype, layout):
    q, k, v = qkv(B, H, Nq, Nk, D, FLOAT[dtype], device, gen, layout)
    do = upstream((B, H, Nq, D), FLOAT[dtype], device, gen, layout)
    check_autograd(api, q, k, v, do, causal)


@pytest.mark.points(1)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_flash_attention_autograd_with_scale(api, gen, device, causal):
    """A non-default sm_scale must reach the backward as well as the forward (the cases above use the
    default, which a backward falls back to when the scale is dropped on the way)."""
    sm_scale = 0.3
    q, k, v = qkv(1, 2, 24, 40, 32, torch.float32, device, gen)
    do = randn(q.shape, torch.float32, device, gen)
    check_autograd(api, q, k, v, do, causal, sm_scale)


@pytest.mark.points(2)
def test_saves_no_n_by_n_tensor(api, gen, device):
    check_saves_no_n_by_n_tensor(api, gen, device)


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
    cfg = remote.load_module(PHASE, "backward")
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


@pytest.mark.points(2)
@pytest.mark.tier("throughput")
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_backward_throughput(api, gen, record_property, D, causal):
    B, H, N, _ = bench.standard_shape(4096, D)
    q, k, v = qkv(B, H, N, N, D, torch.bfloat16, "cuda", gen)
    do = randn((B, H, N, D), torch.bfloat16, "cuda", gen)
    o, lse = o_lse(q, k, v, causal)
    small = (t[:1, :2, :512] for t in (q, k, v, do))  # correct first, on a slice
    check_backward(api, *small, causal=causal)
    row = bench.measure(timed(lambda: api.flash_attention_backward(do, q, k, v, o, lse, causal=causal), do, q, k, v),
                        q, k, v, causal, mode="bwd", baselines=("flash",))
    record_property("throughput", {**row, "required_ratio": 0.4, "summary": bench.describe(row) + " (needs 0.40x)"})
    bench.assert_ratio(row, 0.4)
