"""Phase 6's measurements: what dropout costs, and packed (varlen) attention against the dense
kernel and against SDPA on a padded batch at a long-tailed mix of lengths.

`measure()` (a GPU, `make measure PHASE=6`, about two minutes on an H100) times the reference
solution and saves assets/phase6/dropout.json and assets/phase6/varlen.json, each with the device,
torch and Triton versions and a digest of the code it timed. `figures()` (`make figures`) writes
the lesson's tables and the sentences that quote them, or a "not yet measured on a GPU" line where
the data does not exist, and says so under a table whose data was measured on other code than the
tree holds: no number here is typed by hand.
"""
import hashlib
import importlib
import statistics
import time

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


# The code a measurement times: this phase's solution and the Phase 3/4 kernels its dense path runs.
TIMED_CODE = ["solutions/phase6/attention.py", "solutions/phase6/backward.py", "solutions/phase6/dropout.py",
              "solutions/phase6/forward.py", "solutions/phase6/varlen.py", "solutions/phase3/forward.py",
              "solutions/phase4/attention.py", "solutions/phase4/backward.py"]


def code_digest() -> str | None:
    """sha256 (16 hex digits) of the timed code's lines, comment lines and blank lines left out, so that
    a reworded comment or TODO does not make a measurement stale; None without solutions/."""
    h = hashlib.sha256()
    for rel in TIMED_CODE:
        path = ROOT / rel
        if not path.exists():
            return None
        for line in path.read_text().splitlines():
            if line.strip() and not line.strip().startswith("#"):
                h.update(line.rstrip().encode() + b"\n")
    return h.hexdigest()[:16]


def _provenance(stored: dict) -> str:
    """The measured-on line, plus a warning when the data timed other code than this tree's."""
    line = common.measured_on(stored["meta"])
    timed, now = stored["meta"].get("code"), code_digest()
    if now is not None and timed != now:
        what = f"code digest {timed}" if timed else "code whose digest was not recorded"
        line += (f"\n*These numbers timed an earlier version of the solution ({what}; this tree's is {now}): "
                 "re-run `make measure PHASE=6` on a GPU, then `make figures`.*\n")
    return line


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
    forward = importlib.import_module("solutions.phase6.forward")
    real = forward.CuSeqlensCheck
    variants = check_variants(real)
    for causal in (False, True):
        for mode in ("fwd", "fwd_bwd"):
            dense = timing.median_ms(g.dense_step(api, q, k, v, causal, mode, do))
            varlen = timing.median_ms(g.varlen_step(api, *packed[:3], cu, N, causal, mode, packed[3]))
            row = {"B": B, "H": H, "N": N, "D": D, "causal": causal, "mode": mode, "dense_ms": dense,
                   "varlen_ms": varlen, "ratio": dense / varlen}
            # The same code with the values check changed (measured to price it, never shipped): left
            # out, or made before the launch (the copy then drains the GPU, as a first version did).
            for key, variant in variants.items():
                forward.CuSeqlensCheck = variant
                try:
                    row[key] = timing.median_ms(g.varlen_step(api, *packed[:3], cu, N, causal, mode, packed[3]))
                finally:
                    forward.CuSeqlensCheck = real
            equal.append(row)
            print(f"equal lengths causal={causal} {mode}: dense {dense:.3f} ms, varlen {varlen:.3f} ms "
                  f"({dense / varlen:.2f}x), without the values check {row['varlen_unchecked_ms']:.3f} ms, "
                  f"checked before the launch {row['varlen_checked_first_ms']:.3f} ms, checked on every call "
                  f"{row['varlen_checked_every_call_ms']:.3f} ms", flush=True)
    return {"lengths": lengths, "H": MIX_H, "D": MIX_D, "mix": mix, "equal": equal,
            "check_us": _check_us(real, cu, B * N, N)}


def check_variants(real) -> dict:
    """Stand-ins for solutions/phase6's CuSeqlensCheck, by the key of the time they give: none at all
    (what the check costs), the values read before the launch (what checking beside the kernel
    saves), and read beside the kernel on every call (what keeping a verdict per cu_seqlens saves)."""
    class Unchecked:
        def __init__(self, *args):
            pass

        def finish(self):
            return None

    class EveryCall(real):
        REMEMBER = False  # the values read and checked on every call, beside the kernel

    class CheckedFirst(real):
        def __init__(self, cu_seqlens_q, cu_seqlens_k, *sizes):
            super().__init__(cu_seqlens_q, cu_seqlens_k, *sizes)
            self.read = torch.cat((cu_seqlens_q, cu_seqlens_k)).tolist()  # the copy, waited for before the launch

        def values(self):
            return self.read
    return {"varlen_unchecked_ms": Unchecked, "varlen_checked_first_ms": CheckedFirst,
            "varlen_checked_every_call_ms": EveryCall}


def _check_us(check, cu, total, longest, reps=200) -> float:
    """Host microseconds of the values check alone, with nothing queued on the GPU (median): its copy
    to the host and the work on the list."""
    times = []
    for _ in range(reps):
        fresh = cu.clone()  # a tensor never checked: no verdict kept for it
        torch.cuda.synchronize()
        start = time.perf_counter()
        check(fresh, fresh, total, total, longest, longest).finish()
        times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times)


def measure():
    code = {"code": code_digest()}
    common.save("phase6/dropout.json", {"rows": measure_dropout()}, meta=code)
    common.save("phase6/varlen.json", measure_varlen(), meta=code)


