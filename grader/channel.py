"""The narrow channel between the trusted grader and the worker that runs the graded code.

Both directions are length-prefixed messages on a pair of pipes (not stdin and stdout: the graded code
prints where it likes). They are encoded differently on purpose:

- grader -> worker: `pickle`. The worker trusts the grader. Tensors travel as their whole storage
  (copied to host memory when they live on a GPU) plus size, stride, offset and device, so that a view
  (a transposed layout, rows padded with NaN past the end, q, k and v of one packed buffer) arrives
  with the same strides, the same neighbours and the same aliasing; a `Remote` travels as its handle.
- worker -> grader: `torch.save`, read back with `torch.load(weights_only=True)`, which builds tensors,
  numbers, strings, tuples, lists and dicts and nothing else: unpickling what the graded code produced
  would let it run code in the grader. Any other object stays in the worker and comes back as a
  marker dict naming its handle (`HANDLE`), which the grader wraps in a `grader.remote.Remote`.
"""
import io
import os
import pickle
import struct

import torch

HANDLE = "__fa_worker_handle__"  # a marker dict: {HANDLE: id, "repr": ..., "callable": ..., "module": ...}
ERROR = "__fa_worker_error__"    # a reply that carries an exception raised in the worker
_HEADER = struct.Struct("<Q")


class Closed(EOFError):
    """The other end is gone (the worker died)."""


def send(fd: int, payload: bytes) -> None:
    view = memoryview(_HEADER.pack(len(payload)) + payload)
    while view:
        view = view[os.write(fd, view):]


def _read_exactly(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:
            raise Closed("the worker closed the channel")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(fd: int) -> bytes:
    return _read_exactly(fd, _HEADER.unpack(_read_exactly(fd, _HEADER.size))[0])


# ---------------------------------------------------------------- grader -> worker (pickle)
class HandleRef:
    """A worker object named by its handle, as an argument of a request."""

    def __init__(self, handle: int):
        self.handle = handle


_moved_storages: dict = {}  # while one request is unpickled: one device copy per storage (aliasing kept)


def _rebuild_tensor(data, dtype, size, stride, offset, device):
    """`data`: the storage's bytes (a numpy array, unpickled once per storage, so views share it)."""
    key = (id(data), device)
    if key not in _moved_storages:
        storage = torch.from_numpy(data).untyped_storage()
        _moved_storages[key] = (data, storage if device == "cpu" else storage.to(device=device))  # ids stay unique
    storage = _moved_storages[key][1]
    return torch.empty(0, dtype=dtype, device=storage.device).set_(storage, offset, size, stride)


class _RequestPickler(pickle.Pickler):
    def __init__(self, file):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.storages: dict = {}  # (device, data_ptr) -> the host storage sent for it

    def reducer_override(self, obj):
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            key = (str(obj.device), storage.data_ptr())
            if key not in self.storages:
                host = storage if obj.device.type == "cpu" else storage.cpu()
                self.storages[key] = torch.empty(0, dtype=torch.uint8).set_(host).numpy()
            return _rebuild_tensor, (self.storages[key], obj.dtype, tuple(obj.shape), tuple(obj.stride()),
                                     obj.storage_offset(), str(obj.device))
        handle = getattr(type(obj), "_fa_handle_of", None)
        if handle is not None:  # a grader.remote.Remote
            return HandleRef, (handle(obj),)
        return NotImplemented


def encode_request(request: dict) -> bytes:
    buffer = io.BytesIO()
    _RequestPickler(buffer).dump(request)
    return buffer.getvalue()


def decode_request(payload: bytes) -> dict:
    try:
        return pickle.loads(payload)
    finally:
        _moved_storages.clear()


# ---------------------------------------------------------------- worker -> grader (weights_only)
PLAIN = (type(None), bool, int, float, str, bytes, torch.dtype, torch.device)


def encode_reply(reply) -> bytes:
    buffer = io.BytesIO()
    torch.save(reply, buffer)
    return buffer.getvalue()


def decode_reply(payload: bytes):
    """Only tensors, numbers, strings and containers of them: nothing the graded code wrote runs here."""
    return torch.load(io.BytesIO(payload), weights_only=True, map_location=None)
