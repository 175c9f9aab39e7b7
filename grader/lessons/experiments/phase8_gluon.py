"""Phase 8, first step: the warp-specialized Gluon forward (grader/lessons/gluon_attention.py) on one
Hopper GPU, against SDPA's cuDNN and flash backends and Phase 5's tuned forward, timed in one process.

Each (head dim, causal) group runs in its own Python with a time limit, because a barrier waited on
in the wrong phase hangs the GPU forever rather than failing: a group that hangs is reported as such
and the others still run. In each group: correctness of (o, lse) against float64 under the graders'
rule (grader.numerics: at most twice SDPA's own error; lse as Phase 3 grades it), bf16 and fp16, ragged
and unequal lengths; then bf16 medians (triton.testing.do_bench) at 16k tokens, hidden 2048
(B = 16384 / N, H = 2048 / D), N = 1024, 4096, 16384.

    python -m grader.lessons.experiments.phase8_gluon                 ->  assets/phase8/gluon-forward-<gpu>.json
    python -m grader.lessons.experiments.phase8_gluon --compile-only  build every variant for sm_90, no GPU

`--compile-only` runs anywhere Triton 3.6 is installed (the GPU machine's version; the Gluon API moves
between releases): it compiles each variant with triton.compile(GluonASTSource(...), GPUTarget("cuda",
90, 32)) and prints shared memory, wgmma count and register spills, so that a compile error never
costs GPU time.
"""
import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

from grader.lessons.experiments import output_path, require_cuda

MODULE = "grader.lessons.experiments.phase8_gluon"
HEAD_DIMS = (64, 128)
TIMED_N = (1024, 4096, 16384)
# (B, H, Nq, Nk): one tile, ragged ends, unequal lengths, a longer head.
CHECKED_SHAPES = ((1, 2, 128, 128), (2, 3, 1000, 1000), (1, 2, 300, 700), (2, 2, 700, 300), (1, 2, 4096, 4096))
GROUP_TIMEOUT_S = 100  # a group takes about 40 s (estimate); a hang costs this much


def variants():
    """The kernel variants timed side by side: name -> Config (per head dim)."""
    from grader.lessons import gluon_attention as ga

    return {"gluon": dict(ga.CONFIGS),
            "gluon-pipelined": {D: dataclasses.replace(c, pipeline=True) for D, c in ga.CONFIGS.items()}}


# ---------------------------------------------------------------------------- ahead of time
def compile_only() -> None:
    import torch
    import triton

    from grader.lessons import gluon_attention as ga

    print(f"triton {triton.__version__}, target sm_90", flush=True)
    failures = 0
    for (name, cfgs), D, causal, dtype in ((v, D, c, t) for v in variants().items() for D in HEAD_DIMS
                                           for c in (False, True) for t in (torch.bfloat16, torch.float16)):
        started = time.perf_counter()
        what = f"{name:16} D={D:3} causal={causal!s:5} {str(dtype).removeprefix('torch.'):8}"
        try:
            kernel = ga.compile_sm90(D, causal, dtype, cfgs[D])
        except Exception as exc:  # noqa: BLE001 (a compile error of any kind is the finding)
            failures += 1
            print(f"{what} FAILED: {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200]}", flush=True)
            continue
        ptx = kernel.asm["ptx"]
        print(f"{what} ok  smem {kernel.metadata.shared:6d} B  wgmma {ptx.count('wgmma.mma_async'):3d}  "
              f"spills {ptx.count('.local'):2d}  {time.perf_counter() - started:4.1f} s", flush=True)
    if failures:
        raise SystemExit(f"{failures} variant(s) failed to compile")


# ---------------------------------------------------------------------------- one group, on the GPU
def emit(row: dict) -> None:
    print("ROW " + json.dumps(row), flush=True)


def run_group(head_dim: int, causal: bool) -> None:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from grader import numerics, timing
    from grader.lessons import gluon_attention as ga
    from grader.phases.test_phase3 import check_lse
    from solutions import phase5

    torch.manual_seed(0)
    kernels = {name: (lambda q, k, v, cfg=cfgs[head_dim]: ga.forward(q, k, v, causal, cfg=cfg))
               for name, cfgs in variants().items()}

    for dtype, (B, H, Nq, Nk), (name, fn) in ((t, s, kv) for t in (torch.bfloat16, torch.float16)
                                              for s in CHECKED_SHAPES for kv in kernels.items()):
        q = torch.randn(B, H, Nq, head_dim, dtype=dtype, device="cuda")
        k, v = (torch.randn(B, H, Nk, head_dim, dtype=dtype, device="cuda") for _ in range(2))
        row = dict(kind="check", variant=name, D=head_dim, causal=causal, dtype=str(dtype).removeprefix("torch."),
                   shape=[B, H, Nq, Nk])
        try:
            o, lse = fn(q, k, v)
            torch.cuda.synchronize()
            ref_lse = numerics.assert_attention_output(o, q, k, v, causal)
            check_lse(lse, q, k, causal, None, ref_lse)
            ref_o, _ = numerics.reference_attention(q, k, v, causal)
            row |= dict(ok=True, o_err=float((o.double() - ref_o).abs().max()),
                        sdpa_err=float((numerics.sdpa(q, k, v, causal).double() - ref_o).abs().max()),
                        lse_err=float((lse.double() - ref_lse).abs().max()))
        except AssertionError as exc:
            row |= dict(ok=False, error=str(exc))
        emit(row)

    for N in TIMED_N:
        B, H = 16384 // N, 2048 // head_dim
        q, k, v = (torch.randn(B, H, N, head_dim, dtype=torch.bfloat16, device="cuda") for _ in range(3))
        flops = 4 * B * H * N * N * head_dim / (2 if causal else 1)
        calls = {}
        for backend, label in ((SDPBackend.CUDNN_ATTENTION, "cudnn"), (SDPBackend.FLASH_ATTENTION, "flash")):
            def sdpa(backend=backend):
                with sdpa_kernel(backend):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
            calls[label] = sdpa
        calls["phase5"] = lambda: phase5.forward(q, k, v, causal=causal)
        calls |= {name: (lambda fn=fn: fn(q, k, v)) for name, fn in kernels.items()}
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        row = dict(kind="time", D=head_dim, causal=causal, dtype="bfloat16", B=B, H=H, N=N, ms={}, tflops={},
                   max_diff_vs_cudnn={})
        for label, call in calls.items():
            try:
                out = call()
                out = out[0] if isinstance(out, tuple) else out
                row["max_diff_vs_cudnn"][label] = float((out.float() - reference.float()).abs().max())
                ms = timing.median_ms(call)
            except Exception as exc:  # noqa: BLE001 (a backend SDPA lacks here, a launch error): reported
                row.setdefault("errors", {})[label] = f"{type(exc).__name__}: {str(exc)[:200]}"
                continue
            row["ms"][label], row["tflops"][label] = ms, flops / ms / 1e9
        emit(row)


