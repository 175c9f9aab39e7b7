"""Keep a graded call honest: it must do the work in Triton, on fresh data, without side effects.

During the graded call:
- torch's attention, softmax and matmul entry points raise (a `TorchFunctionMode` sees every
  torch function, the `@` operator and Tensor methods included);
- tensors made with `torch.empty*` come back filled with NaN, so an output element the kernel
  never writes is caught by the NaN check instead of passing by luck on zeroed memory;
- Triton kernel launches are counted, and a Triton function that launched none fails.
Afterwards every input is compared with the clone taken before the call.

This protects a grade from honest mistakes and lazy shortcuts, not from hostile code: student
code runs with the grader's permissions and could undo any of it (see the instructors' docs).
"""
import contextlib

import torch
from torch.overrides import TorchFunctionMode

FORBIDDEN = {
    "sdpa": {"scaled_dot_product_attention", "_scaled_dot_product_attention_math",
             "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "multi_head_attention_forward"},
    "softmax": {"softmax", "log_softmax", "_softmax", "softmin"},
    "matmul": {"matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "baddbmm", "addmm", "addbmm",
               "einsum", "linear", "tensordot", "chain_matmul", "inner"},
}
FACTORIES = {"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided"}


class HonestyError(AssertionError):
    """The graded call broke a rule of the grader (not a numerical mismatch)."""


class _Suspend:
    depth = 0  # > 0 while Triton itself runs (its launcher and autotuner may use torch freely)


class _GradedCallMode(TorchFunctionMode):
    def __init__(self, forbid, what):
        super().__init__()
        self.forbidden = set().union(*(FORBIDDEN[f] for f in forbid)) if forbid else set()
        self.what = what

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _Suspend.depth:
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in self.forbidden:
            raise HonestyError(f"{self.what} called torch's {name}: this exercise must compute it in Triton")
        out = func(*args, **kwargs)
        if name in FACTORIES and isinstance(out, torch.Tensor) and out.is_floating_point():
            out.fill_(float("nan"))
        return out


class _LaunchCounter:
    def __init__(self):
        self.count = 0


@contextlib.contextmanager
def _count_triton_launches():
    """Count kernel launches by wrapping the `run` of Triton's compiled and interpreted kernels."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    counter = _LaunchCounter()
    originals = {cls: cls.run for cls in (JITFunction, InterpretedFunction, Autotuner)}

    def wrap(cls, original):
        def run(self, *args, **kwargs):
            if cls is not Autotuner:
                counter.count += 1
            _Suspend.depth += 1
            try:
                return original(self, *args, **kwargs)
            finally:
                _Suspend.depth -= 1
        return run

    for cls, original in originals.items():
        cls.run = wrap(cls, original)
    try:
        yield counter
    finally:
        for cls, original in originals.items():
            cls.run = original


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(
        torch.nan_to_num(a, nan=0.0), torch.nan_to_num(b, nan=0.0))


def graded_call(fn, *args, what=None, forbid=("sdpa", "softmax", "matmul"), triton=True, **kwargs):
    """Call `fn(*args, **kwargs)` under the rules above and return its result."""
    what = what or getattr(fn, "__name__", "the graded function")
    named = {f"argument {i}": a for i, a in enumerate(args)} | dict(kwargs.items())
    clones = {k: v.clone() for k, v in named.items() if isinstance(v, torch.Tensor)}
    with _count_triton_launches() as launches, _GradedCallMode(forbid, what):
        out = fn(*args, **kwargs)
    if triton and launches.count == 0:
        raise HonestyError(f"{what} launched no Triton kernel: the exercise is to write one")
    for key, before in clones.items():
        if not _same(named[key], before):
            raise HonestyError(f"{what} modified its input {key!r}: inputs must stay unchanged")
    return out
