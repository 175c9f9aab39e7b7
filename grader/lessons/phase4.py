"""Phase 4's numbers: the backward against SDPA, two kernels against one with atomic dQ, memory.

`tune()` is the configuration sweep behind the block sizes in solutions/phase4/backward.py
(`python -c "from grader.lessons import phase4; phase4.tune()"` on a GPU); `measure()` is what
`make measure PHASE=4` runs; `figures()` turns the stored JSON into the lesson's tables.
"""
import torch
import triton
import triton.language as tl

from grader import bench, cost, timing
from grader.impl import ROOT
from grader.lessons import common

LESSON = ROOT / "exercises" / "phase4" / "README.md"
TABLE_MD = common.ASSETS / "phase4" / "backward_table.md"
SIZES = (1024, 4096, 16384)


# ---------------------------------------------------------------- the alternative: one kernel, atomic dQ
@triton.jit
def bwd_atomic_dq_kernel(Q, K, V, DO, LSE2, DELTA, DQ32, DK, DV,
                         stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                         stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
                         H, N_Q, N_K, sm_scale, qk_scale,
                         HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         CAUSAL: tl.constexpr, EVEN_K: tl.constexpr):
    """A demonstration, not an exercise: the dK/dV kernel that also adds each tile's share of dQ
    into a float32 buffer with atomics (what FlashAttention-2's CUDA backward does). Five matmuls per
    tile instead of the two kernels' seven, but every program hammers the same rows of dQ."""
    bh = tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    start_n = tl.program_id(0) * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    in_k = offs_n[:, None] < N_K
    k = tl.load(K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :], mask=in_k, other=0.0)
    v = tl.load(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :], mask=in_k, other=0.0)
    Q += b * stride_qb + h * stride_qh
    DO += b * stride_dob + h * stride_doh
    DQ32 += bh.to(tl.int64) * N_Q * HEAD_DIM
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    lo = start_n if CAUSAL else 0
    for start_m in range(lo, N_Q, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        in_q = offs_m < N_Q
        qT = tl.load(Q + offs_m[None, :] * stride_qn + offs_d[:, None], mask=in_q[None, :], other=0.0)
        do = tl.load(DO + offs_m[:, None] * stride_don + offs_d[None, :], mask=in_q[:, None], other=0.0)
        lse2 = tl.load(LSE2 + bh * N_Q + offs_m, mask=in_q, other=float("inf"))
        delta = tl.load(DELTA + bh * N_Q + offs_m, mask=in_q, other=0.0)
        pT = tl.math.exp2(tl.dot(k, qT) * qk_scale - lse2[None, :])
        if CAUSAL:
            pT = tl.where(offs_n[:, None] <= offs_m[None, :], pT, 0.0)
        if not EVEN_K:
            pT = tl.where(in_k, pT, 0.0)
        dv += tl.dot(pT.to(do.dtype), do)
        dsT = (pT * (tl.dot(v, tl.trans(do)) - delta[None, :])).to(qT.dtype)
        dk += tl.dot(dsT, tl.trans(qT))
        dq = tl.dot(tl.trans(dsT), k) * sm_scale
        tl.atomic_add(DQ32 + offs_m[:, None] * HEAD_DIM + offs_d[None, :], dq, mask=in_q[:, None], sem="relaxed")
    dk *= sm_scale
    out = bh.to(tl.int64) * N_K * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(DK + out, dk.to(DK.dtype.element_ty), mask=in_k)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=in_k)


