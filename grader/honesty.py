"""Keep a graded call honest: it must do the work in Triton, on fresh data, without side effects.

During the graded call:
- torch's attention, softmax, logsumexp and matmul entry points raise, in every namespace that
  offers them (`torch.*`, Tensor methods and the `@` operator, `torch.nn.functional`,
  `torch.special`, `torch.linalg`): a `TorchFunctionMode` sees every torch function;
- that holds inside Triton's launcher too, for the student's own code it calls back (autotune
  `pre_hook`s, `prune_configs_by`, a grid function, heuristics): only Triton's own code may use
  torch freely there;
- tensors made with `torch.empty*` come back filled with NaN, so an output element the kernel
  never writes is caught by the NaN check instead of passing by luck on zeroed memory; the NaN
  carries a payload (grader.poison) that tells "never written" from a NaN the code computed;
- Triton kernel launches are counted, and a Triton function that launched none fails.
Afterwards:
- every tensor the function returns must have been written by a Triton kernel during this very
  call (the outcome side: a result computed by PyTorch or NumPy next to a token launch, or kept
  from an earlier call, fails however it was computed). Under the interpreter the stores are
  observed (grader.bounds); on a GPU, the result must be memory passed to a kernel of the call;
- every input is compared with the clone taken before the call.

A `HonestyError` with `cheat=True` means the result was computed outside Triton: the grader then
scores the whole function 0 in this phase (see grader.scoring), not only the test that caught it.

These rules run in the worker (grader.worker), where the graded code runs: the grading process
sends `graded_call(api.fn, ...)` there (grader.remote) and gets the outputs, or the rule broken,
back. They protect a grade from honest mistakes and lazy shortcuts, not from hostile code, which
could undo them in its own process; what hostile code cannot reach is the verdict: the outputs are
compared with the float64 references, and the points computed, in the grading process (see
grader/ARCHITECTURE.md).

The rules hold inside autograd's backward too: the engine runs a custom Function's backward with
the torch function modes switched off, so each backward is run with the call's mode entered again
(`_modes_in_backward`): a backward computed in PyTorch and copied into the kernels' buffers fails
like a forward would, and its `torch.empty` outputs start as NaN.
"""
import contextlib
import dataclasses
import os
import sys
import types

import torch
from torch.overrides import TorchFunctionMode

from grader import bounds, poison, usage

FORBIDDEN = {
    "sdpa": {"scaled_dot_product_attention", "_scaled_dot_product_attention_math",
             "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "multi_head_attention_forward"},
    # softmax in every spelling, and the row reductions that stand in for it (logsumexp gives the
    # normalizer in one call; a cumulative sum hides a sum or a running maximum)
    "softmax": {"softmax", "log_softmax", "_softmax", "_log_softmax", "softmin", "gumbel_softmax",
                "special_softmax", "special_log_softmax", "logsumexp", "special_logsumexp",
                "logcumsumexp", "cumsum", "cumprod", "cummax"},
    "matmul": {"matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "baddbmm", "addmm", "addbmm",
               "einsum", "linear", "bilinear", "tensordot", "chain_matmul", "inner", "dot", "vdot",
               "mv", "addmv", "outer", "ger", "addr", "kron", "cdist",
               "linalg_matmul", "linalg_vecdot", "vecdot", "linalg_multi_dot", "multi_dot"},
}
FACTORIES = {"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided"}

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_HERE = os.path.abspath(__file__)


class HonestyError(AssertionError):
    """The graded call broke a rule of the grader (not a numerical mismatch).

    `cheat` is True when the result was computed outside Triton: the whole function then scores 0,
    and the cheat is filed with the running test (grader.usage) even if the student's code, or a
    test, catches the exception. `function` names the graded function.
    """

    def __init__(self, message, cheat=False, function=None):
        super().__init__(message)
        self.cheat = cheat
        self.function = function
        if cheat:
            usage.note_cheat(function, message)


class _Suspend:
    depth = 0  # > 0 while Triton's launcher or autotuner runs (it may use torch for its own work)


def _triton_dir() -> str:
    import triton

    return os.path.dirname(triton.__file__) + os.sep


def _called_by_triton() -> bool:
    """Is the torch function being dispatched called by Triton's own code (not by a user hook)?

    The nearest frame outside torch's package (torch.nn.functional and the dispatcher run in
    between) and outside this module decides.
    """
    triton_dir = _triton_dir()
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if not (path.startswith(_TORCH_DIR) or os.path.abspath(path) == _HERE):
            return path.startswith(triton_dir)
        frame = frame.f_back
    return True


# Torch functions that move or convert values without computing new ones: a result a kernel wrote
# may pass through them on its way out (a float32 buffer returned `.to(q.dtype)`, a `.contiguous()`).
DATA_MOVEMENT = {"to", "type", "float", "half", "bfloat16", "double", "contiguous", "clone", "copy_", "reshape",
                 "view", "view_as", "reshape_as", "transpose", "permute", "t", "__getitem__", "squeeze",
                 "unsqueeze", "expand", "expand_as", "narrow", "select", "flatten", "unflatten", "movedim",
                 "detach", "cat", "concat", "concatenate", "stack", "split", "chunk", "unbind"}


IN_PLACE_OPERATORS = {"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__",
                      "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__",
                      "__imatmul__"}


def _tensors(values):
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (tuple, list)):
            yield from _tensors(value)


