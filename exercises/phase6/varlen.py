"""The packed layout of variable-length batches, and the checks that keep a kernel from reading
past a sequence: flash-attn's `flash_attn_varlen_func` interface.

A batch of sequences of different lengths is stored packed, one token after another, with no
padding: q is (total_q, H, D), k and v (total_k, H, D). `cu_seqlens_q` (int32, batch + 1 entries)
holds the prefix sums of the lengths: sequence b owns rows cu_seqlens_q[b] .. cu_seqlens_q[b + 1].
`max_seqlen_q` is the longest length: the kernels size their grid with it without reading
cu_seqlens on the host.

A wrong cu_seqlens is a silently wrong answer, so every call checks it, in two steps.
`check_varlen` (types, shapes, devices, numbers of entries) needs no value of cu_seqlens and runs
at the start of a call. `CuSeqlensCheck` checks the values, and the values live on the GPU: the
host sees them only through a copy that it must wait for. Waited for before the launch, that copy
drains the GPU (it comes after everything queued before it), and the GPU then idles for the whole
Python path from the copy to the launch: tens of microseconds per call, which a short forward
kernel cannot hide. So the check runs *while the forward kernel runs*. Started before the launch,
it makes a side stream wait for what the current stream holds so far (the producers of
cu_seqlens); after the launch it copies the values on that side stream, beside the kernel, waits
for that copy only, and checks them on the host. Bad values raise from the call, as a check made
first would; the kernel's output is dropped. The host still waits once per call, but for work
queued before this call's kernel, which is then queued too: the GPU goes from the previous work
straight to it. And it waits once per cu_seqlens, not once per call: a model passes its batch's one
cu_seqlens to every layer, and a verdict is kept for those very tensors while PyTorch's version
counter says they are unchanged (`_Passed`).

Launched before its inputs are known to be good, the forward kernel must be safe for *any* values
of cu_seqlens: it clamps each sequence into the pack (forward.py), so that no value can send a load
or a store outside q, k, v, o or lse. The backward needs no check: it follows a forward that
passed, with the same cu_seqlens (autograd refuses a saved tensor modified in place since).
"""
import weakref

import torch

from ..phase0.checks import check_attention_inputs


def as_heads(x):
    """(total, H, D) seen as (1, H, total, D): the dense kernels' (B, H, N, D) view, no copy."""
    return x.unsqueeze(0).transpose(1, 2)


def check_packed_inputs(q, k, v):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if isinstance(x, torch.Tensor) and x.dim() != 3:
            raise ValueError(f"{name} must have 3 dimensions (total_tokens, H, D), got shape {tuple(x.shape)}")
    check_attention_inputs(*(as_heads(x) if isinstance(x, torch.Tensor) else x for x in (q, k, v)))


def _check_cu_type(cu_seqlens, name, device):
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of int32, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype != torch.int32:
        raise TypeError(f"{name} must have dtype int32, got {str(cu_seqlens.dtype).removeprefix('torch.')}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"{name} must be 1-D with batch + 1 >= 2 entries, got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != device:
        raise ValueError(f"{name} is on {cu_seqlens.device}, q on {device}")


def check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
    """Shapes, dtypes and devices of the packed inputs and of cu_seqlens, and max_seqlen's type:
    everything that needs no value of cu_seqlens (nothing waits for the GPU)."""
    check_packed_inputs(q, k, v)
    _check_cu_type(cu_seqlens_q, "cu_seqlens_q", q.device)
    _check_cu_type(cu_seqlens_k, "cu_seqlens_k", q.device)
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must describe one batch: {cu_seqlens_q.numel()} and "
                         f"{cu_seqlens_k.numel()} entries")
    for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _lengths(bounds, name, total):
    if bounds[0] != 0:
        raise ValueError(f"{name} must start at 0, got {bounds[0]}")
    lengths = [b - a for a, b in zip(bounds, bounds[1:])]
    if min(lengths) < 0:
        at = lengths.index(min(lengths))
        raise ValueError(f"{name} must be non-decreasing (prefix sums of lengths), but entry {at + 1} = "
                         f"{bounds[at + 1]} < entry {at} = {bounds[at]}")
    if bounds[-1] != total:
        raise ValueError(f"{name}'s last entry {bounds[-1]} must equal the number of packed tokens {total}")
    return lengths


_SIDE_STREAMS: dict = {}


