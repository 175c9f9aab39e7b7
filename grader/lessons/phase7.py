"""Phase 7's numbers: grouped heads, sliding windows, decoding, and ring attention on paper.

    python -m grader.measure phase7        GPU: assets/phase7/{gqa,window,decode}.json  (about 5 minutes)
    python -m grader.figures               the lesson's tables (the KV-cache and ring tables need no GPU)
    python -m grader.lessons.phase7 ring   print the ring attention overlap table for other numbers:
                                           [--tflops F] [--nvlink GB/s] [--ib GB/s]

The GPU measurements time the reference solution (solutions/phase7) against SDPA and FlexAttention in
the same process, with `triton.testing.do_bench` medians (grader/timing.py).
"""
import sys
import time

from grader import settings
from grader.lessons import common

LESSON = common.ROOT / "exercises" / "phase7" / "README.md"
DEADLINE = float(settings.MEASURE_DEADLINE.get())  # seconds since the epoch


def _out_of_time() -> bool:
    return time.time() > DEADLINE


def _ms(fn):
    from grader import timing

    fn()
    return timing.median_ms(fn)


def _try_ms(fn):
    try:
        return _ms(fn)
    except Exception as exc:  # noqa: BLE001 -- a backend that refuses these inputs: recorded as missing
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        print(f"  (skipped: {type(exc).__name__}: {first})", flush=True)
        return None


def _graph_ms(fn):
    """`fn` replayed from a CUDA graph captured once (how an engine runs a decoding step); None if it cannot be
    captured."""
    from grader import timing

    try:
        graph, _ = timing.capture_graph(fn)
    except RuntimeError as exc:
        print(f"  (no CUDA graph: {str(exc).strip().splitlines()[0][:120] if str(exc).strip() else 'error'})")
        return None
    return _ms(graph.replay)


def _qkv(B, H, H_kv, Nq, Nk, D, seed=0):
    import torch

    gen = torch.Generator(device="cuda").manual_seed(seed)
    make = lambda h, n: torch.randn((B, h, n, D), generator=gen, device="cuda", dtype=torch.bfloat16)
    return make(H, Nq), make(H_kv, Nk), make(H_kv, Nk)


# ---------------------------------------------------------------- grouped-query attention
GQA_SHAPE = (2, 32, 4096, 128)  # B, H, N, D: 8k tokens of a model with 32 query heads of 128


