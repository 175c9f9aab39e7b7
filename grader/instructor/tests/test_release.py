"""`make release`: the student copy has no answers and its grader runs on the stubs."""
import re
import subprocess
import sys
import tarfile

import pytest

from grader.instructor import release
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


# The phases the student copy under test holds: all of them.
RELEASED = phases()


def _secret_lines(released):
    """Written independently of grader/instructor/release.py: every non-trivial line of a solution region of a
    released phase that does not also stand outside the regions of that phase or an earlier one, and
    every non-trivial line of a hidden-test block that does not also appear outside such blocks."""
    secret = set()
    for phase in released:
        shown = set()
        for path in (ROOT / "solutions").rglob("*.py"):
            top = path.relative_to(ROOT / "solutions").parts[0]
            if "__pycache__" not in path.parts and (not top.startswith("phase") or int(top[5:]) <= phase):
                shown.update(_regions(path.read_text(), BEGIN, END)[1])
        for path in (ROOT / "solutions" / f"phase{phase}").rglob("*.py"):
            inside = _regions(path.read_text(), BEGIN, END)[0]
            secret.update(s for s in inside if len(s) >= 10 and re.search(r"\w", s) and s not in shown
                          and not re.fullmatch(r"(if|elif|while)( not)? \w+:", s))
    hidden, public = set(), set()
    for path in (ROOT / "grader").rglob("*.py"):
        if "__pycache__" not in path.parts:
            inside, outside = _regions(path.read_text(), HIDDEN_BEGIN, HIDDEN_END)
            hidden.update(s for s in inside if len(s) >= 10 and re.search(r"\w", s))
            public.update(outside)
    return secret | (hidden - public)


def _release(out, *extra):
    return subprocess.run([sys.executable, "-m", "grader.instructor.release", "--out", str(out / "copy"),
                           "--archive", str(out / "copy.tar.gz"), *extra], cwd=ROOT, capture_output=True, text=True,
                          check=False)


@pytest.fixture(scope="module")
def student_copy(tmp_path_factory):
    out = tmp_path_factory.mktemp("release")
    proc = _release(out, "--phases", ",".join(map(str, RELEASED)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / "copy", out / "copy.tar.gz"


def test_release_has_the_course_without_answers(student_copy):
    copy, archive = student_copy
    for needed in ("Makefile", "pyproject.toml", "grader/plugin.py", "grader/__main__.py"):
        assert (copy / needed).is_file(), needed
    if (ROOT / "README.md").exists():
        assert (copy / "README.md").is_file()
    for phase in RELEASED:
        assert (copy / "exercises" / f"phase{phase}" / "__init__.py").is_file()
        assert (copy / "grader" / "phases" / f"test_phase{phase}.py").is_file()
        if (ROOT / "exercises" / f"phase{phase}" / "README.md").exists():
            assert (copy / "exercises" / f"phase{phase}" / "README.md").is_file()
    assert not (copy / "solutions").exists()
    for home in release.HOME_FOLDERS:  # the instructor's tools and tests, the lessons' measurements
        assert not (copy / home).exists(), home
    assert {p.parent.relative_to(copy).as_posix() for p in (copy / "grader").rglob("*.py")} == \
        set(release.GRADER_FOLDERS)
    secrets = _secret_lines(RELEASED)
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
    for phase in RELEASED:
        # PY/SETUP: use this Python rather than building a new environment in the copy
        proc = subprocess.run(["make", "grade", f"PHASE={phase}", f"PY={sys.executable}", "SETUP="], cwd=copy,
                              capture_output=True, text=True, timeout=900, check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out[-3000:]
        assert "Score: 0 /" in out and "TODO 1 is not written yet" in out, out[-3000:]
        assert f"TODO 1: phase {phase}: " in out and f"make hint PHASE={phase}" in out, out[-3000:]
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


def test_release_phase_by_phase(tmp_path):
    """PHASES=0-1 holds the exercises, graders and figures of phases 0 and 1 only; a phase cannot go
    out without the earlier phases it imports."""
    proc = _release(tmp_path, "--phases", "0-1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    copy = tmp_path / "copy"
    assert sorted(p.name for p in (copy / "exercises").glob("phase*")) == ["phase0", "phase1"]
    assert sorted(p.name for p in (copy / "grader" / "phases").glob("test_phase*")) == ["test_phase0.py",
                                                                                       "test_phase1.py"]
    assert not any(p.name.startswith(("phase2", "phase3", "phase4")) for p in (copy / "assets").rglob("*"))
    proc = _release(tmp_path, "--phases", "2")
    assert proc.returncode != 0 and "import phase" in proc.stderr, proc.stderr
    assert release.parse_phases("0-2,4", [0, 1, 2, 3, 4]) == [0, 1, 2, 4]
    with pytest.raises(ValueError, match="no phase 9"):
        release.parse_phases("9", [0, 1])


def _course(root, files):
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "grader").mkdir(exist_ok=True)


def test_leak_check_per_release_catches_a_later_stub_repeating_an_answer(tmp_path):
    """Phase 2's scaffolding shows Phase 1's answer: fine in a release of phase 1 alone, a leak in a
    release of both. A line that phase 1 itself shows outside its regions is no secret."""
    answer = "q = tl.load(q_ptr + offs, mask=offs < N, other=0.0)"
    _course(tmp_path / "course", {
        "solutions/phase1/a.py": f"x_shown = 1 + 2 + 3\n{BEGIN}\n{answer}\nx_shown = 1 + 2 + 3\n{END}\n",
        "solutions/phase2/b.py": f"{answer}\n{BEGIN}\ny = answer_of_phase_two()\n{END}\n",
    })
    root = tmp_path / "course"
    assert set(release.secret_lines(root, [1])) == {answer}
    assert set(release.secret_lines(root, [1, 2])) == {answer, "y = answer_of_phase_two()"}
    copy = tmp_path / "copy" / "exercises" / "phase2"
    copy.mkdir(parents=True)
    (copy / "b.py").write_text(f"{answer}\nraise NotImplementedError\n")
    assert not release.leaks(tmp_path / "copy", root, [2])
    assert any("b.py:1" in p for p in release.leaks(tmp_path / "copy", root, [1, 2]))


def test_leak_check_catches_a_statement_quoted_on_one_line(tmp_path):
    answer = "kT = tl.load(k_ptr + offs,\n             mask=offs < N_K, other=0.0)"
    _course(tmp_path / "course", {"solutions/phase1/a.py": f"{BEGIN}\n{answer}\n{END}\n"})
    (tmp_path / "copy").mkdir()
    quote = "kT = tl.load(k_ptr + offs, mask=offs < N_K, other=0.0)"  # the two lines as one
    (tmp_path / "copy" / "lesson.md").write_text(f"```python\n{quote}\n```\n")
    problems = release.leaks(tmp_path / "copy", tmp_path / "course", [1])
    assert problems and "lesson.md:2" in problems[0], problems
