"""Phase 3's numbers: the forward against SDPA's flash and cuDNN backends, the configuration
sweep behind the tuned table, the work causal block skipping saves, and the logsumexp merge.

    python -m grader.lessons.measure phase3            GPU: assets/phase3/forward.json
    python -c 'from grader.lessons import phase3; phase3.tune()'   GPU: assets/phase3/tuning.json
    python -m grader.lessons.figures                   tables and plot into exercises/phase3/README.md
"""
import functools
import math

from grader.lessons import common

LESSON = common.ROOT / "exercises" / "phase3" / "README.md"
NS, DS, DTYPES = (1024, 4096, 16384), (64, 128), ("bfloat16", "float16")

# Configurations swept by tune(): (BLOCK_M, BLOCK_N, num_warps, num_stages).
CANDIDATES = {
    64: [(128, 64, 4, 3), (128, 64, 4, 4), (128, 128, 4, 3), (128, 128, 8, 3), (128, 64, 8, 3),
         (64, 64, 4, 3), (128, 32, 4, 4)],
    128: [(128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 4),
          (64, 64, 4, 3), (128, 32, 4, 4)],
}


def _forward():
    from solutions.phase3 import forward
    return forward


def _inputs(N, D, dtype, seed=0):
    import torch

    from grader import bench
    from grader.inputs import qkv

    B, H, N, D = bench.standard_shape(N, D)
    gen = torch.Generator().manual_seed(seed)
    return qkv(B, H, N, N, D, getattr(torch, dtype), "cuda", gen, "bnhd")


def tune(ns=(4096, 16384), rep_ms=60):
    """Time every candidate configuration (and both grid orders when causal) at the standard shapes."""
    from grader import timing

    fwd = _forward()
    rows = []
    for D in DS:
        for causal in (False, True):
            for N in ns:
                q, k, v = _inputs(N, D, "bfloat16")
                for config in CANDIDATES[D]:
                    try:
                        run = functools.partial(fwd.flash_attention_forward, q, k, v, causal, config=config)
                        ms = timing.median_ms(run, rep_ms=rep_ms)
                    except Exception as exc:  # noqa: BLE001 -- a configuration that does not compile or fit
                        rows.append({"D": D, "N": N, "causal": causal, "config": list(config),
                                     "error": str(exc).splitlines()[0][:200]})
                        print(rows[-1], flush=True)
                        continue
                    flops = 4.0 * q.shape[0] * q.shape[1] * N * N * D / (2 if causal else 1)
                    rows.append({"D": D, "N": N, "causal": causal, "config": list(config), "heads_first": False,
                                 "ms": ms, "tflops": timing.tflops(flops, ms)})
                    print(rows[-1], flush=True)
    common.save("phase3/tuning.json", {"dtype": "bfloat16", "rows": rows})
    return rows


def measure():
    """The forward, SDPA flash and SDPA cuDNN on the standard shapes, both dtypes, causal and not."""
    import torch

    from grader import bench
    from grader.numerics import reference_attention

    fwd = _forward()
    rows = []
    for dtype in DTYPES:
        for D in DS:
            for N in NS:
                q, k, v = _inputs(N, D, dtype)
                for causal in (False, True):
                    # Check one head before timing: a fast wrong kernel must not reach the table.
                    o, _ = fwd.flash_attention_forward(q[:1, :1], k[:1, :1], v[:1, :1], causal)
                    ref, _ = reference_attention(q[:1, :1], k[:1, :1], v[:1, :1], causal)
                    err = (o.double() - ref).abs().max().item()
                    run = functools.partial(fwd.flash_attention_forward, q, k, v, causal)
                    row = bench.measure(run, q, k, v, causal,
                                        baselines=("flash", "cudnn"))
                    row["max_abs_error"] = err
                    rows.append(row)
                    print(bench.describe(row), f"| cudnn {row.get('cudnn_tflops', float('nan')):.0f}",
                          f"| err {err:.1e}", flush=True)
                torch.cuda.empty_cache()
    common.save("phase3/forward.json", {"rows": rows})