def atomic_backward(do, q, k, v, o, lse, causal=False, config=(64, 128, 8, 2)):
    """(dq, dk, dv) from one kernel with atomic dQ (contiguous inputs; the lesson's comparison)."""
    from solutions.phase4.backward import LOG2E, PRE_BLOCK, bwd_preprocess_kernel

    B, H, N_Q, D = q.shape
    N_K = k.shape[2]
    sm_scale = D ** -0.5
    block_m, block_n, warps, stages = config
    lse2 = torch.empty((B, H, N_Q), device=q.device, dtype=torch.float32)
    delta = torch.empty_like(lse2)
    bwd_preprocess_kernel[(triton.cdiv(N_Q, PRE_BLOCK), B * H)](
        o, do, lse, lse2, delta, *o.stride()[:3], *do.stride()[:3], *lse.stride(), H, N_Q,
        HEAD_DIM=D, BLOCK_M=PRE_BLOCK)
    dq32 = torch.zeros((B, H, N_Q, D), device=q.device, dtype=torch.float32)
    dk, dv = (torch.empty((B, H, N_K, D), device=q.device, dtype=q.dtype) for _ in range(2))
    bwd_atomic_dq_kernel[(triton.cdiv(N_K, block_n), B * H)](
        q, k, v, do, lse2, delta, dq32, dk, dv,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3],
        H, N_Q, N_K, sm_scale, sm_scale * LOG2E.value,
        HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal, EVEN_K=N_K % block_n == 0,
        num_warps=warps, num_stages=stages)
    return dq32.to(q.dtype), dk, dv


# ---------------------------------------------------------------- measurements (GPU)
def _inputs(N, D, causal, dtype=torch.bfloat16):
    from solutions.phase3 import flash_attention_forward

    B, H, _, _ = bench.standard_shape(N, D)
    q, k, v, do = (torch.randn(B, H, N, D, device="cuda", dtype=dtype) for _ in range(4))
    o, lse = flash_attention_forward(q, k, v, causal=causal)
    return q, k, v, do, o, lse


def _max_rel_err(got, ref):
    return max(((g.float() - r.float()).abs().max() / r.float().abs().max()).item() for g, r in zip(got, ref))


# dK/dV kernel: (BLOCK_M1, BLOCK_N1, MASK_BLOCK_M1, warps, stages);
# dQ kernel: (BLOCK_M2, BLOCK_N2, MASK_BLOCK_N2, warps, stages)
TUNE_DKDV = {
    64: [(32, 128, 16, 4, 5), (64, 128, 32, 8, 3), (32, 128, 32, 4, 3), (64, 64, 32, 4, 3), (32, 64, 16, 4, 4),
         (64, 128, 16, 4, 3)],
    128: [(32, 128, 16, 4, 5), (64, 128, 32, 8, 2), (32, 128, 16, 8, 3), (64, 64, 32, 4, 3), (32, 64, 16, 4, 3),
          (16, 64, 16, 4, 4)],
}
TUNE_DQ = {
    64: [(128, 32, 16, 4, 5), (128, 64, 32, 8, 3), (64, 64, 32, 4, 3), (64, 32, 16, 4, 4), (128, 32, 32, 8, 3),
         (128, 64, 32, 4, 2)],
    128: [(128, 32, 16, 4, 5), (128, 64, 32, 8, 2), (64, 64, 32, 4, 3), (64, 32, 16, 4, 4), (128, 32, 32, 8, 3),
          (64, 32, 16, 4, 2)],
}


# The Triton tutorial's backward configuration (06-fused-attention): the fixed other half of each sweep.
TUTORIAL = ((32, 128, 16, 4, 5), (128, 32, 16, 4, 5))


def _tune_shape(N, D, causal):
    from solutions.phase4.backward import flash_attention_backward

    q, k, v, do, o, lse = _inputs(N, D, causal)
    flops = cost.attention_flops(*q.shape[:3], N, D, causal, "bwd")
    flash_ms = timing.median_ms(bench.sdpa_callables(q, k, v, causal, "flash")["bwd"])
    base_dkdv, base_dq = TUTORIAL
    rows = []
    for side, options in (("dkdv", TUNE_DKDV[D]), ("dq", TUNE_DQ[D])):
        for option in options:
            config = (option, base_dq) if side == "dkdv" else (base_dkdv, option)
            row = {"D": D, "N": N, "causal": causal, "kernel": side, "config": list(option), "flash_ms": flash_ms}

            def run(config=config):
                return flash_attention_backward(do, q, k, v, o, lse, causal=causal, config=config)
            try:
                run()
                row["ms"] = timing.median_ms(run)
                row["tflops"] = timing.tflops(flops, row["ms"])
                row["ratio_vs_flash"] = flash_ms / row["ms"]
            except Exception as exc:  # noqa: BLE001 - a configuration that does not compile or does not fit
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            rows.append(row)
            print(f"tune D={D} causal={causal} {side} {option}: {row.get('ms', float('nan')):.3f} ms, "
                  f"{row.get('ratio_vs_flash', float('nan')):.2f}x flash {row.get('error', '')}", flush=True)
    return rows


