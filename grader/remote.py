"""The grading process's side of the worker: the graded code as proxies, its calls as requests.

The grading process (pytest with grader.plugin) never imports the graded tree. `load(phase)` returns
a `Remote`, a proxy of the phase's package in the worker (grader.worker): reading an attribute asks
the worker, and gets plain data back (numbers, strings, tensors, containers of them) or another
`Remote` (a function, a class, a configuration object); calling a `Remote` sends the arguments and
returns the outputs. So the graders keep calling `api.softmax(x)` and comparing the result, while the
seed, the inputs, the float64 references, the comparisons, the points and the report stay here.

- Graded calls. `grader.honesty.graded_call(api.fn, ...)` sends the call with "graded" and its rules:
  the worker runs it under grader.honesty and returns its outputs, or the rule it broke. A graded
  closure (`graded_call(run, q, k, v, do)`, where `run` calls the API and autograd) runs here, and
  every call it makes to the worker is graded with the closure's rules (`graded(...)`).
- Autograd. A call whose tensor arguments require grad goes through `_WorkerFunction`: its forward
  asks the worker to keep the graph under a handle, its backward sends dO and gets the gradients,
  computed in the worker under the same rules as the forward when that was graded. What the worker's
  graph saved for the backward comes back as shapes and dtypes, kept on the node as `meta` tensors
  (`worker_saved`), where the graders' saved-tensor checks find them.
- Errors. An exception of the graded code comes back as the same builtin type with the same message
  (a stub's NotImplementedError, a refusal's ValueError), its chain and its line in the course's files
  (grader.messages); a HonestyError keeps its `cheat` flag, and the worker's cheats are filed with
  the running test (grader.usage).
- Death. When the worker dies, the running test cannot go on: under grader.isolation this process
  hands the worker's death to the supervisor (`on_death`), which fails the test with the usual crash
  message; otherwise `WorkerDied` fails the test and the next call starts a new worker.
"""
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from grader import channel, settings
from grader.impl import ROOT

# Variables the graded code must not see: the instructor's (the secret seed, ...) and the grader's own.
HIDDEN_VARIABLES = {v.name for v in settings.VARIABLES if v.who == settings.INSTRUCTOR} | {
    settings.IMPL.name, settings.CRASH_LOG.name}


