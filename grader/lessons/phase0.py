"""Phase 0's numbers: the device's two ceilings, naive vs fused attention, softmax bandwidth."""
import torch

from grader import bench, cost, timing
from grader.impl import ROOT
from grader.lessons import common

LESSON = ROOT / "exercises" / "phase0" / "README.md"
GB = 1e9


def naive_attention(q, k, v):
    """Three passes in the inputs' own precision: S and P each a full N x N matrix in HBM.

    The scale goes on q (N x D) rather than on S (N x N), so that the passes are exactly the
    three of the cost model: S = q k^T, P = softmax(S), o = P v.
    """
    s = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return torch.softmax(s, dim=-1) @ v


def measure():
    from solutions.phase0 import softmax

    device = {"copy_gbs": timing.copy_bandwidth_gbs(1 << 30),
              "matmul_bf16_tflops": timing.matmul_tflops(8192, torch.bfloat16),
              "matmul_fp16_tflops": timing.matmul_tflops(8192, torch.float16)}
    print(f"copy {device['copy_gbs']:.0f} GB/s, bf16 matmul {device['matmul_bf16_tflops']:.0f} TFLOPS")

    naive_rows = []
    for D in (64, 128):
        for N in (1024, 2048, 4096, 8192):
            B, H, _, _ = bench.standard_shape(N, D)
            q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            row = bench.measure(lambda: naive_attention(q, k, v), q, k, v, baselines=("flash",))
            row["naive_peak_extra_bytes"] = timing.peak_extra_bytes(lambda: naive_attention(q, k, v))
            with bench.sdpa_backend("flash"):
                row["flash_peak_extra_bytes"] = timing.peak_extra_bytes(
                    lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
            naive_rows.append(row)
            print(f"naive D={D} N={N}: {row['tflops']:.0f} TFLOPS, flash {row['flash_tflops']:.0f}")

    softmax_rows = []
    total = 1 << 28  # 256 MiB of bf16 per input, whatever the width
    for width in (128, 1024, 4096, 16384, 65536):
        x = torch.randn(total // 2 // width, width, device="cuda", dtype=torch.bfloat16)
        nbytes = 2 * x.numel() * x.element_size()
        ours = timing.median_ms(lambda: softmax(x))
        theirs = timing.median_ms(lambda: torch.softmax(x, dim=-1))
        softmax_rows.append({"rows": x.shape[0], "width": width, "dtype": "bfloat16",
                             "ours_gbs": timing.gbs(nbytes, ours), "torch_gbs": timing.gbs(nbytes, theirs)})
        row = softmax_rows[-1]
        print(f"softmax width {width}: {row['ours_gbs']:.0f} GB/s, torch {row['torch_gbs']:.0f}")
    common.save("phase0/device.json", device)
    common.save("phase0/naive_vs_fused.json", {"rows": naive_rows})
    common.save("phase0/softmax.json", {"rows": softmax_rows})


def _oom_table(capacity=80e9) -> str:
    """Largest N whose S and P (both alive during softmax) fit in an 80 GB GPU, per model shape."""
    rows = []
    for name, B, H in (("one sequence, 32 heads (hidden 4096, D=128)", 1, 32),
                       ("batch 8, 32 heads", 8, 32), ("batch 1, 16 heads (hidden 2048, D=128)", 1, 16)):
        n = 1
        while 2 * cost.score_matrix_bytes(B, H, 2 * n, 2 * n, 2) <= capacity:
            n *= 2
        lo, hi = n, 2 * n  # refine between powers of two
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if 2 * cost.score_matrix_bytes(B, H, mid, mid, 2) <= capacity else (lo, mid)
        s_gb = cost.score_matrix_bytes(B, H, 16384, 16384, 2) / GB
        rows.append([name, f"{s_gb:,.1f} GB", f"{lo:,}"])
    return common.markdown_table(["model shape (bf16)", "S at N=16k", "largest N with S and P in 80 GB"], rows)


def _roofline(device: dict, naive: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    bw, peak = device["copy_gbs"] * GB, device["matmul_bf16_tflops"] * 1e12
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [2 ** (i / 4) for i in range(0, 4 * 13)]
    ax.plot(xs, [min(peak, bw * x) / 1e12 for x in xs], color="black", lw=1.5, label="roofline (measured)")
    for D, marker in ((64, "o"), (128, "s")):
        rows = [r for r in naive["rows"] if r["D"] == D]
        for kind, color in (("naive", "tab:red"), ("fused", "tab:blue")):
            xi, yi = [], []
            for r in rows:
                b = (cost.naive_attention_bytes if kind == "naive" else cost.qkvo_bytes)(
                    r["B"], r["H"], r["Nq"], r["Nk"], D, 2)
                xi.append(r["flops"] / b)
                yi.append(r["tflops"] if kind == "naive" else r["flash_tflops"])
            label = f"{'naive PyTorch' if kind == 'naive' else 'fused (SDPA flash)'}, D={D}"
            ax.scatter(xi, yi, color=color, marker=marker, label=label, zorder=3)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}"))
    ax.set_xlabel("arithmetic intensity (FLOP per byte of HBM traffic, cost model)")
    ax.set_ylabel("TFLOPS (measured)")
    ax.set_title(f"Attention on the roofline of {naive['meta']['device']} (bf16, N=1k..8k)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = common.ASSETS / "phase0" / "roofline.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path.relative_to(ROOT))


def figures():
    done = []
    if common.replace_block(LESSON, "oom", _oom_table()):
        done.append("OOM table")
    device, naive, soft = (common.load(f"phase0/{n}.json") for n in ("device", "naive_vs_fused", "softmax"))
    if device is None:
        return done + ["no assets/phase0/device.json yet: run `make measure PHASE=0` on a GPU"]
    meta = device["meta"]
    ridge = device["matmul_bf16_tflops"] * 1e12 / (device["copy_gbs"] * GB)
    common.replace_block(LESSON, "device", common.markdown_table(
        ["device", "copy bandwidth (read + write)", "bf16 matmul 8192^3", "fp16 matmul 8192^3", "ridge point"],
        [[meta["device"], f"{device['copy_gbs']:,.0f} GB/s", f"{device['matmul_bf16_tflops']:.0f} TFLOPS",
          f"{device['matmul_fp16_tflops']:.0f} TFLOPS", f"{ridge:.0f} FLOP/byte"]]) + "\n" + common.measured_on(meta))
    rows = []
    for r in naive["rows"]:
        naive_b = cost.naive_attention_bytes(r["B"], r["H"], r["Nq"], r["Nk"], r["D"], 2)
        rows.append([f"{r['B']}x{r['H']}x{r['Nq']}x{r['D']}", f"{r['flops'] / naive_b:.0f}",
                     f"{r['ms']:.2f} ms", f"{r['tflops']:.0f}", f"{timing.gbs(naive_b, r['ms']):,.0f} GB/s",
                     f"{r['naive_peak_extra_bytes'] / 2**30:.2f} GiB", f"{r['flash_ms']:.2f} ms",
                     f"{r['flash_tflops']:.0f}", f"{r['flash_peak_extra_bytes'] / 2**30:.3f} GiB",
                     f"{r['flash_ms'] and r['ms'] / r['flash_ms']:.1f}x"])
    common.replace_block(LESSON, "naive-vs-fused", common.markdown_table(
        ["B x H x N x D", "naive FLOP/byte", "naive time", "naive TFLOPS", "naive HBM rate (model)",
         "naive peak extra memory", "fused time", "fused TFLOPS", "fused peak extra memory", "fused speed-up"],
        rows) + "\n" + common.measured_on(naive["meta"]))
    common.replace_block(LESSON, "softmax", common.markdown_table(
        ["rows x width (bf16)", "our Triton softmax", "torch.softmax", "copy"],
        [[f"{r['rows']:,} x {r['width']:,}", f"{r['ours_gbs']:,.0f} GB/s ({r['ours_gbs'] / device['copy_gbs']:.0%})",
          f"{r['torch_gbs']:,.0f} GB/s ({r['torch_gbs'] / device['copy_gbs']:.0%})", f"{device['copy_gbs']:,.0f} GB/s"]
         for r in soft["rows"]]) + "\n" + common.measured_on(soft["meta"]))
    done.append(f"tables and {_roofline(device, naive)}")
    return done
