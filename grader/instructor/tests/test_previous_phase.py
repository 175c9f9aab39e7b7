"""Each phase's grader grades that phase's work: the previous phase's solution, renamed, fails it.

A student who skips a phase can hand in the previous phase's code under the new phase's names. Where
the API allows it, each case below builds that submission from the reference solutions (copied whole,
so that the phases import each other relatively, as in a student's tree), grades it with the next
phase's grader on the CPU tiers, and requires every chosen test to fail with a message that names what
is missing. Only the tests that tell the phases apart are graded, to keep this quick.
"""
import pytest

from grader.instructor.tests import submissions

PHASE5_LACKS = "Phase 5's work is its own forward kernel"

# name -> (phase graded, {file: new content}, {test node id (short name): words its failure must contain})
RENAMED = {
    # Phase 3's forward and Phase 4's autograd function and backward under Phase 5's names.
    "phase4-as-phase5": (5, {"phase5/__init__.py": (
        "from ..phase3 import flash_attention_forward\n"
        "from ..phase4 import flash_attention, flash_attention_backward\n")},
        {"runs_phase5_forward_kernel[flash_attention_forward]": ("`_attn_fwd` of", ".phase3.forward", PHASE5_LACKS),
         "runs_phase5_forward_kernel[flash_attention]": ("`_attn_fwd` of", ".phase3.forward", PHASE5_LACKS)}),
    # The issue's submission: Phase 5's files all there (the tuned kernel kept for the ablation), but the
    # graded names bound to Phase 3's forward and Phase 4's autograd function.
    "phase5-grading-phase3-kernels": (5, {"phase5/__init__.py": (
        "from ..phase3 import flash_attention_forward\n"
        "from ..phase4.attention import FlashAttentionFunction, flash_attention\n"
        "from .backward import flash_attention_backward\n"
        "from .forward import Config, Switches, fits, forward\n")},
        {"runs_phase5_forward_kernel[flash_attention_forward]": ("`_attn_fwd` of", PHASE5_LACKS),
         "runs_phase5_forward_kernel[flash_attention]": ("`_attn_fwd` of", PHASE5_LACKS)}),
    # Phase 5's autograd function under Phase 6's name: no dropout, no variable lengths.
    "phase5-as-phase6": (6, {"phase6/__init__.py": "from ..phase5 import flash_attention\n"},
                         {"same_seed_same_result_other_seed_other_mask": ("dropout_p",),
                          "varlen_max_seqlen_larger_than_needed": ("flash_attention_varlen",)}),
    # Phase 6's autograd function (and Phase 5's forward and backward, which Phase 6 does not export)
    # under Phase 7's names: no window (every forward and backward case of Phase 7 passes one), no decoding.
    "phase6-as-phase7": (7, {"phase7/__init__.py": "from ..phase5 import flash_attention_backward, "
                                                   "flash_attention_forward\nfrom ..phase6 import flash_attention\n"},
                         {"forward_skips_blocks_outside_window": ("window",),
                          "decode_reads_nothing_past_seqlen": ("flash_decode",)}),
}
# Where a renamed submission cannot even be written, the grader fails it by construction.
NOT_EXPRESSIBLE = {
    "phase2-as-phase3": "Phase 2 has no logsumexp and no causal mask: nothing of it has Phase 3's "
                        "flash_attention_forward -> (o, lse) contract to rename",
    "phase3-as-phase4": "Phase 3 has no backward: nothing of it can stand for Phase 4's flash_attention_backward, "
                        "whose every test then fails on the missing name",
}


def _test_file(phase: int) -> str:
    return f"grader/phases/test_phase{phase}.py"


@pytest.mark.parametrize("name", list(RENAMED))
def test_the_previous_phase_renamed_fails(tmp_path, name):
    phase, files, expected = RENAMED[name]
    folder = submissions.make(tmp_path, name)
    for path, text in files.items():
        (folder / path).write_text(text)
    tests = sorted({short.split("[")[0] for short in expected})
    args = [arg for test in tests for arg in ("--tests", f"{_test_file(phase)}::test_{test}")]
    proc, report, rows = submissions.grade(folder, phase, *args)
    assert report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    for short, words in expected.items():
        row = rows.get(short)
        assert row is not None, (short, sorted(rows))
        assert row["outcome"] == "failed", (short, row)
        missing = [w for w in words if w not in row["message"]]
        assert not missing, f"{short}: the message does not say {missing}: {row['message']}"
    assert proc.returncode != 0


@pytest.mark.parametrize("phase", sorted({phase for phase, _, _ in RENAMED.values()}))
def test_the_reference_passes_the_same_tests(tmp_path, phase):
    """The control: the tests chosen above fail the renamed submissions, not every submission."""
    tests = sorted({short.split("[")[0] for p, _, expected in RENAMED.values() if p == phase for short in expected})
    args = [arg for test in tests for arg in ("--tests", f"{_test_file(phase)}::test_{test}")]
    proc, report, rows = submissions.grade(submissions.make(tmp_path, "reference"), phase, *args)
    assert report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert rows and all(row["outcome"] == "passed" for row in rows.values()), \
        {name: (row["outcome"], row["message"][:200]) for name, row in rows.items()}


@pytest.mark.parametrize("name", list(NOT_EXPRESSIBLE))
def test_where_the_api_does_not_allow_a_renamed_submission(name):
    pytest.skip(NOT_EXPRESSIBLE[name])
