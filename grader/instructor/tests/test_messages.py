"""Messages that name the bug (issue 21, item 7): small wrong implementations, in PyTorch, fed to the
graders' own check helpers."""
import math

import pytest
import torch

from grader import numerics


def _qkv_do(Nq=24, Nk=24, D=16, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, n, D, generator=gen, dtype=torch.float32).to(dtype) for n in (Nq, Nk, Nk, Nq)]


def _message(check) -> str:
    with pytest.raises(AssertionError) as caught:
        check()
    return str(caught.value)


def test_a_causal_off_by_one_in_the_dkdv_kernel_names_dk_and_dv():
    """The dK/dV kernel lets each key see one query too many (key j <= i + 1); the dQ kernel is right.
    The message names both wrong gradients, and dq as right, so the student knows which kernel."""
    from grader import checks as test_phase4

    q, k, v, do = _qkv_do()
    _, _, *ref = numerics.reference_gradients(q, k, v, do, causal=True)
    one_too_many = torch.arange(24)[None, :] <= torch.arange(24)[:, None] + 1
    _, _, _, dk_off, dv_off = numerics.reference_gradients(q, k, v, do, visible=one_too_many)
    got = (ref[0].float(), dk_off.float(), dv_off.float())
    baseline = numerics.sdpa_gradients(q, k, v, do, causal=True)[1:]
    message = _message(lambda: test_phase4.check_grads(("dq", "dk", "dv"), got, ref, baseline, torch.float32))
    assert message.startswith("wrong: dk, dv; right: dq."), message
    assert "dk: max |error|" in message and "dv: max |error|" in message, message
    test_phase4.check_grads(("dq", "dk", "dv"), tuple(r.float() for r in ref), ref, baseline, torch.float32)


def test_an_lse_in_base_2_says_so():
    from grader import checks as test_phase3

    q, k, _, _ = _qkv_do(Nq=20, Nk=33)
    lse = numerics.scores_logsumexp(q.double(), k.double())
    base2 = (lse * math.log2(math.e)).float()
    message = _message(lambda: test_phase3.check_lse(base2, q, k, False, None, lse))
    assert "got / expected = log2(e)" in message and "natural log" in message, message
    off = (lse + 0.5).float()  # wrong, but by no factor: no such claim
    assert "got / expected" not in _message(lambda: test_phase3.check_lse(off, q, k, False, None, lse))
