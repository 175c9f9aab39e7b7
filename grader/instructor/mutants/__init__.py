"""Mutation testing of the graders: realistic student bugs planted in copies of solutions/.

A grader is only as good as the bugs it catches. Each mutant is one bug a student could plausibly
write (a missing scale, a causal mask off by one, a rescale forgotten, ...), given as a small textual
patch of one file of solutions/: exact old text -> new text. The suite copies solutions/, applies
the patch, grades the copy as a submission folder (grader/impl.py) and calls the mutant *killed*
when it loses points. A patch whose old text is not found exactly once stops the suite before
anything runs, so the catalogue cannot silently rot when the solutions change.

The catalogue lives in one module per phase (`phase0.py` ... `phase4.py`, each a `MUTANTS` list);
`python -m grader.instructor.mutants` (`make mutants`) runs it. See `run.py` for how, and for the report.
"""
import dataclasses
import importlib
import shutil
from pathlib import Path

from grader.impl import ROOT

SOLUTIONS = ROOT / "solutions"
# Where a mutant runs: "cpu" mutants are killed by what runs without a GPU (the interpreter tier,
# or the compile tier when `tiers` says so); "gpu" mutants need the GPU or throughput tier.
WHERE = ("cpu", "gpu")
# The tiers a mutant is graded with unless it says otherwise: correctness only. The compile tier
# builds every kernel for two architectures (minutes on two cores) and the throughput tier times
# them; neither is what a numerical bug trips over.
CORRECTNESS_TIERS = ("interpreter", "gpu")


class PatchError(RuntimeError):
    """A mutant's old text is not in the file (exactly once): the catalogue is out of date."""


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str                            # short and unique, e.g. "p3-lse-log2-units"
    file: str                            # path under solutions/, e.g. "phase3/forward.py"
    patches: tuple[tuple[str, str], ...]  # (exact old text, new text), applied in order
    bug: str                             # the student's mistake, in words
    where: str = "cpu"                   # "cpu" or "gpu" (see WHERE)
    tiers: tuple[str, ...] = CORRECTNESS_TIERS  # the grader's tiers that run for this mutant
    tests: str | None = None             # a pytest -k expression narrowing the phase's tests, or None
    killed_by: str = ""                  # the grader change that was made to kill it, if one was needed

    @property
    def phase(self) -> int:
        return int(self.file.split("/")[0].removeprefix("phase"))

    def __post_init__(self):
        if self.where not in WHERE:
            raise ValueError(f"mutant {self.name}: where must be one of {WHERE}, not {self.where!r}")
        if not self.patches:
            raise ValueError(f"mutant {self.name}: no patch")


def patched(source: str, mutant: Mutant) -> str:
    """`source` with the mutant's patches applied; PatchError unless each old text occurs exactly once."""
    for old, new in mutant.patches:
        found = source.count(old)
        if found != 1:
            first = old.strip().splitlines()[0] if old.strip() else repr(old)
            raise PatchError(f"mutant {mutant.name}: the old text occurs {found} times in solutions/{mutant.file} "
                             f"(needs exactly 1): {first[:100]!r}")
        if old == new:
            raise PatchError(f"mutant {mutant.name}: a patch that changes nothing")
        source = source.replace(old, new)
    try:  # a mutant must be a bug in the code, not a file Python cannot read
        compile(source, f"solutions/{mutant.file} ({mutant.name})", "exec")
    except SyntaxError as exc:
        raise PatchError(f"mutant {mutant.name}: the patched file is not valid Python: {exc}") from None
    return source


def build_copy(mutant: Mutant | None, phase: int, dest: Path) -> Path:
    """A submission folder shaped like exercises/: phases 0..phase of solutions/, one file mutated."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copy2(SOLUTIONS / "__init__.py", dest / "__init__.py")
    for n in range(phase + 1):  # later phases import earlier ones, never the other way round
        shutil.copytree(SOLUTIONS / f"phase{n}", dest / f"phase{n}",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if mutant is not None:
        target = dest / mutant.file
        target.write_text(patched(target.read_text(), mutant))
    return dest


def catalogue(phases=None) -> list[Mutant]:
    """Every mutant of the given phases (default: every phase with a catalogue), phase order."""
    found = []
    for path in sorted(Path(__file__).parent.glob("phase*.py"), key=lambda p: int(p.stem.removeprefix("phase"))):
        n = int(path.stem.removeprefix("phase"))
        if phases is None or n in phases:
            module = importlib.import_module(f"{__name__}.{path.stem}")
            for m in module.MUTANTS:
                if m.phase != n:
                    raise ValueError(f"mutant {m.name} patches {m.file} but is listed in {path.name}")
            found.extend(module.MUTANTS)
    names = [m.name for m in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"mutant names must be unique: {duplicates}")
    return found


def check_catalogue(mutants: list[Mutant]) -> list[str]:
    """The PatchError messages of every mutant whose patch no longer applies to solutions/."""
    problems = []
    for m in mutants:
        try:
            patched((SOLUTIONS / m.file).read_text(), m)
        except (PatchError, FileNotFoundError) as exc:
            problems.append(str(exc))
    return problems