# ---------------------------------------------------------------------------- every group, and the table
def run_all(timeout_s: int) -> tuple[list, list]:
    rows, groups = [], []
    for D in HEAD_DIMS:
        for causal in (False, True):
            started = time.perf_counter()
            cmd = [sys.executable, "-m", MODULE, "--group", f"{D},{int(causal)}"]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
                out, err, status = proc.stdout, proc.stderr, f"exit {proc.returncode}"
            except subprocess.TimeoutExpired as exc:
                out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
                err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
                status = f"timed out after {timeout_s} s (a hang: a barrier waited on in the wrong phase?)"
            got = [json.loads(line[4:]) for line in out.splitlines() if line.startswith("ROW ")]
            rows += got
            groups.append(dict(D=D, causal=causal, status=status, rows=len(got), seconds=time.perf_counter() - started,
                               stderr_tail=err[-3000:]))
            print(f"group D={D} causal={causal}: {status}, {len(got)} rows, {groups[-1]['seconds']:.0f} s", flush=True)
    return rows, groups


def table(rows: list, groups: list) -> list[str]:
    lines = []
    checks = [r for r in rows if r["kind"] == "check"]
    failed = [r for r in checks if not r["ok"]]
    lines.append(f"correctness: {len(checks) - len(failed)} / {len(checks)} cases within the graders' rule")
    lines += [f"  FAIL {r['variant']} D={r['D']} causal={r['causal']} {r['dtype']} {r['shape']}: {r['error'][:160]}"
              for r in failed]
    lines += [f"  group D={g['D']} causal={g['causal']}: {g['status']}" for g in groups if g["status"] != "exit 0"]
    names = list(variants())
    lines.append("bf16 forward TFLOPS (16k tokens, hidden 2048); ratios of each Gluon variant to cuDNN / flash / "
                 "Phase 5")
    lines.append(f"  {'D':>3} {'causal':>6} {'N':>6} {'cudnn':>6} {'flash':>6} {'ph5':>6} "
                 + " ".join(f"{n:>16} {'/cudnn':>6} {'/flash':>6} {'/ph5':>6}" for n in names))
    for r in (r for r in rows if r["kind"] == "time"):
        t = r["tflops"]

        def ratio(a, b):
            return f"{t[a] / t[b]:6.2f}" if a in t and b in t else f"{'-':>6}"

        cells = " ".join(f"{t.get(n, float('nan')):16.0f} {ratio(n, 'cudnn')} {ratio(n, 'flash')} {ratio(n, 'phase5')}"
                         for n in names)
        lines.append(f"  {r['D']:>3} {r['causal']!s:>6} {r['N']:>6} {t.get('cudnn', float('nan')):6.0f} "
                     f"{t.get('flash', float('nan')):6.0f} {t.get('phase5', float('nan')):6.0f} {cells}")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--compile-only", action="store_true")
    parser.add_argument("--group", default=None, help=argparse.SUPPRESS)  # "D,causal": one group, rows on stdout
    parser.add_argument("--timeout", type=int, default=GROUP_TIMEOUT_S)
    own, rest = parser.parse_known_args(argv)
    if own.compile_only:
        compile_only()
        return
    require_cuda()
    if own.group:
        D, causal = own.group.split(",")
        run_group(int(D), bool(int(causal)))
        return
    import torch

    from grader.lessons import common

    gpu = torch.cuda.get_device_name().split()[-1].lower()  # "NVIDIA H200" -> h200
    path = output_path(__doc__, f"phase8/gluon-forward-{gpu}.json", rest)
    rows, groups = run_all(own.timeout)
    lines = table(rows, groups)
    meta = common.device_record() | {"variants": {n: {D: dataclasses.asdict(c) for D, c in cfgs.items()}
                                                  for n, cfgs in variants().items()},
                                     "timing": "triton.testing.do_bench median, L2 flushed (grader.timing)"}
    path.write_text(json.dumps({"meta": meta, "groups": groups, "rows": rows, "table": lines}, indent=1) + "\n")
    print(f"data: {path}")
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    main()