def worker_env(extra_path: list[str] = ()) -> dict:
    """The environment of a process that runs graded code: ours without the instructor's variables."""
    env = {k: v for k, v in os.environ.items() if k not in HIDDEN_VARIABLES}
    paths = [str(ROOT), *extra_path, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


@contextlib.contextmanager
def secrets_hidden():
    """os.environ without the instructor's variables, for code that starts processes from it (spawn)."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k in HIDDEN_VARIABLES}
    try:
        yield
    finally:
        os.environ.update(saved)


class WorkerDied(RuntimeError):
    def __init__(self, message: str, returncode: int, kernel: str | None, log: str):
        super().__init__(message)
        self.returncode, self.kernel, self.log = returncode, kernel, log


def death_message(returncode: int, kernel: str | None, log: str) -> str:
    from grader import isolation

    return isolation.crash_message(returncode, kernel, log)


class Worker:
    """One worker process for one graded tree; started on first use, again after it died."""

    def __init__(self, tree: str, crash_log: str | None = None):
        self.tree = tree
        self.crash_log = crash_log
        self.mutated = {}  # the last call's arguments written by contract (grader.honesty.graded_call's mutable)
        self.proc = None
        self.generation = 0
        self.home = None

    def start(self) -> None:
        from grader import impl

        self.generation += 1
        self.home = tempfile.mkdtemp(prefix="fa-worker-")
        extra = []
        if tree_is_path(self.tree):
            impl.tree(self.tree)  # the submission's package link (grader.impl)
            extra = [str(impl.links_dir())]
        to_worker, self.requests = os.pipe()
        self.replies, from_worker = os.pipe()
        self.kernel_file = os.path.join(self.home, "kernel.txt")
        self.log = open(os.path.join(self.home, "worker.log"), "w+")
        user = _worker_user()
        if user:  # FA_WORKER_USER: the worker's own folder is the one place it may write
            os.chown(self.home, user["user"], user["group"])
        cmd = [sys.executable, "-m", "grader.worker", "--tree", self.tree, "--requests", str(to_worker),
               "--replies", str(from_worker), "--kernel-file", self.kernel_file]
        if self.crash_log:
            cmd += ["--crash-log", self.crash_log]
        self.proc = subprocess.Popen(cmd, pass_fds=(to_worker, from_worker), env=worker_env(extra), cwd=self.home,
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     preexec_fn=_die_with_parent, **_worker_user())
        os.close(to_worker)
        os.close(from_worker)

    def request(self, **request):
        """Send one request; the worker's reply value (an exception of the graded code is raised)."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        if _launches:
            request["launches"] = True
        try:
            channel.send(self.requests, channel.encode_request(request))
            reply = channel.decode_reply(channel.receive(self.replies))
        except (channel.Closed, BrokenPipeError):
            self._died()
        from grader import usage

        for cheat in reply.get("cheats", []):
            usage.note_cheat(cheat["function"], cheat["reason"])
        if "launches" in reply and _launches:
            from grader.honesty import KernelLaunch

            _launches[-1].extend(KernelLaunch(**k) for k in reply["launches"])
        self.mutated = reply.get("mutated", {})
        if "footprint" in reply and _watched:
            fp = _watched[-1][0]
            fp.merge(reply["footprint"], len(fp.programs) + 1)
        if channel.ERROR in reply:
            raise rebuild_error(reply[channel.ERROR])
        return wrap(reply["value"], self)

    def last_kernel(self) -> str | None:
        """The last Triton kernel the worker launched (its name, as the worker wrote it)."""
        path = getattr(self, "kernel_file", None)
        return (Path(path).read_text().strip()[:200] or None) if path and os.path.exists(path) else None

    def _died(self):
        rc = self.proc.wait()
        kernel = self.last_kernel()
        log = Path(self.crash_log).read_text(errors="replace") if self.crash_log and os.path.exists(
            self.crash_log) else ""
        self.close()
        if on_death is not None:
            on_death(rc, kernel)  # does not return: the supervisor takes it from here
        raise WorkerDied(death_message(rc, kernel, log), rc, kernel, log)

    def close(self) -> None:
        if self.proc is not None:
            for fd in (self.requests, self.replies):
                with contextlib.suppress(OSError):
                    os.close(fd)
            if self.proc.poll() is None:
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.log.close()
            self.proc = None
        if self.home is not None:  # the worker's folder (its log, the last kernel's name): nothing is kept
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None


def tree_is_path(tree: str) -> bool:
    from grader.impl import TREES

    return tree not in TREES


def _worker_user() -> dict:
    """FA_WORKER_USER (run as root): the worker drops to that user (see INSTRUCTORS.md)."""
    name = settings.WORKER_USER.get()
    if not name or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return {}
    import pwd

    entry = pwd.getpwnam(name)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


# ---------------------------------------------------------------- errors
_ERROR_TYPES: dict = {}


def rebuild_error(data: dict) -> BaseException:
    """The worker's exception, as the same builtin type (or a stand-in class of the same name and
    builtin base), chained as it was; never an object unpickled from the worker."""
    import builtins

    from grader import bounds, honesty

    rebuilt = None
    for link in reversed(data["chain"]):
        exc = _rebuild_one(link, builtins, honesty, bounds)
        exc.__cause__ = rebuilt
        rebuilt = exc
    rebuilt.worker_where = data.get("where", "")
    rebuilt.worker_traceback = data.get("traceback", "")
    return rebuilt


def _rebuild_one(link: dict, builtins, honesty, bounds) -> BaseException:
    name, message = link["type"], link["message"]
    if name == "HonestyError":
        exc = honesty.HonestyError(message, function=link["function"])  # the cheat was filed from the reply
        exc.cheat = link["cheat"]
        return exc
    if name == "OutOfBoundsError":
        return bounds.OutOfBoundsError(message)
    found = getattr(builtins, name, None)
    if isinstance(found, type) and issubclass(found, Exception):
        with contextlib.suppress(Exception):
            return found(message)
    base = getattr(builtins, link["base"], Exception)
    if not (isinstance(base, type) and issubclass(base, Exception)) or base is BaseException:
        base = Exception
    key = (name, base)
    if key not in _ERROR_TYPES:
        _ERROR_TYPES[key] = type(name, (base,), {"__module__": "worker"})
    try:
        return _ERROR_TYPES[key](message)
    except Exception:  # noqa: BLE001 -- a base that needs other arguments
        return RuntimeError(f"{name}: {message}")


# ---------------------------------------------------------------- proxies
class Remote:
    """An object of the graded code, held by the worker under a handle."""

    __slots__ = ("_fa_handle", "_fa_repr", "_fa_name", "_fa_module", "_fa_kind", "_fa_worker", "_fa_generation",
                 "__weakref__")

    def __init__(self, marker: dict, worker: Worker):
        for key, value in (("_fa_handle", marker[channel.HANDLE]), ("_fa_repr", marker["repr"]),
                           ("_fa_name", marker["name"]), ("_fa_module", marker["module"]),
                           ("_fa_kind", marker["kind"]), ("_fa_worker", worker),
                           ("_fa_generation", worker.generation)):
            object.__setattr__(self, key, value)

    @staticmethod
    def _fa_handle_of(obj) -> int:
        return obj._fa_handle

    def __getattr__(self, name):
        if name == "__name__" and self._fa_name:
            return self._fa_name
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._fa_worker.request(op="getattr", target=self, name=name)

    def __setattr__(self, name, value):
        raise AttributeError("objects of the graded code are read-only here")

    def __call__(self, *args, **kwargs):
        # Constructing a class (a configuration, switches) is not the graded computation.
        spec = _graded[-1] if _graded and self._fa_kind != "class" else None
        return call(self, args, kwargs, spec)

    def __repr__(self):
        return self._fa_repr

    def __eq__(self, other):
        return isinstance(other, Remote) and (other._fa_worker, other._fa_generation, other._fa_handle) == (
            self._fa_worker, self._fa_generation, self._fa_handle)

    def __hash__(self):
        return hash((id(self._fa_worker), self._fa_generation, self._fa_handle))


def wrap(value, worker: Worker):
    """A reply's value with its handle markers as `Remote`s."""
    if isinstance(value, dict):
        if channel.HANDLE in value:
            return Remote(value, worker)
        return {k: wrap(v, worker) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(wrap(v, worker) for v in value)
    return value


_graded: list[dict] = []  # the rules of the graded closures running now (innermost last)
_watched: list = []       # grader.footprint: (footprint, tensors by name) whose loads the worker records
_recordings: list = []    # grader.remote.timed: the calls of the function being prepared for a timing
_launches: list = []      # grader.honesty.record_launches: the kernels the worker's calls launch, as data


@contextlib.contextmanager
def recording_launches():
    """The Triton kernels the worker launches for the requests inside, in order (KernelLaunch each)."""
    _launches.append([])
    try:
        yield _launches[-1]
    finally:
        _launches.pop()


@contextlib.contextmanager
def graded(what, forbid, triton):
    """Every call to the worker inside is graded with these rules (grader.honesty.graded_call)."""
    _graded.append({"what": what, "forbid": tuple(forbid or ()), "triton": triton})
    try:
        yield
    finally:
        _graded.pop()


@contextlib.contextmanager
def watching(fp, tensors: dict):
    """The worker records the loads of these tensors (its copies of them) in the calls inside."""
    _watched.append((fp, tensors))
    try:
        yield
    finally:
        _watched.pop()


def _watch(args, kwargs) -> dict:
    """name -> where the watched tensor is among this call's arguments."""
    if not _watched:
        return {}
    found = {}
    for name, t in _watched[-1][1].items():
        for where, key, a in [("arg", i, a) for i, a in enumerate(args)] + [("kw", k, a) for k, a in kwargs.items()]:
            if a is t:
                found[name] = (where, key)
                break
    return found


def _differentiated(args, kwargs) -> list:
    if not torch.is_grad_enabled():
        return []
    found = [("arg", i) for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]
    return found + [("kw", k) for k, a in kwargs.items() if isinstance(a, torch.Tensor) and a.requires_grad]


def call(target: Remote, args, kwargs, spec):
    """`target(*args, **kwargs)` in the worker, graded by `spec` (None: not graded)."""
    worker = target._fa_worker
    grad = _differentiated(args, kwargs)
    if not grad:
        out = worker.request(op="call", target=target, args=_detached(args), kwargs=_detached(kwargs), graded=spec,
                             watch=_watch(args, kwargs))
        for name, value in worker.mutated.items():  # written by contract in the worker: the same here
            kwargs[name].copy_(value)
        _record({"op": "call", "target": target, "args": list(args), "kwargs": dict(kwargs), "grad": []}, out)
        return out
    tensors = [args[k] if where == "arg" else kwargs[k] for where, k in grad]

    def forward():
        return worker.request(op="call", target=target, args=_detached(args), kwargs=_detached(kwargs),
                              graded=spec, grad=grad, watch=_watch(args, kwargs))
    step = {"op": "call", "target": target, "args": list(args), "kwargs": dict(kwargs), "grad": grad}
    return _WorkerFunction.apply(forward, spec, worker, step, *tensors)


def _detached(value):
    if isinstance(value, torch.Tensor):
        return value.detach()
    if type(value) in (list, tuple):
        return type(value)(_detached(v) for v in value)
    if type(value) is dict:
        return {k: _detached(v) for k, v in value.items()}
    return value


class _WorkerFunction(torch.autograd.Function):
    """A differentiable call of the graded code: the graph lives in the worker, under a handle."""

    @staticmethod
    def forward(ctx, forward, spec, worker, step, *tensors):
        reply = forward()
        value = reply["value"]
        outs = [value] if isinstance(value, torch.Tensor) else list(value) if isinstance(value, (tuple, list)) else []
        if not outs or not all(isinstance(t, torch.Tensor) for t in outs):
            raise TypeError("a differentiable function of the graded code must return a tensor or tensors")
        ctx.worker, ctx.worker_graph, ctx.worker_spec = worker, reply["graph"], spec
        ctx.worker_generation = worker.generation
        ctx.worker_step = _record(step, value)
        # What the worker's graph keeps for the backward, as shapes and dtypes (grader.honesty.tensors_in).
        ctx.worker_saved = [torch.empty(shape, dtype=dtype, device="meta") for shape, dtype in reply["saved"]]
        ctx.mark_non_differentiable(*[t for t, d in zip(outs, reply["differentiable"]) if not d])
        return outs[0] if isinstance(value, torch.Tensor) else tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        if ctx.worker_graph is None or ctx.worker.generation != ctx.worker_generation:
            raise RuntimeError("the graded function's autograd graph is gone (its worker was restarted)")
        spec = _graded[-1] if _graded else ctx.worker_spec  # the backward runs under the forward's rules
        got = ctx.worker.request(op="backward", graph=ctx.worker_graph, grads=list(grads), graded=spec)
        if ctx.worker_step is not None:
            _record({"op": "backward", "of": ctx.worker_step, "grads": list(grads)}, None)
        return (None, None, None, None, *got)


def last_kernel() -> str | None:
    return _session.last_kernel() if _session is not None else None


def load(phase: int, module: str | None = None) -> Remote:
    """The graded tree's package for `phase` (or one of its modules), in the session's worker."""
    return session().request(op="module", phase=phase, module=module)


def load_module(phase: int, module: str) -> Remote:
    return load(phase, module)


_session: Worker | None = None
on_death = None  # set by grader.plugin under grader.isolation: hand the worker's death to the supervisor


def start_session(tree: str, crash_log: str | None = None) -> None:
    global _session
    _session = Worker(tree, crash_log)


def active() -> bool:
    """Is this the grading process, with the graded code in a worker?"""
    return _session is not None


def session() -> Worker:
    if _session is None:
        raise RuntimeError("no worker: grader.plugin starts one for the graded tree")
    return _session


def reset() -> None:
    """Forget the previous test's objects in the worker (a running worker only)."""
    if _session is not None and _session.proc is not None and _session.proc.poll() is None:
        _session.request(op="reset")


def close() -> None:
    if _session is not None:
        _session.close()


# ---------------------------------------------------------------- memory and timings
def peak_extra_bytes(fn) -> int:
    """CUDA memory the worker's calls in `fn()` hold at once beyond what the worker held before (bytes),
    measured by the worker's allocator around them (advisory: measured where the graded code runs)."""
    worker = session()
    worker.request(op="memory", when="start")
    try:
        fn()
    finally:
        extra = worker.request(op="memory", when="end")
    return int(extra)


def _record(step: dict, value):
    """Note a call in the timings being prepared (timed); its index, or None when none is."""
    if not _recordings:
        return None
    steps = _recordings[-1]
    for key, v in list(enumerate(step.get("args", []))) + list(step.get("kwargs", {}).items()):
        for i, earlier in enumerate(steps):  # an earlier call's output, passed on: the worker passes its own
            if isinstance(v, torch.Tensor) and earlier.get("out_id") == id(v):
                (step["args"] if isinstance(key, int) else step["kwargs"])[key] = ("__result__", i)
    step["out_id"] = id(value) if isinstance(value, torch.Tensor) else None
    steps.append(step)
    return len(steps) - 1


class TimedCall:
    """A throughput timing of the worker's calls that one run of `fn` made (grader.honesty.timed)."""

    def __init__(self, steps: list, inputs: tuple, what: str):
        self.steps, self.inputs, self.what = steps, inputs, what

    def remote_median_ms(self, warmup_ms: int, rep_ms: int) -> float:
        from grader import timing

        steps = [{k: v for k, v in s.items() if k != "out_id"} for s in self.steps]
        for s in steps:
            if s["op"] == "call":
                s["args"], s["kwargs"] = _detached(s["args"]), _detached(s["kwargs"])
            else:
                s["grads"] = _detached(s["grads"])
        options = {"warmup_ms": warmup_ms, "rep_ms": rep_ms}
        return float(session().request(op="time", steps=steps, inputs=_detached(list(self.inputs)), what=self.what,
                                       options=options, compile_only=timing.compile_only))

    def __call__(self):
        raise RuntimeError("a worker timing is measured with grader.timing.median_ms, not called")


def timed(fn, inputs, what: str) -> TimedCall:
    """Run `fn` once, graded, noting its calls to the worker; the worker replays them for the timing
    (checked there by grader.honesty.timed on these inputs: a new result after the inputs change)."""
    _recordings.append([])
    try:
        with graded(what, ("sdpa", "softmax", "matmul"), True):
            fn()
    finally:
        steps = _recordings.pop()
    return TimedCall(steps, inputs, what)


# ---------------------------------------------------------------- CUDA graphs
class CapturedCall:
    """A call of the graded code captured in a CUDA graph in the worker (grader.graphs)."""

    def __init__(self, worker: Worker, reply: dict):
        self.worker, self.handle = worker, reply["graph"]
        self.out, self.launches = reply["out"], reply["launches"]

    def replay(self, updates: dict | None = None):
        """Copy `updates` (argument position or keyword -> new values) into the captured inputs, replay,
        and return the output as the replay left it."""
        return self.worker.request(op="replay", graph=self.handle, updates=_detached(updates or {}))

    def median_ms(self, warmup_ms: int = 25, rep_ms: int = 100) -> float:
        from grader import timing

        if timing.compile_only:  # a warm-up process (grader.warmup): nothing is timed
            return float("nan")
        return float(self.worker.request(op="replay", graph=self.handle, time=True,
                                         options={"warmup_ms": warmup_ms, "rep_ms": rep_ms}))


def capture(target: Remote, args, kwargs) -> CapturedCall:
    worker = target._fa_worker
    return CapturedCall(worker, worker.request(op="capture", target=target, args=_detached(list(args)),
                                               kwargs=_detached(dict(kwargs))))
