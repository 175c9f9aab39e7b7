"""Throughput against SDPA, measured in the same process on the same inputs.

Used by the graders' throughput tier and by the measurement scripts that fill assets/. A ratio
against SDPA is portable across GPUs; absolute TFLOPS are always reported beside it.
"""
import contextlib

import torch

from grader import cost, timing

# The standard attention sweep: 16k tokens in total, hidden size 2048.
TOKENS, HIDDEN = 16384, 2048


def standard_shape(N: int, D: int) -> tuple[int, int, int, int]:
    """(B, H, N, D) with B*N = 16k tokens and H*D = 2048."""
    return TOKENS // N, HIDDEN // D, N, D


def _backend(name: str):
    from torch.nn.attention import SDPBackend

    return {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name]


@contextlib.contextmanager
def sdpa_backend(name: str):
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(_backend(name)):
        yield


def sdpa_callables(q, k, v, causal, backend: str) -> dict:
    """Zero-argument callables running SDPA's `backend`: fwd, bwd (from a saved graph), fwd_bwd."""
    def fwd():
        with sdpa_backend(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    with sdpa_backend(backend):
        o = torch.nn.functional.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
    do = torch.randn_like(o)

    def bwd():
        with sdpa_backend(backend):
            torch.autograd.grad(o, (qg, kg, vg), do, retain_graph=True)

    def fwd_bwd():
        with sdpa_backend(backend):
            out = torch.nn.functional.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
            torch.autograd.grad(out, (qg, kg, vg), do)

    return {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd_bwd}


def measure(candidate, q, k, v, causal=False, mode="fwd", baselines=("flash",)) -> dict:
    """Time `candidate()` and SDPA's `baselines` on the same inputs; TFLOPS and ratios.

    The ratio is candidate TFLOPS over baseline TFLOPS (> 1 means the candidate is faster).
    `candidate=None` times the baselines alone (the row then has no ms, tflops or ratios of ours).
    """
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    flops = cost.attention_flops(B, H, Nq, Nk, D, causal, mode)
    row = {"B": B, "H": H, "Nq": Nq, "Nk": Nk, "D": D, "causal": causal, "mode": mode,
           "dtype": str(q.dtype).removeprefix("torch."), "flops": flops}
    if candidate is not None:
        row["ms"] = timing.median_ms(candidate)
        row["tflops"] = timing.tflops(flops, row["ms"])
    for name in baselines:
        try:
            ms = timing.median_ms(sdpa_callables(q, k, v, causal, name)[mode])
        except RuntimeError as exc:  # a backend that refuses these inputs
            row[f"{name}_error"] = str(exc).splitlines()[0][:200]
            continue
        row[f"{name}_ms"] = ms
        row[f"{name}_tflops"] = timing.tflops(flops, ms)
        if candidate is not None:
            row[f"ratio_vs_{name}"] = row["tflops"] / row[f"{name}_tflops"]
    return row


def describe(row: dict, baseline="flash") -> str:
    """One line for the grade table: ours, SDPA's, the ratio."""
    shape = f"B={row['B']} H={row['H']} N={row['Nq']} D={row['D']} {row['dtype']}{' causal' if row['causal'] else ''}"
    return (f"{row['mode']} {shape}: {row['tflops']:.0f} TFLOPS vs SDPA {baseline} "
            f"{row.get(f'{baseline}_tflops', float('nan')):.0f} = {row.get(f'ratio_vs_{baseline}', float('nan')):.2f}x")


def bandwidth(candidate, nbytes: int, what: str, required: float, **extra) -> dict:
    """The grade of a memory-bound kernel: time `candidate()`, which moves `nbytes` through HBM,
    against a device-to-device copy on this GPU. A row for the report (ms, GB/s, the copy's GB/s,
    their ratio, the ratio required, a summary line), for `assert_bandwidth`."""
    copy_gbs = timing.copy_bandwidth_gbs()
    ms = timing.median_ms(candidate)
    gbs = timing.gbs(nbytes, ms)
    ratio = gbs / copy_gbs
    return {**extra, "ms": ms, "gbs": gbs, "copy_gbs": copy_gbs, "ratio": ratio, "required_ratio": required,
            "summary": f"{what} {gbs:.0f} GB/s = {ratio:.0%} of copy {copy_gbs:.0f} GB/s (needs {required:.0%})",
            "what": what}


def assert_bandwidth(row: dict):
    if not row["ratio"] >= row["required_ratio"]:  # NaN (a warm-up process) fails too
        raise AssertionError(f"{row['what']} moved {row['gbs']:.0f} GB/s, {row['ratio']:.0%} of this device's copy "
                             f"bandwidth {row['copy_gbs']:.0f} GB/s; needs at least {row['required_ratio']:.0%}")


def assert_ratio(row: dict, minimum: float, baseline="flash"):
    ratio = row.get(f"ratio_vs_{baseline}")
    if ratio is None:
        raise AssertionError(f"SDPA's {baseline} backend could not run here: {row.get(f'{baseline}_error')}")
    if ratio < minimum:
        raise AssertionError(f"{describe(row, baseline)}; needs at least {minimum:.2f}x")
