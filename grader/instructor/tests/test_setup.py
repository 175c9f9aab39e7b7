"""`make`'s set-up is decided by what imports, not by file times (issue 21, item 8): a .venv whose
packages import is used however new pyproject.toml is; one whose packages do not is built."""
import shutil
import subprocess
import sys

import pytest

from grader.impl import ROOT


def _venv(tmp_path, body: str):
    """A stand-in .venv whose bin/python runs `body` (a shell line given "$@")."""
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\n{body}\n")
    python.chmod(0o755)
    return python.parent.parent


def _dry_run(venv, goal="grade") -> str:
    """What `make -n <goal>` would run with this .venv (the import checks run; nothing else does)."""
    done = subprocess.run(["make", "-n", goal, "PHASE=0", f"VENV={venv}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(autouse=True)
def _needs_make_and_a_bare_python3():
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    bare = subprocess.run(["python3", "-c", "import torch, triton, pytest, numpy"], capture_output=True)
    if bare.returncode == 0:
        pytest.skip("python3 on PATH has torch and triton: make uses it and builds no .venv at all")


def test_a_venv_that_imports_everything_is_not_rebuilt(tmp_path):
    venv = _venv(tmp_path, f'exec "{sys.executable}" "$@"')  # this Python: every package imports
    for goal in ("grade", "test"):
        script = _dry_run(venv, goal)
        assert "python3 -m venv" not in script and "pip install -q" not in script, f"make -n {goal}:\n{script}"
        assert f"{venv}/bin/python -m grader" in script, script


def test_a_venv_missing_a_package_is_set_up(tmp_path):
    venv = _venv(tmp_path, 'exec python3 -S "$@"')  # no site-packages: torch does not import
    script = _dry_run(venv)
    assert "python3 -m venv" in script and "pip install -q" in script, script