class _GradedCallMode(TorchFunctionMode):
    def __init__(self, forbid, what, kernel_memory=None):
        super().__init__()
        self.forbidden = set().union(*(FORBIDDEN[f] for f in forbid)) if forbid else set()
        self.what = what
        self.violation = None  # kept even when the student's code catches the exception
        # live: storages kernels of this call wrote (under the interpreter) or were given (on a GPU)
        self.kernel_memory = kernel_memory if kernel_memory is not None else set()
        self.moved: set[int] = set()  # storages holding kernel results moved or converted by torch

    def from_kernels(self, t: torch.Tensor) -> bool:
        ptr = t.untyped_storage().data_ptr()
        return ptr in self.kernel_memory or ptr in self.moved

    def _note_data_movement(self, name, args, out) -> bool:
        """A copy or conversion of kernel results holds kernel results too; True when it was one."""
        if name == "copy_":
            sources, targets = list(_tensors(args[1:2])), list(_tensors(args[:1]))
        else:
            sources, targets = list(_tensors(args)), list(_tensors([out]))
        if sources and all(self.from_kernels(t) for t in sources):
            self.moved.update(t.untyped_storage().data_ptr() for t in targets)
            return True
        return False

    def _note_host_write(self, args, kwargs):
        """Values the host writes into memory replace what a kernel stored there (until a kernel
        stores again): `y.copy_(computed_on_the_host)` after the launch does not pass for a result."""
        for t in _tensors(list(args[:1]) + [kwargs.get("out")]):
            ptr = t.untyped_storage().data_ptr()
            self.kernel_memory.discard(ptr)
            self.moved.discard(ptr)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _Suspend.depth and _called_by_triton():
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in self.forbidden:
            inside = " (in code that Triton's launcher calls back: a hook, a grid or a heuristic)" \
                if _Suspend.depth else ""
            self.violation = self.violation or HonestyError(
                f"{self.what} called torch's {name}{inside}: this exercise must compute it in Triton",
                cheat=True, function=self.what)
            raise self.violation
        out = func(*args, **kwargs)
        if name in FACTORIES and isinstance(out, torch.Tensor) and out.is_floating_point():
            return poison.fill(out)
        moved = name in DATA_MOVEMENT and self._note_data_movement(name, args, out)
        writes = "out" in kwargs or name in IN_PLACE_OPERATORS or (
            name.endswith("_") and not name.startswith("_") and name not in ("requires_grad_", "share_memory_"))
        if writes and not moved:
            self._note_host_write(args, kwargs)
        return out


class _Launches:
    def __init__(self):
        self.count = 0
        self.storages: set[int] = set()  # storage addresses of the tensors passed to kernels
        self.kernels: list[KernelLaunch] = []


