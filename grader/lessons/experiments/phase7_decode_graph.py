"""flash_decode as inference engines run it: each step replayed from a CUDA graph, at the grader's shape
(B=1, H=32 on H_kv=8, D=128, bf16) with 1k and 32k cached tokens (grader/phases/test_phase7.py::
test_decode_bandwidth: 70% of the copy bandwidth at 32k, at most 1.2x SDPA's time at 1k).

The split kernel's choices are swept under graph replay, where the host no longer hides them: the grid
(PROGRAMS_PER_SM) and the tile (BLOCK_N, warps, stages of `decode_config`). SDPA (its default backend,
`enable_gqa=True`) is replayed from a graph too; both eager times are reported beside. The table at the
end says which configuration to make the default for this GPU; solutions/phase7/decode.py cites the data.

    python -m grader.lessons.experiments.phase7_decode_graph  ->  assets/phase7/decode-graph-variants-<gpu>.json
"""
import itertools
import json

from grader.lessons.experiments import output_path, require_cuda

B, H, H_KV, D = 1, 32, 8, 128
TOKENS = (1024, 32768)
PER_SM = (2, 4, 8)
CONFIGS = ((64, 2, 3), (64, 4, 3), (64, 2, 4), (128, 4, 3), (128, 4, 2), (32, 2, 4), (128, 8, 3))


def main(argv=None) -> None:
    require_cuda()
    from grader.lessons import common

    path = output_path(__doc__, f"phase7/decode-graph-variants-{common.device_tag()}.json", argv)
    import torch

    from grader import timing
    from solutions.phase7 import decode as dec

    torch.manual_seed(0)
    copy = timing.copy_bandwidth_gbs()
    print(f"device {torch.cuda.get_device_name()}  copy bandwidth {copy:.0f} GB/s", flush=True)
    default = dec.PROGRAMS_PER_SM, dec.decode_config
    rows, baselines = [], {}
    for n in TOKENS:
        q = torch.randn(B, H, 1, D, dtype=torch.bfloat16, device="cuda")
        k, v = (torch.randn(B, H_KV, n, D, dtype=torch.bfloat16, device="cuda") for _ in range(2))
        seqlens = torch.full((B,), n, dtype=torch.int32, device="cuda")
        nbytes = 2 * k.numel() * k.element_size()
        sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        ref = sdpa()
        graph, _ = timing.capture_graph(sdpa)
        baselines[n] = {"sdpa_graph_us": timing.median_ms(graph.replay) * 1e3,
                        "sdpa_eager_us": timing.median_ms(sdpa) * 1e3}
        print(f"N={n}: SDPA graph {baselines[n]['sdpa_graph_us']:.1f} us, eager {baselines[n]['sdpa_eager_us']:.1f} us",
              flush=True)
        for per_sm, cfg in itertools.product(PER_SM, CONFIGS):
            dec.PROGRAMS_PER_SM = per_sm
            dec.decode_config = lambda q, cfg=cfg: cfg
            try:
                step = lambda: dec.flash_decode(q, k, v, seqlens)
                graph, o = timing.capture_graph(step)
                graph.replay()
                err = float((o.float() - ref.float()).abs().max())
                graph_us = timing.median_ms(graph.replay) * 1e3
                eager_us = timing.median_ms(step) * 1e3
            except Exception as e:  # noqa: BLE001 (out of shared memory, ...): reported, not fatal
                print(f"N={n} per_sm={per_sm} cfg={cfg}: {type(e).__name__} {str(e)[:80]}", flush=True)
                continue
            rows.append({"N": n, "per_sm": per_sm, "config": cfg, "graph_us": graph_us, "eager_us": eager_us,
                         "share": nbytes / graph_us / 1e3 / copy, "err": err,
                         "splits": dec.choose_num_splits(B * H_KV, n, q.device)})
            print(rows[-1], flush=True)
        dec.PROGRAMS_PER_SM, dec.decode_config = default
    lines = [f"{torch.cuda.get_device_name()}: flash_decode B={B} H={H} H_kv={H_KV} D={D} bf16, replayed from a CUDA "
             f"graph; copy {copy:.0f} GB/s"]
    for n in TOKENS:
        base = baselines[n]
        lines.append(f"N={n}: SDPA graph {base['sdpa_graph_us']:.1f} us, eager {base['sdpa_eager_us']:.1f} us; best 6:")
        lines.append(f"  {'per_sm':>6} {'BLOCK_N,warps,stages':>22} {'splits':>6} {'graph us':>9} {'%copy':>6} "
                     f"{'/SDPA':>6} {'eager us':>9} {'max err':>8}")
        for r in sorted((r for r in rows if r["N"] == n), key=lambda r: r["graph_us"])[:6]:
            lines.append(f"  {r['per_sm']:>6} {str(tuple(r['config'])):>22} {r['splits']:>6} {r['graph_us']:9.1f} "
                         f"{r['share']:6.0%} {r['graph_us'] / base['sdpa_graph_us']:6.2f} {r['eager_us']:9.1f} "
                         f"{r['err']:8.1e}")
    for line in lines:
        print(line, flush=True)
    path.write_text(json.dumps({"meta": common.device_record(), "copy_gbs": copy, "baselines": baselines,
                                "rows": rows, "table": lines}, indent=1, default=str) + "\n")
    print(f"data: {path}")


if __name__ == "__main__":
    main()
