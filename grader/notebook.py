"""Runs inside a Jupyter notebook of the nbgrader course (see grader/instructor/nbgrade.py).

The notebook's code cells are the phase's modules: a cell starting with `%%fa_module phase3/forward.py`
is written to that file of a private package (a folder shaped like `exercises/`) and imported from
there, so its `@triton.jit` kernels have a real source file (Triton reads kernels' source through
`inspect`), relative imports such as `from ..phase0.checks import ...` work as in `exercises/`, and
the compile tier's child process can import it too. Its public names land in the notebook.

Test cells call `tests(...)` / `hidden_tests(...)`: the phase's grader runs on that package in a child
process (the same `python -m grader grade` as `make grade`, with a time limit), prints its rows, and
the cell's value is the points earned scaled to the cell's points, which nbgrader takes as partial
credit. Nothing is written to stderr (nbgrader gives 0 points to a test cell that does).
"""
import atexit
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from grader import runtime, settings

STATE: dict = {}
TIMEOUT = float(settings.NOTEBOOK_TIMEOUT.get())


def setup(phase: int) -> None:
    """Call first, before any kernel is defined: picks interpreter or GPU, makes the package folder."""
    runtime.configure()  # TRITON_INTERPRET must be set before @triton.jit runs
    old = STATE.get("workdir")
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"fa-phase{phase}-notebook-"))
    atexit.register(shutil.rmtree, workdir, True)  # the kernel's files go when the kernel does
    STATE.update(phase=phase, workdir=workdir, runs={})
    os.environ[settings.IMPL.name] = str(workdir)  # grader.impl mounts it as a package of its own
    _install_hints(workdir)
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is not None:
        shell.register_magic_function(_fa_module_magic, "cell", "fa_module")
    where = "on the GPU" if runtime.has_cuda() else "with the Triton interpreter (no GPU here)"
    print(f"Phase {phase}: kernels run {where}.")


# The hints of the phases a notebook holds (nbgrade ships them as fa_course/hints/phaseN.toml), and
# the record of the hints taken, kept beside the notebook (fa_hints/) so that it goes in with it.
SHIPPED_HINTS = Path(__file__).resolve().parents[1] / "hints"
HINTS_RECORD = "fa_hints"


def _install_hints(workdir: Path) -> None:
    from grader import hints

    for toml in sorted(SHIPPED_HINTS.glob("phase*.toml")):
        target = workdir / toml.stem / hints.HINTS_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(toml, target)
    record = Path.cwd() / HINTS_RECORD
    record.mkdir(exist_ok=True)
    (workdir / hints.STATE_DIR).symlink_to(record, target_is_directory=True)


def hint(todo=None) -> None:
    """`fa.hint()` lists this phase's TODOs; `fa.hint(k)` reveals the next hint of TODO k, one level
    per call (a question, the key formula, the shape of the code), recorded in fa_hints/ beside the
    notebook. Run the code cells first: the TODOs are read from them."""
    from grader import hints

    phase, tree = STATE["phase"], STATE["workdir"]
    try:
        lines = hints.listing(phase, tree, "fa.hint({k})") if todo is None else \
            hints.reveal(phase, str(todo), tree, "fa.hint({k})")
    except hints.HintError as exc:
        lines = [f"{exc} (run the code cells above first: the TODOs are read from them)"]
    print("\n".join(lines))


def _package_name() -> str:
    from grader import impl

    return impl.tree()


def _purge() -> None:
    """Forget every imported module of the package, so that the files on disk are what runs next."""
    name = _package_name()
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


def define_module(relpath: str, source: str, namespace: dict | None = None):
    """Write `source` to `relpath` (e.g. phase0/softmax.py) in the package and import it."""
    import importlib

    if "workdir" not in STATE:
        raise RuntimeError("run the set-up cell at the top of the notebook first")
    relpath = relpath.strip()
    compile(source, relpath, "exec")  # a syntax error shows here, with the cell's line numbers
    target = STATE["workdir"] / relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source)
    STATE["runs"].clear()  # the code changed: grade it again
    parts = Path(relpath).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    _purge()
    module_name = ".".join((_package_name(), *parts))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(_package_name()):
            print(f"{relpath}: saved; it imports {exc.name.split('.', 1)[1]}, which a later cell defines")
            return None
        raise
    if namespace is not None:
        public = getattr(module, "__all__", None)
        for key, value in vars(module).items():
            if key.startswith("_"):
                continue
            if (public is not None and key in public) or getattr(value, "__module__", None) == module.__name__:
                namespace[key] = value
    return module


