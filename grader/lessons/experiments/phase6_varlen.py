"""Phase 6 varlen vs dense at the grader's shape (B=8 equal sequences of N=2048, H=16, D=128, bf16), the
inputs and closures of grader/phases/test_phase6.py::test_varlen_as_fast_as_dense, timed four ways;
plus bad cu_seqlens on the GPU. Prints a table last and writes assets/phase6/varlen-variants.json.

Variants (the same kernels; only the check of cu_seqlens' values differs):
  dense          api.flash_attention with dropout_p = 0 (Phase 4's kernels): the grader's bar
  varlen         solutions/phase6 as it is: launch, then check the values beside the kernel
  varlen-nocheck the values check left out: the lower bound, NOT shippable
  varlen-first   the values read before the launch (the previous design: a copy that drains the GPU)
Harnesses (how every variant is timed; each adds to the one before):
  raw            grader.timing.median_ms(step): do_bench on the bare closure
  grader         grader.timing.median_ms(grader.honesty.timed(step, *inputs)): the test's very call
  +notes         plus grader.plugin's launch notes to a progress file (a graded child process does this)
  +load          plus (cores - 2) busy processes on the CPU, like the warm-up shards compiling beside a
                 graded run
    python -m grader.lessons.experiments.phase6_varlen [--out DIR] [--smoke]
(--smoke: a CPU dry run under the interpreter at a toy shape, for the script's logic only)
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from grader import runtime  # before anything imports triton

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"
runtime.configure()
import torch  # noqa: E402

import solutions.phase4 as phase4  # noqa: E402
import solutions.phase6 as api  # noqa: E402
from grader import timing  # noqa: E402
from grader.honesty import timed  # noqa: E402
from grader.inputs import qkv, randn  # noqa: E402
from grader.lessons.experiments import host_us, output_path, require_cuda  # noqa: E402
from grader.lessons.phase6 import check_variants  # noqa: E402
from grader.phases.test_phase6 import dense_step, varlen_step  # noqa: E402
from solutions.phase6 import forward  # noqa: E402

B, H, N, D = (2, 2, 40, 16) if SMOKE else (8, 16, 2048, 128)
DEV, DTYPE = ("cpu", torch.float32) if SMOKE else ("cuda", torch.bfloat16)
REAL = forward.CuSeqlensCheck
STAND_INS = check_variants(REAL)
VARIANTS = {"varlen": REAL, "varlen-nocheck": STAND_INS["varlen_unchecked_ms"],
            "varlen-first": STAND_INS["varlen_checked_first_ms"]}


def sync():
    if not SMOKE:
        torch.cuda.synchronize()


def median_ms(fn):
    if SMOKE:  # the interpreter: one call, for the script's logic only
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return timing.median_ms(fn)


class Load:
    """(cores - 2) busy Python processes, started by us and ended by their pids."""

    def __init__(self):
        n = 1 if SMOKE else max(1, (os.cpu_count() or 4) - 2)
        # Each ends by itself after 120 s or when its parent is gone, should this script be killed.
        code = ("import os, time\nparent, end = os.getppid(), time.time() + 120\nx = list(range(200000))\n"
                "while time.time() < end and os.getppid() == parent:\n    x = sorted(x, key=lambda i: -i)")
        self.procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
        time.sleep(1.0)

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait()


def bad_values(q, k, v, cu):
    """Bad cu_seqlens at the real shape: each must raise ValueError from the call, leave the GPU healthy
    (a fault shows at the next synchronize), and a good call afterwards must still be right."""
    results = []
    big = 2**31 - 1
    cases = {"last entry past the pack": (-1, 10**9), "negative entry": (1, -10**9), "int32 max inside": (2, big),
             "decreasing": (1, int(cu[2]) + 7)}
    for name, (at, value) in cases.items():
        bad = cu.clone()
        bad[at] = value
        try:
            api.flash_attention_varlen(q, k, v, bad, cu, N, N, causal=True)
            outcome = "NOT REFUSED"
        except ValueError as exc:
            outcome = f"ValueError: {str(exc)[:90]}"
        try:
            sync()
            healthy = "GPU ok"
        except Exception as exc:  # a kernel fault: every later CUDA call fails too
            healthy = f"GPU FAULT: {str(exc)[:120]}"
        results.append({"case": name, "outcome": outcome, "after": healthy})
        print(f"bad cu_seqlens_q ({name}): {outcome}; {healthy}", flush=True)
    o = api.flash_attention_varlen(q, k, v, cu, cu, N, N, causal=True)
    dense = phase4.flash_attention(*(x.view(B, N, H, D).transpose(1, 2) for x in (q, k, v)), causal=True)
    diff = (o.view(B, N, H, D).transpose(1, 2).float() - dense.float()).abs().max().item()
    results.append({"case": "good call afterwards, max |varlen - dense| of o", "diff": diff})
    print(f"good call afterwards: max |varlen - dense| of o = {diff:.2e}", flush=True)
    return results


def main(argv=None):
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--smoke"]  # SMOKE was read at import
    path = output_path(__doc__, "phase6/varlen-variants.json", argv)
    if not SMOKE:
        require_cuda()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("killed (SIGTERM)"))  # run the finally blocks
    gen = torch.Generator().manual_seed(0)
    # The test's inputs, built the test's way.
    q, k, v = qkv(B, H, N, N, D, DTYPE, DEV, gen, "bnhd")
    packed = [x.transpose(1, 2).reshape(B * N, H, D) for x in (q, k, v)]
    cu = torch.arange(0, (B + 1) * N, N, dtype=torch.int32, device=DEV)
    do = randn((B, H, N, D), DTYPE, DEV, gen)
    do_packed = do.transpose(1, 2).reshape(B * N, H, D)
    do_bnhd = do_packed.view(B, N, H, D).transpose(1, 2)  # the same values in the packed dO's memory
    report = {"bad_values": bad_values(*packed, cu)}

    # Correctness spot check of every variant against dense (causal, o and the gradients).
    xd = [t.detach().requires_grad_() for t in (q, k, v)]
    od = api.flash_attention(*xd, causal=True)
    ref = [od, *torch.autograd.grad(od, xd, do)]
    for name, variant in VARIANTS.items():
        forward.CuSeqlensCheck = variant
        xp = [t.detach().requires_grad_() for t in packed]
        op = api.flash_attention_varlen(*xp, cu, cu, N, N, causal=True)
        got = [op, *torch.autograd.grad(op, xp, do_packed)]
        forward.CuSeqlensCheck = REAL
        diffs = [(a.float() - b.view(B, N, H, D).transpose(1, 2).float()).abs().max().item() for a, b in zip(ref, got)]
        print(f"{name} vs dense, causal, max |difference| of o, dq, dk, dv: " + ", ".join(f"{x:.1e}" for x in diffs),
              flush=True)

    reps = 2 if SMOKE else 50
    host = {"dense": host_us(dense_step(api, q, k, v, True, "fwd"), reps)}
    for name, variant in VARIANTS.items():
        forward.CuSeqlensCheck = variant
        host[name] = host_us(varlen_step(api, *packed, cu, N, True, "fwd"), reps)
        forward.CuSeqlensCheck = REAL
    host["values check alone"] = host_us(lambda: REAL(cu, cu, B * N, B * N, N, N).finish(), 2 if SMOKE else 200)
    print("host us per causal fwd call, GPU idle: " + ", ".join(f"{k} {v:.0f}" for k, v in host.items()), flush=True)
    report["host_us"] = host

    rows = []
    notes_file = tempfile.NamedTemporaryFile(prefix="phase6-progress-", suffix=".jsonl", delete=False)
    load = None
    try:
        for harness in ("raw", "grader", "+notes", "+load"):
            if harness == "+notes":
                from grader.plugin import Progress, _note_launches
                _note_launches(Progress(notes_file.name))  # stays for +load too
            if harness == "+load":
                load = Load()
            for causal in (False, True):
                for mode in ("fwd", "fwd_bwd"):
                    row = {"harness": harness, "causal": causal, "mode": mode}

                    def time_it(step, inputs, what):
                        return median_ms(step if harness == "raw" else timed(step, *inputs, what=what))
                    row["dense"] = time_it(dense_step(api, q, k, v, causal, mode, do), (q, k, v), "dense")
                    if mode == "fwd_bwd" and harness in ("raw", "grader"):  # dO in the packed one's memory
                        row["dense, dO bnhd"] = time_it(dense_step(api, q, k, v, causal, mode, do_bnhd), (q, k, v),
                                                        "dense")
                    for name, variant in VARIANTS.items():
                        forward.CuSeqlensCheck = variant
                        try:
                            row[name] = time_it(varlen_step(api, *packed, cu, N, causal, mode, do_packed), packed, name)
                        finally:
                            forward.CuSeqlensCheck = REAL
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        if load:
            load.stop()
        os.unlink(notes_file.name)
    report["rows"] = rows

    import triton
    meta = {"device": "cpu (smoke)" if SMOKE else torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "shape": {"B": B, "H": H, "N": N, "D": D, "dtype": str(DTYPE)},
            "cpus": os.cpu_count()}
    report["meta"] = meta
    path.write_text(json.dumps(report, indent=1) + "\n")

    print()
    print(f"{meta['device']}, torch {meta['torch']}, Triton {meta['triton']}; B={B} H={H} N={N} D={D}; "
          "ms = median (do_bench); x = dense ms / variant ms (grader bar 0.80 on fwd and fwd_bwd)")
    names = list(VARIANTS)
    print(f"{'harness':8} {'causal':6} {'mode':7} {'dense ms':>8} " + " ".join(f"{n:>20}" for n in names))
    for r in rows:
        cells = " ".join(f"{r[n]:9.3f} ms {r['dense'] / r[n]:5.2f}x" for n in names)
        print(f"{r['harness']:8} {str(r['causal']):6} {r['mode']:7} {r['dense']:8.3f} {cells}")
    for r in rows:
        if "dense, dO bnhd" in r:
            print(f"{r['harness']:8} {str(r['causal']):6} {r['mode']:7} dense with dO in the packed layout: "
                  f"{r['dense, dO bnhd']:.3f} ms ({r['dense'] / r['dense, dO bnhd']:.2f}x the (B, H, N, D) dO's speed)")
    print("host us per causal fwd call (GPU idle): " + ", ".join(f"{k} {v:.0f}" for k, v in host.items()))
    print("bad cu_seqlens: " + "; ".join(f"{r['case']}: {r.get('outcome', r.get('diff'))} {r.get('after', '')}"
                                         for r in report["bad_values"]))


if __name__ == "__main__":
    main()
