"""Phase 6's measurements: what dropout costs, and packed (varlen) attention against the dense
kernel and against SDPA on a padded batch at a long-tailed mix of lengths.

`measure()` (a GPU, `make measure PHASE=6`, about two minutes on an H100) times the reference
solution and saves assets/phase6/dropout.json and assets/phase6/varlen.json, each with the device,
torch and Triton versions. `figures()` (`make figures`) writes the lesson's tables from them, or a
"not yet measured on a GPU" line where the data does not exist: no number here is typed by hand.
"""
import torch

from grader import bench, cost, timing
from grader.impl import ROOT
from grader.inputs import qkv, randn
from grader.lessons import common

LESSON = ROOT / "exercises" / "phase6" / "README.md"
NOT_MEASURED = ("*Not yet measured on a GPU: run `make measure PHASE=6` on one, then `make figures`. "
                "(No number is shown until the data exists.)*\n")
DROPOUT_PS = (0.0, 0.1, 0.3)
MIX_TOKENS, MIX_H, MIX_D = 32768, 16, 128


def _api():
    import solutions.phase6 as api

    return api


def _grader():
    from grader.phases import test_phase6

    return test_phase6


# ---------------------------------------------------------------- measurements (GPU)
def measure_dropout(D=128, N=4096):
    """Dense attention, forward and forward + backward, at each dropout_p: time and TFLOPS."""
    api, g = _api(), _grader()
    gen = torch.Generator().manual_seed(0)
    B, H, N, D = bench.standard_shape(N, D)
    q, k, v = qkv(B, H, N, N, D, torch.bfloat16, "cuda", gen, "bnhd")
    do = randn(q.shape, torch.bfloat16, "cuda", gen)
    rows = []
    for causal in (False, True):
        for p in DROPOUT_PS:
            row = {"B": B, "H": H, "N": N, "D": D, "causal": causal, "p": p}
            for mode in ("fwd", "fwd_bwd"):
                ms = timing.median_ms(g.dense_step(api, q, k, v, causal, mode, do, p=p, seed=1))
                row[f"{mode}_ms"] = ms
                row[f"{mode}_tflops"] = timing.tflops(cost.attention_flops(B, H, N, N, D, causal, mode), ms)
            rows.append(row)
            print(f"dropout p={p} causal={causal}: fwd {row['fwd_ms']:.3f} ms, fwd+bwd {row['fwd_bwd_ms']:.3f} ms",
                  flush=True)
    return rows


def measure_varlen():
    """A long-tailed mix of lengths (fixed seed), causal: our packed kernel, our dense kernel and SDPA
    (default backend) on the batch padded to the longest; and equal lengths, packed against dense."""
    api, g = _api(), _grader()
    gen = torch.Generator().manual_seed(0)
    lengths = g.long_tailed_lengths(MIX_TOKENS)
    longest = max(lengths)
    q, k, v, cu = g.varlen_inputs(lengths, MIX_H, MIX_D, gen)
    do = randn(q.shape, torch.bfloat16, "cuda", gen)
    useful = {mode: sum(cost.attention_flops(1, MIX_H, n, n, MIX_D, True, mode) for n in lengths)
              for mode in ("fwd", "fwd_bwd")}
    pq, pk, pv, pdo = (g.padded(x, lengths, longest) for x in (q, k, v, do))
    methods = {
        "varlen (ours, packed)": lambda mode: g.varlen_step(api, q, k, v, cu, longest, True, mode, do),
        "dense (ours, padded)": lambda mode: g.dense_step(api, pq, pk, pv, True, mode, pdo),
        "SDPA default backend (padded)": lambda mode: g.padded_sdpa_step(q, k, v, lengths, mode, do),
    }
    mix = []
    for name, step in methods.items():
        row = {"method": name}
        for mode in ("fwd", "fwd_bwd"):
            ms = timing.median_ms(step(mode))
            row[f"{mode}_ms"] = ms
            row[f"{mode}_useful_tflops"] = timing.tflops(useful[mode], ms)
        mix.append(row)
        print(f"mix {name}: fwd {row['fwd_ms']:.3f} ms, fwd+bwd {row['fwd_bwd_ms']:.3f} ms", flush=True)
    equal = []
    B, H, N, D = 8, 16, 2048, 128
    q, k, v = qkv(B, H, N, N, D, torch.bfloat16, "cuda", gen, "bnhd")
    do = randn(q.shape, torch.bfloat16, "cuda", gen)
    packed = [x.transpose(1, 2).reshape(B * N, H, D) for x in (q, k, v, do)]
    cu = torch.arange(0, (B + 1) * N, N, dtype=torch.int32, device="cuda")
    for causal in (False, True):
        for mode in ("fwd", "fwd_bwd"):
            dense = timing.median_ms(g.dense_step(api, q, k, v, causal, mode, do))
            varlen = timing.median_ms(g.varlen_step(api, *packed[:3], cu, N, causal, mode, packed[3]))
            equal.append({"B": B, "H": H, "N": N, "D": D, "causal": causal, "mode": mode, "dense_ms": dense,
                          "varlen_ms": varlen, "ratio": dense / varlen})
    return {"lengths": lengths, "H": MIX_H, "D": MIX_D, "mix": mix, "equal": equal}


