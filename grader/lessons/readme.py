"""The README's measured-results section, generated from assets/ (never typed by hand)."""
import json

from grader import settings
from grader.impl import ROOT
from grader.lessons import common

README = ROOT / "README.md"


GPU_TAGS = ("h100", "h200")  # GPU reports carry the device in their names: each GPU's results side by side


def _grades() -> str:
    rows = []
    reports = [path for tag in GPU_TAGS for path in (common.ASSETS / "reports").glob(f"phase*-solutions-{tag}.json")]
    for path in sorted(reports, key=lambda p: (int(p.name.split("-")[0].removeprefix("phase")), p.name)):
        sol = json.loads(path.read_text())
        stub_path = path.with_name(path.name.replace("solutions", "exercises"))
        stub = json.loads(stub_path.read_text()) if stub_path.exists() else None
        env = sol["environment"]
        tiers = ", ".join(t for t, state in sol["tiers"].items() if state == "available")
        # Every throughput check that measured something, a missed bar in bold: a table of the passes
        # alone would hide the miss behind the score.
        throughput = "; ".join(("" if t["outcome"] == "passed" else f"**{t['outcome'].upper()}**: ")
                               + t["metrics"]["throughput"]["summary"] for t in sol["tests"]
                               if "throughput" in t.get("metrics", {}) and t["outcome"] in ("passed", "failed"))
        rows.append([f"{sol['phase']}", f"{sol['score']:g} / {sol['max_score_run']:g} in {sol['seconds']:.0f} s",
                     f"{stub['score']:g} / {stub['max_score_run']:g} in {stub['seconds']:.0f} s" if stub else "not run",
                     tiers,
                     f"{env['device']}, torch {env['torch']}, Triton {env['triton']}", throughput or "-"])
    if not rows:
        return "(no GPU report committed yet)\n"
    return common.markdown_table(["phase", "solutions", "untouched stubs", "tiers run", "where",
                                  "throughput checks (ours vs the reference in the same run)"], rows)


def _device() -> str:
    device = common.load("phase0/device.json")
    if device is None:
        return "(not measured yet)\n"
    m = device["meta"]
    return (common.markdown_table(["device", "copy bandwidth", "bf16 matmul", "ridge point"],
                                  [[m["device"], f"{device['copy_gbs']:,.0f} GB/s",
                                    f"{device['matmul_bf16_tflops']:.0f} TFLOPS",
                                    f"{device['matmul_bf16_tflops'] * 1e3 / device['copy_gbs']:.0f} FLOP/byte"]])
            + "\n" + common.measured_on(m))


def _tables() -> str:
    parts = []
    for rel, title in (("phase3/forward_table.md", "Forward (Phase 3 reference solution)"),
                       ("phase4/backward_table.md", "Backward and forward+backward (Phase 4 reference solution)"),
                       ("phase5/kernels_table.md", "Tuned forward and backward (Phase 5 reference solution) against "
                                                   "SDPA cuDNN and FlexAttention")):
        path = common.ASSETS / rel
        if path.exists():
            parts.append(f"**{title}**\n\n{path.read_text().strip()}\n")
    return "\n".join(parts) if parts else "(the kernel phases' tables appear here once measured)\n"


def _mutants() -> str:
    """The mutation suite's kill rate per phase (assets/mutants/<cpu|gpu>.json, `make mutants RECORD=1`)."""
    runs = [(where, common.load(f"mutants/{where}.json")) for where in ("cpu", "gpu")]
    runs = [(where, data) for where, data in runs if data]
    if not runs:
        return "(no mutation run recorded yet: `make mutants RECORD=1`)\n"
    parts = []
    for where, data in runs:
        rows = []
        for phase in sorted({m["phase"] for m in data["mutants"]}):
            mine = [m for m in data["mutants"] if m["phase"] == phase]
            ran = [m for m in mine if m["status"] in ("killed", "survived")]
            killed = sum(m["status"] == "killed" for m in ran)
            rows.append([phase, len(mine), len(ran), killed, f"{killed / len(ran):.0%}" if ran else "-",
                         len(mine) - len(ran)])
        s = data["summary"]
        rows.append(["**all**", s["mutants"], s["run"], s["killed"],
                     f"**{s['kill_rate']:.0%}**" if s["kill_rate"] is not None else "-", len(s["not_run"])])
        env = data["environment"]
        parts.append(common.markdown_table(
            ["phase", "mutants", "graded here", "killed", "kill rate", "not run here (need a GPU)"], rows))
        parts.append(f"*`make mutants` on {env['device']}, torch {env['torch']}, Triton {env['triton']}, "
                     f"{data['date']}: {s['wall_seconds']:.0f} s with {s['jobs']} processes"
                     + (f"; survivors: {', '.join(s['survived'])}" if s["survived"] else "")
                     + (f"; grading runs that went wrong: {', '.join(s['errors'])} (a control is the unmutated "
                        "solution on the same tests: it must pass for a kill to count)" if s.get("errors") else "")
                     + ".*\n")
        fixes = [m for m in data["mutants"] if m.get("killed_by")]
        if fixes and where == runs[0][0]:
            # Each row names a bug and the test that catches it: where the grader looks, which a student
            # copy (`make release`, which cuts COURSE-ONLY parts) does not show.
            parts.append("<!-- BEGIN COURSE-ONLY -->\nMutants that needed (or owe their death to) a grader change "
                         "(not in a student copy):\n\n"
                         + common.markdown_table(["mutant", "the bug", "killed by"],
                                                 [[f"`{m['name']}`", m["bug"], m["killed_by"]] for m in fixes])
                         + "<!-- END COURSE-ONLY -->\n")
    return "\n".join(parts)


def _grading_times() -> str:
    """`make grade PHASE=N` wall times, cold and warm, per machine (python -m grader.instructor.grading_times)."""
    runs = {where: common.load(f"reports/grading-times-{where}.json") for where in (*GPU_TAGS, "cpu")}
    runs = {where: data for where, data in runs.items() if data}
    if not runs:
        return "(not measured yet: `python -m grader.instructor.grading_times` on each machine)\n"
    all_phases = sorted({int(p) for data in runs.values() for p in data["phases"]})
    header, notes = ["phase"], []
    for where, data in runs.items():
        first = next(iter(data["phases"].values()))
        env = first["cold"]["environment"]
        label = where.upper()
        header += [f"{label}: empty cache", f"{label}: warm cache"]
        notes.append(f"{label}: {env['device']}, {first['cores']} cores, torch {env['torch']}, Triton {env['triton']}, "
                     f"{first['date']}, tiers {', '.join(first['cold']['tiers'])}")
    rows = []
    for phase in all_phases:
        row = [phase]
        for data in runs.values():
            times = data["phases"].get(str(phase))
            row += [f"{times['cold']['seconds']:.0f} s", f"{times['warm']['seconds']:.0f} s"] if times else ["-", "-"]
        rows.append(row)
    return (common.markdown_table(header, rows) + "\n*Wall time of the whole `make grade PHASE=N IMPL=solutions` "
            "command, start-up included; " + "; ".join(notes) + ". Regenerate: "
            "`python -m grader.instructor.grading_times` on the machine, then `make figures`.*\n")


def update() -> list[str]:
    done = []
    for name, text in (("device", _device()), ("grades", _grades()), ("kernel-tables", _tables()),
                       ("mutants", _mutants()), ("grading-times", _grading_times()),
                       ("settings", settings.table())):
        if common.replace_block(README, name, text):
            done.append(f"README block {name}")
    return done
