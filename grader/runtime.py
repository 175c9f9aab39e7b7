"""Decide, once per process and before any kernel module is imported, how Triton runs.

`TRITON_INTERPRET` is read when `@triton.jit` decorates a function, so it must be set before
`solutions.phaseN` or `exercises.phaseN` is imported: the grader plugin calls `configure()` at
import time, ahead of test collection.
"""
import functools
import os
import sys

from grader import settings

INTERPRET_TOO_LATE = (
    "TRITON_INTERPRET=1 was set after triton was imported: Triton's own functions (tl.max, ...) were"
    " already built for a GPU driver, hence errors such as '0 active drivers'. Restart Python (in Jupyter,"
    " the kernel) and set it before anything imports triton or the course's modules: run"
    " `TRITON_INTERPRET=1 python ...`, or make `import os; os.environ['TRITON_INTERPRET'] = '1'` the first lines.")


@functools.lru_cache(maxsize=None)
def has_cuda() -> bool:
    if settings.FORCE_CPU.get() == "1":  # lets a GPU machine exercise the interpreter path
        return False
    import torch

    return torch.cuda.is_available()


def configure() -> None:
    # Triton 3.9 warns when this is unset; 1 is the long-standing default (fused multiply-add on).
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    if not has_cuda():
        os.environ["TRITON_INTERPRET"] = "1"
        if interpreter_set_too_late():
            raise RuntimeError(INTERPRET_TOO_LATE)
        fix_interpreter_bfloat16()


def interpreter_set_too_late() -> bool:
    """TRITON_INTERPRET=1 now, but triton was imported without it: kernels cannot run on the CPU.

    `@triton.jit` picks the interpreter when it decorates a function, and Triton decorates its own
    library (triton.language.standard) when it is imported."""
    if os.environ.get("TRITON_INTERPRET") != "1" or "triton.language" not in sys.modules:
        return False
    library_function = getattr(sys.modules["triton.language"].standard, "max", None)
    return type(library_function).__name__ == "JITFunction"  # InterpretedFunction when set in time


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def device() -> str:
    return "cuda" if has_cuda() else "cpu"


def fix_interpreter_bfloat16() -> None:
    """Make the interpreter's bfloat16 right: `tl.dot` on bfloat16, and float32 -> bfloat16 rounding.

    Triton's interpreter (3.6 to 3.9 at least) keeps bfloat16 values as their raw 16 bits in uint16
    arrays and its `tl.dot` multiplies those integers: a bfloat16 dot returns values near 1e10
    without any error. Its float32 -> bfloat16 cast truncates where a GPU rounds to nearest even.
    bfloat16 is the top half of a float32, so both are a shift of the bits (plus the rounding)."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder.create_dot, "fixes_bf16", False):
        return
    original_dot, original_cast = builder.create_dot, builder.cast_impl

    def as_float32(handle):
        if handle.dtype.scalar == tl.bfloat16:
            bits = handle.data.astype(np.uint32) << 16
            return interpreter.TensorHandle(bits.view(np.float32), tl.float32)
        return handle

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original_dot(self, as_float32(a), as_float32(b), d, input_precision, max_num_imprecise_acc)

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = np.ascontiguousarray(src.data, dtype=np.float32).view(np.uint32)
            rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)  # nearest even
            nan = np.isnan(src.data)
            rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)  # stays a (quiet) NaN
            return interpreter.TensorHandle(rounded, tl.bfloat16)
        if src.dtype.scalar == tl.bfloat16 and dst_type.scalar == tl.float32:
            return as_float32(src)
        return original_cast(self, src, dst_type)

    create_dot.fixes_bf16 = True
    builder.create_dot, builder.cast_impl = create_dot, cast_impl
    # create_fp_trunc and friends are lambdas that call self.cast_impl: they follow.