@dataclasses.dataclass(frozen=True)
class KernelLaunch:
    """One launch of a Triton kernel, as its launcher saw it: what a grader can observe from outside."""
    name: str           # the @triton.jit function's name
    module: str         # the module that defines it, e.g. exercises.phase5.forward
    descriptors: int    # how many arguments were tensor descriptors (TMA)
    options: dict       # keyword arguments: constexprs (BLOCK_M, ...), num_warps, num_stages

    @property
    def where(self) -> str:
        return f"`{self.name}` of {self.module}"


def _describe_launch(kernel, args, kwargs) -> KernelLaunch:
    fn = getattr(kernel, "fn", kernel)
    from triton.tools.tensor_descriptor import TensorDescriptor

    values = list(args) + list(kwargs.values())
    return KernelLaunch(getattr(fn, "__name__", "?"), getattr(fn, "__module__", "?"),
                        sum(isinstance(value, TensorDescriptor) for value in values),
                        {k: v for k, v in kwargs.items() if isinstance(v, (bool, int, float, str))})


def _storages_of(values):
    for value in values:
        if isinstance(value, (tuple, list)):
            yield from _storages_of(value)
        elif isinstance(value, torch.Tensor):
            yield value.untyped_storage().data_ptr()
        elif hasattr(value, "base") and isinstance(getattr(value, "base"), torch.Tensor):
            yield value.base.untyped_storage().data_ptr()  # Triton's TensorWrapper, a TensorDescriptor


@contextlib.contextmanager
def _count_triton_launches():
    """Count kernel launches by wrapping the `run` of Triton's compiled and interpreted kernels."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    launches = _Launches()
    originals = {cls: cls.run for cls in (JITFunction, InterpretedFunction, Autotuner)}

    def wrap(cls, original):
        def run(self, *args, **kwargs):
            if cls is not Autotuner:
                launches.count += 1
                launches.storages.update(_storages_of(list(args) + list(kwargs.values())))
                launches.kernels.append(_describe_launch(self, args, kwargs))
            _Suspend.depth += 1
            try:
                return original(self, *args, **kwargs)
            finally:
                _Suspend.depth -= 1
        return run

    for cls, original in originals.items():
        cls.run = wrap(cls, original)
    try:
        yield launches
    finally:
        for cls, original in originals.items():
            cls.run = original


@contextlib.contextmanager
def record_launches():
    """The Triton kernels launched inside the block, in order: a list of KernelLaunch. In the grading
    process, the kernels the worker launched for the calls inside (grader.remote)."""
    from grader import remote

    if remote.active():
        with remote.recording_launches() as kernels:
            yield kernels
        return
    with _count_triton_launches() as launches:
        yield launches.kernels


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(
        torch.nan_to_num(a, nan=0.0), torch.nan_to_num(b, nan=0.0))


def _returned_tensors(out):
    if isinstance(out, torch.Tensor):
        return [("the result", out)]
    if isinstance(out, (tuple, list)):
        return [(f"result {i}", t) for i, t in enumerate(out) if isinstance(t, torch.Tensor)]
    return []


def _check_written_by_kernels(out, what, mode):
    """Every returned tensor must be memory that a Triton kernel of this call wrote (or a copy of it)."""
    for name, t in _returned_tensors(out):
        if t.numel() and not mode.from_kernels(t):
            raise HonestyError(
                f"{what} returned {name} (shape {tuple(t.shape)}) that no Triton kernel wrote during this call: "
                "the values must be stored by your kernel, not computed by PyTorch or NumPy on the host "
                "nor kept from an earlier call", cheat=True, function=what)


@contextlib.contextmanager
def _modes_in_backward(mode):
    """Enter `mode` again in every custom autograd Function's backward (the engine turns modes off)."""
    from torch.autograd.function import BackwardCFunction

    original = BackwardCFunction.apply

    def apply(self, *args):
        with mode:
            return original(self, *args)
    BackwardCFunction.apply = apply
    try:
        yield
    finally:
        BackwardCFunction.apply = original


