"""Build a student's submission folder from the reference solutions with one realistic change, and
grade it as an instructor would (`python -m grader grade --impl <folder>`)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from grader.impl import ROOT


def make(tmp_path: Path, name: str, edits: dict | None = None, append: dict | None = None,
         base: str = "solutions") -> Path:
    """Copy `base` to tmp_path/name; `edits` maps a file (e.g. "phase0/softmax.py") to
    (old, new) replacements, each of which must match; `append` maps a file to code added at its end."""
    folder = tmp_path / name
    shutil.copytree(ROOT / base, folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for path, replacements in (edits or {}).items():
        text = (folder / path).read_text()
        for old, new in replacements:
            assert old in text, f"{path}: {old!r} not found (the reference changed?)"
            text = text.replace(old, new)
        (folder / path).write_text(text)
    for path, code in (append or {}).items():
        with open(folder / path, "a") as f:
            f.write("\n" + code)
    return folder


def grade(folder: Path, phase: int, *pytest_args: str, env: dict | None = None, timeout: int = 600):
    """Grade `folder`; returns (the process, its JSON report or None, its rows by short test name)."""
    report = folder.parent / f"{folder.name}-phase{phase}.json"
    report.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-m", "grader", "grade", "--phase", str(phase), "--impl", str(folder),
                           "--report", str(report), *pytest_args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})})
    data = json.loads(report.read_text()) if report.exists() else None
    rows = {row["name"]: row for row in data["tests"]} if data else {}
    return proc, data, rows
