"""Which condition a wrong attention forward follows, in one line.

When a correctness case fails, its message says how wrong o is, not why. `diagnose` re-runs the
forward on probes that each add one condition to a small case that every right kernel gets right:
first key counts from 16 to 512 (one block or several, a multiple of the block or not; and when
every count fails, 256 queries instead of 16), then one query row, several batches and heads, a
custom scale, strided inputs, scores shifted by a large constant or falling from block to block,
the causal mask (square, then Nq != Nk), 16-bit inputs. The first condition that fails is named,
with where to look ("wrong only when the keys span more than one block: is acc rescaled ...").

    diagnose(forward, causal=True, dtype=torch.float16, device="cpu")

`forward(q, k, v, causal, sm_scale) -> o`. The block sizes are the student's, so the probes use key
counts that tell the conditions apart for any block of 16 to 256 keys (see KEY_COUNTS).
"""
import contextlib
import re
from dataclasses import dataclass

import torch

from grader import numerics
from grader.inputs import qkv

SEED = 2024


@dataclass(frozen=True)
class Probe:
    name: str
    Nq: int
    Nk: int
    verdict: str  # what it means when this probe is the first to fail
    causal: bool = False
    sm_scale: float | None = None
    layout: str = "bhnd"
    shift: float = 0.0  # added to key feature 0 while query feature 0 is 1: every score of a row moves alike
    fall: float = 0.0  # as shift, but falling from `fall` at key 0 to 0 at the last key: later blocks score lower
    half: bool = False  # the failing case's 16-bit dtype instead of float32
    D: int = 32
    B: int = 1
    H: int = 1


# Key counts tried first, 16 queries, float32, no mask: which of them fail tells the block bugs apart
# without knowing the student's block (16 to 256 keys): a missing rescale fails from some count up, a
# missing tail mask fails on counts that are no multiple of the block, also below ones that pass.
KEY_COUNTS = (16, 32, 64, 128, 256, 512, 500)
CORE = ("wrong even with 16 keys (one key block, one head, float32, no mask), with 16 queries and with 256: the"
        " scores, the softmax or P v themselves")
QUERY_TAIL = ("wrong only when Nq is no multiple of the query block (16 queries fail, 256 pass): does the grid round"
              " the query blocks up, and are the query rows' loads and stores masked?")
SEVERAL_BLOCKS = ("wrong only when the keys span more than one block ({n} keys and up fail, {ok} pass): are acc and"
                  " l rescaled by alpha when the running max changes?")
KEY_TAIL = ("wrong only when Nk is no multiple of the key block ({bad} keys fail, {ok} pass): are the tail keys'"
            " loads masked and their scores set to -inf?")
# Then one condition at a time, on 500 keys (several blocks and a tail, which passed above).
PROBES = (
    Probe("one-row", 1, 500, "wrong only with a single query row: the masks of the query block's loads and stores"
          " (rows past Nq)?"),
    Probe("heads", 16, 500, "wrong only with several batches and heads (B = 2, H = 3): does the grid cover every"
          " (batch, head), and does each program offset q, k, v and o by its own?", B=2, H=3),
    Probe("scale", 16, 500, "wrong only with a custom sm_scale (0.3): is sm_scale used as given (and folded with"
          " log2(e) once)?", sm_scale=0.3),
    Probe("transposed", 16, 500, "wrong only for non-contiguous inputs ((B, N, H, D) tensors seen as (B, H, N, D)):"
          " does every tensor, o included, use its own strides?", layout="bnhd", B=2, H=3),
    Probe("strided", 16, 500, "wrong only for non-contiguous inputs (q, k and v each with strides of its own): does"
          " each tensor use its own strides, for its batch and head offsets too?", layout="mixed", B=2, H=3),
    Probe("shifted", 16, 500, "wrong only when every score of a row is shifted by a large constant (softmax does not"
          " change): is the running max subtracted before exp?", shift=1000.0),
    Probe("falling", 16, 500, "wrong only when the scores fall by hundreds from the first key blocks to the last: is"
          " m the running max over every block seen (never one block's own max), so that alpha <= 1?", fall=1000.0),
    Probe("causal", 300, 300, "wrong only under the causal mask (Nq = Nk = 300): the mask of the diagonal blocks, or"
          " the key range (full, end)?", causal=True),
    Probe("causal-more-keys", 100, 300, "wrong only under the causal mask with Nk > Nq (top-left: query i sees keys"
          " j <= i): the key range assumes Nq = Nk?", causal=True),
    Probe("causal-more-queries", 300, 100, "wrong only under the causal mask with Nq > Nk (rows i >= Nk see every"
          " key up to Nk): is the key range capped at Nk, and the key-tail mask kept beside the causal one?",
          causal=True),
    Probe("16-bit", 16, 500, "wrong only in 16 bits: is p cast to v's dtype just before the second dot, with acc,"
          " m and l kept in float32?", half=True),
)


