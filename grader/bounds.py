"""Under the Triton interpreter, stop a load or store that falls outside every tensor the kernel was
given, and say where, before it touches memory.

On the interpreter a kernel's pointers are real host addresses: a store past the end of its output
(a missing mask, the most common beginner bug) writes over the heap, and the process dies later
with `Fatal Python error: Aborted` or a segfault, usually in an unrelated kernel. Triton-Puzzles
checks every access against the tensors passed as arguments; so does this module. `install()`
wraps the interpreter's memory operations: each masked-in address must lie inside the memory
(the whole storage) of one tensor argument of the running kernel, otherwise `OutOfBoundsError`
names the kernel, the tensor, the offending index and the kernel line.

The same wrapper records which tensors kernels store to (`track_writes`): the honesty checks use it
to require that a graded function's result was written by a Triton kernel during the call.

`FA_BOUNDS_CHECK=0` turns the check off (the course's own tests use it to produce a real crash).
"""
import contextlib
import os
import sys
import threading

from grader import settings

_state = threading.local()  # the running launch: kernel name and its tensor arguments
_writes: list[set] = []     # open `track_writes` collectors
_installed = False


class OutOfBoundsError(IndexError):
    """A kernel loaded or stored outside the memory of every tensor it was given."""


class _Tensor:
    """One tensor argument of a launch: its name and the bytes of its storage."""

    def __init__(self, name, tensor):
        storage = tensor.untyped_storage()
        self.name = name
        self.start = storage.data_ptr()
        self.end = self.start + storage.nbytes()
        self.first = tensor.data_ptr()  # the tensor's own first element (a view may start later)
        self.itemsize = tensor.element_size()
        self.shape = tuple(tensor.shape)

    def holds(self, lo, hi) -> bool:
        return self.start <= lo and hi <= self.end


def _tensors_of(name, value):
    if hasattr(value, "base") and hasattr(value, "block_shape"):  # a TensorDescriptor
        value = value.base
    if isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            yield from _tensors_of(f"{name}[{i}]", item)
    elif hasattr(value, "data_ptr") and hasattr(value, "untyped_storage"):
        yield _Tensor(name, getattr(value, "base", value) if type(value).__name__ == "TensorWrapper" else value)


def _shown(path: str) -> str:
    """A path as the student knows it: relative to the course, or to their submission folder."""
    from grader import impl

    for root in (str(impl.ROOT), str(impl.links_dir())):
        if path.startswith(root + os.sep):
            parts = os.path.relpath(path, root).split(os.sep)
            return os.sep.join(parts[1:] if parts[0].startswith(impl.SUBMISSION_PREFIX) else parts)
    return path


def _kernel_line() -> str:
    """file:line of the innermost frame of the student's kernel (not Triton's, numpy's or ours)."""
    import triton

    skip = (os.path.dirname(triton.__file__), os.path.dirname(os.__file__), __file__)
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(skip) and "numpy" not in path:
            return f"{_shown(path)}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def _check(kind: str, ptrs, mask, itemsize: int) -> None:
    import numpy as np

    launch = getattr(_state, "launch", None)
    if launch is None:
        return
    addrs = np.asarray(ptrs, dtype=np.uint64)
    if mask is not None:
        addrs = addrs[np.broadcast_to(np.asarray(mask, dtype=bool), addrs.shape)]
    else:
        addrs = addrs.reshape(-1)
    if addrs.size == 0:
        return
    lo, hi = int(addrs.min()), int(addrs.max()) + itemsize
    tensors = launch["tensors"]
    for t in tensors:  # the usual case: the whole access falls inside one tensor
        if t.holds(lo, hi):
            if kind == "store":
                for written in _writes:
                    written.add(t.start)
            return
    inside = np.zeros(addrs.shape, dtype=bool)
    for t in tensors:
        hit = (addrs >= t.start) & (addrs + itemsize <= t.end)
        if kind == "store" and hit.any():
            for written in _writes:
                written.add(t.start)
        inside |= hit
    if inside.all():
        return
    bad = int(addrs[~inside][0])
    raise OutOfBoundsError(_describe(kind, launch, bad, int((~inside).sum()), int(addrs.size)))


