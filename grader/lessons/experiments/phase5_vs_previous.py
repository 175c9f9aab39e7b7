"""Phase 5's throughput bars, calibrated: the tuned kernels against Phases 3 and 4 and cuDNN, in one process.

For D = 64 and 128, N = 4096 and 16384 (16k tokens, hidden 2048, bf16), causal and not: the forward of
Phase 5, Phase 3 and SDPA's cuDNN backend, and the backward of Phase 5, Phase 4 and cuDNN, each timed
as the grader times it (grader.timing.median_ms, on the grader's inputs). The previous phase's kernel is
timed twice, to show what it scores against itself (the noise a bar must clear). Prints a table and the
numbers the grader's BARS (grader/phases/test_phase5.py) are set from: the geometric mean of the
speedup over the previous phase at D=128 (the reference's, and the previous kernel's against itself)
and the lowest ratio to cuDNN at N=4096. About two minutes on an H100, compiles included.

    python -m grader.lessons.experiments.phase5_vs_previous   ->  assets/phase5/vs_previous-<gpu>.json
"""
import json
import math
import re

from grader.lessons.experiments import output_path, require_cuda

DS, NS, CAUSAL = (64, 128), (4096, 16384), (False, True)


def _geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main(argv=None) -> None:
    path = output_path(__doc__, "phase5/vs_previous.json", argv)
    require_cuda()
    import torch

    from grader import bench, timing
    from grader.checks import o_lse, standard_inputs
    from grader.inputs import randn
    from grader.lessons import common
    from solutions import phase3, phase4, phase5

    meta = common.device_record()
    gpu = re.sub(r"[^a-z0-9]+", "-", meta["device"].lower()).strip("-")  # "nvidia-h100-80gb-hbm3"
    path = path.with_name(f"vs_previous-{gpu}.json")
    gen = torch.Generator().manual_seed(5)
    rows = []
    print(f"# {meta['device']} ({meta['capability']}), torch {meta['torch']}, Triton {meta['triton']}, {meta['date']}")
    print("pass D   N      causal  phase5 ms  previous ms (twice)   vs previous  previous vs itself  vs cuDNN")
    for D in DS:
        for N in NS:
            for causal in CAUSAL:
                q, k, v = standard_inputs(gen, N, D)
                do = randn(q.shape, torch.bfloat16, "cuda", gen)
                o, lse = o_lse(q, k, v, causal)
                passes = {
                    "fwd": (lambda: phase5.flash_attention_forward(q, k, v, causal=causal),
                            lambda: phase3.flash_attention_forward(q, k, v, causal=causal)),
                    "bwd": (lambda: phase5.flash_attention_backward(do, q, k, v, o, lse, causal=causal),
                            lambda: phase4.flash_attention_backward(do, q, k, v, o, lse, causal=causal)),
                }
                for mode, (ours, previous) in passes.items():
                    previous_ms = timing.median_ms(previous)
                    row = bench.measure(ours, q, k, v, causal, mode=mode, baselines=("cudnn",))
                    previous_again_ms = timing.median_ms(previous)
                    row |= {"previous_ms": previous_ms, "previous_again_ms": previous_again_ms,
                            "vs_previous": previous_ms / row["ms"],
                            "previous_vs_itself": previous_ms / previous_again_ms}
                    rows.append(row)
                    print(f"{mode:<4} {D:<3} {N:<6} {'yes' if causal else 'no':<7} {row['ms']:9.3f}  "
                          f"{previous_ms:8.3f} {previous_again_ms:8.3f}     {row['vs_previous']:10.3f}x "
                          f"{row['previous_vs_itself']:17.3f}x  {row.get('ratio_vs_cudnn', float('nan')):7.2f}x",
                          flush=True)
    summary = {}
    for mode in ("fwd", "bwd"):
        at_128 = [r for r in rows if r["mode"] == mode and r["D"] == 128]
        at_4096 = [r for r in rows if r["mode"] == mode and r["Nq"] == 4096 and "ratio_vs_cudnn" in r]
        summary[mode] = {"vs_previous_geomean_d128": _geomean([r["vs_previous"] for r in at_128]),
                         "previous_vs_itself_geomean_d128": _geomean([r["previous_vs_itself"] for r in at_128]),
                         "lowest_vs_cudnn_n4096": min((r["ratio_vs_cudnn"] for r in at_4096), default=float("nan"))}
    path.write_text(json.dumps({"meta": meta, "rows": rows, "summary": summary}, indent=1) + "\n")
    print(f"data: {path}")
    print("\nFor BARS in grader/phases/test_phase5.py (geometric means over D=128, N=4096 and 16384, causal and not):")
    for mode, s in summary.items():
        print(f"  {mode}: Phase 5 vs previous {s['vs_previous_geomean_d128']:.3f}x, previous vs itself "
              f"{s['previous_vs_itself_geomean_d128']:.3f}x; lowest Phase 5 vs cuDNN at N=4096 "
              f"{s['lowest_vs_cudnn_n4096']:.2f}x")


if __name__ == "__main__":
    main()
