"""What the lessons say about the grader and the kernels agrees with them (issue 21, item 6).

Facts a lesson states about the grader's cases are read from the grader; statements found false once
are listed with the reason, so that they do not come back."""
import re

import pytest

from grader.impl import ROOT

EXERCISES = ROOT / "exercises"

# (phase, a statement found false, why it is false)
FALSE_STATEMENTS = [
    (3, "simply runs everything in the hot loop",
     "with Nk no multiple of BLOCK_N the partial last key block still runs in the masked loop (the tail mask)"),
    (3, "run entirely in the hot loop",
     "with Nk no multiple of BLOCK_N the partial last key block still runs in the masked loop (the tail mask)"),
    (3, "keys $j \\ge N_q$ hold NaN (only skipping",
     "with a partial last query block, `end` = min((m+1) BLOCK_M, Nk) reaches past Nq: the diagonal block loads"
     " keys j >= Nq (masked); only blocks past `end` are skipped"),
]


def _lesson(phase: int) -> str:
    return " ".join((EXERCISES / f"phase{phase}" / "README.md").read_text().split())  # lines joined


@pytest.mark.parametrize("phase, statement, why", FALSE_STATEMENTS, ids=[f"phase{p}-{s[:30]}" for p, s, _ in
                                                                          FALSE_STATEMENTS])
def test_a_statement_found_false_stays_out(phase, statement, why):
    assert " ".join(statement.split()) not in _lesson(phase), f"phase {phase}'s lesson says {statement!r}: {why}"


def _widths(marks_gpu: bool) -> list[int]:
    from grader.phases import test_phase2

    return [param.values[0][-1] for param in test_phase2.SOFTMAX_CASES
            if any(m.name == "tier" and m.args == ("gpu",) for m in param.marks) == marks_gpu]


def test_phase2_softmax_widths_are_the_graders():
    """Every "width(s) 1 to N" of Phase 2's lesson is the widest row of the interpreter's cases, or the
    widest of the GPU's said to be on a GPU."""
    interpreter, gpu = max(_widths(False)), max(_widths(True))
    lesson = _lesson(2)
    claims = [(int((m.group(1) or m.group(2)).replace(",", "")), lesson[max(0, m.start() - 40):m.end() + 40])
              for m in re.finditer(r"widths? 1 to ([\d,]+)|rows of width up to ([\d,]+)", lesson)]
    assert claims, "the lesson states no widths: this test reads nothing"
    for width, context in claims:
        if width == gpu:
            assert "GPU" in context, f"the lesson says {context!r}: width {width} is graded on a GPU only"
        else:
            assert width == interpreter, (f"the lesson says {context!r}; the interpreter's widest row is {interpreter},"
                                          f" the GPU's {gpu}")