def _describe(kind, launch, address, n_bad, n_lanes) -> str:
    kernel = launch["kernel"]
    where = _kernel_line()
    program = launch.get("program")
    if not launch["tensors"]:
        return (f"out-of-bounds {kind} in `{kernel}` ({where}): the kernel was given no tensor, "
                f"yet it accessed address {address:#x}")

    def distance(t):
        return t.start - address if address < t.start else address - t.end + 1
    t = min(launch["tensors"], key=distance)
    index = (address - t.first) // t.itemsize
    length = (t.end - t.first) // t.itemsize
    side = (f"{-index} elements before its first element" if index < 0 else
            f"index {index}, past its last element {length - 1}")
    what = "load" if kind == "load" else "store"
    return (f"out-of-bounds {what} in `{kernel}` ({where}), program {program}: {n_bad} of the {n_lanes} "
            f"elements it {'loads' if kind == 'load' else 'stores'} fall outside every tensor it was given; "
            f"the first is `{t.name}` (shape {t.shape}) at {side}. Mask the {what} "
            f"(mask=offsets < n) so that lanes past the end are left alone")


@contextlib.contextmanager
def track_writes():
    """Collect the storage addresses that kernels store to while the block runs."""
    written: set = set()
    _writes.append(written)
    try:
        yield written
    finally:
        _writes.remove(written)


def checking() -> bool:
    return _installed


def install() -> None:
    """Wrap the interpreter's loads, stores and atomics with the bounds check (idempotent)."""
    global _installed
    if _installed or settings.BOUNDS_CHECK.get() == "0":
        return
    import numpy as np

    try:
        from triton.runtime.interpreter import GridExecutor, InterpreterBuilder, _get_np_dtype
        InterpreterBuilder.create_masked_load, InterpreterBuilder.create_atomic_cas  # noqa: B018
    except (ImportError, AttributeError):  # another Triton's interpreter: grade without the check
        return

    def itemsize_of(ptrs):
        return np.dtype(_get_np_dtype(ptrs.get_element_ty())).itemsize

    load, store = InterpreterBuilder.create_masked_load, InterpreterBuilder.create_masked_store
    rmw, cas = InterpreterBuilder.create_atomic_rmw, InterpreterBuilder.create_atomic_cas

    # Positional and keyword arguments pass through untouched: only the leading ones (pointers,
    # mask) are read, which keeps the wrappers valid across Triton versions.
    def create_masked_load(self, ptrs, mask, *args, **kwargs):
        _check("load", ptrs.data, mask.data, itemsize_of(ptrs))
        return load(self, ptrs, mask, *args, **kwargs)

    def create_masked_store(self, ptrs, value, mask, *args, **kwargs):
        _check("store", ptrs.data, mask.data, itemsize_of(ptrs))
        return store(self, ptrs, value, mask, *args, **kwargs)

    def create_atomic_rmw(self, rmwOp, ptr, val, mask, *args, **kwargs):
        _check("store", ptr.data, mask.data, itemsize_of(ptr))
        return rmw(self, rmwOp, ptr, val, mask, *args, **kwargs)

    def create_atomic_cas(self, ptr, *args, **kwargs):
        _check("store", ptr.data, None, itemsize_of(ptr))
        return cas(self, ptr, *args, **kwargs)

    set_grid_idx = InterpreterBuilder.set_grid_idx

    def set_grid_idx_and_note(self, *idx):
        launch = getattr(_state, "launch", None)
        if launch is not None:
            launch["program"] = tuple(idx)
        return set_grid_idx(self, *idx)

    call = GridExecutor.__call__

    def run_checked(self, *args, **kwargs):
        named = list(zip(self.arg_names, args)) + list(kwargs.items())
        tensors = [t for name, value in named for t in _tensors_of(name, value)]
        outer = getattr(_state, "launch", None)
        _state.launch = {"kernel": getattr(self.fn, "__name__", "kernel"), "tensors": tensors}
        try:
            return call(self, *args, **kwargs)
        finally:
            _state.launch = outer

    InterpreterBuilder.create_masked_load = create_masked_load
    InterpreterBuilder.create_masked_store = create_masked_store
    InterpreterBuilder.create_atomic_rmw = create_atomic_rmw
    InterpreterBuilder.create_atomic_cas = create_atomic_cas
    InterpreterBuilder.set_grid_idx = set_grid_idx_and_note
    GridExecutor.__call__ = run_checked
    _installed = True