def _fa_module_magic(line: str, cell: str):
    from IPython import get_ipython

    define_module(line, cell, get_ipython().user_ns)


def _digest(extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    h.update((settings.SEED.get() or "").encode())
    for path in sorted(STATE["workdir"].rglob("*.py")):
        if "__pycache__" not in path.parts:
            h.update(str(path.relative_to(STATE["workdir"])).encode() + path.read_bytes())
    return h.hexdigest()


def _run(tests: list[str] | None, key: str) -> dict:
    """Grade the package once per version of the code (and test set); returns the grader's report."""
    from grader.impl import ROOT

    digest = _digest(key)
    if digest in STATE["runs"]:
        return STATE["runs"][digest]
    phase = STATE["phase"]
    report = STATE["workdir"] / "_reports" / f"{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"
    report.parent.mkdir(exist_ok=True)
    report.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "grader", "grade", "--phase", str(phase), "--impl", str(STATE["workdir"]),
           "--report", str(report)]
    for t in tests or []:
        cmd += ["--tests", t]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True, check=False)
        if report.exists():
            result = json.loads(report.read_text())
        else:
            result = {"error": f"the grader crashed (exit {proc.returncode}):\n"
                               + (proc.stdout + proc.stderr)[-1500:]}
    except subprocess.TimeoutExpired:
        result = {"error": f"the grader ran past its {TIMEOUT:g} s limit (an endless loop or a hang?)"}
    STATE["runs"][digest] = result
    return result


def _score(result: dict, functions: list[str], points: float) -> float:
    if "error" in result:
        print(result["error"])
        return 0.0
    earned = ran = 0.0
    rows = [r for r in result["tests"] if r["id"].split("::")[-1].split("[")[0] in functions]
    for r in rows:
        if r["outcome"] == "skipped":
            print(f"  not run  {r['name']}: {r['message']}")
            continue
        ran += r["points"]
        if r["outcome"] == "passed":
            earned += r["points"]
            print(f"  PASS {r['points']:g}/{r['points']:g}  {r['name']}")
        else:
            print(f"  FAIL 0/{r['points']:g}  {r['name']}\n      -> {r['message']}")
    if not rows or not ran:
        print("no case of these tests ran here")
        return 0.0
    score = round(points * earned / ran, 4)
    print(f"{earned:g} of {ran:g} grader points -> {score:g} of this cell's {points:g}")
    return score


def _quiet(fn, *args):
    """Run fn with stderr sent to stdout and warnings off: nbgrader zeroes a cell that writes to stderr."""
    import contextlib
    import warnings

    with contextlib.redirect_stderr(sys.stdout), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


def tests(functions: list[str], points: float) -> float:
    """A public test cell: the grader's tests named `functions`; returns the points earned."""
    return _quiet(lambda: _score(_run(None, "public"), functions, points))


def hidden_tests(functions: list[str], points: float, source: str) -> float:
    """A hidden test cell: `source` (test functions cut from the grader) runs with the public grader's
    helpers; returns the points earned."""
    from grader.impl import ROOT

    def run():
        phase = STATE["phase"]
        public = (ROOT / "grader" / "phases" / f"test_phase{phase}.py").read_text()
        folder = STATE["workdir"] / "_hidden"
        folder.mkdir(exist_ok=True)
        path = folder / f"test_phase{phase}_hidden_{hashlib.sha256(source.encode()).hexdigest()[:8]}.py"
        path.write_text(public + "\n\n# ---- hidden tests\n" + source)
        return _score(_run([f"{path}::{f}" for f in functions], source), functions, points)

    return _quiet(run)