def tune(N=4096):
    """Time each dK/dV configuration with the dQ kernel at the tutorial's configuration and vice
    versa (the kernels are independent, so differences in the total are the varied kernel's own),
    at the standard shape, bf16."""
    rows = []
    for D in (64, 128):
        for causal in (False, True):
            rows += _tune_shape(N, D, causal)
            common.save("phase4/tuning.json", {"rows": rows})  # after each shape: a cut-off sweep keeps its data
    return rows


def _measure_shape(N, D, causal):
    """bwd and fwd+bwd against SDPA flash and cuDNN, and the atomic-dQ alternative, at one shape."""
    from solutions.phase4 import flash_attention, flash_attention_backward

    q, k, v, do, o, lse = _inputs(N, D, causal)
    bwd = bench.measure(lambda: flash_attention_backward(do, q, k, v, o, lse, causal=causal),
                        q, k, v, causal, mode="bwd", baselines=("flash", "cudnn"))
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

    def fwd_bwd():
        out = flash_attention(qg, kg, vg, causal=causal)
        torch.autograd.grad(out, (qg, kg, vg), do)
    fb = bench.measure(fwd_bwd, q, k, v, causal, mode="fwd_bwd", baselines=("flash", "cudnn"))
    print(bench.describe(bwd), "|", bench.describe(fb), flush=True)
    # The same backward as one kernel with atomic dQ, checked against the two kernels first.
    err = _max_rel_err(atomic_backward(do, q, k, v, o, lse, causal),
                       flash_attention_backward(do, q, k, v, o, lse, causal=causal))
    atomic_ms = timing.median_ms(lambda: atomic_backward(do, q, k, v, o, lse, causal))
    atomic = {"D": D, "N": N, "B": q.shape[0], "H": q.shape[1], "causal": causal,
              "two_kernels_ms": bwd["ms"], "atomic_ms": atomic_ms, "two_kernels_tflops": bwd["tflops"],
              "atomic_tflops": timing.tflops(bwd["flops"], atomic_ms), "max_rel_diff": err}
    print(f"atomic dQ D={D} N={N} causal={causal}: {atomic_ms:.3f} ms vs two kernels {bwd['ms']:.3f} ms "
          f"(max rel diff {err:.1e})", flush=True)
    return [bwd, fb], atomic


def _memory_row(B, H, N, D):
    from solutions.phase4 import flash_attention

    qg, kg, vg, do = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    qg, kg, vg = (t.requires_grad_() for t in (qg, kg, vg))

    def ours():
        torch.autograd.grad(flash_attention(qg, kg, vg, causal=True), (qg, kg, vg), do)

    def sdpa_flash():
        with bench.sdpa_backend("flash"):
            out = torch.nn.functional.scaled_dot_product_attention(qg, kg, vg, is_causal=True)
            torch.autograd.grad(out, (qg, kg, vg), do)
    ours()
    sdpa_flash()
    row = {"B": B, "H": H, "N": N, "D": D, "ours_peak_extra_bytes": timing.peak_extra_bytes(ours),
           "flash_peak_extra_bytes": timing.peak_extra_bytes(sdpa_flash),
           "p_bytes": cost.score_matrix_bytes(B, H, N, N, 2)}
    print(f"memory N={N}: ours {row['ours_peak_extra_bytes'] / 2**20:.0f} MiB, "
          f"flash {row['flash_peak_extra_bytes'] / 2**20:.0f} MiB", flush=True)
    return row


def measure():
    rows, atomic_rows = [], []
    for D in (64, 128):
        for N in SIZES:
            for causal in (False, True):
                pair, atomic = _measure_shape(N, D, causal)
                rows += pair
                atomic_rows.append(atomic)
    memory = [_memory_row(1, 16, N, 128) for N in (2048, 4096, 8192, 16384, 32768)]
    common.save("phase4/backward.json", {"rows": rows})
    common.save("phase4/atomic.json", {"rows": atomic_rows})
    common.save("phase4/memory.json", {"rows": memory})


# ---------------------------------------------------------------- tables
def _ratio(row, name):
    r = row.get(f"ratio_vs_{name}")
    return f"{r:.2f}x" if r is not None else "-"


