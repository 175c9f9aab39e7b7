"""The GPU experiments behind design decisions (grader/lessons/experiments) stay runnable where CI
can see them: each has a main and a docstring that says how to run it, is listed in the package's
docstring, imports, and asks for a GPU instead of failing obscurely on a machine without one."""
import ast
import os
import subprocess
import sys

import pytest

from grader import settings
from grader.impl import ROOT
from grader.lessons import common, experiments

FOLDER = ROOT / "grader" / "lessons" / "experiments"
NAMES = sorted(p.stem for p in FOLDER.glob("*.py") if p.stem != "__init__")


def test_there_are_experiments_and_the_package_lists_each():
    assert NAMES
    assert [n for n in NAMES if f"grader.lessons.experiments.{n}" not in experiments.__doc__] == []


@pytest.mark.parametrize("name", NAMES)
def test_has_a_main_and_says_how_to_run_it(name):
    tree = ast.parse((FOLDER / f"{name}.py").read_text())
    assert f"python -m grader.lessons.experiments.{name}" in (ast.get_docstring(tree) or "")
    assert any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body)


def test_out_replaces_assets(tmp_path):
    assert experiments.output_path("doc", "phase7/x.json", ["--out", str(tmp_path / "o")]) == tmp_path / "o" / "x.json"
    assert experiments.output_path("doc", "phase7/x.json", []) == common.ASSETS / "phase7" / "x.json"


def test_each_imports_and_asks_for_a_gpu(tmp_path):
    """In a fresh Python with no GPU (FA_FORCE_CPU): importing an experiment chooses Triton's interpreter,
    which a process that has already imported triton, like this one, no longer can (grader.runtime)."""
    code = (f"import importlib\nfor name in {NAMES!r}:\n"
            "    module = importlib.import_module('grader.lessons.experiments.' + name)\n"
            "    try:\n"
            f"        module.main(['--out', {str(tmp_path)!r}])\n"
            "    except SystemExit as exc:\n"
            "        print(name, exc)\n"
            "    else:\n"
            "        print(name, 'ran without a GPU')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {settings.FORCE_CPU.name: "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == [f"{name} error: this experiment times kernels and needs a CUDA GPU" for name in NAMES], proc.stdout
