"""What the running test exercised: the phase's API functions it called, the modules whose kernels it
compiled, and the cheats caught. The grading session files this with each test's result, so that a
function caught computing outside Triton can be scored 0 in every test of the phase that grades it
(see grader.scoring).
"""
_current: dict = {}


def reset() -> None:
    _current.clear()
    _current.update(functions={}, modules=set(), cheats=[])


def note_modules(modules) -> None:
    """The compile tier built kernels of these modules of the phase (e.g. "forward")."""
    _current.setdefault("modules", set()).update(modules)


def note_cheat(function: str, reason: str) -> None:
    _current.setdefault("cheats", []).append({"function": function, "reason": reason})


def snapshot() -> dict:
    """For the report row: function -> module, modules compiled, cheats caught."""
    return {"functions": dict(_current.get("functions", {})), "modules": sorted(_current.get("modules", ())),
            "cheats": list(_current.get("cheats", []))}


class RecordingAPI:
    """The phase's package, noting which of its public functions a test takes."""

    def __init__(self, package):
        object.__setattr__(self, "_package", package)

    def __getattr__(self, name):
        value = getattr(self._package, name)
        if callable(value) and not name.startswith("_"):
            # a function of the graded code in the worker (grader.remote) knows its module's name
            module = getattr(value, "_fa_module", None) or getattr(value, "__module__", "") or ""
            _current.setdefault("functions", {})[name] = module.rsplit(".", 1)[-1]
        return value

    def __repr__(self):
        return f"<graded {self._package!r}>"


reset()