def _side_stream(device) -> "torch.cuda.Stream":
    """One stream per GPU for the values' copy, beside the kernels of the current stream."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SIDE_STREAMS:
        _SIDE_STREAMS[index] = torch.cuda.Stream(device=index)
    return _SIDE_STREAMS[index]


class CuSeqlensCheck:
    """The values of cu_seqlens (already through `check_varlen`), checked on the host while the forward
    kernel runs: prefix sums from 0 to the number of packed tokens, none longer than max_seqlen.

    Make it before the launch and call `finish()` after it (see the module's docstring):
        check = CuSeqlensCheck(cu_seqlens_q, cu_seqlens_k, total_q, total_k, max_seqlen_q, max_seqlen_k)
        kernel[grid](...)        # safe for any values: it clamps each sequence into the pack
        check.finish()           # ValueError if the values are bad; else (lengths of q, of k)
    """

    REMEMBER = True  # keep verdicts (_Passed); the lesson's measurement turns it off to price a check per call

    def __init__(self, cu_seqlens_q, cu_seqlens_k, total_q, total_k, max_seqlen_q, max_seqlen_k):
        self.cu = (cu_seqlens_q, cu_seqlens_k)
        self.sizes = (total_q, total_k, max_seqlen_q, max_seqlen_k)
        self.side = None
        # These very tensors passed before, unchanged since: nothing to read.
        self.known = _PASSED.get(self.cu, self.sizes) if self.REMEMBER else None
        if cu_seqlens_q.is_cuda and self.known is None:
            # The copy will wait for what the current stream holds now (whatever wrote cu_seqlens),
            # not for the kernel launched next: made after the launch, it runs beside that kernel.
            self.side = _side_stream(cu_seqlens_q.device)
            self.side.wait_stream(torch.cuda.current_stream(cu_seqlens_q.device))

    def values(self) -> list[int]:
        """Both tensors' entries on the host, cu_seqlens_q's first."""
        cu_q, cu_k = self.cu
        if self.side is None:  # CPU (the interpreter): the values are already on the host
            return cu_q.tolist() + cu_k.tolist()
        # Two copies into pinned memory, the copy engine's work: no kernel on the side stream, which
        # would wait for a free SM behind the forward kernel's programs.
        host = torch.empty(cu_q.numel() + cu_k.numel(), dtype=torch.int32, pin_memory=True)
        with torch.cuda.stream(self.side):
            host[:cu_q.numel()].copy_(cu_q, non_blocking=True)
            host[cu_q.numel():].copy_(cu_k, non_blocking=True)
            landed = self.side.record_event()
        landed.synchronize()  # the host waits for the copy only; the kernel goes on
        return host.tolist()

    def finish(self):
        """Returns (lengths of q, of k), or raises ValueError naming the argument."""
        if self.known is not None:
            return self.known
        bounds = self.values()
        total_q, total_k, max_seqlen_q, max_seqlen_k = self.sizes
        n = self.cu[0].numel()
        len_q = _lengths(bounds[:n], "cu_seqlens_q", total_q)
        len_k = _lengths(bounds[n:], "cu_seqlens_k", total_k)
        for name, value, lengths in (("max_seqlen_q", max_seqlen_q, len_q), ("max_seqlen_k", max_seqlen_k, len_k)):
            if value < max(lengths):
                raise ValueError(f"{name}={value} is smaller than the longest sequence ({max(lengths)} tokens): "
                                 "the kernels would skip its last rows")
        _PASSED.add(self.cu, self.sizes, (len_q, len_k))
        return len_q, len_k


class _Passed:
    """cu_seqlens pairs whose values passed the check, each with the version it had then.

    A model calls attention once per layer with its batch's one cu_seqlens (a data loader makes it once):
    the values are read and checked on the first call, and the later calls find the verdict here and wait
    for nothing. A verdict holds for the very same tensor objects with the same sizes, only while PyTorch's
    version counter of each is unchanged (every in-place write through PyTorch moves it: `cu[1] = 5`,
    `copy_`, `out=`); a new tensor, even with the same values or memory, is checked again. A kernel that
    rewrote cu_seqlens through its raw pointer would not move the counter: make a new tensor instead. The
    kernels clamp whatever values they get (forward.py), so no value can make them read out of bounds.
    """

    LIMIT = 64  # pairs remembered; the oldest goes first

    def __init__(self):
        self.entries: dict = {}  # (id, id) -> (weak refs, versions, sizes, lengths)

    def get(self, cu, sizes):
        entry = self.entries.get((id(cu[0]), id(cu[1])))
        if entry is None:
            return None
        refs, versions, known_sizes, lengths = entry
        same = all(ref() is t for ref, t in zip(refs, cu)) and versions == tuple(t._version for t in cu)
        return lengths if same and known_sizes == sizes else None

    def add(self, cu, sizes, lengths):
        if len(self.entries) >= self.LIMIT:
            self.entries.pop(next(iter(self.entries)))
        self.entries[(id(cu[0]), id(cu[1]))] = (tuple(weakref.ref(t) for t in cu), tuple(t._version for t in cu),
                                                sizes, lengths)


_PASSED = _Passed()
