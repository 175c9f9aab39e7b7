"""Phase 5's numbers: configuration sweeps, the ablation, and the distance to cuDNN and FlexAttention.

    python -c 'from grader.lessons import phase5; phase5.tune()'    GPU: assets/phase5/tune_*.json
    python -m grader.lessons.measure phase5                                  GPU: assets/phase5/*.json
    python -m grader.lessons.figures                                         tables and plots into the lesson

Every sweep first compiles its candidates in parallel worker processes (Triton 3.6 compiles one
kernel at a time, for seconds; the GPU machines have many cores), then times them one by one in
this process with the kernel cache warm.
"""
import functools
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

from grader import settings
from grader.lessons import common

LESSON = common.ROOT / "exercises" / "phase5" / "README.md"
# A wall-clock deadline (seconds since the epoch): sweeps stop early, keeping what they measured,
# on a machine lent for a limited time.
DEADLINE = float(settings.MEASURE_DEADLINE.get())


def _out_of_time() -> bool:
    return time.time() > DEADLINE


def _inputs(N, D, dtype="bfloat16", seed=0, batch_heads=None):
    import torch

    from grader import bench
    from grader.inputs import qkv

    B, H, N, D = bench.standard_shape(N, D)
    if batch_heads:
        B, H = batch_heads
    gen = torch.Generator().manual_seed(seed)
    return qkv(B, H, N, N, D, getattr(torch, dtype), "cuda", gen, "bnhd")


# ---------------------------------------------------------------- candidates
def forward_candidates(D):
    """The forward's pruned space on this GPU (descriptor path), plus Phase 3's pointer kernel."""
    from solutions.phase5.forward import pruned_space

    return [c for c in pruned_space(D, 0) if c.block_n >= 64]


