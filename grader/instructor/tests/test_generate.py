"""The exercise generator: stubs that fail clearly, a stale check, and no lost student work."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from grader.instructor import generate
from grader.impl import ROOT

SOLUTION = textwrap.dedent('''\
    import triton
    import triton.language as tl


    @triton.jit
    def double_kernel(x_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        # TODO(phase 9): load x, double it, store it back
        ### BEGIN SOLUTION
        tl.store(x_ptr + offs, tl.load(x_ptr + offs) * 2)
        ### END SOLUTION


    def double(x):
        # TODO(phase 9): launch double_kernel on one program
        ### BEGIN SOLUTION
        double_kernel[(1,)](x, BLOCK=x.numel())
        ### END SOLUTION
        return x
''')


def test_host_and_jit_regions_become_stubs():
    out = generate.stub_source(SOLUTION)
    assert 'tl.static_assert(False, "phase 9: load x, double it, store it back")' in out
    assert 'raise NotImplementedError("phase 9: launch double_kernel on one program")' in out
    assert "BEGIN SOLUTION" not in out and "tl.load" not in out
    assert "# TODO(phase 9): load x" in out  # the hint stays for the student


def test_markers_without_todo_or_end_are_refused():
    with pytest.raises(generate.MarkerError, match="TODO"):
        generate.stub_source("def f():\n    ### BEGIN SOLUTION\n    pass\n    ### END SOLUTION\n")
    with pytest.raises(generate.MarkerError, match="without a matching"):
        generate.stub_source("def f():\n    # TODO(phase 1): x\n    ### BEGIN SOLUTION\n    pass\n")


def _run(code: str, tmp_path, interpret: bool):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)


def test_jit_stub_stops_the_interpreter_with_its_message(tmp_path):
    (tmp_path / "stubbed.py").write_text(generate.stub_source(SOLUTION))
    proc = _run("import torch, stubbed\nstubbed.double_kernel[(1,)](torch.ones(4), BLOCK=4)", tmp_path, True)
    assert proc.returncode != 0
    assert "phase 9: load x, double it, store it back" in proc.stderr


def test_jit_stub_stops_the_compiler_with_its_message(tmp_path):
    """Ahead-of-time compilation for sm_90 needs no GPU, so this runs everywhere."""
    (tmp_path / "stubbed.py").write_text(generate.stub_source(SOLUTION))
    code = textwrap.dedent('''\
        import triton, stubbed
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        src = ASTSource(fn=stubbed.double_kernel, signature={"x_ptr": "*fp32", "BLOCK": "constexpr"},
                        constexprs={"BLOCK": 4})
        triton.compile(src, target=GPUTarget("cuda", 90, 32))
    ''')
    proc = _run(code, tmp_path, False)
    assert proc.returncode != 0
    assert "phase 9: load x, double it, store it back" in proc.stderr


def test_the_unstubbed_solution_runs_under_the_interpreter(tmp_path):
    (tmp_path / "solved.py").write_text(SOLUTION)
    proc = _run("import torch, solved\nprint(solved.double(torch.ones(4)).tolist())", tmp_path, True)
    assert proc.returncode == 0, proc.stderr
    assert "[2.0, 2.0, 2.0, 2.0]" in proc.stdout


def _trees(tmp_path):
    solutions, exercises = tmp_path / "solutions", tmp_path / "exercises"
    (solutions / "phase9").mkdir(parents=True)
    (solutions / "phase9" / "double.py").write_text(SOLUTION)
    (solutions / "phase9" / "__init__.py").write_text("from .double import double\n")
    return solutions, exercises


def test_generate_writes_then_keeps_edited_files_unless_forced(tmp_path):
    solutions, exercises = _trees(tmp_path)
    first = generate.generate(solutions, exercises)
    assert sorted(first["written"]) == ["phase9/__init__.py", "phase9/double.py"]
    assert generate.stale(solutions, exercises) == []

    student = exercises / "phase9" / "double.py"
    student.write_text(student.read_text() + "\n# my work in progress\n")
    (solutions / "phase9" / "double.py").write_text(SOLUTION.replace("one program", "a single program"))
    second = generate.generate(solutions, exercises)
    assert second["skipped"] == ["phase9/double.py"]
    assert "my work in progress" in student.read_text()
    assert generate.stale(solutions, exercises) == ["phase9/double.py (differs)"]

    third = generate.generate(solutions, exercises, force=True)
    assert third["written"] == ["phase9/double.py"]
    assert "a single program" in student.read_text() and "my work" not in student.read_text()


def test_untouched_files_are_updated_when_solutions_change(tmp_path):
    solutions, exercises = _trees(tmp_path)
    generate.generate(solutions, exercises)
    (solutions / "phase9" / "double.py").write_text(SOLUTION.replace("one program", "a single program"))
    done = generate.generate(solutions, exercises)
    assert done["written"] == ["phase9/double.py"] and done["skipped"] == []
    manifest = json.loads((exercises / generate.MANIFEST).read_text())
    assert set(manifest) == {"phase9/__init__.py", "phase9/double.py"}


def test_committed_exercises_are_not_stale():
    problems = generate.stale(ROOT / "solutions", ROOT / "exercises")
    assert problems == [], f"run `make exercises` and commit: {problems}"


def test_every_solution_region_has_a_phase_todo():
    for path in (ROOT / "solutions").rglob("*.py"):
        generate.stub_source(path.read_text(), str(path))  # raises MarkerError on a bad region


def test_check_passes_a_students_edits_but_not_a_stale_tree(tmp_path, capsys):
    """A student's solved exercises/ is not stale; solutions/ changed without regenerating is,
    with or without edits; --strict (CI) fails on edits too. The advice never recommends FORCE=1
    without saying it overwrites edits, and says how to see the difference."""
    solutions, exercises = _trees(tmp_path)
    generate.generate(solutions, exercises)
    student = exercises / "phase9" / "double.py"
    student.write_text(student.read_text().replace("tl.static_assert(False", "tl.store(x_ptr + offs, 2 * (1"))
    assert generate._check(solutions, exercises, strict=False) == 0
    assert "edited since generation" in capsys.readouterr().out
    assert generate._check(solutions, exercises, strict=True) == 1
    capsys.readouterr()
    assert generate.stale(solutions, exercises, strict=True) == ["phase9/double.py (edited)"]

    (solutions / "phase9" / "__init__.py").write_text("from .double import double  # changed\n")
    assert generate.stale(solutions, exercises) == ["phase9/__init__.py (differs)"]
    assert generate._check(solutions, exercises, strict=False) == 1
    err = capsys.readouterr().err
    assert "--diff" in err and "FORCE=1` overwrites edited files" in err
    assert "my work" not in generate.diff(solutions, exercises) and "+from .double import double\n" in \
        generate.diff(solutions, exercises)


def test_write_fresh_ignores_exercises(tmp_path):
    solutions, exercises = _trees(tmp_path)
    generate.generate(solutions, exercises)
    (exercises / "phase9" / "double.py").write_text("# solved\n")
    fresh = generate.write_fresh(solutions, tmp_path / "fresh")
    for rel, text in generate.expected_files(solutions).items():
        assert (fresh / rel).read_text() == text


def test_check_solutions_grades_fresh_stubs_not_the_students_exercises(monkeypatch, tmp_path):
    """A student who solved everything in exercises/ (simulated here: grading the name `exercises`
    gives full marks) still sees check-solutions pass: the stubs come from a fresh generation."""
    import grader.__main__ as cli

    graded = []

    class FakeGrading:  # stands in for the grading process check-solutions starts
        def __init__(self, cmd, **kwargs):
            impl, report = cmd[cmd.index("--impl") + 1], cmd[cmd.index("--report") + 1]
            graded.append(impl)
            stubs = impl not in ("solutions", "exercises")
            if stubs:
                assert "NotImplementedError" in (Path(impl) / "phase0" / "reference.py").read_text()
            Path(report).parent.mkdir(parents=True, exist_ok=True)
            Path(report).write_text(json.dumps({"score": 0 if stubs else 5, "max_score_run": 5, "tests": [
                {"name": "t", "outcome": "failed" if stubs else "passed",
                 "message": "TODO phase 0: x" if stubs else ""}]}))
            self.returncode = 1 if stubs else 0

        def wait(self):
            return self.returncode

        poll = wait

    monkeypatch.setattr(cli.subprocess, "Popen", FakeGrading)
    monkeypatch.setattr(cli, "report_path", lambda phase, tree: str(tmp_path / f"phase{phase}-{tree}.json"))
    assert cli.check_solutions([0]) == 0
    assert graded[0] == "solutions" and "exercises" not in graded and not Path(graded[1]).exists()
