"""Decide, once per process and before any kernel module is imported, how Triton runs.

`TRITON_INTERPRET` is read when `@triton.jit` decorates a function, so it must be set before
`solutions.phaseN` or `exercises.phaseN` is imported: the grader plugin calls `configure()` at
import time, ahead of test collection.
"""
import os
import functools


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


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def device() -> str:
    return "cuda" if has_cuda() else "cpu"
