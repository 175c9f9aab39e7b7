"""The mutation suite's own machinery (`make mutants` grades the mutants; `make test` runs it):
every patch applies to today's solutions, and a patch that does not fails loudly."""
import subprocess
import sys

import pytest

from grader.impl import ROOT
from grader.instructor.mutants import Mutant, PatchError, build_copy, catalogue, check_catalogue, patched

SOURCE = "def f(x):\n    y = x * 2\n    return y\n"


def test_the_catalogue_applies_to_the_solutions():
    mutants = catalogue()
    assert len(mutants) >= 40 and {m.phase for m in mutants} >= {0, 1, 2, 3, 4}
    assert check_catalogue(mutants) == []


@pytest.mark.parametrize("old, new, message", [
    ("y = x * 3", "y = x", "occurs 0 times"),      # the solution changed under the mutant
    ("y", "z", "occurs 2 times"),                  # ambiguous: which one?
    ("    return y\n", "    return (y\n", "not valid Python"),
    ("y = x * 2", "y = x * 2", "changes nothing"),
])
def test_a_stale_or_broken_patch_fails_loudly(old, new, message):
    with pytest.raises(PatchError, match=message):
        patched(SOURCE, Mutant("m", "phase0/f.py", ((old, new),), "a bug"))


def test_a_copy_holds_the_phases_up_to_the_mutants_with_one_file_changed(tmp_path):
    m = catalogue({1})[0]
    copy = build_copy(m, m.phase, tmp_path / "copy")
    assert sorted(p.name for p in copy.glob("phase*")) == ["phase0", "phase1"]
    original, mutated = (ROOT / "solutions" / m.file).read_text(), (copy / m.file).read_text()
    assert mutated != original and mutated == patched(original, m)


def test_make_mutants_stops_before_grading_when_a_patch_is_stale():
    code = ("import sys; from grader.instructor.mutants import run, Mutant; import grader.instructor.mutants as g; "
            "g.catalogue = lambda phases=None: [Mutant('stale', 'phase0/cost.py', (('no such line', 'x'),), 'b')]; "
            "run.catalogue = g.catalogue; sys.exit(run.main([]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no longer matches solutions/" in proc.stderr and "stale" in proc.stderr
    assert "control" not in proc.stdout  # nothing was graded
