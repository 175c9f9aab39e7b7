"""Where flash_decode's time goes at the grader's shape: B=1, H=32 on H_kv=8, D=128, bf16, 32k cached
tokens, whose bar is 60% of the copy bandwidth (grader/phases/test_phase7.py::test_decode_bandwidth).

The lesson's decode table shows a floor: about 55 us at 1k cached tokens, where SDPA takes 13, and
93 us at 32k, where the split kernel alone takes about 65. This splits the time into
- host time per call, by function (cProfile) and by piece (perf_counter, the GPU idle);
- GPU time per kernel (torch.profiler);
- do_bench medians of launch paths that differ only in how the lengths are checked:
    shipped      both kernels queued, then the lengths copied behind them and checked (one sync);
    no check     the lengths never checked: the lower bound, NOT shippable;
    check first  the lengths read before the launch (a sync before it);
    host lengths cache_seqlens held on the host (pinned): checked there, then copied to the GPU
                 without a sync, as an inference engine that plans each step on the host would;
  each timed bare and as the grader times it (grader.honesty.timed), at 1k and 32k cached tokens.

    python -m grader.lessons.experiments.phase7_decode_time   ->  assets/phase7/decode-time.json
"""
import contextlib
import cProfile
import io
import json
import pstats

from grader.lessons.experiments import host_us, output_path, require_cuda

B, H, H_KV, D = 1, 32, 8, 128
TOKENS = (1024, 32768)


def _check_variants():
    """SeqlensCheck as shipped, and its two stand-ins (made once: a class per call would cost host time)."""
    from solutions.phase7 import decode

    shipped = decode.SeqlensCheck

    class NoCheck(shipped):
        def finish(self):
            pass

    class CheckFirst(shipped):
        def __init__(self, seqlens, n_max):
            super().__init__(seqlens, n_max)
            shipped.finish(self)  # reads the values now, before the caller launches anything

        def finish(self):
            pass

    return {"shipped": shipped, "no check": NoCheck, "check first": CheckFirst}


@contextlib.contextmanager
def lengths_check(variants, kind: str):
    """solutions.phase7.decode.SeqlensCheck replaced by `variants[kind]` while the block runs."""
    from solutions.phase7 import decode

    decode.SeqlensCheck = variants[kind]
    try:
        yield
    finally:
        decode.SeqlensCheck = variants["shipped"]


def host_lengths_decode(q, k, v, pinned_lengths):
    """flash_decode with the lengths on the host: checked there before the launch, copied without a sync.
    Run it under lengths_check(..., "no check"): the values are checked here."""
    from solutions.phase7 import decode

    values = pinned_lengths.tolist()
    if min(values) < 0 or max(values) > k.shape[2]:
        raise ValueError("cache_seqlens out of range")
    return decode.flash_decode(q, k, v, pinned_lengths.to(q.device, non_blocking=True))


