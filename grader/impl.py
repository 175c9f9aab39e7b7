"""Which tree is graded: the student's `exercises` (default), the reference `solutions`, or a
submission directory shaped like `exercises/` (an instructor grading many students' copies).

A submission directory is made importable as a package of its own, `fa_submission_<hash>`, through
a symbolic link in a private folder that is put on `sys.path` and on `PYTHONPATH` (so that the
compile tier's child process imports the same code). Its phases import each other relatively
(`from ..phase0.checks import ...`), exactly as in `exercises/`. While a submission is graded,
importing `solutions` is refused, so that a submission cannot hand in the reference's kernels.
"""
import hashlib
import importlib
import importlib.abc
import os
import sys
import tempfile
from pathlib import Path

from grader import settings

ROOT = Path(__file__).resolve().parent.parent
TREES = ("exercises", "solutions")
SUBMISSION_PREFIX = "fa_submission_"


def phases() -> list[int]:
    """Phases that exist: a grader `grader/phases/test_phaseN.py` and its `solutions/phaseN` package.

    A student copy made by `make release` has no solutions/: there `exercises/phaseN` counts; a copy
    that has neither (the support folder of an nbgrader assignment) counts the graders alone.
    """
    graders = set()
    for path in (ROOT / "grader" / "phases").glob("test_phase*.py"):
        n = path.stem[len("test_phase"):]
        if n.isdigit():
            graders.add(int(n))
    for tree_dir in (ROOT / "solutions", ROOT / "exercises"):
        if tree_dir.is_dir():
            return sorted(n for n in graders if (tree_dir / f"phase{n}").is_dir())
    return sorted(graders)


def links_dir() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"fa-grader-submissions-{uid}"


def _mount(directory: Path) -> str:
    """Make `directory` importable as a package; returns the package's name."""
    directory = directory.resolve()
    name = SUBMISSION_PREFIX + hashlib.sha256(str(directory).encode()).hexdigest()[:12]
    links = links_dir()
    links.mkdir(parents=True, exist_ok=True)
    link = links / name
    if not (link.is_symlink() and Path(os.readlink(link)) == directory):
        tmp = links / f".{name}.{os.getpid()}"
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(directory, target_is_directory=True)
        os.replace(tmp, link)  # atomic: a parallel grader never sees a missing link
    if str(links) not in sys.path:
        sys.path.insert(0, str(links))
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(links) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(links), *[p for p in paths if p]])
    return name


class _RefuseSolutions(importlib.abc.MetaPathFinder):
    """Installed while a submission is graded: the reference solutions cannot be imported."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "solutions" or fullname.startswith("solutions."):
            raise ImportError(f"a submission may not import {fullname!r} (the reference solutions)")


def _refuse_solutions() -> None:
    if not any(isinstance(f, _RefuseSolutions) for f in sys.meta_path):
        sys.meta_path.insert(0, _RefuseSolutions())


def tree(name: str | None = None) -> str:
    """The importable name of the graded tree `name` (default: FA_IMPL): exercises, solutions or a
    submission's package. The grader's worker (grader.worker) is given its tree explicitly."""
    name = name or settings.IMPL.get()
    if name in TREES:
        return name
    if name.startswith(SUBMISSION_PREFIX) and (links_dir() / name).is_dir():  # a child process
        _refuse_solutions()
        links = str(links_dir())
        if links not in sys.path:
            sys.path.insert(0, links)
        return name
    if Path(name).is_dir():
        _refuse_solutions()
        return _mount(Path(name))
    raise ValueError(f"FA_IMPL must be exercises, solutions or a submission directory, not {name!r}")


def label() -> str:
    """What the report calls the graded tree: its name, or the submission directory's path."""
    name = settings.IMPL.get()
    return name if name in TREES or not Path(name).is_dir() else str(Path(name).resolve())


def load(phase: int, name: str | None = None):
    """Import `<tree>.phase<phase>`, the package whose public API the grader calls (in the worker only:
    the grading process reaches it through grader.remote)."""
    return importlib.import_module(f"{tree(name)}.phase{phase}")


def load_module(phase: int, module: str, name: str | None = None):
    """Import one module of a phase (its configurations, its kernels for the compile tier)."""
    return importlib.import_module(f"{tree(name)}.phase{phase}.{module}")


# A child process (the compile tier) grading a submission refuses the solutions from its start.
if settings.IMPL.get() not in TREES:
    _refuse_solutions()