def backward_table(data) -> str:
    header = ["D", "N", "causal", "bwd TFLOPS (ours / flash / cuDNN)", "bwd vs flash", "bwd vs cuDNN",
              "fwd+bwd TFLOPS (ours / flash / cuDNN)", "fwd+bwd vs flash", "fwd+bwd vs cuDNN"]
    by_key = {}
    for r in data["rows"]:
        by_key.setdefault((r["D"], r["Nq"], r["causal"]), {})[r["mode"]] = r
    rows = []
    for (D, N, causal), modes in sorted(by_key.items()):
        b, f = modes["bwd"], modes["fwd_bwd"]
        tf = lambda r: f"{r['tflops']:.0f} / {r.get('flash_tflops', 0):.0f} / {r.get('cudnn_tflops', 0):.0f}"
        rows.append([D, N, "yes" if causal else "no", tf(b), _ratio(b, "flash"), _ratio(b, "cudnn"),
                     tf(f), _ratio(f, "flash"), _ratio(f, "cudnn")])
    return common.markdown_table(header, rows)


def backward_summary(data) -> str:
    def span(mode, name):
        values = [r[f"ratio_vs_{name}"] for r in data["rows"] if r["mode"] == mode and f"ratio_vs_{name}" in r]
        return f"{min(values):.2f}x to {max(values):.2f}x" if values else "not measured"
    return (f"Backward: {span('bwd', 'flash')} of SDPA flash's throughput, {span('bwd', 'cudnn')} of cuDNN's. "
            f"Forward + backward: {span('fwd_bwd', 'flash')} of flash, {span('fwd_bwd', 'cudnn')} of cuDNN.\n")


def atomic_summary(data) -> str:
    ratios = [r["atomic_ms"] / r["two_kernels_ms"] for r in data["rows"]]
    slower = sum(x > 1.0 for x in ratios)
    per_d = {D: [r["atomic_ms"] / r["two_kernels_ms"] for r in data["rows"] if r["D"] == D] for D in (64, 128)}
    parts = ", ".join(f"{min(v):.2f}x to {max(v):.2f}x at D={D}" for D, v in per_d.items() if v)
    return (f"The atomic version took longer than the two kernels in {slower} of {len(ratios)} shapes "
            f"(its time over theirs: {parts}).\n")


def atomic_table(data) -> str:
    rows = [[r["D"], r["N"], "yes" if r["causal"] else "no",
             f"{r['two_kernels_ms']:.2f} ms ({r['two_kernels_tflops']:.0f})",
             f"{r['atomic_ms']:.2f} ms ({r['atomic_tflops']:.0f})", f"{r['atomic_ms'] / r['two_kernels_ms']:.2f}",
             f"{r['max_rel_diff']:.0e}"] for r in sorted(data["rows"], key=lambda r: (r["D"], r["N"], r["causal"]))]
    return common.markdown_table(["D", "N", "causal", "two kernels (TFLOPS)", "one kernel, atomic dQ (TFLOPS)",
                                  "atomic / two kernels time", "max rel. difference"], rows)


def tuning_table(data) -> str:
    from solutions.phase4.backward import CONFIGS_SM90

    rows = []
    for r in data["rows"]:
        used = CONFIGS_SM90[(r["D"], r["causal"])][0 if r["kernel"] == "dkdv" else 1]
        cfg = r["config"]
        what = (f"BLOCK_M={cfg[0]}, BLOCK_N={cfg[1]}, diagonal {cfg[2]}, {cfg[3]} warps, {cfg[4]} stages")
        result = f"{r['ms']:.3f} ms, {r['ratio_vs_flash']:.2f}x" if "ms" in r else f"fails: {r['error'][:60]}"
        rows.append([r["D"], "yes" if r["causal"] else "no", "dK/dV" if r["kernel"] == "dkdv" else "dQ", what, result,
                     "yes" if tuple(r["config"]) == tuple(used) else ""])
    return common.markdown_table(["D", "causal", "kernel varied", "its configuration", "whole backward, vs flash",
                                  "used by backward.py"], rows)


