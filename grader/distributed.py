"""Run a function on W processes of one machine joined in a torch.distributed process group.

Ring attention is graded the way it runs: one process per rank, each with its own slice of the
sequence, talking through torch.distributed (gloo on a CPU, where each process runs the kernels on
Triton's interpreter; on a GPU machine gloo as well, the processes sharing the GPU, since NCCL
refuses two ranks on one device).

`run(target, world_size, payload)` starts the processes with the `spawn` method (a fresh Python
each: no inherited Triton or CUDA state), joined through a free local port, calls
`target(rank, world_size, payload)` (a module-level function, named "module:function") in each, and
returns the per-rank results. A rank that raises returns its error instead; ranks that do not finish
in `timeout` seconds (a send without its receive hangs forever) are killed and reported.
"""
import importlib
import socket
import tempfile
import traceback
from datetime import timedelta
from pathlib import Path

from grader import settings


class RankError(Exception):
    """An exception raised in a rank, carried back to the parent."""

    def __init__(self, rank, kind, message, cheat=False, function=None, detail=""):
        super().__init__(message)
        self.rank, self.kind, self.cheat, self.function, self.detail = rank, kind, cheat, function, detail


class Timeout(Exception):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world_size, port, target, payload_path, out_dir):
    from grader import bounds, runtime

    runtime.configure()
    if runtime.interpreting():
        bounds.install()
    import torch
    import torch.distributed as dist

    result = {}
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=float(settings.RING_TIMEOUT.get())))
        module, name = target.split(":")
        payload = torch.load(payload_path, weights_only=False)
        result = {"value": getattr(importlib.import_module(module), name)(rank, world_size, payload)}
    except BaseException as exc:  # noqa: BLE001 -- carried back to the parent, which raises it
        import types

        from grader import messages

        try:  # the line the grading table shows (a stub's TODO, the kernel's line, ...)
            text = messages.describe(types.SimpleNamespace(value=exc))
        except Exception:  # noqa: BLE001
            text = f"{type(exc).__name__}: {exc}"
        result = {"error": {"kind": type(exc).__name__, "message": text, "cheat": bool(getattr(exc, "cheat", False)),
                            "function": getattr(exc, "function", None),
                            "detail": "".join(traceback.format_exception(exc))[-4000:]}}
    finally:
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001
                pass


def run(target: str, world_size: int, payload, timeout: float = 180.0) -> list:
    """Per-rank return values of `target(rank, world_size, payload)`; raises the first rank's error
    (RankError) or Timeout."""
    import multiprocessing

    import torch

    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="fa-ring-") as out_dir:
        payload_path = Path(out_dir) / "payload.pt"
        torch.save(payload, payload_path)
        port = free_port()
        procs = [ctx.Process(target=_rank_main, args=(r, world_size, port, target, str(payload_path), out_dir),
                             daemon=True) for r in range(world_size)]
        from grader import remote

        with remote.secrets_hidden():  # a rank runs the graded code: no instructor secret in its environment
            for p in procs:
                p.start()
        import time

        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        results = []
        for r in range(world_size):
            path = Path(out_dir) / f"rank{r}.pt"
            # weights_only: tensors and plain data only; a rank's pickle must not run code here
            results.append(torch.load(path, weights_only=True) if path.exists() else None)
    errors = [(r, res["error"]) for r, res in enumerate(results) if res and "error" in res]
    # A rank's own error explains the others' (a peer that died leaves them waiting or failing).
    for r, err in sorted(errors, key=lambda e: "gloo" in e[1]["message"].lower() or "connection" in
                         e[1]["message"].lower()):
        raise RankError(r, err["kind"], err["message"], err["cheat"], err["function"], err["detail"])
    if hung:
        raise Timeout(f"ranks {hung} of {world_size} did not finish in {timeout:.0f} s: a send without its receive "
                      "(or a receive without its send) waits forever")
    missing = [r for r, res in enumerate(results) if res is None]
    if missing:
        raise RankError(missing[0], "crash", f"rank {missing[0]} of {world_size} died without a result "
                        f"(exit code {procs[missing[0]].exitcode})")
    return [res["value"] for res in results]

