"""A kernel that crashes the process costs only its own test: the table and the report are still
written, every other test runs and scores, and the crash is charged to the test that caused it."""
import re

from grader.instructor.tests import submissions

LAUNCH = """    softmax_kernel[(rows.shape[0],)](rows, y, n_cols, rows.stride(0), y.stride(0),
                                     BLOCK=block, ONE_BLOCK=n_cols <= block, num_warps=num_warps)
"""


def _softmax_then(code: str) -> dict:
    """phase0/softmax.py whose wrapper runs `code` after its (correct) kernel launch."""
    return {"phase0/softmax.py": [(LAUNCH, LAUNCH + code + "\n")]}


def _outcomes(rows):
    return {name: row["outcome"] for name, row in rows.items() if name.startswith("softmax")}


def test_a_crash_fails_only_its_test_and_the_report_is_written(tmp_path):
    # A segmentation fault right after the kernel of one case (3 rows of 7) returns.
    folder = submissions.make(tmp_path, "segfault", edits=_softmax_then(
        "    if n_cols == 7:\n        import ctypes\n        ctypes.string_at(0)  # what an unmasked store can do"))
    proc, report, rows = submissions.grade(folder, 0, "-k", "softmax")
    assert report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 1 and "Score:" in proc.stdout
    crashed = rows["softmax[fp32-3x7]"]
    assert crashed["outcome"] == "failed"
    assert "the process crashed in `softmax_kernel`" in crashed["message"], crashed["message"]
    assert "segmentation fault" in crashed["message"] and "without a mask" in crashed["message"]
    others = {name: o for name, o in _outcomes(rows).items() if name != "softmax[fp32-3x7]"}
    assert others and all(o in ("passed", "skipped") for o in others.values()), others
    assert report["score"] == report["max_score_run"] - 1


def test_a_delayed_crash_is_charged_to_the_test_that_corrupted_memory(tmp_path):
    # Heap corruption often kills the process later, in another test: the case of 7 columns
    # "corrupts" (sets a flag), the next call crashes. Alone, that next test runs fine.
    folder = submissions.make(tmp_path, "delayed", edits=_softmax_then(
        "    global _CORRUPTED\n"
        "    if n_cols == 7:\n        _CORRUPTED = True\n"
        "    elif globals().get('_CORRUPTED'):\n        import ctypes\n        ctypes.string_at(0)"))
    proc, report, rows = submissions.grade(folder, 0, "-k", "softmax")
    assert report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    culprit = rows["softmax[fp32-3x7]"]
    assert culprit["outcome"] == "failed" and "corrupted memory that crashed the process later" in culprit["message"]
    assert "softmax[fp16-5x128]" in culprit["message"], culprit["message"]
    failed = [name for name, o in _outcomes(rows).items() if o == "failed"]
    assert failed == ["softmax[fp32-3x7]"], failed  # the victim and every later test pass


def test_a_submission_that_crashes_on_import_scores_zero_without_a_process_per_test(tmp_path):
    folder = submissions.make(tmp_path, "crash-on-import",
                              append={"phase0/__init__.py": "import ctypes\nctypes.string_at(0)\n"})
    proc, report, rows = submissions.grade(folder, 0)
    assert report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["score"] == 0 and report["max_score_run"] > 0
    ran = [r for r in rows.values() if r["outcome"] != "skipped"]
    assert all(r["outcome"] == "failed" and "crashed" in r["message"] for r in ran), ran
    assert any(r["outcome"] == "skipped" for r in rows.values())  # tiers this machine lacks stay "not run"
    assert len(re.findall(r" in [\d.]+s$", proc.stdout, re.M)) <= 1  # one child process, not one per test


def test_after_a_gpu_memory_fault_the_rest_runs_in_a_fresh_process(tmp_path):
    # On a GPU an out-of-bounds access surfaces as a sticky CUDA error: every later CUDA call of the
    # process fails. Simulated here: from the case of 7 columns on, every call raises CUDA's error.
    folder = submissions.make(tmp_path, "gpu-fault", edits=_softmax_then(
        "    global _FAULT\n"
        "    if n_cols == 7 or globals().get('_FAULT'):\n"
        "        _FAULT = True\n"
        "        raise RuntimeError('CUDA error: an illegal memory access was encountered')"))
    proc, report, rows = submissions.grade(folder, 0, "-k", "softmax")
    assert report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    message = rows["softmax[fp32-3x7]"]["message"]
    assert message.startswith("the GPU reported a memory fault in `softmax_kernel`"), message
    failed = [name for name, o in _outcomes(rows).items() if o == "failed"]
    assert failed == ["softmax[fp32-3x7]"], failed  # the later tests ran in a fresh process
    assert "in a fresh process" in proc.stdout


def test_a_graded_function_that_exits_the_process_fails_only_its_test(tmp_path):
    folder = submissions.make(tmp_path, "exits", edits=_softmax_then(
        "    if n_cols == 7:\n        import os\n        os._exit(0)"))
    proc, report, rows = submissions.grade(folder, 0, "-k", "softmax")
    assert report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    message = rows["softmax[fp32-3x7]"]["message"]
    assert message.startswith("the process exited (status 0) in the middle of this test"), message
    failed = [name for name, o in _outcomes(rows).items() if o == "failed"]
    assert failed == ["softmax[fp32-3x7]"], failed
