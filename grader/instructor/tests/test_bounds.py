"""Under the interpreter, a load or store outside every tensor the kernel was given is stopped and
named (kernel, tensor, index, line) before it can corrupt memory (grader.bounds)."""
from grader.instructor.tests import submissions

UNMASKED_STORE = ("tl.store(y_row + cols, y.to(y_ptr.dtype.element_ty), mask=cols < n_cols)",
                  "tl.store(y_row + cols, y.to(y_ptr.dtype.element_ty))")
UNMASKED_LOAD = ("k = tl.load(k_ptrs, mask=cols[:, None] < N_K, other=0.0)", "k = tl.load(k_ptrs)")


def test_an_unmasked_store_is_named_instead_of_corrupting_the_heap(tmp_path):
    folder = submissions.make(tmp_path, "unmasked-store", edits={"phase0/softmax.py": [UNMASKED_STORE]})
    proc, report, rows = submissions.grade(folder, 0, "-k", "softmax")
    assert report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Fatal Python error" not in proc.stderr and "crashed" not in proc.stdout
    row = rows["softmax[fp32-3x7]"]  # 3 rows of 7 in blocks of 8: the last row's 8th lane is past y
    assert row["outcome"] == "failed"
    message = row["message"]
    assert message.startswith("out-of-bounds store in `softmax_kernel` (phase0/softmax.py:"), message
    assert "`y_ptr` (shape (3, 7)) at index 21, past its last element 20" in message, message
    assert "Mask the store" in message
    assert rows["softmax[fp32-1x1]"]["outcome"] == "passed"  # a row that fills its block exactly


def test_an_unmasked_load_is_named(tmp_path):
    folder = submissions.make(tmp_path, "unmasked-load", edits={"phase3/forward.py": [UNMASKED_LOAD]})
    proc, report, rows = submissions.grade(folder, 3, "-k", "forward and fp32-N1")
    assert report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    message = rows["forward[fp32-N1-D16]"]["message"]
    assert message.startswith("out-of-bounds load in `_attn_fwd` (phase3/forward.py:"), message
    assert "`K` (shape (1, 1, 1, 16))" in message, message