def _small(D, batch):
    """Small inputs whose integer arguments specialize like the standard shapes' (Triton compiles one
    kernel per pattern of `== 1` and `% 16 == 0` among them), so compiling on them fills the cache."""
    return {"N": 256, "batch_heads": (batch, 2048 // D)}


def _fwd_call(N, D, causal, cfg, tma, switches=None, small=None):
    from solutions.phase5.forward import Switches, forward

    q, k, v = _inputs(N, D) if small is None else _inputs(D=D, **_small(D, small))
    sw = switches or Switches(tma=tma)
    return functools.partial(forward, q, k, v, causal, config=cfg, switches=sw)


BWD_TWO_KERNELS = {
    # (dK/dV: BLOCK_M1, BLOCK_N1, MASK_BLOCK_M1, warps, stages), (dQ: BLOCK_M2, BLOCK_N2, MASK_BLOCK_N2, warps, stages)
    64: [((32, 128, 32, 4, 3), (128, 64, 32, 8, 3)), ((64, 128, 32, 8, 3), (128, 64, 32, 8, 3)),
         ((32, 128, 32, 4, 3), (128, 128, 32, 8, 2)), ((32, 128, 32, 4, 3), (64, 64, 32, 4, 3)),
         ((64, 64, 32, 4, 3), (128, 64, 32, 8, 3)), ((32, 64, 16, 4, 4), (128, 32, 32, 4, 3))],
    128: [((32, 64, 16, 4, 3), (64, 32, 16, 4, 4)), ((64, 128, 32, 8, 2), (64, 32, 16, 4, 4)),
          ((64, 128, 32, 8, 2), (128, 64, 32, 8, 2)), ((64, 128, 32, 8, 2), (64, 64, 32, 4, 3)),
          ((64, 128, 32, 8, 2), (128, 32, 32, 8, 3)), ((64, 64, 32, 4, 3), (64, 64, 32, 4, 2)),
          ((64, 128, 32, 8, 3), (128, 64, 32, 8, 3))],
}
BWD_ATOMIC = {64: [(64, 128, 8, 2), (64, 128, 8, 3), (32, 128, 4, 3), (64, 64, 4, 3), (128, 128, 8, 2)],
              128: [(64, 128, 8, 2), (64, 128, 8, 3), (32, 128, 8, 3), (64, 64, 4, 3), (128, 128, 8, 2)]}


def _bwd_call(N, D, causal, kind, cfg, small=None):
    import torch

    from grader.lessons.phase4 import atomic_backward
    from solutions.phase3 import flash_attention_forward
    from solutions.phase4 import flash_attention_backward

    q, k, v = _inputs(N, D) if small is None else _inputs(D=D, **_small(D, small))
    do = torch.randn_like(q)
    o, lse = flash_attention_forward(q, k, v, causal=causal)
    if kind == "atomic":
        q, k, v, o, do = (t.contiguous() for t in (q, k, v, o, do))
        return functools.partial(atomic_backward, do, q, k, v, o, lse, causal, cfg)
    return functools.partial(flash_attention_backward, do, q, k, v, o, lse, causal=causal, config=cfg)


def _compile_job(job):
    """Worker: run one candidate once on small inputs, which leaves its kernels in Triton's cache."""
    what, args = job
    try:
        for batch in (1, 4):  # B is 1 at N = 16384 and 4 at N = 4096 in the standard sweep
            (_fwd_call if what == "fwd" else _bwd_call)(*args, small=batch)()
        return None
    except Exception as exc:  # noqa: BLE001 - reported when the candidate is timed
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else ''}"


def precompile(jobs, workers=None):
    """Compile every candidate in parallel processes (spawned: CUDA does not survive fork)."""
    workers = workers or min(12, max(1, (os.cpu_count() or 2) - 2))
    started = time.time()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        errors = list(pool.map(_compile_job, jobs))
    print(f"precompiled {len(jobs)} candidates in {time.time() - started:.0f} s on {workers} processes", flush=True)
    return errors


# ---------------------------------------------------------------- sweeps
def _time(call, flops):
    from grader import timing

    call()
    ms = timing.median_ms(call)
    return {"ms": ms, "tflops": timing.tflops(flops, ms)}


def tune_forward(ns=(4096, 16384)):
    """Every pruned configuration on the descriptor path, and Phase 3's kernel, at the standard shapes."""
    import dataclasses

    from grader import cost
    from solutions.phase3 import flash_attention_forward
    from solutions.phase5.forward import Switches

    shapes = [(D, causal) for D in (64, 128) for causal in (False, True)]
    jobs = [("fwd", (4096, D, causal, c, tma)) for D, causal in shapes for c in forward_candidates(D)
            for tma in (True, False)]
    precompile(jobs)
    rows = []
    for D, causal in shapes:
        for N in ns:
            q, k, v = _inputs(N, D)
            flops = cost.attention_flops(*q.shape[:3], N, D, causal, "fwd")
            base = _time(functools.partial(flash_attention_forward, q, k, v, causal), flops)
            rows.append({"D": D, "N": N, "causal": causal, "kernel": "phase3", **base})
            for cfg in forward_candidates(D):
                for tma in (True, False):
                    if _out_of_time():
                        break
                    row = {"D": D, "N": N, "causal": causal, "kernel": "phase5", "tma": tma,
                           "config": dataclasses.astuple(cfg)}
                    try:
                        row.update(_time(_fwd_call(N, D, causal, cfg, tma, Switches(tma=tma)), flops))
                    except Exception as exc:  # noqa: BLE001 - a candidate that does not compile or fit
                        row["error"] = str(exc).strip().splitlines()[-1][:160]
                    rows.append(row)
                    print(f"fwd D={D} N={N} causal={causal} tma={tma} {row['config']}: "
                          f"{row.get('tflops', float('nan')):.0f} TFLOPS (phase 3: {base['tflops']:.0f}) "
                          f"{row.get('error', '')}", flush=True)
            common.save("phase5/tune_forward.json", {"rows": rows})
    return rows


def tune_backward(ns=(4096,)):
    from grader import cost

    shapes = [(D, causal) for D in (64, 128) for causal in (False, True)]
    jobs = [("bwd", (4096, D, causal, "two", c)) for D, causal in shapes for c in BWD_TWO_KERNELS[D]]
    jobs += [("bwd", (4096, D, causal, "atomic", c)) for D, causal in shapes for c in BWD_ATOMIC[D]]
    precompile(jobs)
    rows = []
    for D, causal in shapes:
        for N in ns:
            q, k, v = _inputs(N, D)
            flops = cost.attention_flops(*q.shape[:3], N, D, causal, "bwd")
            for kind, cands in (("two", BWD_TWO_KERNELS[D]), ("atomic", BWD_ATOMIC[D])):
                for cfg in cands:
                    if _out_of_time():
                        break
                    row = {"D": D, "N": N, "causal": causal, "kind": kind, "config": cfg}
                    try:
                        row.update(_time(_bwd_call(N, D, causal, kind, cfg), flops))
                    except Exception as exc:  # noqa: BLE001
                        row["error"] = str(exc).strip().splitlines()[-1][:160]
                    rows.append(row)
                    print(f"bwd D={D} N={N} causal={causal} {kind} {cfg}: {row.get('tflops', float('nan')):.0f} "
                          f"TFLOPS {row.get('error', '')}", flush=True)
            common.save("phase5/tune_backward.json", {"rows": rows})
    return rows


# ---------------------------------------------------------------- the references: SDPA and FlexAttention
def flex_callables(q, k, v, causal):
    """FlexAttention (torch.compile'd Triton) forward and backward, compiled before timing."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    # A fresh compile per shape and dtype: past dynamo's recompile limit (8) torch.compile falls back
    # to running flex_attention eagerly, a dense N x N computation that is slow and runs out of memory.
    torch._dynamo.reset()
    flex = torch.compile(flex_attention, dynamic=False, fullgraph=True)
    mask = None
    if causal:
        mask = create_block_mask(lambda b, h, i, j: i >= j, None, None, q.shape[2], k.shape[2], device="cuda")
    qc, kc, vc = (t.detach().contiguous() for t in (q, k, v))  # flex wants one layout per run; give it the best
    fwd = functools.partial(flex, qc, kc, vc, block_mask=mask)
    qg, kg, vg = (t.detach().clone().requires_grad_() for t in (qc, kc, vc))
    out = flex(qg, kg, vg, block_mask=mask)
    do = torch.randn_like(out)

    def bwd():
        torch.autograd.grad(out, (qg, kg, vg), do, retain_graph=True)
    return {"fwd": fwd, "bwd": bwd}


def references(shapes=((128, 16384), (64, 4096))):
    from grader import bench, timing

    rows = []
    for D, N in shapes:
        for causal in (False, True):
            q, k, v = _inputs(N, D)
            started = time.time()
            flex = flex_callables(q, k, v, causal)
            compile_s = time.time() - started
            for mode in ("fwd", "bwd"):
                flex[mode]()
                ms = timing.median_ms(flex[mode])
                row = bench.measure(None, q, k, v, causal, mode=mode, baselines=("flash", "cudnn"))
                row.update(flex_ms=ms, flex_tflops=timing.tflops(row["flops"], ms), flex_compile_s=compile_s)
                rows.append(row)
                print(f"{mode} D={D} N={N} causal={causal}: flex {row['flex_tflops']:.0f}, cudnn "
                      f"{row.get('cudnn_tflops', 0):.0f}, flash {row.get('flash_tflops', 0):.0f} TFLOPS "
                      f"(flex compiled in {compile_s:.0f} s)", flush=True)
            common.save("phase5/references.json", {"rows": rows})
    return rows


def tune():
    tune_forward()
    tune_backward()


# ---------------------------------------------------------------- the lesson's tables
NS, DS = (1024, 4096, 16384), (64, 128)


def _flex_safe(q, k, v, causal):
    try:
        return flex_callables(q, k, v, causal)
    except Exception as exc:  # noqa: BLE001 - FlexAttention missing or failing to compile: say so
        print(f"FlexAttention unavailable: {exc}", flush=True)
        return None


def _with_flex(row, flex, mode):
    from grader import timing

    if flex is None or mode not in flex:
        return row
    flex[mode]()
    ms = timing.median_ms(flex[mode])
    row.update(flex_ms=ms, flex_tflops=timing.tflops(row["flops"], ms))
    row["ratio_vs_flex"] = row["tflops"] / row["flex_tflops"]
    return row


def measure_kernels(ds=DS, ns=NS, update=False):
    """Forward (bf16, fp16), backward and forward+backward (bf16) against SDPA flash, cuDNN and
    FlexAttention, at the standard shapes. `update=True` re-measures only the given shapes and
    replaces their rows in the stored data, marking them `remeasured`."""
    import torch

    from grader import bench
    from solutions.phase5 import flash_attention, flash_attention_backward, flash_attention_forward

    rows = []
    for D in ds:
        for N in ns:
            for causal in (False, True):
                for dtype in ("bfloat16", "float16"):
                    if _out_of_time():
                        break
                    q, k, v = _inputs(N, D, dtype)
                    fwd = bench.measure(lambda: flash_attention_forward(q, k, v, causal), q, k, v, causal,
                                        mode="fwd", baselines=("flash", "cudnn"))
                    flex = None
                    if dtype == "bfloat16":
                        do = torch.randn_like(q)
                        o, lse = flash_attention_forward(q, k, v, causal)
                        bwd = bench.measure(lambda: flash_attention_backward(do, q, k, v, o, lse, causal=causal),
                                            q, k, v, causal, mode="bwd", baselines=("flash", "cudnn"))
                        qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

                        def fwd_bwd():
                            torch.autograd.grad(flash_attention(qg, kg, vg, causal=causal), (qg, kg, vg), do)
                        fb = bench.measure(fwd_bwd, q, k, v, causal, mode="fwd_bwd", baselines=("flash", "cudnn"))
                        # FlexAttention compiles last: its compile workers must not share the CPU
                        # with our timings (a suspect for the outliers of an earlier run).
                        flex = _flex_safe(q, k, v, causal)
                        rows += [_with_flex(fwd, flex, "fwd"), _with_flex(bwd, flex, "bwd"), fb]
                    else:
                        rows.append(fwd)
                    print(" | ".join(f"{r['mode']} {r['tflops']:.0f} ({r.get('ratio_vs_cudnn', 0):.2f}x cuDNN, "
                                     f"{r.get('ratio_vs_flex', 0):.2f}x flex)" for r in rows[-3:]),
                          f"D={D} N={N} causal={causal} {dtype}", flush=True)
                    if not update:
                        common.save("phase5/kernels.json", {"rows": rows})
    if update:
        stored = common.load("phase5/kernels.json")
        redone = {(r["D"], r["Nq"]) for r in rows}
        kept = [r for r in stored["rows"] if (r["D"], r["Nq"]) not in redone]
        common.save("phase5/kernels.json", {"rows": kept + [dict(r, remeasured=True) for r in rows],
                                            "first_measured": stored["meta"]})
    return rows


# One switch changed at a time against the tuned kernel: (name, what it changes, config, switches).
def ablation_variants(D, causal, N):
    import dataclasses

    import torch

    from solutions.phase5.forward import Config, Switches, choose_config

    tuned = choose_config(torch.device("cuda"), torch.bfloat16, D, causal, N)
    return [
        ("tuned", "the pinned configuration, every optimization on", tuned, Switches()),
        ("phase 3 configuration", "BLOCK 128x64, 8 warps, 3 stages, pointers (Phase 3's choice)",
         Config(128, 64, 8, 3, False), Switches()),
        ("descriptors off" if tuned.tma else "descriptors on", "the other load path, same configuration",
         tuned, Switches(tma=not tuned.tma)),
        ("no causal split" if causal else "no tail split", "every visible key block masked" if causal else
         "(non-causal: no effect expected)", tuned, Switches(split_causal=False)),
        ("exp instead of exp2", "natural exp, scale not folded into log2(e)", tuned, Switches(exp2=False)),
        ("P in float32", "second matmul on float32 P and V (TF32)", tuned, Switches(p_fp32=True)),
        ("larger blocks", "BLOCK 128x128, 8 warps, 2 stages", Config(128, 128, 8, 2, tuned.tma), Switches()),
        ("one more stage", f"{tuned.num_stages + 1} stages",
         dataclasses.replace(tuned, num_stages=tuned.num_stages + 1), Switches()),
        ("warp_specialize=True", "tl.range(warp_specialize=True) on the hot loop", tuned,
         Switches(warp_specialize=True)),
    ]


ABLATION_SHAPES = ((128, 16384, False), (128, 16384, True), (64, 4096, False), (64, 4096, True))


def measure_ablation():
    from grader import cost

    jobs = [("fwd", (N, D, causal, cfg, None, sw)) for D, N, causal in ABLATION_SHAPES
            for _, _, cfg, sw in ablation_variants(D, causal, N)]
    precompile(jobs)
    rows = []
    for D, N, causal in ABLATION_SHAPES:
        q, k, v = _inputs(N, D)
        flops = cost.attention_flops(*q.shape[:3], N, D, causal, "fwd")
        for name, what, cfg, sw in ablation_variants(D, causal, N):
            if _out_of_time():
                break
            row = {"D": D, "N": N, "causal": causal, "variant": name, "what": what,
                   "config": [cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages, cfg.tma]}
            try:
                row.update(_time(_fwd_call(N, D, causal, cfg, None, sw), flops))
            except Exception as exc:  # noqa: BLE001 - a variant that does not compile: that is a result too
                row["error"] = str(exc).strip().splitlines()[-1][:160]
            rows.append(row)
            print(f"ablation D={D} N={N} causal={causal} {name}: {row.get('tflops', float('nan')):.0f} TFLOPS "
                  f"{row.get('error', '')}", flush=True)
        common.save("phase5/ablation.json", {"rows": rows})
    return rows


def measure():
    measure_ablation()
    measure_kernels()


def print_sweep_summary():
    """The best candidate per shape of each stored sweep (a short table at the end of a GPU run)."""
    fwd = common.load("phase5/tune_forward.json")
    for (D, N, causal) in sorted({(r["D"], r["N"], r["causal"]) for r in (fwd or {}).get("rows", [])}):
        rows = [r for r in fwd["rows"] if (r["D"], r["N"], r["causal"]) == (D, N, causal) and "tflops" in r]
        base = next((r["tflops"] for r in rows if r["kernel"] == "phase3"), float("nan"))
        for tma in (True, False):
            cands = [r for r in rows if r.get("tma") == tma]
            if cands:
                best = max(cands, key=lambda r: r["tflops"])
                print(f"fwd D={D} N={N} causal={causal:d} tma={tma:d}: best {best['config']} {best['tflops']:.0f} "
                      f"(worst {min(r['tflops'] for r in cands):.0f}; phase 3 {base:.0f})")
    bwd = common.load("phase5/tune_backward.json")
    for (D, N, causal) in sorted({(r["D"], r["N"], r["causal"]) for r in (bwd or {}).get("rows", [])}):
        for kind in ("two", "atomic"):
            cands = [r for r in bwd["rows"] if (r["D"], r["N"], r["causal"], r["kind"]) == (D, N, causal, kind)
                     and "tflops" in r]
            if cands:
                best = max(cands, key=lambda r: r["tflops"])
                print(f"bwd D={D} N={N} causal={causal:d} {kind}: best {best['config']} {best['tflops']:.0f}")


# ---------------------------------------------------------------- tables and plots (no GPU needed)
def _r(x):
    return f"{x:.2f}x" if x is not None else "-"


def kernels_table(data) -> str:
    by = {}
    for r in data["rows"]:
        by.setdefault((r["D"], r["Nq"], r["causal"]), {})[(r["mode"], r["dtype"])] = r
    header = ["D", "N", "causal", "fwd bf16 TFLOPS (ours / flash / cuDNN / flex)", "fwd vs cuDNN", "fwd vs flex",
              "fwd fp16 vs cuDNN", "bwd TFLOPS (ours / cuDNN / flex)", "bwd vs cuDNN", "bwd vs flex",
              "fwd+bwd vs cuDNN"]
    rows = []
    for (D, N, causal), m in sorted(by.items()):
        f, f16, b, fb = (m.get(k) or {} for k in (("fwd", "bfloat16"), ("fwd", "float16"), ("bwd", "bfloat16"),
                                                   ("fwd_bwd", "bfloat16")))
        tf = lambda r, *names: " / ".join(f"{r[n]:.0f}" if n in r else "-" for n in names)
        rows.append([D, N, "yes" if causal else "no", tf(f, "tflops", "flash_tflops", "cudnn_tflops", "flex_tflops"),
                     _r(f.get("ratio_vs_cudnn")), _r(f.get("ratio_vs_flex")), _r(f16.get("ratio_vs_cudnn")),
                     tf(b, "tflops", "cudnn_tflops", "flex_tflops"), _r(b.get("ratio_vs_cudnn")),
                     _r(b.get("ratio_vs_flex")), _r(fb.get("ratio_vs_cudnn"))])
    return common.markdown_table(header, rows)


def kernels_summary(data) -> str:
    def span(mode, name, dtype=None):
        v = [r[f"ratio_vs_{name}"] for r in data["rows"] if r["mode"] == mode and f"ratio_vs_{name}" in r
             and (dtype is None or r["dtype"] == dtype)]
        return f"{min(v):.2f}x to {max(v):.2f}x" if v else "not measured"
    return (f"Forward: {span('fwd', 'cudnn')} of cuDNN (bf16 and fp16), {span('fwd', 'flex')} of FlexAttention, "
            f"{span('fwd', 'flash')} of SDPA flash. Backward: {span('bwd', 'cudnn')} of cuDNN, "
            f"{span('bwd', 'flex')} of FlexAttention. Forward + backward: {span('fwd_bwd', 'cudnn')} of cuDNN.\n")


def ablation_table(data) -> str:
    shapes = sorted({(r["D"], r["N"], r["causal"]) for r in data["rows"]}, key=lambda s: (-s[0], s[2]))
    variants = list(dict.fromkeys(r["variant"].replace("descriptors on", "descriptors (other path)")
                                  .replace("descriptors off", "descriptors (other path)") for r in data["rows"]))
    cell = {}
    for r in data["rows"]:
        name = r["variant"].replace("descriptors on", "descriptors (other path)").replace(
            "descriptors off", "descriptors (other path)")
        cell[(name, r["D"], r["N"], r["causal"])] = r
    tuned = {s: cell[("tuned", *s)]["tflops"] for s in shapes if ("tuned", *s) in cell}
    header = ["variant"] + [f"D={D} N={N} {'causal' if c else 'full'}" for D, N, c in shapes]
    rows = []
    for v in variants:
        out = [v]
        for s in shapes:
            r = cell.get((v, *s))
            if r is None:
                out.append("-")
            elif "tflops" not in r:
                error = r.get("error", "")
                out.append("fails: " + ("shared memory" if "shared memory" in error else
                                        "compiler crash" if "PassManager" in error else error[:30]))
            elif v == "tuned":
                out.append(f"**{r['tflops']:.0f}**")
            else:
                out.append(f"{r['tflops']:.0f} ({(r['tflops'] / tuned[s] - 1) * 100:+.0f}%)")
        rows.append(out)
    return common.markdown_table(header, rows)


def sweep_table(fwd, bwd) -> str:
    rows = []
    for (D, N, causal) in sorted({(r["D"], r["N"], r["causal"]) for r in fwd["rows"]}):
        rs = [r for r in fwd["rows"] if (r["D"], r["N"], r["causal"]) == (D, N, causal) and "tflops" in r]
        base = next(r["tflops"] for r in rs if r["kernel"] == "phase3")
        cells = []
        for tma in (True, False):
            c = [r for r in rs if r.get("tma") == tma]
            best, worst = max(c, key=lambda r: r["tflops"]), min(c, key=lambda r: r["tflops"])
            cfg = best["config"]
            cells += [f"{best['tflops']:.0f} ({cfg[0]}x{cfg[1]}, {cfg[2]}w, {cfg[3]}s)", f"{worst['tflops']:.0f}"]
        rows.append([D, N, "yes" if causal else "no", f"{base:.0f}", *cells, len([r for r in rs if r.get("tma")])])
    table = common.markdown_table(["D", "N", "causal", "Phase 3 kernel", "descriptors: best", "worst",
                                   "pointers: best", "worst", "configurations per path"], rows)
    brows = []
    for (D, N, causal) in sorted({(r["D"], r["N"], r["causal"]) for r in bwd["rows"]}):
        out = [D, N, "yes" if causal else "no"]
        for kind in ("two", "atomic"):
            c = [r for r in bwd["rows"] if (r["D"], r["N"], r["causal"], r["kind"]) == (D, N, causal, kind)
                 and "tflops" in r]
            best = max(c, key=lambda r: r["tflops"])
            out += [f"{best['tflops']:.0f}", f"{min(r['tflops'] for r in c):.0f}"]
        brows.append(out)
    return (table + "\nBackward, the same sweep over whole configurations (dK/dV and dQ together):\n\n"
            + common.markdown_table(["D", "N", "causal", "two kernels: best", "worst", "one kernel, atomic dQ: best",
                                     "worst"], brows))


def references_table(data) -> str:
    rows = [[r["mode"], r["D"], r["Nq"], "yes" if r["causal"] else "no", f"{r['flex_tflops']:.0f}",
             f"{r.get('cudnn_tflops', 0):.0f}", f"{r.get('flash_tflops', 0):.0f}", f"{r['flex_compile_s']:.0f} s"]
            for r in data["rows"]]
    return common.markdown_table(["pass", "D", "N", "causal", "FlexAttention", "SDPA cuDNN", "SDPA flash",
                                  "FlexAttention compile"], rows)


def _plot_kernels(data, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(17, 7.5), sharey="row")
    for row, mode in enumerate(("fwd", "bwd")):
        for ax, (D, causal) in zip(axes[row], [(d, c) for d in DS for c in (False, True)]):
            for series, style, label in (("tflops", "o-", "ours (Phase 5)"), ("cudnn_tflops", "^:", "SDPA cuDNN"),
                                         ("flex_tflops", "d-.", "FlexAttention"),
                                         ("flash_tflops", "s--", "SDPA flash")):
                rs = sorted((r for r in data["rows"] if r["D"] == D and r["causal"] == causal and r["mode"] == mode
                             and r["dtype"] == "bfloat16" and series in r), key=lambda r: r["Nq"])
                ax.plot([r["Nq"] for r in rs], [r[series] for r in rs], style, label=label)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{'forward' if mode == 'fwd' else 'backward'}, D={D}, {'causal' if causal else 'full'}")
            ax.set_xlabel("N (16k tokens, hidden 2048)")
        axes[row][0].set_ylabel("TFLOPS (bf16)")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_ablation(data, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({(r["D"], r["N"], r["causal"]) for r in data["rows"]}, key=lambda s: (-s[0], s[2]))
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.5 * len(shapes), 4.2), sharey=True)
    for ax, s in zip(axes, shapes):
        rs = [r for r in data["rows"] if (r["D"], r["N"], r["causal"]) == s]
        tuned = next(r["tflops"] for r in rs if r["variant"] == "tuned")
        names = [r["variant"] for r in rs]
        values = [(r["tflops"] / tuned - 1) * 100 if "tflops" in r else 0 for r in rs]
        colors = ["grey" if "tflops" not in r else ("tab:green" if v >= 0 else "tab:red") for r, v in zip(rs, values)]
        ax.barh(names, values, color=colors)
        for i, r in enumerate(rs):
            if "tflops" not in r:
                ax.text(0, i, " fails", va="center", fontsize=8)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(f"D={s[0]} N={s[1]} {'causal' if s[2] else 'full'} (tuned {tuned:.0f} TFLOPS)", fontsize=9)
        ax.set_xlabel("change vs tuned (%)")
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def figures():
    done, blocks = [], {}
    kernels = common.load("phase5/kernels.json")
    if kernels:
        table = kernels_table(kernels) + "\n" + kernels_summary(kernels) + "\n" + common.measured_on(kernels["meta"])
        blocks["kernels-table"] = table
        (common.ASSETS / "phase5" / "kernels_table.md").write_text(table)
        _plot_kernels(kernels, common.ASSETS / "phase5" / "kernels.png")
        done.append("kernels table, assets/phase5/kernels_table.md and kernels.png")
    ablation = common.load("phase5/ablation.json")
    if ablation:
        blocks["ablation-table"] = ablation_table(ablation) + "\n" + common.measured_on(ablation["meta"])
        _plot_ablation(ablation, common.ASSETS / "phase5" / "ablation.png")
    fwd, bwd = common.load("phase5/tune_forward.json"), common.load("phase5/tune_backward.json")
    if fwd and bwd:
        blocks["sweep-table"] = sweep_table(fwd, bwd) + "\n" + common.measured_on(fwd["meta"])
    refs = common.load("phase5/references.json")
    if refs:
        blocks["references-table"] = references_table(refs) + "\n" + common.measured_on(refs["meta"])
    for name, text in blocks.items():
        if common.replace_block(LESSON, name, text):
            done.append(f"filled {name}")
    return done


def warp_specialization_check(head_dim=128):
    """Compile the tuned forward for sm_90 with and without `warp_specialize=True` (no GPU needed):
    does Triton change the code, and does it compile at all? Prints one line per variant."""
    import hashlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from grader.phases.test_phase5 import _spec
    from solutions.phase5.forward import Config, attn_fwd_kernel

    results = []
    for warps in (8, 4):
        for ws in (False, True):
            spec = _spec("bf16", head_dim, False, Config(128, 64, warps, 3), True, 90)
            consts = dict(spec.constexprs, WARP_SPECIALIZE=ws)
            try:
                k = triton.compile(ASTSource(fn=attn_fwd_kernel, signature=spec.signature, constexprs=consts),
                                   target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": 3})
                outcome = f"PTX {hashlib.sha256(k.asm['ptx'].encode()).hexdigest()[:12]}"
            except Exception as exc:  # noqa: BLE001 - the compiler's failure is the finding
                outcome = f"fails: {str(exc).strip().splitlines()[-1][:80]}"
            results.append((warps, ws, outcome))
            print(f"triton {triton.__version__}, D={head_dim}, {warps} warps, warp_specialize={ws}: {outcome}")
    return results
