"""`make release`: the student copy has no answers and its grader runs on the stubs."""
import re
import subprocess
import sys
import tarfile

import pytest

from grader import release
from grader.impl import ROOT, phases

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"


def _regions(text, begin, end):
    inside, outside, on = [], [], False
    for line in text.splitlines():
        s = line.strip()
        if s in (begin, end):
            on = s == begin
        else:
            (inside if on else outside).append(s)
    return inside, outside


def _secret_lines():
    """Written independently of grader/release.py: every non-trivial line of a solution region or
    hidden-test block that does not also appear outside those regions."""
    secret, public = set(), set()
    for tree, begin, end in (("solutions", BEGIN, END), ("grader", HIDDEN_BEGIN, HIDDEN_END)):
        for path in (ROOT / tree).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            inside, outside = _regions(path.read_text(), begin, end)
            secret.update(s for s in inside if len(s) >= 10 and re.search(r"\w", s))
            public.update(outside)
    return secret - public


@pytest.fixture(scope="module")
def student_copy(tmp_path_factory):
    out = tmp_path_factory.mktemp("release")
    proc = subprocess.run([sys.executable, "-m", "grader.release", "--out", str(out / "copy"),
                           "--archive", str(out / "copy.tar.gz")], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / "copy", out / "copy.tar.gz"


def test_release_has_the_course_without_answers(student_copy):
    copy, archive = student_copy
    for needed in ("Makefile", "pyproject.toml", "grader/plugin.py", "grader/__main__.py"):
        assert (copy / needed).is_file(), needed
    if (ROOT / "README.md").exists():
        assert (copy / "README.md").is_file()
    for phase in phases():
        assert (copy / "exercises" / f"phase{phase}" / "__init__.py").is_file()
        assert (copy / "grader" / "phases" / f"test_phase{phase}.py").is_file()
        if (ROOT / "exercises" / f"phase{phase}" / "README.md").exists():
            assert (copy / "exercises" / f"phase{phase}" / "README.md").is_file()
    assert not (copy / "solutions").exists() and not (copy / "grader" / "tests").exists()
    secrets = _secret_lines()
    assert secrets, "found no solution lines to look for"
    leaked = []
    for path in copy.rglob("*"):
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            s = line.strip()
            if s in secrets or s in (BEGIN, END, HIDDEN_BEGIN, HIDDEN_END):
                leaked.append(f"{path.relative_to(copy)}:{n}: {s[:70]}")
    assert not leaked, "\n".join(leaked[:20])
    with tarfile.open(archive) as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}
    assert names == {str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()}


def test_release_makefile_grades_the_stubs_and_fails_cleanly(student_copy):
    copy, _ = student_copy
    for phase in phases():
        # PY/SETUP: use this Python rather than building a new environment in the copy
        proc = subprocess.run(["make", "grade", f"PHASE={phase}", f"PY={sys.executable}", "SETUP="], cwd=copy,
                              capture_output=True, text=True, timeout=900, check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out[-3000:]
        assert "Score: 0 /" in out and f"TODO phase {phase}" in out, out[-3000:]
        assert "Traceback" not in out and "INTERNALERROR" not in out, out[-3000:]
        assert (copy / "reports" / f"phase{phase}-exercises.json").is_file()  # the copy's own grader ran
    help_text = subprocess.run(["make", "help"], cwd=copy, capture_output=True, text=True, check=False).stdout
    verbs = {line.split()[1] for line in help_text.splitlines() if line.startswith("  make ")}
    assert "grade" in verbs and not verbs & set(release.INSTRUCTOR_TARGETS), verbs


def test_strip_hidden_tests_like_nbgrader():
    text = f"a = 1\n{HIDDEN_BEGIN}\nsecret = 2\n{HIDDEN_END}\nb = 3\n"
    assert release.strip_hidden_tests(text) == "a = 1\nb = 3\n"
    with pytest.raises(release.ReleaseError, match="never closed"):
        release.strip_hidden_tests(f"{HIDDEN_BEGIN}\nx\n")


def test_leak_check_catches_a_solution_line(tmp_path):
    secrets = release.secret_lines()
    line = min(secrets)
    (tmp_path / "notes.md").write_text(f"some text\n    {line}\n")
    problems = release.leaks(tmp_path)
    assert problems and "notes.md:2" in problems[0]