def _gqa_row(B, H, H_kv, N, D):
    import torch

    from grader import bench, cost, timing
    from solutions.phase7 import flash_attention, flash_attention_forward

    q, k, v = _qkv(B, H, H_kv, N, N, D)
    do = torch.randn_like(q)
    flops = {m: cost.attention_flops(B, H, N, N, D, True, m) for m in ("fwd", "fwd_bwd")}
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

    def fwd_bwd():
        torch.autograd.grad(flash_attention(qg, kg, vg, causal=True), (qg, kg, vg), do)
    row = {"B": B, "H": H, "H_kv": H_kv, "N": N, "D": D,
           "kv_bytes": 2 * k.numel() * k.element_size(),
           "ours_fwd_ms": _ms(lambda: flash_attention_forward(q, k, v, causal=True)),
           "ours_fwd_bwd_ms": _ms(fwd_bwd)}
    # What a model without a GQA kernel does: repeat K/V to every query head, then SDPA.
    repeat = lambda: (k.repeat_interleave(H // H_kv, 1), v.repeat_interleave(H // H_kv, 1))
    row["repeat_ms"] = _ms(repeat) if H_kv < H else 0.0
    kr, vr = repeat()
    for backend in ("cudnn", "flash"):
        calls = bench.sdpa_callables(q, kr, vr, True, backend)
        row[f"sdpa_{backend}_fwd_ms"] = _try_ms(calls["fwd"])
        row[f"sdpa_{backend}_fwd_bwd_ms"] = _try_ms(calls["fwd_bwd"])
    row["sdpa_enable_gqa_fwd_ms"] = _try_ms(
        lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    for mode in ("fwd", "fwd_bwd"):
        row[f"ours_{mode}_tflops"] = timing.tflops(flops[mode], row[f"ours_{mode}_ms"])
    print(f"GQA H_kv={H_kv}: ours fwd {row['ours_fwd_tflops']:.0f} TFLOPS, fwd+bwd "
          f"{row['ours_fwd_bwd_tflops']:.0f}; SDPA cuDNN on repeated K/V fwd {row['sdpa_cudnn_fwd_ms']} ms "
          f"(+ repeat {row['repeat_ms']:.3f} ms)", flush=True)
    return row


def measure_gqa():
    import torch

    B, H, N, D = GQA_SHAPE
    rows = []
    for H_kv in (32, 8, 4, 1):
        rows.append(_gqa_row(B, H, H_kv, N, D))
        torch.cuda.empty_cache()  # the tensors of one row are freed when its function returns
    common.save("phase7/gqa.json", {"rows": rows})


# ---------------------------------------------------------------- sliding windows
WINDOW_NS, WINDOWS = (4096, 16384, 65536), (512, 2048, 8192)


def visible_pairs(n, left, right) -> int:
    """Query-key pairs of an n x n band, query i seeing keys i - left .. i + right (-1: unbounded)."""
    if left < 0:
        left = n
    if right < 0:
        right = n
    total = 0
    for i in range(n):  # a loop of n terms: closed forms are easy to get wrong at the edges
        total += min(n - 1, i + right) - max(0, i - left) + 1
    return total


def _window_rows(N, B=1, H=16, D=128):
    import torch

    from grader import bench
    from solutions.phase7 import flash_attention, flash_attention_forward

    q, k, v = _qkv(B, H, H, N, N, D)
    do = torch.randn_like(q)
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

    def fwd_bwd(window):
        torch.autograd.grad(flash_attention(qg, kg, vg, causal=True, window=window), (qg, kg, vg), do)
    full = {"fwd": _ms(lambda: flash_attention_forward(q, k, v, causal=True)), "fwd_bwd": _ms(lambda: fwd_bwd(None))}
    sdpa = _try_ms(bench.sdpa_callables(q, k, v, True, "cudnn")["fwd"])
    all_pairs = visible_pairs(N, -1, 0)
    rows = []
    for w in WINDOWS:
        if w >= N:
            continue
        window = (w, -1)
        row = {"N": N, "D": D, "H": H, "window": w, "work": visible_pairs(N, w, 0) / all_pairs,
               "full_fwd_ms": full["fwd"], "full_fwd_bwd_ms": full["fwd_bwd"], "sdpa_cudnn_full_fwd_ms": sdpa,
               "fwd_ms": _ms(lambda: flash_attention_forward(q, k, v, causal=True, window=window)),
               "fwd_bwd_ms": _ms(lambda: fwd_bwd(window))}
        rows.append(row)
        print(f"window N={N} w={w}: work {row['work']:.3f}, fwd {row['fwd_ms'] / full['fwd']:.3f} of full, "
              f"fwd+bwd {row['fwd_bwd_ms'] / full['fwd_bwd']:.3f}", flush=True)
    return rows


def measure_window():
    import torch

    rows = []
    for N in WINDOW_NS:
        if _out_of_time():
            break
        rows += _window_rows(N)
        torch.cuda.empty_cache()
        common.save("phase7/window.json", {"rows": rows})


# ---------------------------------------------------------------- decoding
DECODE_BATCHES, DECODE_TOKENS = (1, 4, 16, 64), (1024, 4096, 16384, 32768, 131072)
DECODE_HEADS = (32, 8, 128)  # H, H_kv, D: a Llama-3-8B layer
FLEX_SHAPES = {(1, 4096), (1, 32768), (1, 131072), (16, 32768), (64, 4096), (64, 32768)}
CACHE_LIMIT = 40e9  # bytes of K + V; B=64 at 128k tokens (34 GB) is the largest


def _flex_decode(q, k, v):
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    torch._dynamo.reset()  # past dynamo's recompile limit torch.compile falls back to eager (see phase5.py)
    flex = torch.compile(flex_attention, dynamic=False, fullgraph=True)
    started = time.time()
    flex(q, k, v, enable_gqa=True)
    torch.cuda.synchronize()
    return (lambda: flex(q, k, v, enable_gqa=True)), time.time() - started


def _decode_row(B, N, copy):
    import torch

    from solutions.phase7 import flash_decode
    from solutions.phase7.decode import _combine_splits, choose_num_splits, decode_partials, merge_splits_with_partials
    from solutions.phase7.options import block_d, next_power_of_2

    H, H_kv, D = DECODE_HEADS
    nbytes = 2 * B * H_kv * N * D * 2
    q, k, v = _qkv(B, H, H_kv, 1, N, D)
    seqlens = torch.full((B,), N, dtype=torch.int32, device="cuda")
    step = lambda: flash_decode(q, k, v, seqlens)
    sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    row = {"B": B, "N": N, "H": H, "H_kv": H_kv, "D": D, "bytes": nbytes, "copy_gbs": copy,
           "splits": choose_num_splits(B * H_kv, N, q.device),
           "ours_graph_ms": _graph_ms(step), "sdpa_graph_ms": _graph_ms(sdpa), "ours_ms": _ms(step),
           "ours_one_split_ms": _ms(lambda: flash_decode(q, k, v, seqlens, num_splits=1)), "sdpa_ms": _try_ms(sdpa)}
    if (B, N) in FLEX_SHAPES and not _out_of_time():
        try:
            flex, compile_s = _flex_decode(q, k, v)
            row.update(flex_ms=_ms(flex), flex_compile_s=compile_s)
        except Exception as exc:  # noqa: BLE001 -- FlexAttention missing or failing: say so
            row["flex_error"] = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else "error"
    for name in ("ours", "ours_graph", "ours_one_split", "sdpa", "sdpa_graph", "flex"):
        ms = row.get(f"{name}_ms")
        row[f"{name}_share"] = None if ms is None else nbytes / (ms * 1e-3) / 1e9 / copy
    if (B, N) == (1, 32768):  # the merge: one fused kernel against Phase 3's merge_partials, pairwise
        o_part, lse_part, splits = decode_partials(q, k, v, seqlens)
        o = torch.empty_like(q)
        row["partials_ms"] = _ms(lambda: decode_partials(q, k, v, seqlens))
        row["combine_kernel_ms"] = _ms(lambda: _combine_splits[(B * H,)](
            o_part, lse_part, o, *o.stride()[:3], H, 1, B * H, splits, HEAD_DIM=D, BLOCK_D=block_d(D),
            BLOCK_S=max(2, next_power_of_2(splits)), num_warps=4))
        row["merge_partials_ms"] = _ms(lambda: merge_splits_with_partials(o_part, lse_part))
    print(f"decode B={B} N={N}: ours replayed {row['ours_graph_share'] or 0:.0%} of copy ({row['splits']} splits), "
          f"eager {row['ours_share']:.0%}, one split {row['ours_one_split_share']:.0%}; SDPA replayed "
          f"{row['sdpa_graph_share'] or 0:.0%}, eager {row['sdpa_share'] or 0:.0%}; "
          f"flex {row.get('flex_share') or 0:.0%}", flush=True)
    return row


def measure_decode():
    import torch

    from grader import timing

    H, H_kv, D = DECODE_HEADS
    copy = timing.copy_bandwidth_gbs()
    rows = []
    for B in DECODE_BATCHES:
        for N in DECODE_TOKENS:
            if 2 * B * H_kv * N * D * 2 > CACHE_LIMIT or _out_of_time():
                continue
            rows.append(_decode_row(B, N, copy))
            torch.cuda.empty_cache()
            common.save(f"phase7/decode-{common.device_tag()}.json", {"rows": rows})


def measure():
    started = time.time()
    measure_gqa()
    measure_window()
    measure_decode()
    print(f"phase 7 measured in {time.time() - started:.0f} s", flush=True)


# ---------------------------------------------------------------- on paper (no GPU)
# Published configurations (bf16 cache): layers, query heads, K/V heads, head dim, window (None: global),
# share of layers that use the window.
MODELS = [
    ("Llama 2 7B (MHA)", 32, 32, 32, 128, None, 0.0),
    ("Llama 3 8B (GQA 4:1)", 32, 32, 8, 128, None, 0.0),
    ("Llama 3 70B (GQA 8:1)", 80, 64, 8, 128, None, 0.0),
    ("Mistral 7B v0.1 (GQA 4:1, window 4096)", 32, 32, 8, 128, 4096, 1.0),
    ("Gemma 2 9B (GQA 2:1, D=256, window 4096 on half the layers)", 42, 16, 8, 256, 4096, 0.5),
]


def kv_cache_table(tokens=(8192, 131072)) -> str:
    rows = []
    for name, layers, heads, kv, D, window, local in MODELS:
        per_token = 2 * layers * kv * D * 2
        mha = 2 * layers * heads * D * 2

        def cached(n):
            kept = n if window is None else (1 - local) * n + local * min(n, window)
            return per_token * kept
        rows.append([name, f"{per_token / 1024:.0f} KiB", f"{mha / 1024:.0f} KiB"]
                    + [f"{cached(n) / 2**30:.2f} GiB" for n in tokens])
    return common.markdown_table(["model", "K/V cache per token", "the same with one K/V head per query head"]
                                 + [f"one sequence of {n // 1024}k tokens" for n in tokens], rows)


# Links, in GB/s per GPU and direction: NVLink 4 on an H100 SXM (900 GB/s both directions together);
# 400 Gb/s InfiniBand NDR, one NIC per GPU (a DGX H100 node), between nodes.
NVLINK_GBS, IB_GBS = 450.0, 50.0


def attention_tflops() -> tuple[float, str]:
    """Forward TFLOPS one GPU reaches on long sequences: Phase 5's measured kernel when assets hold it."""
    data = common.load("phase5/kernels.json")
    if data:
        rows = [r["tflops"] for r in data["rows"] if r["mode"] == "fwd" and r["D"] == 128 and r["Nq"] == 16384
                and r["dtype"] == "bfloat16" and not r["causal"]]
        if rows:
            return rows[0], f"Phase 5's forward at D=128, N=16384 on the {data['meta']['device']}"
    return 450.0, "an assumed 450 TFLOPS"


def ring_overlap(tflops, link_gbs, tokens, gpus, H=32, H_kv=8, D=128, B=1, backward=False) -> dict:
    """One ring step: the block computation against the transfer of the next K/V slice (and, backward,
    of the travelling float32 dK/dV). Non-causal blocks; times in milliseconds."""
    n = tokens // gpus
    flops = 4 * B * H * n * n * D * (2.5 if backward else 1.0)
    kv = 2 * B * H_kv * n * D * 2                       # K and V slices, bf16
    moved = kv + (2 * B * H_kv * n * D * 4 if backward else 0)  # + dK, dV in float32
    compute_ms = flops / (tflops * 1e12) * 1e3
    transfer_ms = moved / (link_gbs * 1e9) * 1e3
    # The transfer hides behind the block when n >= (bytes per token) / (FLOPs per token pair) * F / BW.
    n_min = (moved / n) / (flops / n / n) * (tflops * 1e12) / (link_gbs * 1e9)
    return {"n": n, "compute_ms": compute_ms, "transfer_ms": transfer_ms, "hidden": min(1.0, compute_ms / transfer_ms),
            "n_min": n_min}


def ring_table(tflops=None, nvlink=NVLINK_GBS, ib=IB_GBS) -> str:
    source = ""
    if tflops is None:
        tflops, source = attention_tflops()
    rows = []
    for gpus, link, where in ((8, nvlink, "NVLink"), (64, ib, "InfiniBand between nodes")):
        for H_kv in (32, 8):
            for tokens in (131072, 1048576):
                for backward in (False, True):
                    r = ring_overlap(tflops, link, tokens, gpus, H_kv=H_kv, backward=backward)
                    rows.append([f"{gpus} ({where}, {link:.0f} GB/s)", f"32 / {H_kv}", f"{tokens // 1024}k",
                                 "backward" if backward else "forward", f"{r['n']:,}", f"{r['compute_ms']:.3f}",
                                 f"{r['transfer_ms']:.3f}", f"{r['hidden']:.0%}", f"{r['n_min']:,.0f}"])
    table = common.markdown_table(["GPUs (slowest link of the ring)", "H / H_kv", "sequence", "pass",
                                   "tokens per GPU n", "block compute (ms)", "K/V transfer (ms)",
                                   "transfer hidden", "n needed to hide it"], rows)
    return table + (f"\n*Computed by `grader/lessons/phase7.py` (`ring_table`) from {tflops:.0f} TFLOPS of attention "
                    f"per GPU ({source or 'given'}), NVLink {nvlink:.0f} GB/s and InfiniBand {ib:.0f} GB/s per GPU "
                    "and direction; D=128, batch 1, bf16 K/V, float32 dK/dV, non-causal blocks.*\n")


# ---------------------------------------------------------------- tables from the measured data
def _f(x, fmt="{:.2f}"):
    return "-" if x is None else fmt.format(x)


def gqa_table(data) -> str:
    from grader import cost

    rows = []
    for r in data["rows"]:
        flops = cost.attention_flops(r["B"], r["H"], r["N"], r["N"], r["D"], True, "fwd")
        tf = lambda ms: None if ms is None else flops / (ms * 1e-3) / 1e12
        rep = r["repeat_ms"]
        cudnn = r.get("sdpa_cudnn_fwd_ms")
        rows.append([f"{r['H']} / {r['H_kv']}", f"{r['kv_bytes'] / 2**20:.0f} MiB", _f(tf(r["ours_fwd_ms"]), "{:.0f}"),
                     _f(r["ours_fwd_bwd_tflops"], "{:.0f}"), _f(tf(cudnn), "{:.0f}"),
                     _f(None if cudnn is None else tf(cudnn + rep), "{:.0f}"),
                     _f(tf(r.get("sdpa_flash_fwd_ms")), "{:.0f}"), _f(tf(r.get("sdpa_enable_gqa_fwd_ms")), "{:.0f}")])
    B, H, N, D = GQA_SHAPE
    return common.markdown_table(
        ["H / H_kv", "K + V", "ours fwd TFLOPS", "ours fwd+bwd", "SDPA cuDNN on repeated K/V", "the same + the repeat",
         "SDPA flash on repeated K/V", "SDPA enable_gqa=True (default backend)"], rows) + (
        f"\nB={B}, N={N}, D={D}, causal, bf16; TFLOPS count the same FLOPs for every row.\n")


def window_table(data) -> str:
    rows = []
    for r in data["rows"]:
        rows.append([r["N"], r["window"], f"{r['work']:.3f}", f"{r['full_fwd_ms']:.2f}", f"{r['fwd_ms']:.2f}",
                     f"{r['fwd_ms'] / r['full_fwd_ms']:.3f}", f"{r['full_fwd_bwd_ms']:.2f}", f"{r['fwd_bwd_ms']:.2f}",
                     f"{r['fwd_bwd_ms'] / r['full_fwd_bwd_ms']:.3f}", _f(r.get("sdpa_cudnn_full_fwd_ms"))])
    return common.markdown_table(["N", "window (left)", "work kept", "full fwd (ms)", "window fwd (ms)", "time kept",
                                  "full fwd+bwd (ms)", "window fwd+bwd (ms)", "time kept", "SDPA cuDNN full fwd (ms)"],
                                 rows) + "\nCausal, B=1, H=16, D=128, bf16; the window is `(w, -1)`, `causal=True`.\n"


def decode_table(data) -> str:
    pct = lambda x: "-" if x is None else f"{x:.0%}"
    us = lambda ms: "-" if ms is None else f"{ms * 1e3:.0f}"
    rows = []
    for r in data["rows"]:
        rows.append([r["B"], f"{r['N'] // 1024}k", f"{r['bytes'] / 2**20:,.0f} MiB",
                     f"{us(r.get('ours_graph_ms'))} ({pct(r.get('ours_graph_share'))})",
                     f"{us(r.get('sdpa_graph_ms'))} ({pct(r.get('sdpa_graph_share'))})",
                     f"{us(r['ours_ms'])} ({pct(r['ours_share'])})", f"{us(r.get('sdpa_ms'))} ({pct(r['sdpa_share'])})",
                     r["splits"], pct(r["ours_one_split_share"]), pct(r.get("flex_share"))])
    copy = data["rows"][0]["copy_gbs"] if data["rows"] else float("nan")
    text = common.markdown_table(["batch", "cached tokens", "K + V read", "ours, CUDA graph: us (share of copy)",
                                  "SDPA, CUDA graph", "ours, eager", "SDPA, eager", "splits", "ours, one split (eager)",
                                  "FlexAttention (eager)"], rows)
    merge = next((r for r in data["rows"] if "merge_partials_ms" in r), None)
    text += (f"\nH={DECODE_HEADS[0]}, H_kv={DECODE_HEADS[1]}, D={DECODE_HEADS[2]}, one new token per sequence, bf16; "
             f"bandwidth = bytes of K and V read / time, against the copy bandwidth {copy:,.0f} GB/s. "
             "A CUDA graph replays the step's kernels without the host (as inference engines run decoding); eager "
             "times include the host's launches (\"-\": not measured on this GPU).\n")
    if merge:
        text += (f"\nAt batch 1 and 32k tokens the split kernel, launched eagerly (`decode_partials`), "
                 f"takes {merge['partials_ms'] * 1e3:.0f} us, the fused merge of its {merge['splits']} splits "
                 f"{merge['combine_kernel_ms'] * 1e3:.0f} us (the kernel alone, launched directly), and the same merge "
                 f"through Phase 3's `merge_partials` (pairwise, log2 S rounds of PyTorch operations) "
                 f"{merge['merge_partials_ms'] * 1e3:.0f} us.\n")
    return text


DEVICE_TAGS = ("h100", "h200")  # each GPU's decode data sits in its own file, rendered one table after another


def decode_tables() -> str | None:
    found = [(tag, common.load(f"phase7/decode-{tag}.json")) for tag in DEVICE_TAGS]
    found = [(tag, data) for tag, data in found if data]
    if not found:
        return None
    return "\n".join(f"**{data['meta']['device']}**\n\n" + decode_table(data) + "\n" + common.measured_on(data["meta"])
                     for _, data in found)


def figures():
    done, blocks = [], {"kv-cache-table": kv_cache_table(), "ring-table": ring_table()}
    for name, rel, fn in (("gqa-table", "phase7/gqa.json", gqa_table), ("window-table", "phase7/window.json",
                                                                         window_table)):
        data = common.load(rel)
        if data:
            blocks[name] = fn(data) + "\n" + common.measured_on(data["meta"])
    if decode_tables():
        blocks["decode-table"] = decode_tables()
    for name, text in blocks.items():
        if common.replace_block(LESSON, name, text):
            done.append(f"filled {name}")
    return done


def main(argv) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m grader.lessons.phase7")
    parser.add_argument("what", choices=["ring", "kv-cache"])
    parser.add_argument("--tflops", type=float, default=None)
    parser.add_argument("--nvlink", type=float, default=NVLINK_GBS)
    parser.add_argument("--ib", type=float, default=IB_GBS)
    args = parser.parse_args(argv)
    print(ring_table(args.tflops, args.nvlink, args.ib) if args.what == "ring" else kv_cache_table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