# ---------------------------------------------------------------- tables
def _span(values) -> str:
    low, high = min(values), max(values)
    return f"{low:.1f}x" if f"{low:.1f}" == f"{high:.1f}" else f"{low:.1f}x to {high:.1f}x"


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
    dropped = [r for r in data["rows"] if r["p"] > 0]
    cost = {mode: [r[f"{mode}_ms"] / base[(r["causal"], mode)] for r in dropped] for mode in ("fwd", "fwd_bwd")}
    ps = ", ".join(sorted({f"{r['p']:g}" for r in dropped}))
    summary = (f"\nWith dropout (p = {ps}) a step takes "
               f"{_span(cost['fwd'])} the time of p = 0 forward and {_span(cost['fwd_bwd'])} forward + backward. "
               "The p > 0 path differs from p = 0 by the random numbers and by running the packed kernels, whose own "
               "cost against the dense ones on equal lengths is in the varlen table below.\n")
    return (f"{shape}; dropout_p = 0 runs Phase 4's kernels, p > 0 the packed kernels of this phase.\n\n"
            + common.markdown_table(["dropout_p", "causal", "fwd ms (TFLOPS)", "fwd time vs p=0",
                                     "fwd+bwd ms (TFLOPS)", "fwd+bwd time vs p=0"], rows) + summary)


def varlen_tables(data) -> str:
    lengths = sorted(data["lengths"])
    n = len(lengths)
    mix = (f"{n} sequences, {sum(lengths)} tokens, lengths {lengths[0]} to {lengths[-1]} (median "
           f"{lengths[n // 2]}), causal, H={data['H']} D={data['D']}, bf16. Padding to the longest makes a "
           f"batch of {n * lengths[-1]} token slots, {n * lengths[-1] / sum(lengths):.1f}x the real tokens. "
           "TFLOPS count the useful work only (each sequence's own causal attention).\n\n")
    sdpa = next(r for r in data["mix"] if r["method"].startswith("SDPA"))
    ours = next(r for r in data["mix"] if r["method"].startswith("varlen"))
    rows = [[r["method"], f"{r['fwd_ms']:.3f}", f"{r['fwd_useful_tflops']:.0f}", f"{sdpa['fwd_ms'] / r['fwd_ms']:.2f}x",
             f"{r['fwd_bwd_ms']:.3f}", f"{r['fwd_bwd_useful_tflops']:.0f}",
             f"{sdpa['fwd_bwd_ms'] / r['fwd_bwd_ms']:.2f}x"] for r in data["mix"]]
    mix += common.markdown_table(["method", "fwd ms", "fwd useful TFLOPS", "fwd speed vs padded SDPA",
                                  "fwd+bwd ms", "fwd+bwd useful TFLOPS", "fwd+bwd speed vs padded SDPA"], rows)
    mix += (f"\nPacked, our kernel is {sdpa['fwd_ms'] / ours['fwd_ms']:.1f}x as fast as SDPA on the padded batch "
            f"forward and {sdpa['fwd_bwd_ms'] / ours['fwd_bwd_ms']:.1f}x forward + backward.\n")
    eq = data["equal"][0]
    extra = [(key, label) for key, label in (("varlen_unchecked_ms", "no values check"),
                                             ("varlen_checked_first_ms", "values checked before the launch"),
                                             ("varlen_checked_every_call_ms", "values checked on every call"))
             if all(key in r for r in data["equal"])]
    rows = [["yes" if r["causal"] else "no", r["mode"].replace("fwd_bwd", "fwd+bwd"), f"{r['dense_ms']:.3f}",
             f"{r['varlen_ms']:.3f}", f"{r['ratio']:.2f}x"]
            + [cell for key, _ in extra for cell in (f"{r[key]:.3f}", f"{r['dense_ms'] / r[key]:.2f}x")]
            for r in data["equal"]]
    header = ["causal", "pass", "dense ms", "varlen ms", "varlen speed vs dense"]
    header += [cell for _, label in extra for cell in (f"varlen ms, {label}", "its speed vs dense")]
    equal = (f"\nEqual lengths, B={eq['B']} sequences of N={eq['N']} (H={eq['H']} D={eq['D']}, bf16), packed "
             "against dense on the same tokens (the grader asks for at least 0.80x)"
             + (", and the same packed code with the check of cu_seqlens' values changed (" +
                "; ".join(label for _, label in extra) + "; measured to price the check, never shipped)"
                if extra else "") + ":\n\n" + common.markdown_table(header, rows))
    ratios = [r["ratio"] for r in data["equal"]]
    missed = [r for r in data["equal"] if r["ratio"] < 0.8]
    equal += (f"\nPacked runs at {min(ratios):.2f}x to {max(ratios):.2f}x of dense on equal lengths: "
              + ("every case meets the grader's 0.80x." if not missed else
                 f"{len(missed)} of {len(ratios)} cases miss the grader's 0.80x ("
                 + ", ".join(f"{'causal' if r['causal'] else 'non-causal'} {r['mode'].replace('fwd_bwd', 'fwd+bwd')} "
                             f"{r['ratio']:.2f}x" for r in missed) + ").")
              + (f" The values check alone, with nothing queued on the GPU, takes {data['check_us']:.0f} us on the "
                 "host." if "check_us" in data else "") + "\n")
    return mix + equal


def figures():
    done = []
    for name, path, make in (("dropout-table", "phase6/dropout.json", dropout_table),
                             ("varlen-table", "phase6/varlen.json", varlen_tables)):
        stored = common.load(path)
        text = make(stored) + "\n" + _provenance(stored) if stored else NOT_MEASURED
        if common.replace_block(LESSON, name, text):
            done.append(f"filled {name} in {LESSON.relative_to(ROOT)}")
    return done
