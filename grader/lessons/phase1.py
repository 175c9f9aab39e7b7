"""Phase 1's numbers: the shared-memory budget of tiling, and the HBM traffic tiled attention keeps."""
from functools import partial

import torch

from grader import bench, timing
from grader.impl import ROOT
from grader.lessons import common

LESSON = ROOT / "exercises" / "phase1" / "README.md"
GB = 1e9
KiB = 1024
# Datasheet numbers: the most shared memory one thread block may use (A100: 164 KiB of its
# 192 KiB L1/shared; H100: 227 KiB of its 256 KiB).
SMEM = {"A100 (sm_80)": 164 * KiB, "H100 (sm_90)": 227 * KiB}


def pass_bytes(B, H, N, D, dtype_bytes=2, s_bytes=4):
    """HBM bytes each pass must move at least: what Phase 0's cost model counts, with S in float32."""
    qkv = dtype_bytes * B * H * N * D
    nn = B * H * N * N
    return {"scores": 2 * qkv + s_bytes * nn,                   # read q, k; write S
            "softmax": s_bytes * nn + dtype_bytes * nn,          # read S once; write P
            "pv": dtype_bytes * nn + 2 * qkv}                    # read P, v; write o


def measure():
    from solutions.phase1 import tiled_attention, tiled_scores
    from solutions.phase1.attention import softmax_tiles, tiled_pv

    copy_gbs = timing.copy_bandwidth_gbs(1 << 30)
    rows = []
    for D in (64, 128):
        for N in (1024, 2048, 4096):
            B, H, _, _ = bench.standard_shape(N, D)
            q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            s = tiled_scores(q, k)
            p = softmax_tiles(s, v.dtype)
            pass_ms = {"scores": timing.median_ms(partial(tiled_scores, q, k)),
                       "softmax": timing.median_ms(partial(softmax_tiles, s, v.dtype)),
                       "pv": timing.median_ms(partial(tiled_pv, p, v))}
            del s, p
            row = bench.measure(partial(tiled_attention, q, k, v), q, k, v, baselines=("flash", "math"))
            row["pass_ms"] = pass_ms
            row["pass_bytes"] = pass_bytes(B, H, N, D)
            row["peak_extra_bytes"] = timing.peak_extra_bytes(partial(tiled_attention, q, k, v))
            rows.append(row)
            print(f"tiled D={D} N={N}: {row['ms']:.2f} ms ({row['tflops']:.0f} TFLOPS), "
                  f"flash {row['flash_ms']:.2f} ms, math {row.get('math_ms', float('nan')):.2f} ms", flush=True)
            del q, k, v
            torch.cuda.empty_cache()
    common.save("phase1/tiled.json", {"copy_gbs": copy_gbs, "rows": rows})


def _budget_table() -> str:
    """Shared memory one program needs, bf16, D=128, N=4096 and 16384: which tiling fits."""
    D, b = 128, 2
    rows = []
    for N in (4096, 16384):
        plans = [("whole rows: all N queries and all N keys", 2 * N * D * b + N * N * 4),
                 ("tile queries only (64 rows) x all N keys", 64 * D * b + N * D * b + 64 * N * 4),
                 ("tile keys only (64 rows) x all N queries", N * D * b + 64 * D * b + N * 64 * 4),
                 ("tile both: 64 queries x 64 keys", 2 * 64 * D * b + 64 * 64 * 4)]
        for name, need in plans:
            fits = ["yes" if need <= cap else f"no ({need / cap:.0f}x over)" for cap in SMEM.values()]
            rows.append([f"N={N:,}", name, f"{need / KiB:,.0f} KiB", *fits])
    limits = []
    for name, cap in SMEM.items():
        n = max(n for n in range(1, 1 << 16) if 64 * D * b + n * D * b + 64 * n * 4 <= cap)
        limits.append(f"{n:,} on {name}")
    return common.markdown_table(["N", "what one program holds (q, k tiles and its block of S)", "bytes",
                                  *(f"fits {n}: {c // KiB} KiB" for n, c in SMEM.items())], rows) + (
        f"\nTiling only one side (64 rows, D={D}, bf16 inputs, float32 scores) fits only up to N = "
        f"{' and '.join(limits)}.\n")


def figures():
    done = []
    if common.replace_block(LESSON, "budget", _budget_table()):
        done.append("shared-memory budget table")
    data = common.load("phase1/tiled.json")
    if data is None:
        return done + ["no assets/phase1/tiled.json yet: run `make measure PHASE=1` on a GPU"]
    copy_gbs = data["copy_gbs"]
    rows = []
    for r in data["rows"]:
        B, H, N, D = r["B"], r["H"], r["Nq"], r["D"]
        rate = {k: timing.gbs(r["pass_bytes"][k], r["pass_ms"][k]) for k in r["pass_ms"]}
        model_ms = sum(r["pass_bytes"].values()) / (copy_gbs * GB) * 1e3
        rows.append([f"{B}x{H}x{N}x{D}",
                     *(f"{r['pass_ms'][k]:.2f} ms ({rate[k] / copy_gbs:.0%})" for k in ("scores", "softmax", "pv")),
                     f"{r['ms']:.2f} ms", f"{model_ms:.2f} ms", f"{r['peak_extra_bytes'] / 2**30:.2f} GiB",
                     f"{r.get('math_ms', float('nan')):.2f} ms", f"{r['flash_ms']:.2f} ms",
                     f"{r['ms'] / r['flash_ms']:.0f}x"])
    common.replace_block(LESSON, "traffic", common.markdown_table(
        ["B x H x N x D (bf16)", "pass 1: S = q k^T", "pass 2: P = softmax(S)", "pass 3: o = P v",
         "tiled_attention", "cost model at copy speed", "peak extra memory", "SDPA math", "SDPA flash",
         "tiled / flash"], rows)
        + f"\nEach pass: median time (and its cost-model bytes over that time, as a share of the measured "
          f"copy bandwidth {copy_gbs:,.0f} GB/s).\n\n" + common.measured_on(data["meta"]))
    done.append("traffic table")
    return done
