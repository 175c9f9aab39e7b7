"""Fresh random inputs for graded calls, and the check that bad input is refused clearly."""
import re

import torch

FLOAT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def randn(shape, dtype, device, gen, scale=1.0):
    """Normal values drawn on the CPU from `gen` (reproducible on any device), then moved."""
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * scale).to(dtype=dtype, device=device)


def qkv(B, H, Nq, Nk, D, dtype, device, gen, layout="bhnd"):
    """q (B, H, Nq, D), k and v (B, H, Nk, D).

    layout="bnhd" allocates (B, N, H, D) tensors and returns their transpose(1, 2) views, the
    non-contiguous layout that projections produce in a real model.
    """
    def make(n):
        if layout == "bnhd":
            return randn((B, n, H, D), dtype, device, gen).transpose(1, 2)
        return randn((B, H, n, D), dtype, device, gen)
    return make(Nq), make(Nk), make(Nk)


def _is_todo(exc: BaseException) -> bool:
    """A stub's message (`phase N: ...`) anywhere in the exception's chain."""
    while exc is not None:
        if isinstance(exc, NotImplementedError) or re.search(r"phase \d+: ", str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def assert_accepts(fn, what: str):
    """Good input must not be refused: `fn()` may not raise ValueError or TypeError.

    A bad-input test checks input handling only. Its good call keeps a function that refuses
    everything from earning the point; the values it returns, and errors of the computation itself,
    are what the other tests grade (a wrong kernel must not cost this point). A stub's TODO still fails.
    """
    try:
        fn()
    except (ValueError, TypeError) as exc:
        if _is_todo(exc):
            raise
        first = str(exc).splitlines()[0][:120] if str(exc) else ""
        raise AssertionError(f"good input ({what}) was refused: {type(exc).__name__}: {first}") from None
    except Exception as exc:  # noqa: BLE001 -- a computation error: the other tests report it
        if _is_todo(exc):
            raise


def assert_refuses(fn, error: type, name: str, what: str):
    """`fn()` must raise `error` (ValueError or TypeError) whose message names the argument."""
    try:
        fn()
    except error as exc:
        if name not in str(exc):
            raise AssertionError(f"bad input ({what}): {error.__name__} raised, but its message does not "
                                 f"name {name!r}: {str(exc)[:120]!r}") from None
        return
    except NotImplementedError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0][:120] if str(exc) else ""
        raise AssertionError(f"bad input ({what}) should raise {error.__name__} naming {name!r}, "
                             f"got {type(exc).__name__}: {first}") from None
    raise AssertionError(f"bad input ({what}) should raise {error.__name__} naming {name!r}; nothing was raised")



def assert_rowwise_refusals(fn, device):
    """What every row-wise softmax must refuse: integers, a 0-d tensor, and a CPU tensor on a GPU run."""
    assert_refuses(lambda: fn(torch.ones(3, 4, dtype=torch.int32, device=device)), TypeError, "x", "an integer tensor")
    assert_refuses(lambda: fn(torch.tensor(1.0, device=device)), ValueError, "x", "a 0-d tensor")
    if device == "cuda":
        assert_refuses(lambda: fn(torch.ones(3, 4)), ValueError, "x", "a CPU tensor on a GPU run")
