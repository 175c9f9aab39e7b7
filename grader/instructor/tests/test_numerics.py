"""The graders' float64 truth (grader/numerics.py: SDPA's math backend, and a separate logsumexp)
checked once against the explicit formula softmax(q k^T * sm_scale) v, values and gradients.

The formula lives here, in the course's own tests, because the shipped grader must not spell out
Phase 0's answer (`make release` checks that no line of it appears in a student copy).
"""
import pytest
import torch

from grader import numerics


def explicit_attention(q, k, v, causal, sm_scale, visible=None, keep=None, p=0.0):
    """softmax(q k^T * sm_scale) v and the logsumexp of each row, masking keys j > i when causal and
    where `visible` is False (a row that sees nothing: o = 0), keeping the probabilities where `keep`
    is True, scaled by 1 / (1 - p); k and v with fewer heads serve consecutive groups of q's heads."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
    s = torch.matmul(q, k.transpose(-2, -1)) * scale
    hidden = torch.zeros(s.shape, dtype=torch.bool)
    if causal:
        hidden |= torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).triu(1)
    if visible is not None:
        hidden |= ~visible
    s = s.masked_fill(hidden, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    prob = torch.exp(s - lse[..., None]).nan_to_num(0.0)  # a row with no key: 0, not NaN
    if keep is not None:
        prob = prob * keep / (1 - p)
    return torch.matmul(prob, v), lse


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


def _inputs(seed, B, H, H_kv, Nq, Nk, D):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Nq, D, generator=gen, dtype=torch.float64).requires_grad_()
    k, v = (torch.randn(B, H_kv, Nk, D, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2))
    return gen, q, k, v, torch.randn(B, H, Nq, D, generator=gen, dtype=torch.float64)


def _same(options, explicit, q, k, v, do, causal=False, sm_scale=None):
    """reference_attention and reference_gradients with `options` against the explicit formula."""
    o, lse = numerics.reference_attention(q, k, v, causal, sm_scale, **options)
    o_ref, lse_ref = explicit
    torch.testing.assert_close(o, o_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, lse_ref, rtol=1e-12, atol=1e-12)
    _, _, *grads = numerics.reference_gradients(q, k, v, do, causal, sm_scale, **options)
    for g, g_ref in zip(grads, torch.autograd.grad(o_ref, (q, k, v), do)):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [False, True])
def test_reference_with_grouped_query_heads(causal):
    _, q, k, v, do = _inputs(1, 2, 6, 2, 13, 21, 16)
    _same({}, explicit_attention(q, k, v, causal, None), q, k, v, do, causal)
    with pytest.raises(ValueError, match="6 query heads cannot share 4"):
        numerics.reference_attention(q, torch.randn(2, 4, 21, 16), torch.randn(2, 4, 21, 16))


@pytest.mark.parametrize("causal", [False, True])
def test_reference_with_a_mask_of_visible_keys(causal):
    """A sliding window (keys i-3..i+2) on a rectangle, one row that sees no key at all."""
    _, q, k, v, do = _inputs(2, 1, 2, 2, 17, 25, 32)
    i, j = torch.arange(17)[:, None], torch.arange(25)[None, :]
    visible = (j >= i - 3) & (j <= i + 2)
    visible[5] = False
    _same({"visible": visible}, explicit_attention(q, k, v, causal, 0.5, visible), q, k, v, do, causal, 0.5)
    o, lse = numerics.reference_attention(q, k, v, causal, 0.5, visible=visible)
    assert (o[:, :, 5] == 0).all() and (lse[:, :, 5] == float("-inf")).all()


@pytest.mark.parametrize("causal", [False, True])
def test_reference_with_dropout(causal):
    gen, q, k, v, do = _inputs(3, 2, 4, 2, 19, 19, 16)
    keep = torch.rand(2, 4, 19, 19, generator=gen) > 0.3
    _same({"dropout_mask": keep, "dropout_p": 0.3}, explicit_attention(q, k, v, causal, None, keep=keep, p=0.3),
          q, k, v, do, causal)
