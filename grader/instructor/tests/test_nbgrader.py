"""The nbgrader course, round trip with the real tools on the interpreter tier: generate the course,
`nbgrader generate_assignment`, submit the released notebook (stubs) and the source notebook
(solutions), `nbgrader autograde`, `nbgrader export`: solutions score full marks, stubs zero.

Needs the nbgrader extra (`pip install -e '.[nbgrader]'`); skipped without it, except in CI.
FA_NBGRADER_PHASES=0,1 chooses the phases (default: every phase).
"""
import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

from grader import settings
from grader.impl import phases
from grader.instructor import nbgrade

if not os.environ.get("CI"):
    pytest.importorskip("nbgrader", reason="the nbgrader extra is not installed: pip install -e '.[nbgrader]'")

SELECTED = [int(p) for p in settings.NBGRADER_PHASES.get().split(",")] if settings.NBGRADER_PHASES.is_set() \
    else phases()


def _nbgrader(course, *args, timeout=3000):
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=nbgrade.tool_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _cells(path):
    return json.loads(path.read_text())["cells"]


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = tmp_path_factory.mktemp("nbgrader-course")
    env = dict(os.environ)
    env.pop(settings.SEED.name, None)
    proc = subprocess.run([sys.executable, "-m", "grader.instructor.nbgrade", "--out", str(root), "--target", "cpu",
                           "--phases", ",".join(map(str, SELECTED))],
                          capture_output=True, text=True, env=env, timeout=1200, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


def test_course_layout_and_release(course):
    assert "course_id" in (course / "nbgrader_config.py").read_text()
    for phase in SELECTED:
        source, release = course / "source" / f"phase{phase}", course / "release" / f"phase{phase}"
        cells = _cells(source / f"phase{phase}.ipynb")
        meta = [c["metadata"].get("nbgrader", {}) for c in cells]
        assert any(m.get("solution") and not m.get("grade") for m in meta), "no autograded-answer cell"
        assert any(m.get("grade") and m.get("points", 0) > 0 for m in meta), "no autograder test cell"
        assert any(c["cell_type"] == "markdown" for c in cells)
        released = "".join("".join(c["source"]) for c in _cells(release / f"phase{phase}.ipynb"))
        assert "### BEGIN SOLUTION" not in released and "### BEGIN HIDDEN TESTS" not in released
        assert "YOUR CODE HERE" in released
        assert (release / "fa_course" / "hints" / f"phase{phase}.toml").exists(), "the phase's hints are not shipped"
        shipped = "".join(p.read_text() for p in (release / "fa_course").rglob("*.py"))
        assert "### BEGIN HIDDEN TESTS" not in shipped and not (release / "fa_course" / "solutions").exists()


def test_round_trip_solutions_full_marks_stubs_zero(course):
    for phase in SELECTED:
        for student, folder in (("solution", "source"), ("stub", "release")):
            dest = course / "submitted" / student / f"phase{phase}"
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(course / folder / f"phase{phase}" / f"phase{phase}.ipynb", dest)
        _nbgrader(course, "autograde", f"phase{phase}", "--create")
    _nbgrader(course, "export")
    rows = {(r["assignment"], r["student_id"]): r
            for r in csv.DictReader((course / "grades.csv").read_text().splitlines())}
    problems = []
    for phase in SELECTED:
        solution, stub = rows[(f"phase{phase}", "solution")], rows[(f"phase{phase}", "stub")]
        best = float(solution["max_score"])
        if not (best > 0 and float(solution["score"]) == best):
            problems.append(f"phase {phase}: solution scored {solution['score']}/{best:g}")
        if float(stub["score"]) != 0:
            problems.append(f"phase {phase}: stubs scored {stub['score']}/{best:g}")
    if problems:  # show the test cells' outputs of what went wrong
        for phase in SELECTED:
            for student in ("solution", "stub"):
                nb = course / "autograded" / student / f"phase{phase}" / f"phase{phase}.ipynb"
                for c in _cells(nb) if nb.exists() else []:
                    if c["metadata"].get("nbgrader", {}).get("grade"):
                        text = "".join("".join(o.get("text", "")) for o in c.get("outputs", []))
                        print(f"--- phase {phase} {student} {c['metadata']['nbgrader']['grade_id']}\n{text[-800:]}")
    assert not problems, "; ".join(problems)