# ---------------------------------------------------------------- figures
def causal_blocks(N, block_m=128, block_n=64):
    """Key blocks a causal forward visits: (unmasked, masked on the diagonal, all of a full pass)."""
    n_m, n_n = math.ceil(N / block_m), math.ceil(N / block_n)
    unmasked = sum(m * block_m // block_n for m in range(n_m))
    diagonal = sum(min(block_m // block_n, n_n - m * block_m // block_n) for m in range(n_m))
    return unmasked, diagonal, n_m * n_n


def _blocks_table() -> str:
    rows = []
    for N in (512, 1024, 4096, 16384):
        unmasked, diagonal, full = causal_blocks(N)
        rows.append([N, full, unmasked, diagonal, f"{(unmasked + diagonal) / full:.1%}",
                     f"{diagonal / (unmasked + diagonal):.1%}"])
    return ("*Computed by `grader/lessons/phase3.py` for BLOCK_M = 128, BLOCK_N = 64 (one head).*\n\n"
            + common.markdown_table(["N", "key blocks, full", "causal: unmasked", "causal: masked (diagonal)",
                                     "causal work / full", "share that pays for the mask"], rows))


def _merge_demo() -> str:
    """The merge on float64 data: exact to rounding, where naive averaging is far off."""
    import torch

    from grader.numerics import reference_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 64, 64, generator=gen, dtype=torch.float64) for _ in range(3))
    k = torch.cat([k, 2 * torch.randn(1, 1, 192, 64, generator=gen, dtype=torch.float64)], dim=2)
    v = torch.cat([v, torch.randn(1, 1, 192, 64, generator=gen, dtype=torch.float64)], dim=2)
    split = 100
    o, lse = reference_attention(q, k, v)
    o_a, lse_a = reference_attention(q, k[:, :, :split], v[:, :, :split])
    o_b, lse_b = reference_attention(q, k[:, :, split:], v[:, :, split:])
    merged_lse = torch.logaddexp(lse_a, lse_b)
    merged = torch.exp(lse_a - merged_lse)[..., None] * o_a + torch.exp(lse_b - merged_lse)[..., None] * o_b
    by_count = (split * o_a + (k.shape[2] - split) * o_b) / k.shape[2]
    rows = [["merged through the lse", f"{(merged - o).abs().max().item():.1e}",
             f"{(merged_lse - lse).abs().max().item():.1e}"],
            ["averaged by key count", f"{(by_count - o).abs().max().item():.1e}", "-"],
            ["averaged 50/50", f"{((o_a + o_b) / 2 - o).abs().max().item():.1e}", "-"]]
    return (f"*Computed in float64 by `grader/lessons/phase3.py`: 64 queries, 256 keys split at {split}, "
            "D = 64, the second chunk's keys twice as large.*\n\n"
            + common.markdown_table(["how the two halves are combined", "max abs error of o", "max abs error of lse"],
                                    rows))


def _forward_table(data) -> str:
    rows = []
    for r in sorted(data["rows"], key=lambda r: (r["D"], r["causal"], r["dtype"], r["Nq"])):
        rows.append([r["D"], r["Nq"], r["B"], r["H"], "causal" if r["causal"] else "full", r["dtype"],
                     f"{r['tflops']:.0f}", f"{r.get('flash_tflops', float('nan')):.0f}",
                     f"{r.get('cudnn_tflops', float('nan')):.0f}",
                     f"**{r.get('ratio_vs_flash', float('nan')):.2f}x**",
                     f"{r.get('ratio_vs_cudnn', float('nan')):.2f}x"])
    table = common.markdown_table(
        ["D", "N", "B", "H", "mask", "dtype", "ours TFLOPS", "SDPA flash", "SDPA cuDNN", "ours / flash",
         "ours / cuDNN"], rows)
    worst = min(r.get("ratio_vs_flash", 0.0) for r in data["rows"])
    return (table + f"\nLowest ratio to SDPA's flash backend in this table: {worst:.2f}x.\n\n"
            + common.measured_on(data["meta"]))


def _causal_time_table(data) -> str:
    rows = []
    for D in DS:
        for N in NS:
            found = {r["causal"]: r for r in data["rows"] if (r["D"], r["Nq"], r["dtype"]) == (D, N, "bfloat16")}
            if set(found) == {False, True}:
                unmasked, diagonal, full = causal_blocks(N)
                rows.append([D, N, f"{found[False]['ms']:.3f}", f"{found[True]['ms']:.3f}",
                             f"**{found[True]['ms'] / found[False]['ms']:.2f}**", f"{(unmasked + diagonal) / full:.2f}",
                             f"{found[True]['flash_ms'] / found[False]['flash_ms']:.2f}" if "flash_ms" in found[True]
                             else "-"])
    return (common.markdown_table(["D", "N", "full ms", "causal ms", "causal / full time", "causal / full blocks",
                                   "SDPA flash: causal / full time"], rows)
            + "\n" + common.measured_on(data["meta"]))


def _tuning_table(data) -> str:
    best = {}
    for r in data["rows"]:
        if "tflops" in r and not r.get("heads_first"):
            key = (r["D"], r["causal"], r["N"])
            best.setdefault(key, []).append(r)
    rows = []
    for (D, causal, N), found in sorted(best.items()):
        found.sort(key=lambda r: -r["tflops"])
        top, bottom = found[0], found[-1]

        def name(r):
            bm, bn, w, s = r["config"]
            return f"{bm}x{bn} w{w} s{s}"
        rows.append([D, N, "causal" if causal else "full", len(found), f"{top['tflops']:.0f} ({name(top)})",
                     f"{bottom['tflops']:.0f} ({name(bottom)})", f"{top['tflops'] / bottom['tflops']:.2f}x"])
    text = common.markdown_table(["D", "N", "mask", "configs", "best TFLOPS (config)", "worst TFLOPS (config)",
                                  "best / worst"], rows)
    order = [r for r in data["rows"] if r.get("heads_first") and "tflops" in r]
    if order:  # rows from an earlier kernel variant with a switch for the order of the grid
        lines = []
        for (D, N) in sorted({(r["D"], r["N"]) for r in order}):
            hf = max(r["tflops"] for r in order if (r["D"], r["N"]) == (D, N))
            hb = max(r["tflops"] for r in best.get((D, True, N), []))
            lines.append(f"D={D} N={N}: {hf:.0f} heads first vs {hb:.0f} head by head")
        text += ("\nGrid order, causal, best configuration of each (measured with an earlier variant of the kernel "
                 "that had a switch for it): " + "; ".join(lines) + ".\n")
    return text + "\n" + common.measured_on(data["meta"])


def _plot(data, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8), sharey=True)
    for ax, (D, causal) in zip(axes, [(d, c) for d in DS for c in (False, True)]):
        for series, style, label in (("tflops", "o-", "ours (Triton)"), ("flash_tflops", "s--", "SDPA flash"),
                                     ("cudnn_tflops", "^:", "SDPA cuDNN")):
            rows = sorted((r for r in data["rows"] if r["D"] == D and r["causal"] == causal
                           and r["dtype"] == "bfloat16" and series in r), key=lambda r: r["Nq"])
            ax.plot([r["Nq"] for r in rows], [r[series] for r in rows], style, label=label)
        ax.set_xscale("log", base=2)
        ax.set_title(f"D={D}, {'causal' if causal else 'full'}, bf16")
        ax.set_xlabel("N (16k tokens, hidden 2048)")
    axes[0].set_ylabel("forward TFLOPS")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figures():
    done = []
    if common.replace_block(LESSON, "causal-blocks", _blocks_table()):
        done.append("causal block table")
    if common.replace_block(LESSON, "merge-demo", _merge_demo()):
        done.append("merge demo")
    data = common.load("phase3/forward.json")
    if data:
        table = _forward_table(data)
        common.replace_block(LESSON, "forward-table", table)
        common.replace_block(LESSON, "causal-time", _causal_time_table(data))
        (common.ASSETS / "phase3" / "forward_table.md").write_text(
            "Forward pass, 16k tokens, hidden 2048 (`flash_attention_forward` of Phase 3 vs SDPA):\n\n" + table)
        _plot(data, common.ASSETS / "phase3" / "forward.png")
        done.append("forward table, assets/phase3/forward_table.md and forward.png")
    tuning = common.load("phase3/tuning.json")
    if tuning:
        common.replace_block(LESSON, "tuning-table", _tuning_table(tuning))
        done.append("tuning table")
    return done