def graded_call(fn, *args, what=None, forbid=("sdpa", "softmax", "matmul"), triton=True, mutable=(), **kwargs):
    """Call `fn(*args, **kwargs)` under the rules above and return its result. `mutable` names keyword
    arguments the function writes by contract (a KV cache it appends to): the test checks those itself.

    In the grading process (grader.remote.active()), the rules travel with the calls to the worker:
    `fn` itself when it is the graded code's function, else every call `fn` makes to the worker."""
    from grader import remote

    if remote.active():
        if isinstance(fn, remote.Remote):
            return remote.call(fn, args, kwargs, {"what": what, "forbid": tuple(forbid or ()), "triton": triton,
                                                  "mutable": tuple(mutable)})
        with remote.graded(what or getattr(fn, "__name__", None), forbid, triton):
            return fn(*args, **kwargs)
    what = what or getattr(fn, "__name__", "the graded function")
    named = {f"argument {i}": a for i, a in enumerate(args)} | dict(kwargs.items())
    clones = {k: v.clone() for k, v in named.items() if isinstance(v, torch.Tensor) and k not in mutable}
    tracking = bounds.track_writes() if bounds.checking() else contextlib.nullcontext()
    with tracking as written, _count_triton_launches() as launches:
        # Under the interpreter the stores are seen; on a GPU, what the kernels were given counts.
        mode = _GradedCallMode(forbid, what, written if written is not None else launches.storages)
        with mode, _modes_in_backward(mode):
            try:
                out = fn(*args, **kwargs)
            except BaseException:
                if mode.violation is not None:  # caught by the student's code, then something else failed
                    raise mode.violation from None
                raise
    if mode.violation is not None:  # the student's code caught it and went on
        raise mode.violation
    if triton and launches.count == 0:
        raise HonestyError(f"{what} launched no Triton kernel: the exercise is to write one", function=what)
    if triton:
        _check_written_by_kernels(out, what, mode)
    for key, before in clones.items():
        if not _same(named[key], before):
            raise HonestyError(f"{what} modified its input {key!r}: inputs must stay unchanged", function=what)
    return out


def timed(fn, *inputs, what=None):
    """`fn` (no arguments: it computes on `inputs`) checked, then wrapped for a throughput timing.

    A timing calls the same function on the same tensors again and again, which a result cached by
    pointer (`data_ptr`) would answer without computing anything. So, before the timing:
    - one call runs under `graded_call`'s rules (its result written by a kernel during the call);
    - the inputs then change in place (same memory, new values), and a second call must compute a
      new result under the same rules;
    and during the timing, every call must launch a Triton kernel.
    """
    what = what or "the timed call"
    from grader import remote

    if remote.active():  # the worker replays fn's calls, checked as below, and times them there
        return remote.timed(fn, inputs, what)
    first = [t.clone() for _, t in _returned_tensors(graded_call(fn, what=what))]
    changed = [(t, t.clone()) for t in inputs if isinstance(t, torch.Tensor) and 0 not in t.stride()]
    cached = (f"{what} did not compute a new result after its inputs changed in place (same memory, new "
              "values): compute the result on every call instead of keeping it by pointer")
    try:
        for t, _ in changed:
            t.mul_(0.5)
        try:
            again = [t for _, t in _returned_tensors(graded_call(fn, what=what))]
        except HonestyError as exc:
            raise HonestyError(f"{cached} ({exc})", cheat=True, function=what) from None
    finally:
        for t, before in changed:
            t.copy_(before)
    if first and len(again) == len(first) and all(torch.equal(a, b) for a, b in zip(first, again)):
        raise HonestyError(f"{cached}: it returned the same values", cheat=True, function=what)

    def call():
        with _count_triton_launches() as launches:
            out = fn()
        if launches.count == 0:
            raise HonestyError(f"{what} launched no Triton kernel in a timed call: every call must compute its "
                               "result (a result kept from an earlier call is not a measurement)",
                               cheat=True, function=what)
        return out
    return call


def tensors_in(value, depth=0):
    """Every tensor in `value`, looking inside lists, tuples, dicts and plain objects: what an autograd
    context keeps for the backward (P hidden in a list or an object attribute counts too)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if depth > 4:
        return []
    if isinstance(value, dict):
        value = list(value.values())
    elif isinstance(value, (types.ModuleType, type, types.FunctionType, types.MethodType)):
        return []
    elif not isinstance(value, (list, tuple, set, frozenset)):
        value = list(getattr(value, "__dict__", {}).values())
    found = {id(t): t for item in value for t in tensors_in(item, depth + 1)}  # each tensor once
    return list(found.values())