def main(argv=None) -> None:
    path = output_path(__doc__, "phase7/decode-time.json", argv)
    require_cuda()
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from grader import timing
    from grader.honesty import timed
    from grader.lessons import common
    from solutions.phase7 import decode, flash_decode

    copy = timing.copy_bandwidth_gbs()
    gen = torch.Generator(device="cuda").manual_seed(0)
    report = {"shape": {"B": B, "H": H, "H_kv": H_KV, "D": D, "tokens": TOKENS}, "copy_gbs": copy}

    def inputs(n):
        q = torch.randn(B, H, 1, D, device="cuda", dtype=torch.bfloat16, generator=gen)
        k, v = (torch.randn(B, H_KV, n, D, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2))
        lengths = torch.full((B,), n, dtype=torch.int32, device="cuda")
        return q, k, v, lengths

    q, k, v, lengths = inputs(TOKENS[-1])
    pinned = lengths.cpu().pin_memory()
    reference = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    variants = _check_variants()
    with lengths_check(variants, "no check"):
        host_path = host_lengths_decode(q, k, v, pinned)
    errors = {"shipped": flash_decode(q, k, v, lengths), "host lengths": host_path}
    report["max_abs_error_vs_sdpa"] = {name: float((o.float() - reference.float()).abs().max())
                                       for name, o in errors.items()}

    # Host time of each piece, the GPU idle before each call.
    splits = decode.choose_num_splits(B * H_KV, k.shape[2], q.device)
    o_part, lse_part, _ = decode.decode_partials(q, k, v, lengths)
    out = torch.empty_like(q)
    pieces = {
        "input checks": lambda: decode._check_decode_inputs(q, k, v, lengths, None),
        "choose_num_splits": lambda: decode.choose_num_splits(B * H_KV, k.shape[2], q.device),
        "torch.empty (partials)": lambda: torch.empty((splits, B * H, D), dtype=torch.float32, device="cuda"),
        "split kernel launch (+ checks, allocations)": lambda: decode._launch_split(q, k, v, lengths, None, None, None),
        "combine kernel launch": lambda: decode._combine_splits[(B * H,)](
            o_part, lse_part, out, *out.stride()[:3], H, 1, B * H, splits, HEAD_DIM=D, BLOCK_D=D,
            BLOCK_S=max(2, decode.next_power_of_2(splits)), num_warps=4),
        "lengths check (copy, sync, compare)": lambda: decode.SeqlensCheck(lengths, k.shape[2]).finish(),
        "flash_decode, shipped": lambda: flash_decode(q, k, v, lengths),
        "SDPA": lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
    }
    report["host_us"] = {name: host_us(fn) for name, fn in pieces.items()}
    with lengths_check(variants, "no check"):
        report["host_us"]["flash_decode, host lengths"] = host_us(lambda: host_lengths_decode(q, k, v, pinned))
    for name, us in report["host_us"].items():
        print(f"host {name}: {us:.1f} us", flush=True)

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(300):
        flash_decode(q, k, v, lengths)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    report["cprofile_top25_by_own_time_300_calls"] = text.getvalue()

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            flash_decode(q, k, v, lengths)
        torch.cuda.synchronize()
    report["gpu_kernels_us"] = {e.key: e.device_time_total / 20 for e in prof.key_averages()
                                if e.device_time_total > 0}  # per flash_decode call
    for name, us in report["gpu_kernels_us"].items():
        print(f"GPU {name[:60]}: {us:.1f} us per call", flush=True)

    rows = []
    for n in TOKENS:
        q, k, v, lengths = inputs(n)
        pinned = lengths.cpu().pin_memory()
        nbytes = 2 * k.numel() * k.element_size()
        paths = {"shipped": ("shipped", lambda: flash_decode(q, k, v, lengths)),
                 "no check": ("no check", lambda: flash_decode(q, k, v, lengths)),
                 "check first": ("check first", lambda: flash_decode(q, k, v, lengths)),
                 "host lengths": ("no check", lambda: host_lengths_decode(q, k, v, pinned))}
        for name, (check, call) in paths.items():
            with lengths_check(variants, check):
                for harness in ("bare", "grader"):
                    fn = call if harness == "bare" else timed(call, q, k, v, what=f"flash_decode ({name})")
                    ms = timing.median_ms(fn)
                    rows.append({"tokens": n, "path": name, "harness": harness, "us": ms * 1e3,
                                 "share_of_copy": nbytes / (ms * 1e-3) / 1e9 / copy})
                    print(json.dumps(rows[-1]), flush=True)
        ms = timing.median_ms(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
        rows.append({"tokens": n, "path": "SDPA", "harness": "bare", "us": ms * 1e3,
                     "share_of_copy": nbytes / (ms * 1e-3) / 1e9 / copy})
        ms = timing.median_ms(lambda: decode.decode_partials(q, k, v, lengths))
        rows.append({"tokens": n, "path": "split kernel alone (+ shipped check)", "harness": "bare", "us": ms * 1e3,
                     "share_of_copy": nbytes / (ms * 1e-3) / 1e9 / copy})
    report["rows"] = rows
    path.write_text(json.dumps({"meta": common.device_record(), **report}, indent=1) + "\n")

    print(f"\n{report['cprofile_top25_by_own_time_300_calls'][:3000]}")
    print(f"flash_decode B={B} H={H} H_kv={H_KV} D={D} bf16; medians of do_bench; copy {copy:.0f} GB/s; "
          f"bar 60% at 32k tokens (grader harness)")
    print(f"{'tokens':>7} {'path':38} {'harness':8} {'us':>7} {'of copy':>8}")
    for r in rows:
        print(f"{r['tokens']:>7} {r['path']:38} {r['harness']:8} {r['us']:7.1f} {r['share_of_copy']:8.0%}")
    print(f"data: {path}")


if __name__ == "__main__":
    main()
