"""The NaN that fills `torch.empty*` outputs during a graded call, and how to recognise it later.

A NaN has spare mantissa bits (its payload). The grader's poison is a quiet NaN with a payload of
its own in each floating dtype, so that a NaN left in an output can be told apart:
- exactly the poison's bits: the element was never written (or was computed from an element that
  never was: float16/float32 arithmetic usually carries a NaN's payload along);
- any other NaN: computed by the code (0/0, inf - inf, a fully masked softmax row).
Only an exact bit match counts as poison. Converting a poisoned buffer to another dtype (a float32
accumulator returned `.to(q.dtype)`) changes the bits in a way torch decides: those converted
patterns are recognised too where they differ from what a plain NaN converts to, and reported as
undecidable where they do not (torch turns every float32 NaN into the same bfloat16 NaN on a CPU).
"""
import functools

import torch

# Quiet NaNs (the top mantissa bit set, so no operation "quiets" them) with a distinct payload.
PAYLOADS = {torch.float16: 0x7E5A, torch.bfloat16: 0x7FDA, torch.float32: 0x7FE05EED,
            torch.float64: 0x7FF8DEAD5EED0000}
_SAME_SIZE_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(_SAME_SIZE_INT[t.element_size()])


def fill(t: torch.Tensor) -> torch.Tensor:
    """Fill `t` (floating point) with the poison of its dtype, in place."""
    if t.dtype in PAYLOADS:
        _bits(t).fill_(PAYLOADS[t.dtype])
    else:  # a dtype without a payload of ours (float8): a plain NaN, reported as "NaN or inf"
        t.fill_(float("nan"))
    return t


@functools.lru_cache(maxsize=None)
def _patterns(dtype: torch.dtype, device: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Bit patterns (as `_bits` reads them) in `dtype`: the grader's poison, and the undecidable
    ones (the poison of another dtype converted to this one, the same as a plain NaN converted)."""
    poison, undecidable = {PAYLOADS[dtype]}, set()
    for source in PAYLOADS:
        if source == dtype:
            continue
        poisoned = _bits(fill(torch.empty(1, dtype=source, device=device)).to(dtype))
        plain = _bits(torch.full((1,), float("nan"), dtype=source, device=device).to(dtype))
        (undecidable if torch.equal(poisoned, plain) else poison).add(int(poisoned.item()))
    return tuple(sorted(poison)), tuple(sorted(undecidable - poison))


def recognisable(dtype: torch.dtype) -> bool:
    return dtype in PAYLOADS


def classify(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two boolean masks over `t`: exactly the grader's poison (never written), and NaNs whose bits
    cannot tell (a converted poison that looks like any converted NaN)."""
    if t.dtype not in PAYLOADS:
        none = torch.zeros(t.shape, dtype=torch.bool, device=t.device)
        return none, none
    bits = _bits(t)
    poison, undecidable = (torch.tensor(p, dtype=bits.dtype, device=t.device)
                           for p in _patterns(t.dtype, t.device.type))
    return torch.isin(bits, poison), torch.isin(bits, undecidable)
