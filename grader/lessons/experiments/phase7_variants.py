"""Phase 7 throughput variants on one GPU: decode configs (B=1 H=32 H_kv=8 N=32768 D=128 bf16) and the
GQA backward's orders (B=2 H=32 N=4096 D=128 causal bf16, H_kv=4 vs 32).

Variants are module attributes of solutions.phase7.{decode,backward} (PROGRAMS_PER_SM, decode_config,
DKDV_HEADS_FASTEST, DKDV_GROUP_SPLITS), set here in turn; the table at the end says which to make the
default. The defaults in the solution cite this data.

    python -m grader.lessons.experiments.phase7_variants   ->  assets/phase7/decode-gqa-variants.json
"""
import itertools
import json

from grader.lessons.experiments import output_path, require_cuda

lines, results = [], {}


def say(line):
    print(line, flush=True)
    lines.append(line)


def main(argv=None) -> None:
    path = output_path(__doc__, "phase7/decode-gqa-variants.json", argv)
    require_cuda()
    import torch

    from grader import timing
    from grader.lessons import common
    from solutions.phase7 import backward as bw
    from solutions.phase7 import decode as dec
    from solutions.phase7 import flash_attention, flash_attention_backward, flash_attention_forward, flash_decode

    torch.manual_seed(0)
    copy = timing.copy_bandwidth_gbs()
    say(f"device {torch.cuda.get_device_name()}  copy bandwidth {copy:.0f} GB/s")

    # ------------------------------------------------------------------ decode
    B, H, H_kv, N, D = 1, 32, 8, 32768, 128
    q = torch.randn(B, H, 1, D, dtype=torch.bfloat16, device="cuda")
    k, v = (torch.randn(B, H_kv, N, D, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    seqlens = torch.full((B,), N, dtype=torch.int32, device="cuda")
    nbytes = 2 * k.numel() * k.element_size()
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    sdpa_ms = timing.median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    say(f"decode SDPA {sdpa_ms * 1e3:.0f} us = {nbytes / sdpa_ms / 1e6 / copy:.0%} of copy")
    default_config, default_per_sm = dec.decode_config(q), dec.PROGRAMS_PER_SM
    original = dec.decode_config
    decode_rows = []
    configs = dict.fromkeys([default_config, (64, 4, 2), (128, 4, 2), (128, 8, 3), (32, 4, 4), (64, 2, 3)])
    for per_sm, cfg in itertools.product((2, 4, 8), configs):
        dec.PROGRAMS_PER_SM = per_sm
        dec.decode_config = lambda q, cfg=cfg: cfg
        try:
            o = flash_decode(q, k, v, seqlens)
            err = float((o.float() - ref.float()).abs().max())
            ms = timing.median_ms(lambda: flash_decode(q, k, v, seqlens))
            kernel_ms = timing.median_ms(lambda: dec.decode_partials(q, k, v, seqlens))
        except Exception as e:  # noqa: BLE001 (out of shared memory, ...): reported, not fatal
            say(f"decode per_sm={per_sm} cfg={cfg}: {type(e).__name__} {str(e)[:80]}")
            continue
        share = nbytes / ms / 1e6 / copy
        decode_rows.append({"per_sm": per_sm, "config": cfg, "us": ms * 1e3, "share": share, "err": err,
                            "partials_us": kernel_ms * 1e3})
        print(decode_rows[-1], flush=True)
    dec.decode_config, dec.PROGRAMS_PER_SM = original, default_per_sm
    results["decode"] = decode_rows

    # ------------------------------------------------------------------ GQA backward
    B, H, N, D = 2, 32, 4096, 128
    do = torch.randn(B, H, N, D, dtype=torch.bfloat16, device="cuda")

    def qkv(h_kv):
        return (torch.randn(B, H, N, D, dtype=torch.bfloat16, device="cuda"),
                *(torch.randn(B, h_kv, N, D, dtype=torch.bfloat16, device="cuda") for _ in range(2)))

    def fwd_bwd(q, k, v):
        qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
        return torch.autograd.grad(flash_attention(qg, kg, vg, causal=True), (qg, kg, vg), do)

    gqa_rows = []
    default_order = bw.DKDV_HEADS_FASTEST, bw.DKDV_GROUP_SPLITS
    dense, grouped = qkv(H), qkv(4)
    refs = {}
    for heads_fastest, splits in itertools.product((False, True), (1, 2, 4, 8)):
        bw.DKDV_HEADS_FASTEST, bw.DKDV_GROUP_SPLITS = heads_fastest, splits
        row = {"heads_fastest": heads_fastest, "group_splits": splits}
        for name, (q, k, v) in (("dense", dense), ("grouped", grouped)):
            if splits > 1 and name == "dense":
                row["dense_ms"] = gqa_rows[0]["dense_ms"] if not heads_fastest else gqa_rows[4]["dense_ms"]
                continue
            grads = fwd_bwd(q, k, v)
            refs.setdefault(name, grads)
            row[f"{name}_err"] = max(float((a.float() - b.float()).abs().max()) for a, b in zip(grads, refs[name]))
            o, lse = flash_attention_forward(q, k, v, causal=True)
            row[f"{name}_ms"] = timing.median_ms(lambda: fwd_bwd(q, k, v))
            row[f"{name}_bwd_ms"] = timing.median_ms(lambda: flash_attention_backward(do, q, k, v, o, lse, causal=True))
        row["ratio"] = row["dense_ms"] / row["grouped_ms"]
        gqa_rows.append(row)
        print(row, flush=True)
    bw.DKDV_HEADS_FASTEST, bw.DKDV_GROUP_SPLITS = default_order
    results["gqa"] = gqa_rows

    # ------------------------------------------------------------------ the table
    say("")
    say("decode B=1 H=32 H_kv=8 N=32768 D=128 bf16 (bar: 60% of copy); best 8 by time:")
    say(f"  {'per_sm':>6} {'BLOCK_N,warps,stages':>22} {'us':>7} {'GB/s':>7} {'%copy':>6} {'split-only us':>13}")
    for r in sorted(decode_rows, key=lambda r: r["us"])[:8]:
        default = " (default)" if r["per_sm"] == default_per_sm and tuple(r["config"]) == tuple(default_config) else ""
        say(f"  {r['per_sm']:>6} {str(tuple(r['config'])):>22} {r['us']:7.0f} {nbytes / r['us'] / 1e3:7.0f} "
            f"{r['share']:6.0%} {r['partials_us']:13.0f}{default}")
    d = [r for r in decode_rows if r["per_sm"] == default_per_sm and tuple(r["config"]) == tuple(default_config)]
    if d:
        say(f"  default: {d[0]['us']:.0f} us = {d[0]['share']:.0%} of copy; SDPA {sdpa_ms * 1e3:.0f} us")
    say("GQA fwd_bwd B=2 H=32 N=4096 D=128 causal bf16, H_kv=4 vs 32 (bar: ratio >= 0.95):")
    say(f"  {'heads_fastest':>13} {'splits':>6} {'dense ms':>9} {'grouped ms':>10} {'ratio':>6} {'bwd dense':>9} "
        f"{'bwd grp':>8} {'max|dgrad|':>10}")
    for r in gqa_rows:
        say(f"  {str(r['heads_fastest']):>13} {r['group_splits']:>6} {r['dense_ms']:9.2f} {r['grouped_ms']:10.2f} "
            f"{r['ratio']:6.2f} {r.get('dense_bwd_ms', float('nan')):9.2f} {r['grouped_bwd_ms']:8.2f} "
            f"{r['grouped_err']:10.2e}")
    say(f"(default: heads_fastest={default_order[0]} splits={default_order[1]}; max|dgrad| is against "
        "heads_fastest=False splits=1)")
    results["table"] = lines
    path.write_text(json.dumps({"meta": common.device_record(), **results}, indent=1, default=str) + "\n")
    say(f"data: {path}")


if __name__ == "__main__":
    main()
