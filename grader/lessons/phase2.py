"""Phase 2's numbers: tuning and speed of flash_attention_v1 against SDPA, its memory against the
tiled and naive versions, online softmax's bandwidth and what it does with large logits."""
import math
from functools import partial

import torch

from grader import bench, timing
from grader.impl import ROOT
from grader.lessons import common

LESSON = ROOT / "exercises" / "phase2" / "README.md"
# (BLOCK_M, BLOCK_N, num_warps, num_stages) tried per head dim by `tune()`.
CANDIDATES = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 64, 4, 4), (128, 128, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3)]


def _naive(q, k, v):
    return torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1) @ v


def _torch_softmax(x):
    return torch.softmax(x, dim=-1)


def tune():
    """Time every candidate configuration at N = 4k and 16k, D = 64 and 128 (bf16, standard shapes)."""
    from solutions.phase2.flash import launch

    rows = []
    for D in (64, 128):
        for N in (4096, 16384):
            B, H, _, _ = bench.standard_shape(N, D)
            q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            flops = 4.0 * B * H * N * N * D
            flash_tflops = timing.tflops(flops, timing.median_ms(bench.sdpa_callables(q, k, v, False, "flash")["fwd"]))
            for cfg in CANDIDATES:
                try:
                    ms = timing.median_ms(partial(launch, q, k, v, D ** -0.5, *cfg))
                except Exception as exc:  # noqa: BLE001 -- a configuration that does not compile or fit
                    rows.append({"D": D, "N": N, "config": cfg, "error": str(exc).splitlines()[0][:200]})
                    continue
                tflops = timing.tflops(flops, ms)
                rows.append({"D": D, "N": N, "config": cfg, "ms": ms, "tflops": tflops,
                             "flash_tflops": flash_tflops, "ratio_vs_flash": tflops / flash_tflops})
                print(f"tune D={D} N={N} {cfg}: {tflops:.0f} TFLOPS = {rows[-1]['ratio_vs_flash']:.2f}x flash",
                      flush=True)
            del q, k, v
    best = {}
    for D in (64, 128):
        scores = {}
        for cfg in CANDIDATES:
            ratios = [r["ratio_vs_flash"] for r in rows if r["D"] == D and tuple(r["config"]) == cfg and "ms" in r]
            if len(ratios) == 2:
                scores[cfg] = math.prod(ratios) ** 0.5
        best[D] = max(scores, key=scores.get)
        print(f"best for D={D}: {best[D]} ({scores[best[D]]:.2f}x flash, geometric mean over N)", flush=True)
    common.save("phase2/tuning.json", {"candidates": CANDIDATES, "rows": rows,
                                       "best": {str(d): list(c) for d, c in best.items()}})


