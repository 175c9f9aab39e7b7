"""Decide, once per process and before any kernel module is imported, how Triton runs.

`TRITON_INTERPRET` is read when `@triton.jit` decorates a function, so it must be set before
`solutions.phaseN` or `exercises.phaseN` is imported: the grader plugin calls `configure()` at
import time, ahead of test collection.
"""
import functools
import os
import sys

INTERPRET_TOO_LATE = (
    "TRITON_INTERPRET=1 was set after triton was imported: Triton's own functions (tl.max, ...) were"
    " already built for a GPU driver, hence errors such as '0 active drivers'. Restart Python (in Jupyter,"
    " the kernel) and set it before anything imports triton or the course's modules: run"
    " `TRITON_INTERPRET=1 python ...`, or make `import os; os.environ['TRITON_INTERPRET'] = '1'` the first lines.")


@functools.lru_cache(maxsize=None)
def has_cuda() -> bool:
    if os.environ.get("FA_FORCE_CPU") == "1":  # lets a GPU machine exercise the interpreter path
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