def measure():
    common.save("phase6/dropout.json", {"rows": measure_dropout()})
    common.save("phase6/varlen.json", measure_varlen())


# ---------------------------------------------------------------- tables
def dropout_table(data) -> str:
    base = {(r["causal"], "fwd"): r["fwd_ms"] for r in data["rows"] if r["p"] == 0.0}
    base |= {(r["causal"], "fwd_bwd"): r["fwd_bwd_ms"] for r in data["rows"] if r["p"] == 0.0}
    rows = []
    for r in data["rows"]:
        rows.append([f"{r['p']:g}", "yes" if r["causal"] else "no",
                     f"{r['fwd_ms']:.3f} ({r['fwd_tflops']:.0f})", f"{r['fwd_ms'] / base[(r['causal'], 'fwd')]:.2f}x",
                     f"{r['fwd_bwd_ms']:.3f} ({r['fwd_bwd_tflops']:.0f})",
                     f"{r['fwd_bwd_ms'] / base[(r['causal'], 'fwd_bwd')]:.2f}x"])
    first = data["rows"][0]
    shape = f"B={first['B']} H={first['H']} N={first['N']} D={first['D']}, bf16"
    return (f"{shape}; dropout_p = 0 runs Phase 4's kernels, p > 0 the packed kernels of this phase.\n\n"
            + common.markdown_table(["dropout_p", "causal", "fwd ms (TFLOPS)", "fwd time vs p=0",
                                     "fwd+bwd ms (TFLOPS)", "fwd+bwd time vs p=0"], rows))


def varlen_tables(data) -> str:
    lengths = sorted(data["lengths"])
    n = len(lengths)
    mix = (f"{n} sequences, {sum(lengths)} tokens, lengths {lengths[0]} to {lengths[-1]} (median "
           f"{lengths[n // 2]}), causal, H={data['H']} D={data['D']}, bf16. Padding to the longest makes a "
           f"batch of {n * lengths[-1]} token slots, {n * lengths[-1] / sum(lengths):.1f}x the real tokens. "
           "TFLOPS count the useful work only (each sequence's own causal attention).\n\n")
    sdpa = next(r for r in data["mix"] if r["method"].startswith("SDPA"))
    rows = [[r["method"], f"{r['fwd_ms']:.3f}", f"{r['fwd_useful_tflops']:.0f}", f"{sdpa['fwd_ms'] / r['fwd_ms']:.2f}x",
             f"{r['fwd_bwd_ms']:.3f}", f"{r['fwd_bwd_useful_tflops']:.0f}",
             f"{sdpa['fwd_bwd_ms'] / r['fwd_bwd_ms']:.2f}x"] for r in data["mix"]]
    mix += common.markdown_table(["method", "fwd ms", "fwd useful TFLOPS", "fwd speed vs padded SDPA",
                                  "fwd+bwd ms", "fwd+bwd useful TFLOPS", "fwd+bwd speed vs padded SDPA"], rows)
    eq = data["equal"][0]
    rows = [["yes" if r["causal"] else "no", r["mode"].replace("fwd_bwd", "fwd+bwd"), f"{r['dense_ms']:.3f}",
             f"{r['varlen_ms']:.3f}", f"{r['ratio']:.2f}x"] for r in data["equal"]]
    equal = (f"\nEqual lengths, B={eq['B']} sequences of N={eq['N']} (H={eq['H']} D={eq['D']}, bf16), packed "
             "against dense on the same tokens (the grader asks for at least 0.80x):\n\n"
             + common.markdown_table(["causal", "pass", "dense ms", "varlen ms", "varlen speed vs dense"], rows))
    return mix + equal


def figures():
    done = []
    for name, path, make in (("dropout-table", "phase6/dropout.json", dropout_table),
                             ("varlen-table", "phase6/varlen.json", varlen_tables)):
        stored = common.load(path)
        text = make(stored) + "\n" + common.measured_on(stored["meta"]) if stored else NOT_MEASURED
        if common.replace_block(LESSON, name, text):
            done.append(f"filled {name} in {LESSON.relative_to(ROOT)}")
    return done
