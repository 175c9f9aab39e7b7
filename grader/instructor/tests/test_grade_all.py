"""`make grade-all`: a correct, an untouched, a crashing and a hanging submission, into a gradebook;
and resuming after an interruption without regrading what is done."""
import csv
import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

from grader.instructor.generate import write_fresh
from grader.impl import ROOT

PHASE = 0  # the machinery is the same for every phase; phase 0 grades fastest
TIMEOUT = 40  # seconds per submission; the correct one needs a few


def _copy(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


@pytest.fixture(scope="module")
def submissions(tmp_path_factory):
    root = tmp_path_factory.mktemp("submissions")
    _copy(ROOT / "solutions", root / "correct")
    for name in ("untouched", "crash", "hang"):
        write_fresh(ROOT / "solutions", root / name)  # not exercises/, which may hold a student's work
    with open(root / "crash" / f"phase{PHASE}" / "__init__.py", "a") as f:
        f.write("\nimport ctypes\nctypes.string_at(0)  # a segmentation fault\n")
    with open(root / "hang" / f"phase{PHASE}" / "__init__.py", "a") as f:
        f.write("\nwhile True:  # an endless loop\n    pass\n")
    return root


def _grade_all(subs, out, *extra):
    return subprocess.run(["make", "-s", "grade-all", f"SUBMISSIONS={subs}", f"PHASE={PHASE}", f"TIMEOUT={TIMEOUT}",
                           f"OUT={out}", f"PY={sys.executable}", "SETUP=", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_gradebook_of_correct_untouched_crashing_and_hanging_submissions(submissions, tmp_path):
    out = tmp_path / "out"
    started = time.time()
    proc = _grade_all(submissions, out, "JOBS=2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.time() - started < 4 * TIMEOUT
    assert "[4/4]" in proc.stdout  # progress, one line per submission
    rows = {r["submission"]: r for r in csv.DictReader((out / "gradebook.csv").read_text().splitlines())}
    assert set(rows) == {"correct", "untouched", "crash", "hang"}
    best = float(rows["correct"]["max_points_run"])
    assert best > 0 and float(rows["correct"]["total"]) == best and rows["correct"]["status"] == "graded"
    assert float(rows["untouched"]["total"]) == 0 and rows["untouched"]["status"] == "graded"
    # The grader survives a crashing submission (grader.isolation): a graded report, every test failed
    assert float(rows["crash"]["total"]) == 0 and rows["crash"]["status"] == "graded"
    crash_tests = json.loads((out / "reports" / "crash.json").read_text())["tests"]
    assert all("crashed" in t["message"] for t in crash_tests if t["outcome"] != "skipped")
    assert float(rows["hang"]["total"]) == 0 and "time limit" in rows["hang"]["status"]
    header = next(csv.reader((out / "gradebook.csv").read_text().splitlines()))
    report = json.loads((out / "reports" / "correct.json").read_text())
    assert len(header) == 6 + len(report["tests"])  # one column per test, hints taken
    for name in rows:
        r = json.loads((out / "reports" / f"{name}.json").read_text())
        assert r["submission"] == name and len(r["tests"]) == len(report["tests"])
    assert all(t["outcome"] == "failed" for t in json.loads((out / "reports" / "hang.json").read_text())["tests"]
               if t["outcome"] != "skipped")
    assert not list((submissions / "correct").rglob("__pycache__"))  # submissions are left as they were

    again = _grade_all(submissions, out)
    assert again.returncode == 0 and "4 already graded, 0 to grade" in again.stdout, again.stdout


def test_resumes_after_an_interruption(submissions, tmp_path):
    out = tmp_path / "out"
    subs = tmp_path / "subs"
    subs.mkdir()
    for name in ("correct", "hang", "untouched"):  # graded in this order, one at a time
        shutil.copytree(submissions / name, subs / name)
    proc = subprocess.Popen([sys.executable, "-m", "grader.instructor.grade_all", "--submissions", str(subs), "--phase",
                             str(PHASE), "--timeout", str(TIMEOUT), "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (out / "reports" / "correct.json").exists() and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(2)  # now grading the hanging one
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode != 0 and "interrupted" in output, output
    assert (out / "reports" / "correct.json").exists() and not (out / "reports" / "untouched.json").exists()
    # resuming: the done one is kept, the rest is graded
    proc = subprocess.run([sys.executable, "-m", "grader.instructor.grade_all", "--submissions", str(subs),
                           "--phase", str(PHASE),
                           "--timeout", "15", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0 and "1 already graded, 2 to grade" in proc.stdout, proc.stdout + proc.stderr
    rows = {r["submission"]: r for r in csv.DictReader((out / "gradebook.csv").read_text().splitlines())}
    assert set(rows) == {"correct", "hang", "untouched"} and float(rows["correct"]["total"]) > 0
