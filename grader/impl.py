"""Which tree is graded: the student's `exercises` (default) or the reference `solutions`."""
import importlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREES = ("exercises", "solutions")


def phases() -> list[int]:
    """Phases that exist: a `solutions/phaseN` package with a grader beside it."""
    found = []
    for path in sorted((ROOT / "solutions").glob("phase*")):
        n = path.name[len("phase"):]
        if n.isdigit() and (ROOT / "grader" / "phases" / f"test_phase{n}.py").exists():
            found.append(int(n))
    return sorted(found)


def tree() -> str:
    name = os.environ.get("FA_IMPL", "exercises")
    if name not in TREES:
        raise ValueError(f"FA_IMPL must be one of {', '.join(TREES)}, not {name!r}")
    return name


def load(phase: int):
    """Import `<tree>.phase<phase>`, the package whose public API the grader calls."""
    return importlib.import_module(f"{tree()}.phase{phase}")


def load_module(phase: int, module: str):
    """Import one module of a phase (graders reach kernels there for the compile tier)."""
    return importlib.import_module(f"{tree()}.phase{phase}.{module}")