def measure():
    from solutions.phase0 import softmax
    from solutions.phase1 import tiled_attention
    from solutions.phase2 import flash_attention_v1, online_softmax
    from solutions.phase2.flash import CONFIGS

    rows = []
    for D in (64, 128):
        for N in (512, 1024, 2048, 4096, 8192, 16384):
            B, H, _, _ = bench.standard_shape(N, D)
            q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            row = bench.measure(partial(flash_attention_v1, q, k, v), q, k, v, baselines=("flash", "cudnn"))
            row["config"] = list(CONFIGS[D])
            rows.append(row)
            print(f"flash_v1 D={D} N={N}: {row['tflops']:.0f} TFLOPS = {row['ratio_vs_flash']:.2f}x flash, "
                  f"{row.get('ratio_vs_cudnn', float('nan')):.2f}x cudnn", flush=True)
            del q, k, v
    common.save("phase2/flash_v1.json", {"rows": rows})

    memory = []
    for N in (1024, 2048, 4096, 8192):
        q, k, v = (torch.randn(1, 8, N, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        memory.append({"B": 1, "H": 8, "N": N, "D": 64,
                       "flash_v1": timing.peak_extra_bytes(partial(flash_attention_v1, q, k, v)),
                       "tiled": timing.peak_extra_bytes(partial(tiled_attention, q, k, v)),
                       "naive": timing.peak_extra_bytes(partial(_naive, q, k, v))})
        del q, k, v
    common.save("phase2/memory.json", {"rows": memory})

    bandwidth = []
    total = 1 << 28
    for width in (128, 1024, 4096, 16384, 65536):
        x = torch.randn(total // 2 // width, width, device="cuda", dtype=torch.bfloat16)
        nbytes = 2 * x.numel() * x.element_size()
        entry = {"rows": x.shape[0], "width": width}
        for name, fn in (("online", online_softmax), ("phase0", softmax),
                         ("torch", _torch_softmax)):
            entry[f"{name}_gbs"] = timing.gbs(nbytes, timing.median_ms(partial(fn, x)))
        bandwidth.append(entry)
        print(f"softmax width {width}: online {entry['online_gbs']:.0f} GB/s, phase 0 {entry['phase0_gbs']:.0f}, "
              f"torch {entry['torch_gbs']:.0f}", flush=True)

    # Large logits: a naive softmax (exp first, then normalise) against the online one.
    x = torch.tensor([[1e4, 1e4 + 1.0, 1e4 - 2.0, 1e4 + 0.5]], device="cuda", dtype=torch.float32)
    e = torch.exp(x)
    overflow = {"x": x[0].tolist(), "naive_exp": e[0].tolist(), "naive": (e / e.sum(-1, keepdim=True))[0].tolist(),
                "online": online_softmax(x)[0].tolist(),
                "exact": torch.softmax(x.double(), dim=-1)[0].tolist()}
    common.save("phase2/online_softmax.json", {"copy_gbs": timing.copy_bandwidth_gbs(1 << 30),
                                               "bandwidth": bandwidth, "overflow": overflow})


def _fmt(x):
    return "nan" if math.isnan(x) else ("inf" if x == math.inf else f"{x:.6g}")


def _plot(data) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, D in zip(axes, (64, 128)):
        rows = [r for r in data["rows"] if r["D"] == D]
        ns = [r["Nq"] for r in rows]
        ax.plot(ns, [r["tflops"] for r in rows], "o-", label="flash_attention_v1 (Triton)")
        ax.plot(ns, [r["flash_tflops"] for r in rows], "s--", label="SDPA flash (FlashAttention-2)")
        if all("cudnn_tflops" in r for r in rows):
            ax.plot(ns, [r["cudnn_tflops"] for r in rows], "^:", label="SDPA cuDNN")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length N (16k tokens, hidden 2048)")
        ax.set_title(f"forward, non-causal, bf16, D={D}")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("TFLOPS")
    axes[0].legend(fontsize=8)
    fig.suptitle(data["meta"]["device"])
    fig.tight_layout()
    path = common.ASSETS / "phase2" / "flash_v1.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path.relative_to(ROOT))


def figures():
    done = []
    tuning = common.load("phase2/tuning.json")
    if tuning:
        rows = []
        for D in (64, 128):
            for cfg in tuning["candidates"]:
                cells = []
                for N in (4096, 16384):
                    r = next((r for r in tuning["rows"] if r["D"] == D and r["N"] == N and r["config"] == cfg), None)
                    cells.append("error" if r is None or "ms" not in r
                                 else f"{r['tflops']:.0f} ({r['ratio_vs_flash']:.2f}x)")
                best = " (best)" if tuning["best"].get(str(D)) == cfg else ""
                rows.append([D, f"{cfg[0]} x {cfg[1]}, {cfg[2]} warps, {cfg[3]} stages{best}", *cells])
        common.replace_block(LESSON, "tuning", common.markdown_table(
            ["D", "BLOCK_M x BLOCK_N, warps, stages", "N=4096: TFLOPS (vs SDPA flash)",
             "N=16384: TFLOPS (vs SDPA flash)"],
            rows) + "\n" + common.measured_on(tuning["meta"]))
        done.append("tuning table")
    flash = common.load("phase2/flash_v1.json")
    if flash:
        rows = [[f"{r['B']}x{r['H']}x{r['Nq']}x{r['D']}",
                 f"{r['config'][0]} x {r['config'][1]}, {r['config'][2]}w/{r['config'][3]}s",
                 f"{r['tflops']:.0f}", f"{r['flash_tflops']:.0f}", f"{r['ratio_vs_flash']:.2f}x",
                 f"{r.get('cudnn_tflops', float('nan')):.0f}", f"{r.get('ratio_vs_cudnn', float('nan')):.2f}x"]
                for r in flash["rows"]]
        common.replace_block(LESSON, "speed", common.markdown_table(
            ["B x H x N x D (bf16)", "config", "flash_attention_v1 TFLOPS", "SDPA flash TFLOPS", "ours / flash",
             "SDPA cuDNN TFLOPS", "ours / cuDNN"], rows)
            + f"\n![flash_attention_v1 against SDPA](../../{_plot(flash)})\n\n" + common.measured_on(flash["meta"]))
        done.append("speed table and plot")
    memory = common.load("phase2/memory.json")
    if memory:
        rows = [[f"{r['B']}x{r['H']}x{r['N']}x{r['D']}", f"{r['naive'] / 2**20:,.0f} MiB",
                 f"{r['tiled'] / 2**20:,.0f} MiB",
                 f"{r['flash_v1'] / 2**20:,.1f} MiB", f"{r['B'] * r['H'] * r['N'] * r['D'] * 2 / 2**20:,.1f} MiB"]
                for r in memory["rows"]]
        common.replace_block(LESSON, "memory", common.markdown_table(
            ["B x H x N x D (bf16)", "naive PyTorch", "tiled_attention (Phase 1)", "flash_attention_v1", "size of o"],
            rows) + "\n" + common.measured_on(memory["meta"]))
        done.append("memory table")
    soft = common.load("phase2/online_softmax.json")
    if soft:
        c = soft["copy_gbs"]
        rows = [[f"{r['rows']:,} x {r['width']:,}", f"{r['online_gbs']:,.0f} GB/s ({r['online_gbs'] / c:.0%})",
                 f"{r['phase0_gbs']:,.0f} GB/s ({r['phase0_gbs'] / c:.0%})",
                 f"{r['torch_gbs']:,.0f} GB/s ({r['torch_gbs'] / c:.0%})"]
                for r in soft["bandwidth"]]
        common.replace_block(LESSON, "softmax", common.markdown_table(
            ["rows x width (bf16)", "online_softmax (2 reads)", "Phase 0 softmax (3 reads when wide)", "torch.softmax"],
            rows) + f"\nShares are of the measured copy bandwidth, {c:,.0f} GB/s.\n\n"
            + common.measured_on(soft["meta"]))
        o = soft["overflow"]
        common.replace_block(LESSON, "overflow", common.markdown_table(
            ["x (float32)", "naive exp(x)", "naive exp(x) / sum", "online_softmax", "exact (float64)"],
            [[_fmt(a), _fmt(b), _fmt(c_), _fmt(d), _fmt(e)]
             for a, b, c_, d, e in zip(o["x"], o["naive_exp"], o["naive"], o["online"], o["exact"])])
            + "\n" + common.measured_on(soft["meta"]))
        done.append("softmax tables")
    return done or ["no assets/phase2/*.json yet: run `make measure PHASE=2` on a GPU"]