def memory_table(data) -> str:
    rows = [[r["N"], f"{r['ours_peak_extra_bytes'] / 2**20:,.0f} MiB",
             f"{r['flash_peak_extra_bytes'] / 2**20:,.0f} MiB",
             f"{r['p_bytes'] / 2**20:,.0f} MiB"] for r in data["rows"]]
    return common.markdown_table(["N (B=1, H=16, D=128, bf16, causal)", "ours: peak beyond the inputs, fwd+bwd",
                                  "SDPA flash, same", "one P that autograd would save"], rows)


def saved_memory_table() -> str:
    """What autograd would keep per attention layer: P against lse (arithmetic, no GPU)."""
    rows = []
    for name, B, H, N, D in (("GPT-2 small, 1 x 1024", 1, 12, 1024, 64), ("Llama-2-7B, 1 x 4096", 1, 32, 4096, 128),
                             ("Llama-2-7B, 8 x 4096", 8, 32, 4096, 128),
                             ("one sequence of 32k, 32 heads", 1, 32, 32768, 128)):
        p = cost.score_matrix_bytes(B, H, N, N, 2)
        lse = 4.0 * B * H * N
        qkvo = cost.qkvo_bytes(B, H, N, N, D, 2)
        rows.append([name, f"{p / 2**30:,.2f} GiB", f"{lse / 2**20:,.2f} MiB", f"{qkvo / 2**20:,.0f} MiB"])
    layers, B, H, N = 32, 8, 32, 4096  # Llama-2-7B, a batch of eight 4k-token sequences
    total_p = layers * cost.score_matrix_bytes(B, H, N, N, 2) / 2**30
    total_lse = layers * 4.0 * B * H * N / 2**20
    return (common.markdown_table(["per layer (bf16)", "P (B x H x N x N)", "lse (float32)", "q, k, v, o"], rows)
            + f"\nOver the {layers} layers of Llama-2-7B, a batch of {B} sequences of {N} tokens: P takes "
              f"{total_p:,.0f} GiB, more than any GPU has; lse takes {total_lse:,.0f} MiB.\n")


def balance_text(device: dict) -> str:
    """Recompute or re-read one element of S, from Phase 0's measured ceilings."""
    flops_per_byte = device["matmul_bf16_tflops"] * 1e12 / (device["copy_gbs"] * 1e9)
    # picoseconds per element when the whole GPU works on it: FLOPs / (TFLOPS * 1e12) * 1e12, bytes likewise
    rows = [[D, 2 * D, f"{2 * D / device['matmul_bf16_tflops']:.3f} ps", f"{2 * 1e3 / device['copy_gbs']:.3f} ps"]
            for D in (64, 128)]
    return (f"On {device['meta']['device']} Phase 0 measured {device['matmul_bf16_tflops']:.0f} TFLOPS "
            "(bf16 matmul) and "
            f"{device['copy_gbs']:.0f} GB/s (copy): {flops_per_byte:.0f} FLOPs per byte, far above $D$. Per element "
            f"of $S$, for the whole GPU:\n\n"
            + common.markdown_table(["D", "FLOPs to recompute", "time to recompute", "time to re-read (bf16)"], rows))


def figures():
    done = []
    blocks = {"saved-memory": saved_memory_table()}
    device = common.load("phase0/device.json")
    if device:
        blocks["balance"] = balance_text(device)
    data = common.load("phase4/backward.json")
    if data:
        table = backward_table(data) + "\n" + backward_summary(data) + "\n" + common.measured_on(data["meta"])
        blocks["backward-table"] = table
        TABLE_MD.parent.mkdir(parents=True, exist_ok=True)
        TABLE_MD.write_text(table)
        done.append(f"wrote {TABLE_MD.relative_to(ROOT)}")
    for name, path, make in (("atomic-table", "phase4/atomic.json", atomic_table),
                             ("tuning-table", "phase4/tuning.json", tuning_table),
                             ("memory-table", "phase4/memory.json", memory_table)):
        stored = common.load(path)
        if stored:
            text = make(stored)
            if name == "atomic-table":
                text += "\n" + atomic_summary(stored)
            blocks[name] = text + "\n" + common.measured_on(stored["meta"])
    for name, text in blocks.items():
        if common.replace_block(LESSON, name, text):
            done.append(f"filled {name} in {LESSON.relative_to(ROOT)}")
    return done
