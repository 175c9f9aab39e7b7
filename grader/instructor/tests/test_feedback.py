"""Feedback that points at the bug: each message names what actually went wrong."""
import pytest
import torch

from grader import honesty, numerics, settings


def _message(fn, x):
    out = honesty.graded_call(fn, x, forbid=(), triton=False)
    with pytest.raises(AssertionError) as caught:
        numerics.assert_close("y", out, x.double(), x)
    return str(caught.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("buffer", ["same dtype", "float32 converted"])
def test_unwritten_and_computed_nans_are_told_apart(dtype, buffer):
    """Rows 2 and 3 never written, row 1 computed as 0/0: the poison's payload tells them apart."""
    def kernel_like(x):
        y = torch.empty(x.shape, dtype=x.dtype if buffer == "same dtype" else torch.float32)
        y[0] = x[0]
        y[1] = x[1] * 0 / 0
        return y.to(x.dtype)

    message = _message(kernel_like, torch.randn(4, 8, dtype=dtype))
    if dtype == torch.bfloat16 and buffer == "float32 converted":
        # torch converts every float32 NaN to the same bfloat16 bits on a CPU: no false verdict
        assert "24 NaN, never written or computed" in message and "never written (" not in message, message
        return
    assert "16 never written" in message and "first at [2, 0]" in message, message
    if dtype == torch.bfloat16:  # bfloat16 arithmetic rounds through float32: its NaN bits cannot tell
        assert "8 NaN, never written or computed" in message, message
    else:
        assert "8 NaN computed by the code" in message and "first at [1, 0]" in message, message


def test_a_fully_masked_row_of_plain_pytorch_is_a_computed_nan():
    def attention_reference(x):  # a plain-PyTorch softmax over a row with every score masked
        scores = x.masked_fill(torch.arange(8) >= 0, float("-inf"))
        return torch.exp(scores - scores.amax(-1, keepdim=True))

    message = _message(attention_reference, torch.randn(2, 8))
    assert "16 NaN computed by the code" in message and "never written" not in message, message


# ---------------------------------------------------------------- bad-input tests grade input handling only
WRONG_KERNELS = {  # phase -> mutants that compute wrong values on the bad-input tests' good input
    0: ("p0-ref-no-scale", "p0-softmax-pads-with-zero"),
    1: ("p1-scores-no-scale", "p1-softmax-no-division"),
    2: ("p2-flash-no-final-division",),
    3: ("p3-no-final-division",),
    4: ("p4-dk-not-scaled",),
}


@pytest.mark.parametrize("phase", sorted(WRONG_KERNELS))
def test_a_wrong_kernel_keeps_the_bad_input_points(phase, tmp_path):
    """Every `*refuses_bad_input` test passes for kernels that validate their input but compute wrong
    values: the numbers are the other tests' business."""
    from grader.instructor.mutants import build_copy, catalogue, patched
    from grader.instructor.tests import submissions

    mutants = {m.name: m for m in catalogue([phase])}
    folder = build_copy(mutants[WRONG_KERNELS[phase][0]], phase, tmp_path / f"wrong-phase{phase}")
    for name in WRONG_KERNELS[phase][1:]:
        target = folder / mutants[name].file
        target.write_text(patched(target.read_text(), mutants[name]))
    proc, report, rows = submissions.grade(folder, phase, "-k", "refuses")
    graded = {n: r for n, r in rows.items() if "refuses" in n and r["outcome"] != "skipped"}
    assert graded, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert all(r["outcome"] == "passed" for r in graded.values()), {n: r["message"] for n, r in graded.items()}


# ---------------------------------------------------------------- NaN blamed on reads only when reads caused it
@pytest.mark.parametrize("mutant, blamed", [
    ("p3-causal-hides-diagonal", False),  # query 0 sees no key: a NaN of its own, blocks are skipped
    ("p3-no-causal-block-skipping", True),  # loads the invisible blocks: the NaN there comes in
])
def test_causal_reads_are_blamed_only_when_they_happen(mutant, blamed, tmp_path):
    from grader.instructor.mutants import build_copy, catalogue
    from grader.instructor.tests import submissions

    m = next(m for m in catalogue([3]) if m.name == mutant)
    folder = build_copy(m, 3, tmp_path / mutant)
    proc, report, rows = submissions.grade(folder, 3, "-k", "causal_never_reads_invisible_keys")
    row = rows.get("causal_never_reads_invisible_keys")
    assert row and row["outcome"] == "failed", proc.stdout[-3000:] + proc.stderr[-2000:]
    assert ("skips their blocks" in row["message"]) == blamed, row["message"]
    if not blamed:
        assert "NaN computed by the code" in row["message"] and "not from reading them" in row["message"], \
            row["message"]


# ---------------------------------------------------------------- errors point at the kernel's line
BAD_ARANGE = ("    offs_n = tl.arange(0, BLOCK_N)\n", "    offs_n = tl.arange(0, BLOCK_N) + tl.arange(0, 10)\n")


@pytest.fixture(scope="module")
def bad_arange(tmp_path_factory):
    """Phase 2's flash kernel with a tl.arange the interpreter and the compiler both refuse."""
    from grader.instructor.tests import submissions

    folder = submissions.make(tmp_path_factory.mktemp("bad-arange"), "bad", {"phase2/flash.py": [BAD_ARANGE]})
    line = (folder / "phase2" / "flash.py").read_text().splitlines().index(BAD_ARANGE[1].rstrip("\n")) + 1
    return folder, f"(at phase2/flash.py:{line}: offs_n = tl.arange(0, BLOCK_N) + tl.arange(0, 10))"


def test_interpreter_and_compiler_errors_name_the_kernel_line(bad_arange):
    from grader.instructor.tests import submissions

    folder, where = bad_arange
    proc, report, rows = submissions.grade(folder, 2, "-k", "flash_attention_v1 and N1-D16 or flash_kernel_compiles")
    interpreted, compiled = rows["flash_attention_v1[fp32-N1-D16]"]["message"], rows["flash_kernel_compiles"]["message"]
    assert interpreted == f"ValueError: arange's range must be a power of 2 {where}", interpreted
    assert compiled.endswith(f"does not compile for sm_80: arange's range must be a power of 2 {where}"), compiled


def test_make_grade_test_runs_one_test_verbosely(bad_arange):
    import subprocess
    import sys

    from grader.impl import ROOT

    folder, where = bad_arange
    proc = subprocess.run(["make", "-s", "grade", "PHASE=2", f"IMPL={folder}", "TEST=flash_attention_v1 and N1-D16",
                           f"PY={sys.executable}", "SETUP="], cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "1 failed" in out and "deselected" in out, out[-3000:]
    assert "test_flash_attention_v1[fp32-N1-D16] FAILED" in out, out[-3000:]  # -v
    assert "raise InterpreterError(repr(e)) from e" in out and "flash.py:" in out, out[-3000:]  # the full traceback
    assert where in out


# ---------------------------------------------------------------- TRITON_INTERPRET set too late
@pytest.mark.parametrize("import_triton_first", [True, False])
def test_interpreter_set_after_importing_triton_says_what_to_do(import_triton_first):
    import os
    import subprocess
    import sys

    from grader.impl import ROOT

    code = ("import triton\n" if import_triton_first else "") + (
        "from grader import runtime\nruntime.configure()\n"
        "import torch\nfrom solutions.phase0 import softmax\nprint(float(softmax(torch.zeros(2, 4)).sum()))\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {settings.FORCE_CPU.name: "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if import_triton_first:
        assert proc.returncode != 0 and "set it before anything imports triton" in proc.stderr, proc.stderr[-2000:]
    else:
        assert proc.returncode == 0 and proc.stdout.strip() == "2.0", proc.stderr[-2000:]


# ---------------------------------------------------------------- bfloat16 under the interpreter
BF16_SCRIPT = """
from grader import runtime
runtime.configure()  # the interpreter, with grader.runtime's bfloat16 fixes
import torch, triton, triton.language as tl
from grader import numerics
from solutions.phase3 import flash_attention_forward

@triton.jit
def dot_kernel(a_ptr, b_ptr, c_ptr, N: tl.constexpr):
    r = tl.arange(0, N)
    ab = tl.dot(tl.load(a_ptr + r[:, None] * N + r[None, :]), tl.load(b_ptr + r[:, None] * N + r[None, :]))
    tl.store(c_ptr + r[:, None] * N + r[None, :], ab.to(tl.bfloat16))

torch.manual_seed(0)
a, b = torch.randn(16, 16, dtype=torch.bfloat16), torch.randn(16, 16, dtype=torch.bfloat16)
c = torch.empty(16, 16, dtype=torch.bfloat16)
dot_kernel[(1,)](a, b, c, N=16)
assert torch.equal(c, (a.float() @ b.float()).bfloat16()), (c - (a.float() @ b.float())).abs().max()
q, k, v = (torch.randn(1, 2, 40, 64, dtype=torch.bfloat16) for _ in range(3))
for causal in (False, True):
    o, lse = flash_attention_forward(q, k, v, causal=causal)
    numerics.assert_close("o", o, numerics.reference_attention(q, k, v, causal)[0], numerics.sdpa(q, k, v, causal))
print("ok")
"""


def test_bfloat16_is_computed_right_under_the_interpreter(tmp_path):
    """Triton's interpreter multiplies bfloat16's raw bits as integers (values near 1e10) and truncates
    float32 -> bfloat16; the grader's runtime fixes both, so bfloat16 is exact to the GPU's rounding."""
    import os
    import subprocess
    import sys

    from grader.impl import ROOT

    (tmp_path / "bf16_check.py").write_text(BF16_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {
        settings.FORCE_CPU.name: "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(tmp_path / "bf16_check.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
