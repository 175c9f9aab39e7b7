"""The diagnosis names the condition a wrong forward follows (issue 21, the diagnosis step): the classic
bugs, written as a blockwise online softmax in PyTorch, each get the line of their own condition."""
import pytest
import torch

from grader import diagnosis

BLOCK_N = 64


def blockwise(rescale=True, mask_tail=True, subtract_max=True, causal_shift=0, fp32_p=False, block_n=BLOCK_N,
              block_max_only=False):
    """A forward as a Triton kernel computes it (key blocks of BLOCK_N, padded with zeros, exp2 of
    log2-scaled scores), with one classic bug switched on by each argument."""
    BLOCK_N = block_n

    def forward(q, k, v, causal, sm_scale):
        Nq, Nk, D = q.shape[-2], k.shape[-2], q.shape[-1]
        qk_scale = (sm_scale if sm_scale is not None else D ** -0.5) * 1.4426950408889634
        padded = -(-Nk // BLOCK_N) * BLOCK_N
        kp = torch.zeros(*k.shape[:-2], padded, D, dtype=torch.float32)
        vp = torch.zeros_like(kp)
        kp[..., :Nk, :], vp[..., :Nk, :] = k.float(), v.float()
        m = torch.full((*q.shape[:-1],), float("-inf"))
        l, acc = torch.zeros_like(m), torch.zeros(*q.shape[:-1], D)
        rows = torch.arange(Nq)[:, None]
        for start in range(0, padded, BLOCK_N):
            s = (q.float() @ kp[..., start:start + BLOCK_N, :].transpose(-2, -1)) * qk_scale
            keys = start + torch.arange(BLOCK_N)[None, :]
            visible = keys < Nk if mask_tail else torch.ones_like(keys, dtype=torch.bool)
            if causal:
                visible = visible & (keys <= rows + causal_shift)
            s = s.masked_fill(~visible, float("-inf"))
            m_new = torch.maximum(m, s.amax(-1)) if subtract_max else torch.zeros_like(m)
            if block_max_only:  # each block's own max (a block with every key masked keeps the old one)
                m_new = torch.where(torch.isinf(s.amax(-1)), m, s.amax(-1))
            p = torch.exp2(s - m_new[..., None])
            alpha = torch.exp2(m - m_new) if rescale else torch.ones_like(m)
            alpha = torch.nan_to_num(alpha, nan=0.0)  # the first block: m = -inf
            p_v = p if fp32_p else p.to(v.dtype).float()
            l = alpha * l + p.sum(-1)
            acc = alpha[..., None] * acc + p_v @ vp[..., start:start + BLOCK_N, :]
            m = m_new
        return (acc / l[..., None]).to(q.dtype)
    return forward


@pytest.mark.parametrize("bug, causal, dtype, expect", [
    ({"rescale": False}, False, torch.float32, "more than one block"),
    ({"mask_tail": False}, False, torch.float32, "no multiple of the key block"),
    ({"subtract_max": False}, False, torch.float32, "shifted by a large constant"),
    ({"causal_shift": 1}, True, torch.float32, "under the causal mask (Nq = Nk"),
], ids=["no-rescale", "no-tail-mask", "no-running-max", "causal-off-by-one"])
def test_each_classic_bug_gets_its_condition(bug, causal, dtype, expect):
    line = diagnosis.diagnose(blockwise(**bug), causal=causal, dtype=dtype)
    assert line.startswith("diagnosis: wrong only") and expect in line, line


@pytest.mark.parametrize("block_n", [16, 128])
@pytest.mark.parametrize("bug, expect", [({"rescale": False}, "more than one block"),
                                         ({"mask_tail": False}, "no multiple of the key block")],
                         ids=["no-rescale", "no-tail-mask"])
def test_the_key_bugs_are_told_apart_whatever_the_block(bug, expect, block_n):
    line = diagnosis.diagnose(blockwise(**bug, block_n=block_n))
    assert expect in line, line


def test_a_right_forward_passes_every_probe():
    right = blockwise()
    for probe in diagnosis.probes_for(True, torch.float16):
        assert not diagnosis.fails(right, probe, torch.float16, "cpu"), probe.name
    assert "every probe passes" in diagnosis.diagnose(right, causal=True, dtype=torch.float16)


def test_a_forward_that_ignores_the_scale_is_named():
    def no_scale(q, k, v, causal, sm_scale):
        return blockwise()(q, k, v, causal, None)
    assert "custom sm_scale" in diagnosis.diagnose(no_scale)


# ---------------------------------------------------------------- wired into the graders of Phases 2 and 3
def _mutant_edits(name):
    from grader.instructor.mutants import catalogue

    mutant = next(m for m in catalogue() if m.name == name)
    return {mutant.file: list(mutant.patches)}


@pytest.mark.parametrize("phase, mutant, case, expect", [
    (2, "p2-flash-no-acc-rescale", "flash_attention_v1 and Nq40-Nk200", "more than one block"),
    (2, "p2-flash-tail-keys-unmasked", "flash_attention_v1 and Nq17-Nk33", "no multiple of the key block"),
    (3, "p3-no-acc-rescale", "test_forward and mixed-layouts", "more than one block"),
])
def test_a_failing_case_carries_the_diagnosis(tmp_path, phase, mutant, case, expect):
    from grader.instructor.tests import submissions

    folder = submissions.make(tmp_path, mutant, edits=_mutant_edits(mutant))
    proc, report, rows = submissions.grade(folder, phase, "-k", case)
    assert report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    failed = [row for row in rows.values() if row["outcome"] == "failed"]
    assert failed, rows
    for row in failed:
        assert row["message"].startswith("o: ") and "| diagnosis: wrong only when" in row["message"], row["message"]
        assert expect in row["message"], row["message"]


def test_a_max_that_is_not_running_is_named():
    """m = each block's own max: exact algebra, but alpha = exp2(m_old - m_new) > 1 overflows when scores
    fall by hundreds from block to block."""
    def block_max_only(q, k, v, causal, sm_scale):
        return blockwise(block_max_only=True)(q, k, v, causal, sm_scale)
    assert "fall by hundreds" in diagnosis.diagnose(block_max_only)