def key_verdict(failing: set[int]) -> str | None:
    """The condition of the key counts that fail, from KEY_COUNTS; None when none fails."""
    if not failing:
        return None
    passing = [n for n in KEY_COUNTS if n not in failing]
    powers = [n for n in KEY_COUNTS if n & (n - 1) == 0]
    upward_closed = all(m in failing for n in failing for m in powers if m > n)
    if passing and (not upward_closed or (500 in failing and 512 not in failing)):
        return KEY_TAIL.format(bad=", ".join(str(n) for n in sorted(failing)), ok=", ".join(map(str, sorted(passing))))
    if passing:
        return SEVERAL_BLOCKS.format(n=min(failing), ok=", ".join(map(str, sorted(passing))))
    return CORE


def _inputs(probe: Probe, dtype, device):
    gen = torch.Generator(device="cpu").manual_seed(SEED)
    q, k, v = qkv(probe.B, probe.H, probe.Nq, probe.Nk, probe.D, dtype, "cpu", gen, probe.layout)
    if probe.shift or probe.fall:
        q, k = q.clone(), k.clone()
        q[..., 0] = 1.0
        k[..., 0] += probe.shift + probe.fall * torch.linspace(1, 0, probe.Nk, dtype=k.dtype)
    return tuple(t.to(device) for t in (q, k, v))


def fails(forward, probe: Probe, dtype, device) -> bool:
    """Whether `forward` gets this probe wrong: an error, a result off by more than the grading rule."""
    q, k, v = _inputs(probe, dtype if probe.half else torch.float32, device)
    try:
        o = forward(q, k, v, probe.causal, probe.sm_scale)
        numerics.assert_attention_output(o, q, k, v, probe.causal, probe.sm_scale)
    except Exception:  # noqa: BLE001 -- any failure of the probe counts; its own message is the case's
        return True
    return False


def probes_for(causal: bool, dtype) -> list[Probe]:
    """The probes that apply: causal ones only for a causal case, the 16-bit one only for a 16-bit case."""
    return [p for p in PROBES if (causal or not p.causal) and (dtype != torch.float32 or not p.half)]


def diagnose(forward, *, causal=False, dtype=torch.float32, device="cpu") -> str:
    """One line: the condition of the first probe `forward` gets wrong, or that every probe passes."""
    failing = {n for n in KEY_COUNTS if fails(forward, Probe(f"keys-{n}", 16, n, ""), dtype, device)}
    verdict = key_verdict(failing)
    if verdict == CORE and any(not fails(forward, Probe(f"queries-256-keys-{n}", 256, n, ""), dtype, device)
                               for n in KEY_COUNTS):
        verdict = QUERY_TAIL  # 16 queries are part of one query block; 256 fill whole ones
    if verdict is None:
        verdict = next((p.verdict for p in probes_for(causal, dtype) if fails(forward, p, dtype, device)), None)
    if verdict is None:
        return ("diagnosis: every probe passes (one and several key blocks, key tails, one row, heads, shifted scores,"
                " a custom scale, strides" + (", causal" if causal else "") + "): the failure follows this case's own"
                " sizes")
    return f"diagnosis: {verdict}"


# The failures a diagnosis can speak to: o itself wrong (numerics.assert_close's messages for o).
WRONG_O = re.compile(r"^o: (max \|error\||\d+ of \d+ values are NaN or inf)")
_diagnosed: dict[tuple, str] = {}  # one diagnosis per graded function, mask and dtype in a grading process


@contextlib.contextmanager
def explained(name: str, forward, *, causal: bool, dtype, device):
    """Run a correctness check; when it fails because o is wrong, its message gains the diagnosis line
    (computed once per graded function `name`, mask and dtype: it does not depend on the case)."""
    try:
        yield
    except AssertionError as exc:
        if type(exc) is not AssertionError or not WRONG_O.match(str(exc)):
            raise
        key = (name, causal, dtype, str(device))
        if key not in _diagnosed:
            _diagnosed[key] = diagnose(forward, causal=causal, dtype=dtype, device=device)
        raise AssertionError(f"{exc} | {_diagnosed[key]}") from None
