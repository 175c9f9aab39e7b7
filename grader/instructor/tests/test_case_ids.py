"""Every attention case of Phases 2-4 names its sizes and dtype (issue 21, item 2): a student who sees
which cases fail (`fp16-Nq130-Nk128-D64-noncontiguous` but not `fp16-N128-D64`) can tell what the bug
follows without opening the grader."""
import importlib
import re

import pytest

GRADERS = ("grader.phases.test_phase2", "grader.phases.test_phase3", "grader.phases.test_phase4")


def attention_cases():
    """(test name, id, {argument: value}) of each parametrized case with Nq, Nk and D among its arguments."""
    for module_name in GRADERS:
        module = importlib.import_module(module_name)
        for name, test in vars(module).items():
            for mark in getattr(test, "pytestmark", []) if name.startswith("test_") else []:
                if mark.name != "parametrize":
                    continue
                argnames = [a.strip() for a in mark.args[0].split(",")]
                if not {"Nq", "Nk", "D", "dtype"} <= set(argnames):
                    continue
                for param in mark.args[1]:
                    yield f"{module_name.rsplit('.', 1)[1]}::{name}", param.id, dict(zip(argnames, param.values))


def names_its_case(case_id: str, values: dict) -> bool:
    tokens = case_id.split("-")
    sizes = ({f"N{values['Nq']}"} if values["Nq"] == values["Nk"] else {f"Nq{values['Nq']}", f"Nk{values['Nk']}"})
    return values["dtype"] in tokens and f"D{values['D']}" in tokens and sizes <= set(tokens)


CASES = list(attention_cases())


def test_cases_are_found():
    assert len(CASES) >= 30, f"only {len(CASES)} attention cases found in {GRADERS}"


@pytest.mark.parametrize("test, case_id, values", CASES, ids=[f"{t}[{i}]" for t, i, _ in CASES])
def test_case_id_names_sizes_and_dtype(test, case_id, values):
    want = {k: values[k] for k in ("dtype", "Nq", "Nk", "D")}
    assert names_its_case(case_id, values), f"{test}[{case_id}] does not name its case {want}"


def test_ids_are_unique_per_test():
    seen = {}
    for test, case_id, _ in CASES:
        assert (test, case_id) not in seen, f"{test}[{case_id}] twice"
        seen[(test, case_id)] = True
    assert all(re.fullmatch(r"[\w.-]+", case_id) for _, case_id, _ in CASES)
