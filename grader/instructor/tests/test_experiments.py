"""The GPU experiments behind design decisions (grader/lessons/experiments) stay runnable where CI
can see them: each imports, has a main and a docstring, is listed in the package's docstring, and
asks for a GPU instead of failing obscurely on a machine without one."""
import importlib
import pkgutil

import pytest

from grader import runtime
from grader.lessons import common, experiments

NAMES = sorted(m.name for m in pkgutil.iter_modules(experiments.__path__))


def test_there_are_experiments_and_the_package_lists_each():
    assert NAMES
    assert [n for n in NAMES if f"grader.lessons.experiments.{n}" not in experiments.__doc__] == []


@pytest.mark.parametrize("name", NAMES)
def test_imports_with_a_main_and_says_what_it_writes(name):
    module = importlib.import_module(f"grader.lessons.experiments.{name}")
    assert callable(module.main)
    assert f"python -m grader.lessons.experiments.{name}" in module.__doc__


def test_out_replaces_assets(tmp_path):
    assert experiments.output_path("doc", "phase7/x.json", ["--out", str(tmp_path / "o")]) == tmp_path / "o" / "x.json"
    assert experiments.output_path("doc", "phase7/x.json", []) == common.ASSETS / "phase7" / "x.json"


@pytest.mark.skipif(runtime.has_cuda(), reason="on a GPU the experiment would run")
def test_without_a_gpu_it_says_so(tmp_path):
    module = importlib.import_module("grader.lessons.experiments.phase7_decode_time")
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        module.main(["--out", str(tmp_path)])
