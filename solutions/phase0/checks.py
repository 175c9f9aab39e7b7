"""Input checks shared by every phase: bad input gets an error that names the argument.

Later phases import this module (`from ..phase0.checks import ...`), so that a wrong rank, a
mismatched shape or an unsupported dtype reads the same everywhere, and never surfaces as a
Triton compile error or a silently wrong answer.
"""
import math
import os

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HEAD_DIMS = (16, 32, 64, 128)


def check_float_tensor(x, name: str, dtypes=FLOAT_DTYPES) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} has dtype {str(x.dtype).removeprefix('torch.')}; supported: {allowed}")


def check_sm_scale(sm_scale, D: int) -> float:
    """The softmax scale as a float: None means 1 / sqrt(D); otherwise a positive finite number."""
    if sm_scale is None:
        return D ** -0.5
    if isinstance(sm_scale, bool) or not isinstance(sm_scale, (int, float)):
        raise TypeError(f"sm_scale must be a float or None, got {type(sm_scale).__name__}")
    if not math.isfinite(sm_scale) or sm_scale <= 0:
        raise ValueError(f"sm_scale must be a positive finite number, got {sm_scale!r}")
    return float(sm_scale)


def check_triton_device(x, name: str) -> None:
    """Kernels run on a CUDA tensor, or on a CPU tensor under the interpreter (TRITON_INTERPRET=1)."""
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    if not interpreting and x.device.type != "cuda":
        raise ValueError(f"{name} is on {x.device}: Triton kernels need a CUDA tensor "
                         "(or TRITON_INTERPRET=1 to run them on the CPU)")


def check_attention_inputs(q, k, v, head_dims=HEAD_DIMS, triton=True) -> None:
    """q: (B, H, Nq, D), k and v: (B, H, Nk, D), one dtype, any strides."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_float_tensor(x, name)
        if x.dim() != 4:
            raise ValueError(f"{name} must have 4 dimensions (B, H, N, D), got shape {tuple(x.shape)}")
        if triton:
            check_triton_device(x, name)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree in B, H and D")
    if q.shape[-1] not in head_dims:
        raise ValueError(f"head dim D={q.shape[-1]} of q is not supported; use one of {head_dims}")
    if q.shape[2] == 0 or k.shape[2] == 0:
        raise ValueError(f"q and k need at least one row, got Nq={q.shape[2]} and Nk={k.shape[2]}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device} and {v.device}")


def check_positive_ints(**sizes) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
