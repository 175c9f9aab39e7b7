"""A lesson's task list and `make hint` number the TODOs the same way (issue 21, item 3).

A lesson's task list is the numbered list after its "## Your tasks" heading (or Phase 4's "Filling in
the TODOs" paragraph). Item k starts with the id of the k-th TODO of `make hint PHASE=N`, in backticks,
and the list has as many items as the phase has TODOs. Everywhere else a lesson names a TODO as
TODO `id`, the id must exist."""
import re

import pytest

from grader import hints
from grader.impl import ROOT, phases

EXERCISES = ROOT / "exercises"
TASK_HEADINGS = ("## Your tasks", "Filling in the TODOs")
ITEM = re.compile(r"^(\d+)\. `([\w.-]+)`")  # "3. `range` (`forward.py`, ...): ..."
NAMED_TODO = re.compile(r"TODO `([\w.-]+)`")
# The lessons whose task lists the issue found out of step with `make hint`: they must keep one.
MUST_HAVE_A_TASK_LIST = (2, 3, 4)


def task_list(lesson: str) -> list[tuple[int, str]] | None:
    """(number, id) of each item of the lesson's task list; None when the lesson has none."""
    starts = [lesson.index(h) for h in TASK_HEADINGS if h in lesson]
    if not starts:
        return None
    items, started = [], False
    for line in lesson[min(starts):].splitlines()[1:]:
        if re.match(r"^\d+\. ", line):
            started = True
            found = ITEM.match(line)
            items.append((int(line.split(".")[0]), found.group(2) if found else f"<no `id` in: {line[:60]}>"))
        elif started and (line.startswith("#") or (line and not line.startswith(" "))):
            break  # the list ended: a heading or a paragraph
    return items


def _lesson(phase: int) -> str:
    return (EXERCISES / f"phase{phase}" / "README.md").read_text()


@pytest.mark.parametrize("phase", phases())
def test_task_list_numbers_the_todos_as_make_hint_does(phase):
    listed = [(e["number"], e["id"]) for e in hints.todos(phase, EXERCISES)]
    items = task_list(_lesson(phase))
    if items is None:
        assert phase not in MUST_HAVE_A_TASK_LIST, f"phase {phase}'s lesson lost its task list"
        pytest.skip(f"phase {phase}'s lesson has no numbered task list (it names TODOs by id)")
    assert items == listed, (f"phase {phase}: the lesson's task list {items} is not `make hint PHASE={phase}`'s"
                             f" {listed}")


@pytest.mark.parametrize("phase", phases())
def test_todos_named_in_a_lesson_exist(phase):
    ids = {e["id"] for e in hints.todos(phase, EXERCISES)}
    named = set(NAMED_TODO.findall(_lesson(phase)))
    assert named <= ids, f"phase {phase}'s lesson names TODOs {sorted(named - ids)} that `make hint` does not list"


def test_the_parser_sees_a_list_out_of_step():
    lesson = "## Your tasks\n\nIntro.\n\n1. `b` (`f.py`): x\n   more\n2. `a` (`f.py`): y\n\nThen grade.\n3. `c`\n"
    assert task_list(lesson) == [(1, "b"), (2, "a")]
    assert task_list("1. `forward.py`, `f`: no id first\n## Your tasks\n1. plain words\n") == [
        (1, "<no `id` in: 1. plain words>")]
    assert task_list("no list here") is None
