"""Per-phase scripts behind the lessons' numbers: `measure()` runs on a GPU and stores data in
assets/; `figures()` turns stored data into plots and into the tables between
`<!-- BEGIN GENERATED name -->` / `<!-- END GENERATED name -->` in the lessons and the README.

Each module `grader/lessons/phaseN.py` may define either function; `python -m grader.lessons.measure`
and `python -m grader.lessons.figures` find them.
"""
import importlib
import pkgutil


def modules():
    """The lesson modules, phase order."""
    names = sorted((m.name for m in pkgutil.iter_modules(__path__) if m.name.startswith("phase")),
                   key=lambda n: int(n.removeprefix("phase")))
    return {name: importlib.import_module(f"{__name__}.{name}") for name in names}
