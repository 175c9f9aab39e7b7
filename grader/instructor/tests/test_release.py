"""`make release`: the student copy has no answers and its grader runs on the stubs."""
import json
import re
import subprocess
import sys
import tarfile

import pytest

from grader.instructor import answers, release
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


def _squash(text):
    return "".join(text.split())


def _secret_lines(released):
    """Written independently of grader/instructor/answers.py: every non-trivial line of a solution region of
    a released phase that does not also stand outside the regions of that phase or an earlier one, and
    every non-trivial line of a hidden-test block that does not also appear outside such blocks; all
    without whitespace, as the copy's lines are compared."""
    secret = set()
    for phase in released:
        shown = set()
        for path in (ROOT / "solutions").rglob("*.py"):
            top = path.relative_to(ROOT / "solutions").parts[0]
            if "__pycache__" not in path.parts and (not top.startswith("phase") or int(top[5:]) <= phase):
                shown.update(_squash(s) for s in _regions(path.read_text(), BEGIN, END)[1])
        for path in (ROOT / "solutions" / f"phase{phase}").rglob("*.py"):
            inside = _regions(path.read_text(), BEGIN, END)[0]
            secret.update(_squash(s) for s in inside if len(s) >= 10 and re.search(r"\w", s)
                          and _squash(s) not in shown and not re.fullmatch(r"(if|elif|while)( not)? \w+:", s))
    hidden, public = set(), set()
    for path in (ROOT / "grader").rglob("*.py"):
        if "__pycache__" not in path.parts:
            inside, outside = _regions(path.read_text(), HIDDEN_BEGIN, HIDDEN_END)
            hidden.update(_squash(s) for s in inside if len(s) >= 10 and re.search(r"\w", s))
            public.update(_squash(s) for s in outside)
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
        readme = (copy / "README.md").read_text()
        assert "make grade PHASE=" in readme and "make hint" in readme
        # the instructors' part (their verbs, a link to INSTRUCTORS.md, which does not ship) is cut
        assert "COURSE-ONLY" not in readme and "INSTRUCTORS.md" not in readme
        assert "make test " not in readme and "| `make check-solutions`" not in readme
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
            assert path.suffix in answers.BINARY_SUFFIXES, path
            continue
        for n, line in enumerate(text.splitlines(), 1):
            s = line.strip()
            if _squash(s) in secrets or s in (BEGIN, END, HIDDEN_BEGIN, HIDDEN_END):
                leaked.append(f"{path.relative_to(copy)}:{n}: {s[:70]}")
    assert not leaked, "\n".join(leaked[:20])
    _check_assets(copy)
    with tarfile.open(archive) as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}
    assert names == {str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()}


def _check_assets(copy):
    """The copy takes from assets/ what its lessons show: no grading records (HOME_ASSETS), of the
    phase folders only figures, tables and their data, or a file that a shipped file cites; and every
    path under assets/ that a shipped file cites (a link, an image, a path in prose) is there."""
    for home in release.HOME_ASSETS:
        assert (ROOT / home).is_dir(), f"{home} is listed in HOME_ASSETS but is not in the course"
        assert not (copy / home).exists(), home
    cited = release.cited_assets(copy)
    shipped = {p.relative_to(copy).as_posix() for p in (copy / "assets").rglob("*") if p.is_file()}
    assert shipped, "the copy has no figures"
    assert all(re.fullmatch(r"assets/phase\d+/.+", p) for p in shipped), shipped
    assert all(p.endswith(release.LESSON_ASSET_KINDS) or p in cited for p in shipped), shipped
    dangling = sorted(c for c in cited if not (copy / c).exists())
    assert not dangling, f"shipped files cite assets the copy does not have: {dangling}"


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
    _check_assets(copy)
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
    assert {line for _, line in answers.answers(root, [1]).lines.values()} == {answer}
    assert {line for _, line in answers.answers(root, [1, 2]).lines.values()} == {answer, "y = answer_of_phase_two()"}
    copy = tmp_path / "copy" / "exercises" / "phase2"
    copy.mkdir(parents=True)
    (copy / "b.py").write_text(f"{answer}\nraise NotImplementedError\n")
    assert not answers.leaks(tmp_path / "copy", root, [2])
    assert any("b.py:1" in p for p in answers.leaks(tmp_path / "copy", root, [1, 2]))


def test_leak_check_catches_a_statement_quoted_on_one_line(tmp_path):
    answer = "kT = tl.load(k_ptr + offs,\n             mask=offs < N_K, other=0.0)"
    _course(tmp_path / "course", {"solutions/phase1/a.py": f"{BEGIN}\n{answer}\n{END}\n"})
    (tmp_path / "copy").mkdir()
    quote = "kT = tl.load(k_ptr + offs, mask=offs < N_K, other=0.0)"  # the two lines as one
    (tmp_path / "copy" / "lesson.md").write_text(f"```python\n{quote}\n```\n")
    problems = answers.leaks(tmp_path / "copy", tmp_path / "course", [1])
    assert problems and "lesson.md:2" in problems[0], problems


