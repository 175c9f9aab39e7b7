"""Phase 7's reference (grader/variants.py) and load recorder (grader/footprint.py), checked once.

- Without a window, a cap or grouped heads, the variants' float64 reference is exactly the earlier
  phases' (SDPA's math backend), values and gradients; the mask is the definition of the band, pair by
  pair (its two causal alignments are PyTorch's causal_upper_left and causal_lower_right); grouped heads
  equal K/V repeated by hand; an empty row gives o = 0, lse = -inf, finite gradients.
- The footprint recorder sees which rows each program loads, and `band_violation` flags a program that
  loads keys far outside its band (a kernel that masks instead of skipping), not one that stays inside.
"""
import os
import subprocess
import sys

import pytest
import torch

from grader import numerics, variants
from grader.impl import ROOT


@pytest.mark.parametrize("Nq, Nk, causal", [(17, 33, False), (33, 17, True), (40, 40, True)])
def test_reference_without_options_is_the_earlier_phases(Nq, Nk, causal):
    gen = torch.Generator().manual_seed(Nq + Nk)
    q, k, v = (torch.randn(2, 3, n, 16, generator=gen, dtype=torch.float64).requires_grad_() for n in (Nq, Nk, Nk))
    do = torch.randn(2, 3, Nq, 16, generator=gen, dtype=torch.float64)
    o, lse = variants.reference(q, k, v, variants.visible(Nq, Nk, causal))
    ref_o, ref_lse = numerics.reference_attention(q, k, v, causal)
    assert torch.allclose(o, ref_o, atol=1e-12) and torch.allclose(lse, ref_lse, atol=1e-12)
    grads = torch.autograd.grad(o, (q, k, v), do)
    ref_grads = torch.autograd.grad(ref_o, (q, k, v), do)
    assert all(torch.allclose(a, b, atol=1e-11) for a, b in zip(grads, ref_grads))


def test_band_is_the_definition():
    for n_q, n_k, causal, window in [(9, 13, False, (2, 3)), (13, 9, True, (4, -1)), (7, 7, False, (-1, 0)),
                                     (8, 5, False, (0, 0)), (6, 11, True, None)]:
        mask = variants.visible(n_q, n_k, causal, window)
        left, right = window or (-1, -1)
        right = 0 if causal else right
        for i in range(n_q):
            for j in range(n_k):
                expected = (left < 0 or j >= i - left) and (right < 0 or j <= i + right)
                assert bool(mask[i, j]) == expected, (n_q, n_k, causal, window, i, j)


@pytest.mark.parametrize("n_q, n_k", [(3, 7), (7, 3), (5, 5), (1, 9)])
def test_alignments_are_pytorchs(n_q, n_k):
    """Causal top-left is PyTorch's causal_upper_left (SDPA's is_causal), bottom-right its causal_lower_right
    (flash-attn's); a bottom-right window is the top-left one moved right by n_k - n_q."""
    from torch.nn.attention.bias import causal_lower_right, causal_upper_left
    assert torch.equal(variants.visible(n_q, n_k, True), causal_upper_left(n_q, n_k)._materialize())
    assert torch.equal(variants.visible(n_q, n_k, True, alignment="bottom-right"),
                       causal_lower_right(n_q, n_k)._materialize())
    for window in [(2, 1), (-1, 3), (0, -1)]:
        shifted = variants.visible(n_q, n_k, False, window, alignment="bottom-right")
        for i in range(n_q):
            p = i + n_k - n_q
            expected = [(window[0] < 0 or j >= p - window[0]) and (window[1] < 0 or j <= p + window[1])
                        for j in range(n_k)]
            assert shifted[i].tolist() == expected, (n_q, n_k, window, i)
    with pytest.raises(ValueError, match="alignment"):
        variants.visible(n_q, n_k, True, alignment="lower-right")


def test_grouped_heads_and_empty_rows():
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(1, 4, 12, 8, generator=gen, dtype=torch.float64).requires_grad_()
    k, v = (torch.randn(1, 2, 6, 8, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2))
    mask = variants.visible(12, 6, False, (1, 1))  # rows 7.. see no key
    o, lse = variants.reference(q, k, v, mask)
    kr, vr = (t.repeat_interleave(2, dim=1) for t in (k, v))  # head h reads K/V head h // 2
    o2, lse2 = variants.reference(q, kr, vr, mask)
    assert torch.equal(o, o2) and torch.equal(lse, lse2)
    assert (o[:, :, 7:] == 0).all() and (lse[:, :, 7:] == float("-inf")).all() and torch.isfinite(lse[:, :, :7]).all()
    grads = torch.autograd.grad(o.sum(), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads) and (grads[0][:, :, 7:] == 0).all()


RECORDER = r"""
from grader import runtime; runtime.configure()
import torch, triton, triton.language as tl
from grader import footprint

@triton.jit
def band_sum(Q, K, O, N, LEFT, SKIP: tl.constexpr, BLOCK: tl.constexpr):
    start = tl.program_id(0) * BLOCK
    rows = start + tl.arange(0, BLOCK)
    q = tl.load(Q + rows, mask=rows < N, other=0.0)
    lo = tl.maximum(start - LEFT, 0) // BLOCK * BLOCK if SKIP else 0
    acc = tl.zeros([BLOCK], tl.float32)
    for j in range(lo, start + BLOCK, BLOCK):
        cols = j + tl.arange(0, BLOCK)
        k = tl.load(K + cols, mask=cols < N, other=0.0)
        ok = (cols[None, :] >= rows[:, None] - LEFT) & (cols[None, :] <= rows[:, None])
        acc += tl.sum(tl.where(ok, q[:, None] * k[None, :], 0.0), 1)
    tl.store(O + rows, acc, mask=rows < N)

N, LEFT = 512, 8
q, k = (torch.randn(1, 1, N, 1) for _ in range(2))
for skip in (True, False):
    with footprint.record_loads(q=q, k=k) as fp:
        band_sum[(N // 16,)](q, k, torch.empty(N), N, LEFT, SKIP=skip, BLOCK=16)
    problem = footprint.band_violation(fp, LEFT, 0, slack=32)
    print(skip, len(fp.programs), problem is None, fp.loaded("k"))
"""


def test_footprint_tells_skipping_from_masking():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", RECORDER], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    skipping, masking = proc.stdout.strip().splitlines()[-2:]
    assert skipping == "True 32 True True"  # every program recorded, all inside the band
    assert masking == "False 32 False True"  # programs that start at key 0 are far outside it
