"""Fresh random inputs for graded calls, and the check that bad input is refused clearly."""
import math
import re

import torch

FLOAT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# Above this many elements a GPU case draws its values on the GPU: drawing 100 million normals on one
# CPU core takes about a second, and the throughput tests make several such tensors each.
DRAW_ON_DEVICE_FROM = 1 << 22


def randn(shape, dtype, device, gen, scale=1.0):
    """Normal values drawn from `gen`: on the CPU, then moved (the same values on any device), or
    for a large GPU tensor on the GPU, from a generator seeded by `gen` (reproducible on a GPU)."""
    if str(device).startswith("cuda") and math.prod(shape) >= DRAW_ON_DEVICE_FROM:
        seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        on_device = torch.Generator(device=device).manual_seed(seed)
        values = torch.randn(shape, generator=on_device, dtype=torch.float32, device=device)
        return (values * scale).to(dtype=dtype)
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * scale).to(dtype=dtype, device=device)


def qkv(B, H, Nq, Nk, D, dtype, device, gen, layout="bhnd"):
    """q (B, H, Nq, D), k and v (B, H, Nk, D).

    layout="bnhd" allocates (B, N, H, D) tensors and returns their transpose(1, 2) views, the
    non-contiguous layout that projections produce in a real model. layout="mixed" gives each tensor
    strides of its own: q contiguous, k a (B, N, H, D) transpose, v the second half of a (B, H, N, 2D)
    tensor (rows 2D apart), so that a launch passing one tensor's strides for another's reads wrong values.
    """
    def make(n, which):
        if layout == "bnhd" or (layout == "mixed" and which == "k"):
            return randn((B, n, H, D), dtype, device, gen).transpose(1, 2)
        if layout == "mixed" and which == "v":
            return randn((B, H, n, 2 * D), dtype, device, gen)[..., D:]
        return randn((B, H, n, D), dtype, device, gen)
    return make(Nq, "q"), make(Nk, "k"), make(Nk, "v")


NEGATIVE_LOGITS_SCALE = 1.0  # the sm_scale that qkv_negative_logits' scores are made for


def qkv_negative_logits(B, H, Nq, Nk, D, dtype, device, gen):
    """q, k, v whose every score q.k (at sm_scale NEGATIVE_LOGITS_SCALE) lies between about -150 and
    -110, so that every row's lse is below -88, where exp(-lse) overflows float32; the scores of a
    row still differ by a few units (a softmax far from one-hot). q and k point in opposite
    directions along one random unit vector, plus a little noise."""
    u = torch.randn(D, generator=gen)
    u = 12.0 * u / u.norm()
    q = (u + 0.3 * torch.randn((B, H, Nq, D), generator=gen)).to(dtype=dtype, device=device)
    k = (-u + 0.3 * torch.randn((B, H, Nk, D), generator=gen)).to(dtype=dtype, device=device)
    return q, k, randn((B, H, Nk, D), dtype, device, gen)


# A stride that fits in int32 while twice it does not: element [2, ...] of a view with this stride
# lies past 2**31, where a kernel that multiplies index * stride in int32 wraps around.
STRIDE_PAST_INT32 = 2**30 + 4096


def _storage_past_int32(numel, dtype, gen):
    storage = torch.empty(numel, dtype=dtype, device="cuda")  # about 4 GiB in 16 bits
    storage.normal_(generator=torch.Generator("cuda").manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen))))
    return storage


def qkv_past_int32(H, N, D, dtype, gen):
    """q, k, v (3, H, N, D) on one CUDA storage, batch stride STRIDE_PAST_INT32: batch 2 starts past
    element 2**31, so batch * stride overflows int32. Keep no other reference to them afterwards."""
    storage = _storage_past_int32(2 * STRIDE_PAST_INT32 + 3 * H * N * D, dtype, gen)
    strides = (STRIDE_PAST_INT32, N * D, D, 1)
    return tuple(storage.as_strided((3, H, N, D), strides, i * H * N * D) for i in range(3))


def rows_past_int32(width, dtype, gen):
    """x (3, width) on CUDA, rows STRIDE_PAST_INT32 apart: row 2 starts past element 2**31."""
    return _storage_past_int32(2 * STRIDE_PAST_INT32 + width, dtype, gen).as_strided((3, width),
                                                                                    (STRIDE_PAST_INT32, 1))


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