# An answer with quotes (escaped in JSON), a multi-line statement and a short line of one region.
ANSWER = 'm = tl.load(x_ptr + offs, mask=offs < n, other=-float("inf"))'
PLANTED = {  # file of a student copy -> its text, with ANSWER quoted the way that kind of file quotes code
    "exercises/phase1/stub.py": f"def f():\n    # the answer is {ANSWER}, see?\n    raise NotImplementedError\n",
    "exercises/phase1/README.md": f"A lesson.\n\n```python\n    {ANSWER}\n```\n",
    "assets/phase1/data.json": json.dumps({"rows": [{"message": f"x.py:3: error\n    {ANSWER}\n    ^"}]}, indent=1),
    "exercises/phase1/hints.toml": f"[load]\nshape = '''\nOne line:   {ANSWER}   (masked)\n'''\n",
    "exercises/phase1/notes.txt": f"{' '.join(ANSWER.split())}\n",  # whitespace changed
    "assets/phase1/figure.json": json.dumps({"source": "y = 1\n" + ANSWER.replace(" ", "  ") + "\n"}),
    "exercises/phase1/run.log": f"2026-01-01 12:00 x.py:17: {ANSWER}  # a log line quoting the code\n",
    "exercises/phase1/figure.png": f"not a PNG at all: {ANSWER}\n",  # a suffix does not make a file binary
}
SOLUTION = f"def f():\n    {BEGIN}\n    {ANSWER}\n    s = tl.sum(tl.exp(\n        m - 1), 0)\n    {END}\n"


def _tiny_course(root, planted=None):
    _course(root, {"solutions/phase1/a.py": SOLUTION, "exercises/phase1/a.py": "def f():\n    raise X\n",
                   "assets/phase1/plot.json": "{}\n", **(planted or {})})


@pytest.mark.parametrize("rel", sorted(PLANTED))
def test_release_refuses_an_answer_planted_in_any_kind_of_file(tmp_path, rel):
    """An answer line quoted in a .py, .md, .json (escaped inside a string), .toml, .txt or .log of the
    copy, or in a text file named like a figure: the release refuses it and names the file."""
    _tiny_course(tmp_path / "course", {rel: PLANTED[rel]})
    with pytest.raises(release.ReleaseError, match=re.escape(rel)):
        release.build(tmp_path / "copy", None, tmp_path / "course", [1])


def test_release_of_the_tiny_course_passes_without_the_plant(tmp_path):
    """The course the test above plants in releases cleanly, so each refusal is the planted line's."""
    _tiny_course(tmp_path / "course")
    files = release.build(tmp_path / "copy", None, tmp_path / "course", [1])
    assert "exercises/phase1/a.py" in files and "assets/phase1/plot.json" in files


def test_leak_check_tells_a_quote_from_a_longer_statement(tmp_path):
    """A statement of an answer is found inside a longer line only whole: not as part of a longer
    name or expression. A binary figure is skipped; a binary of another kind is reported."""
    _tiny_course(tmp_path / "course")
    found = answers.answers(tmp_path / "course", [1])
    assert answers.search([f"x{ANSWER}", f"{ANSWER} + 1", f"{ANSWER}.to(tl.float32)"], found) == []
    quotes = [f"({ANSWER})", f"`{ANSWER}`;", f"{ANSWER} (the load)", f"the load is {ANSWER} after all"]
    assert [n for n, _ in answers.search(quotes, found)] == [1, 2, 3, 4]
    assert [n for n, _ in answers.search(["s = tl.sum(tl.exp(m - 1), 0)"], found)] == [1]  # re-wrapped
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + ANSWER.encode())
    (copy / "blob.bin").write_bytes(b"\0\1" + ANSWER.encode())
    assert [p.split(":")[0] for p in answers.leaks(copy, tmp_path / "course", [1])] == ["blob.bin"]


def test_release_of_every_phase_leaves_a_phase_without_a_grader_home(tmp_path):
    """By default every phase goes out, meaning every phase with a grader: a phase still being written (a
    draft lesson in exercises/phase2/, no grader/phases/test_phase2.py yet) stays home."""
    _tiny_course(tmp_path / "course", {"grader/phases/test_phase1.py": "PHASE = 1\n",
                                       "exercises/phase2/README.md": "# Phase 2, a draft\n"})
    files = release.build(tmp_path / "copy", None, tmp_path / "course")
    assert "exercises/phase1/a.py" in files and "grader/phases/test_phase1.py" in files
    assert not any(f.startswith("exercises/phase2/") for f in files), files
