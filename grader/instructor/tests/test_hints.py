"""`make hint`: every TODO has three hints that give no answer away, revealed one level per call
and recorded for the grading report."""
import json
import shutil

import pytest

from grader import hints
from grader.instructor import answers
from grader.impl import ROOT, phases

SOLUTIONS = ROOT / "solutions"


@pytest.mark.parametrize("phase", phases())
def test_every_todo_has_an_id_and_three_hints(phase):
    listed = hints.todos(phase, SOLUTIONS)
    assert listed, f"phase {phase} has no TODOs"
    ids = [e["id"] for e in listed]
    assert all(":" not in i for i in ids), f"TODOs without an id (`# TODO(phase {phase}, <id>): ...`): {ids}"
    assert len(set(ids)) == len(ids), f"duplicate TODO ids in phase {phase}: {ids}"
    data = hints.load_hints(phase, SOLUTIONS)
    assert set(data) == set(ids), f"hints.toml ids {sorted(data)} != TODO ids {sorted(ids)}"
    for todo_id, levels in data.items():
        assert set(levels) == set(hints.LEVELS), f"phase {phase} {todo_id}: levels {sorted(levels)}"
        assert all(len(text.strip()) > 40 for text in levels.values()), f"phase {phase} {todo_id}: a hint is empty"
    assert [e["number"] for e in listed] == list(range(1, len(listed) + 1))


def test_hints_give_no_answer_line_away():
    """No hint of any level holds an answer line or statement, whitespace aside, alone on a line or
    inside a longer one (`grid: ...; grid = (...)`): hints give the shape of the code, its names, order
    and formula, never a line as it stands in the solution. The answers of every phase count, since a
    phase's hints also go out in every later release. The release's own search, on the parsed hints."""
    found = answers.answers(ROOT)
    assert found.statements, "no answers to look for"
    some = next(iter(found.statements.values()))[1]
    assert answers.search([f"  then:   {some}    (as the lesson says)"], found), "the search cannot fail"
    leaked = []
    for phase in phases():
        for todo_id, levels in hints.load_hints(phase, SOLUTIONS).items():
            for level, text in levels.items():
                leaked += [f"phase {phase} [{todo_id}] {level}, line {n}: {what}"
                           for n, what in answers.search(text.splitlines(), found)]
    assert not leaked, "hints that repeat an answer:\n" + "\n".join(leaked)


def test_each_call_reveals_the_next_level_and_is_recorded(tmp_path):
    tree = tmp_path / "exercises"
    shutil.copytree(ROOT / "exercises" / "phase2", tree / "phase2", ignore=shutil.ignore_patterns("__pycache__"))
    first = hints.todos(2, tree)[0]
    for level in (1, 2, 3):
        text = "\n".join(hints.reveal(2, str(first["number"]), tree))
        assert f"Hint {level}/3" in text and f"Hint {level + 1}/3" not in text
    again = "\n".join(hints.reveal(2, first["id"], tree))  # by id; nothing more to reveal
    assert "last hint" in again
    state = json.loads((tree / ".hints" / "phase2.json").read_text())
    assert [t["level"] for t in state["taken"][first["id"]]] == [1, 2, 3]
    report = hints.record(2, str(tree))
    assert report["count"] == 3 and report["todos"][first["id"]]["levels"] == [1, 2, 3]
    assert f"{first['number']:>4}  3/3" in "\n".join(hints.listing(2, tree))
    assert hints.record(2, str(tmp_path / "nobody")) == {"count": 0, "todos": {}}
    with pytest.raises(hints.HintError, match="choose one of"):
        hints.reveal(2, "99", tree)


def test_stub_messages_map_back_to_their_todo_numbers():
    for entry in hints.todos(3, ROOT / "exercises"):
        assert hints.number_of("exercises", f"TODO phase 3: {entry['summary']}") == (3, entry["number"])
    assert hints.number_of("exercises", "TODO phase 3: something nobody wrote") is None


def test_a_stub_hit_by_many_tests_is_printed_once():
    from grader import messages

    long = "TODO phase 0: " + hints.todos(0, ROOT / "exercises")[0]["summary"]
    rows = [dict(name=f"t{i}", tier="correctness", points=1, outcome="failed", message=long) for i in range(5)]
    summary = dict(phase=0, impl="exercises", seed=0, tiers={"correctness": "available"}, score=0, max_score_run=5,
                   points_not_run=0, seconds=1.0, tests=rows,
                   environment=dict(device="cpu", torch="x", triton="y"))
    text = "\n".join(messages.render(summary))
    assert text.count(long.removeprefix("TODO ")) == 1
    assert text.count("TODO 1 is not written yet") == 5 and "make hint PHASE=0 TODO=k" in text


def test_notebook_hints_ship_and_are_recorded_beside_the_notebook(tmp_path):
    """`make nbgrader` ships each phase's hints; in the notebook `fa.hint(k)` reveals them and keeps
    the record in fa_hints/ beside the notebook (it goes in with the submission)."""
    import subprocess
    import sys

    from grader.instructor import nbgrade

    nbgrade.build(tmp_path, [0], "cpu", generate=False)
    assignment = tmp_path / "source" / "phase0"
    assert (assignment / "fa_course" / "hints" / "phase0.toml").exists()
    script = (
        "import sys; sys.path.insert(0, 'fa_course')\n"
        "from grader import notebook as fa\n"
        "fa.setup(0)\n"
        "from pathlib import Path\n"
        f"src = Path({str(ROOT / 'solutions')!r})\n"
        "for rel in ['phase0/__init__.py'] + sorted(p.name for p in (src / 'phase0').glob('*.py')):\n"
        "    rel = rel if '/' in rel else 'phase0/' + rel\n"
        "    target = fa.STATE['workdir'] / rel\n"
        "    target.parent.mkdir(parents=True, exist_ok=True)\n"
        "    target.write_text((src / rel).read_text())\n"
        "fa.hint()\n"
        "fa.hint(1)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=assignment, capture_output=True, text=True,
                          env={**__import__("os").environ, "TRITON_INTERPRET": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "fa.hint(k)" in proc.stdout and "Hint 1/" in proc.stdout, proc.stdout[-2000:]
    record = json.loads((assignment / "fa_hints" / "phase0.json").read_text())
    assert len(record["taken"]) == 1
