"""The graders' float64 truth (grader/numerics.py: SDPA's math backend, and a separate logsumexp)
checked once against the explicit formula softmax(q k^T * sm_scale) v, values and gradients.

The formula lives here, in the course's own tests, because the shipped grader must not spell out
Phase 0's answer (`make release` checks that no line of it appears in a student copy).
"""
import pytest
import torch

from grader import numerics


def explicit_attention(q, k, v, causal, sm_scale):
    """softmax(q k^T * sm_scale) v and the logsumexp of each row, masking keys j > i when causal."""
    scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
    s = torch.matmul(q, k.transpose(-2, -1)) * scale
    if causal:
        hidden = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).triu(1)
        s = s.masked_fill(hidden, float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1), v), torch.logsumexp(s, dim=-1)


@pytest.mark.parametrize("Nq, Nk, causal, sm_scale", [
    (17, 33, False, None), (33, 17, True, None), (20, 45, True, 0.3), (40, 40, True, 30.0), (1, 70, True, None),
])
def test_reference_is_the_explicit_formula(Nq, Nk, causal, sm_scale):
    gen = torch.Generator().manual_seed(Nq * 1000 + Nk)
    q, k, v = (torch.randn(2, 3, n, 32, generator=gen, dtype=torch.float64).requires_grad_() for n in (Nq, Nk, Nk))
    do = torch.randn(2, 3, Nq, 32, generator=gen, dtype=torch.float64)
    o, lse = numerics.reference_attention(q, k, v, causal, sm_scale)
    o_ref, lse_ref = explicit_attention(q, k, v, causal, sm_scale)
    assert o.dtype == lse.dtype == torch.float64
    torch.testing.assert_close(o, o_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, lse_ref, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(o, (q, k, v), do)
    grads_ref = torch.autograd.grad(o_ref, (q, k, v), do)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


def test_reference_from_low_precision_inputs_is_float64():
    q, k, v = (torch.randn(1, 2, 9, 16).half() for _ in range(3))
    o, lse = numerics.reference_attention(q, k, v, causal=True)
    o_ref, lse_ref = explicit_attention(*(t.double() for t in (q, k, v)), True, None)
    assert o.dtype == torch.float64
    torch.testing.assert_close(o, o_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, lse_ref, rtol=1e-12, atol=1e-12)
