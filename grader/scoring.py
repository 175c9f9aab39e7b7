"""From test results to the graded summary (the JSON report): points, and the rule for cheats.

A function caught computing its result outside Triton (grader.honesty raises a cheat) scores 0 in
the whole phase: every test that called it, and the compile-tier tests of the module it lives in,
fail with the reason, whatever they scored on their own. Other functions keep their points.

Torch-free on purpose: the supervising process (grader.isolation) builds the report without
importing torch.
"""


def _cheat_functions(row: dict, cheat: dict) -> list[str]:
    """The API functions a cheat is charged to: the graded function when the test named it, else
    every API function the test called (a test that wraps several, like forward + backward)."""
    used = row.get("functions", {})
    if cheat.get("function") in used:
        return [cheat["function"]]
    return sorted(used) or [cheat.get("function") or "the graded function"]


def _zero_cheats(rows: list[dict]) -> list[dict]:
    """Fail every test of a function caught cheating; returns the cheats, one per function."""
    caught: dict[str, dict] = {}
    modules: dict[str, str] = {}
    for row in rows:
        modules.update(row.get("functions", {}))
        for cheat in reversed(row.get("cheats", [])):  # the last is the most specific (re-raised with context)
            for function in _cheat_functions(row, cheat):
                caught.setdefault(function, {"function": function, "reason": cheat["reason"], "test": row["name"]})
    if not caught:
        return []
    for row in rows:
        if row["outcome"] == "skipped":
            continue
        hit = [f for f in caught if f in row.get("functions", {}) or modules.get(f) in row.get("modules", ())]
        if hit and not (row["outcome"] == "failed" and row.get("cheats")):
            first = caught[hit[0]]
            row["outcome"] = "failed"
            row["message"] = (f"0 points: {first['function']} was caught computing outside Triton in "
                              f"{first['test']} ({first['reason']})")
    return list(caught.values())


def summarize(header: dict, rows: list[dict], seconds: float) -> dict:
    """The report: header fields (phase, impl, seed, tiers, environment), score and one row per test."""
    rows = [dict(r) for r in rows]
    cheats = _zero_cheats(rows)
    ran = [r for r in rows if r["outcome"] != "skipped"]
    for row in rows:  # bookkeeping of the run, not part of the report
        row.pop("modules", None)
        row.pop("cheats", None)
        row["functions"] = sorted(row.get("functions", {}))
    return {
        **header,
        "score": sum(r["points"] for r in ran if r["outcome"] == "passed"),
        "max_score_run": sum(r["points"] for r in ran),
        "points_not_run": sum(r["points"] for r in rows if r["outcome"] == "skipped"),
        "seconds": round(seconds, 1),
        "cheats": cheats,
        "tests": rows,
    }
