"""Which rows of which tensors each program of a kernel loads, under Triton's interpreter.

A sliding window saves work only if the key blocks outside a query block's band are never loaded:
masking them gives the right numbers at full cost. Outputs cannot tell the two apart, the loads can.
`record_loads(q=..., k=...)` watches the interpreter's loads during a call and, per program of
every launch, the rows (index along N of a contiguous (B, H, N, D) tensor) it read of each named
tensor. `band_violation` then checks each program against the band: the key rows it loads must lie
within the band of the query rows it loads, give or take one block, and the other way round (the
dK/dV kernel owns keys and sweeps queries).
"""
import contextlib

import numpy as np


class Footprint:
    def __init__(self, tensors: dict):
        self.tensors = {}
        for name, t in tensors.items():
            if not t.is_contiguous() or t.dim() != 4:
                raise ValueError(f"{name}: record_loads needs contiguous (B, H, N, D) tensors")
            start = t.data_ptr()
            self.tensors[name] = (start, start + t.numel() * t.element_size(), t.element_size(), t.shape[2],
                                  t.shape[3])
        self.programs: dict[tuple, dict[str, set]] = {}  # (launch, kernel, program) -> name -> rows

    def note(self, where, ptrs, mask):
        addrs = np.asarray(ptrs, dtype=np.uint64)
        if mask is not None:
            addrs = addrs[np.broadcast_to(np.asarray(mask, dtype=bool), addrs.shape)]
        addrs = addrs.reshape(-1)
        if addrs.size == 0:
            return
        for name, (start, end, itemsize, n, d) in self.tensors.items():
            inside = addrs[(addrs >= start) & (addrs < end)]
            if inside.size:
                element = (inside - np.uint64(start)) // np.uint64(itemsize)
                rows = (element // np.uint64(d)) % np.uint64(n)
                self.programs.setdefault(where, {}).setdefault(name, set()).update(int(r) for r in np.unique(rows))

    def loaded(self, name) -> bool:
        return any(name in rows for rows in self.programs.values())


    def merge(self, programs: list, call: int) -> None:
        """Programs a worker recorded (grader.remote) during its `call`-th watched call."""
        for (launch, kernel, program), rows in programs:
            self.programs[(call * 1_000_000 + launch, kernel, tuple(program))] = {n: set(r) for n, r in rows.items()}

    def plain(self) -> list:
        """`programs` as plain data, for the grading process (grader.worker)."""
        return [[[launch, kernel, list(program)], {n: sorted(r) for n, r in rows.items()}]
                for (launch, kernel, program), rows in self.programs.items()]


@contextlib.contextmanager
def record_loads(**tensors):
    """In the grading process, the graded code's calls inside are watched by the worker, on its copies
    of these tensors (grader.remote.watching): the loads happen there."""
    from grader import remote

    if remote.active():
        fp = Footprint({})
        with remote.watching(fp, tensors):
            yield fp
        return
    from triton.runtime.interpreter import GridExecutor, InterpreterBuilder

    fp = Footprint(tensors)
    state = {"launch": 0, "kernel": "kernel", "program": ()}
    load, set_grid_idx, call = (InterpreterBuilder.create_masked_load, InterpreterBuilder.set_grid_idx,
                                GridExecutor.__call__)

    def create_masked_load(self, ptrs, mask, *args, **kwargs):
        fp.note((state["launch"], state["kernel"], state["program"]), ptrs.data,
                None if mask is None else mask.data)
        return load(self, ptrs, mask, *args, **kwargs)

    def note_program(self, *idx):
        state["program"] = tuple(int(i) for i in idx)
        return set_grid_idx(self, *idx)

    def run(self, *args, **kwargs):
        state["launch"] += 1
        state["kernel"] = getattr(self.fn, "__name__", "kernel")
        return call(self, *args, **kwargs)

    InterpreterBuilder.create_masked_load, InterpreterBuilder.set_grid_idx, GridExecutor.__call__ = \
        create_masked_load, note_program, run
    try:
        yield fp
    finally:
        InterpreterBuilder.create_masked_load, InterpreterBuilder.set_grid_idx, GridExecutor.__call__ = \
            load, set_grid_idx, call


def _span(rows) -> str:
    rows = sorted(rows)
    return f"{rows[0]}..{rows[-1]}" if len(rows) > 1 else str(rows[0])


def band_violation(fp: Footprint, left: int, right: int, slack: int, q="q", k="k") -> str | None:
    """The first program that loads rows outside the band (query i sees keys i - left .. i + right),
    by more than `slack` rows, described; None when every program stays inside."""
    for (launch, kernel, program), rows in fp.programs.items():
        qr, kr = rows.get(q), rows.get(k)
        if not qr or not kr:
            continue
        q_lo, q_hi, k_lo, k_hi = min(qr), max(qr), min(kr), max(kr)
        far_keys = [j for j in kr if j < q_lo - left - slack or j > q_hi + right + slack]
        if far_keys:
            return (f"program {program} of `{kernel}` loads query rows {_span(qr)}, which see keys "
                    f"{q_lo - left}..{q_hi + right} under the window, and also key rows {_span(far_keys)}")
        far_queries = [i for i in qr if i < k_lo - right - slack or i > k_hi + left + slack]
        if far_queries:
            return (f"program {program} of `{kernel}` loads key rows {_span(kr)}, which queries "
                    f"{k_lo - right}..{k_hi + left} see under the window, and also query rows {_span(far_queries)}")
    return None
