"""The worker: the only process of a grading that imports the graded code.

Started by grader.remote as `python -m grader.worker --tree TREE --requests FD --replies FD ...` with
an environment that holds no instructor secret (grader.remote.worker_env), in a temporary working
directory. It answers requests from the grading process (grader.channel): import a phase or one of
its modules, read an attribute, call a function (under grader.honesty's rules when the request says
"graded"), run the backward of a graph it keeps, time a call. It holds the objects the grader cannot
receive (functions, classes, configurations, autograd graphs) under integer handles.

Nothing this process decides is trusted: the grader compares the outputs it gets back with its own
float64 references, and what the worker reports about the call (violations of the honesty rules,
what autograd saved, timings) is advisory: the graded code runs here and could forge it.
"""
import argparse
import contextlib
import dataclasses
import faulthandler
import gc
import importlib.abc
import sys
import traceback


class _HideGrader(importlib.abc.MetaPathFinder):
    """The graders (hidden tests included) and the instructor's tools are not importable here."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(("grader.phases", "grader.instructor", "grader.plugin")):
            raise ImportError(f"{fullname} is not available to the graded code")


class Worker:
    def __init__(self, tree: str, kernel_file: str | None):
        from grader import impl

        self.tree = tree
        self.impl = impl
        self.objects: dict[int, object] = {}
        self.ids: dict[int, int] = {}  # id(object) -> handle: the same object keeps its handle
        self.graphs: dict[int, tuple] = {}
        self.memory_before = None
        self.footprint = None  # the loads of the last watched call (grader.footprint)
        self.captured: list[tuple] = []  # CUDA graphs of graded calls: (graph, output, args, kwargs)
        self.extras: dict = {}  # observations that go back with this request's reply (mutated args, launches)
        if kernel_file:
            self._note_launches(kernel_file)

    # ------------------------------------------------------------ handles
    def handle(self, obj) -> dict:
        from grader.channel import HANDLE

        key = id(obj)
        if key not in self.ids:
            self.ids[key] = len(self.objects) + 1
            self.objects[self.ids[key]] = obj
        module = getattr(obj, "__module__", "") or ""
        return {HANDLE: self.ids[key], "repr": repr(obj)[:200], "name": str(getattr(obj, "__name__", "")),
                "module": module if isinstance(module, str) else "", "kind": "class" if isinstance(obj, type) else
                "module" if type(obj).__name__ == "module" else "function" if callable(obj) else "object"}

    def resolve(self, value):
        from grader.channel import HandleRef

        if isinstance(value, HandleRef):
            return self.objects[value.handle]
        if type(value) in (list, tuple):
            return type(value)(self.resolve(v) for v in value)
        if type(value) is dict:
            return {k: self.resolve(v) for k, v in value.items()}
        return value

    def encode(self, value, depth=0):
        """`value` as plain data (tensors, numbers, strings, containers); anything else as a handle."""
        import torch

        from grader.channel import PLAIN

        if isinstance(value, torch.Tensor):
            return value.detach()
        if type(value) in PLAIN:
            return value
        if type(value) is torch.Size:
            return tuple(value)
        if type(value) in (list, tuple) and depth < 8:
            return type(value)(self.encode(v, depth + 1) for v in value)
        if type(value) is dict and depth < 8 and all(type(k) in (str, int, bool, tuple) for k in value):
            return {k: self.encode(v, depth + 1) for k, v in value.items()}
        return self.handle(value)

    # ------------------------------------------------------------ requests
    def serve(self, request: dict):
        op = request["op"]
        if op == "module":
            phase, module = request["phase"], request.get("module")
            loaded = self.impl.load(phase, self.tree) if module is None else \
                self.impl.load_module(phase, module, self.tree)
            return self.handle(loaded)
        if op == "getattr":
            return self.encode(getattr(self.resolve(request["target"]), request["name"]))
        if op == "call":
            return self.call(request)
        if op == "backward":
            return self.backward(request)
        if op == "reset":
            self.objects.clear()
            self.ids.clear()
            self.graphs.clear()  # refcounting frees them; a full gc.collect per test costs seconds per phase
            self.captured.clear()
            return None
        if op == "memory":
            return self.memory(request["when"])
        if op == "time":
            return self.time(request)
        if op == "capture":
            return self.capture(request)
        if op == "replay":
            return self.replay(request)
        raise ValueError(f"unknown request {op!r}")

    def call(self, request: dict):
        import torch

        fn = self.resolve(request["target"])
        args, kwargs = list(self.resolve(request["args"])), self.resolve(request["kwargs"])
        leaves = []
        for where, key in request.get("grad") or ():  # inputs the grader differentiates with respect to
            holder = args if where == "arg" else kwargs
            holder[key] = holder[key].detach().requires_grad_()
            leaves.append(holder[key])
        watched = {name: args[k] if where == "arg" else kwargs[k] for name, (where, k) in
                   (request.get("watch") or {}).items()}
        with torch.enable_grad() if leaves else torch.no_grad(), self._watching(watched):
            out = self._run(lambda: fn(*args, **kwargs), request.get("graded"), name=getattr(fn, "__name__", None))
        mutable = (request.get("graded") or {}).get("mutable") or ()
        if mutable:  # arguments the function writes by contract (a KV cache): their values go back too
            self.extras["mutated"] = {name: kwargs[name] for name in mutable
                                      if isinstance(kwargs.get(name), torch.Tensor)}
        if not leaves:
            return self.encode(out)
        outs = [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)] \
            if isinstance(out, (tuple, list)) else []
        differentiable = [t.requires_grad for t in outs]
        graph = None
        if any(differentiable):
            graph = len(self.graphs) + 1
            self.graphs[graph] = (outs, leaves)
        return {"value": self.encode(out), "graph": graph, "differentiable": differentiable,
                "saved": [(tuple(t.shape), t.dtype) for t in _saved_by(outs)]}

    @contextlib.contextmanager
    def _watching(self, tensors: dict):
        """Record which rows of `tensors` each program loads (grader.footprint), for the grader."""
        if not tensors:
            yield
            return
        from grader import footprint

        with footprint.record_loads(**tensors) as fp:
            yield
        self.footprint = fp.plain()

    def backward(self, request: dict):
        import torch

        outs, leaves = self.graphs[request["graph"]]
        pairs = [(o, g) for o, g in zip(outs, self.resolve(request["grads"])) if g is not None and o.requires_grad]

        def run():
            return torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs], retain_graph=True,
                                       allow_unused=True)
        return self.encode(list(self._run(run, request.get("graded"), name="backward")))

    def _run(self, fn, graded, name):
        if graded is None:
            return fn()
        from grader import honesty

        return honesty.graded_call(fn, what=graded["what"] or name, forbid=graded["forbid"],
                                   triton=graded["triton"], mutable=graded.get("mutable") or ())

    def capture(self, request: dict):
        """The call captured in a CUDA graph (grader.graphs), kept under a handle: its output and how many
        Triton kernels the capture launched (advisory: counted where the graded code runs)."""
        from grader import honesty, timing

        fn = self.resolve(request["target"])
        args, kwargs = list(self.resolve(request["args"])), self.resolve(request["kwargs"])
        with honesty.record_launches() as kernels:
            graph, out = timing.capture_graph(lambda: fn(*args, **kwargs))
        self.captured.append((graph, out, args, kwargs))
        return {"graph": len(self.captured) - 1, "out": self.encode(out), "launches": len(kernels)}

    def replay(self, request: dict):
        """Replay a captured graph, after copying new values into its inputs (by position or keyword);
        with `time`, the median time of a replay instead (advisory)."""
        import torch

        from grader import timing

        graph, out, args, kwargs = self.captured[request["graph"]]
        for key, value in (request.get("updates") or {}).items():
            (args[key] if isinstance(key, int) else kwargs[key]).copy_(value)
        if request.get("time"):
            return timing.median_ms(graph.replay, **request.get("options", {}))
        graph.replay()
        torch.cuda.synchronize()
        return self.encode(out)

    def memory(self, when: str):
        """Peak CUDA memory of the calls between "start" and "end", beyond what was allocated at "start"."""
        import torch

        if not torch.cuda.is_available():
            return 0
        gc.collect()
        torch.cuda.synchronize()
        if when == "start":
            torch.cuda.reset_peak_memory_stats()
            self.memory_before = torch.cuda.memory_allocated()
            gc.disable()
            return 0
        gc.enable()
        return torch.cuda.max_memory_allocated() - (self.memory_before or 0)

    def time(self, request: dict):
        """A throughput timing of `steps` (see grader.remote.timed): checked by grader.honesty.timed on
        the inputs the grader sent, then timed here. Returns the median in ms (advisory: measured where
        the graded code runs)."""
        from grader import honesty, timing

        timing.compile_only = bool(request.get("compile_only"))  # a warm-up process (grader.warmup)
        steps = self.resolve(request["steps"])
        inputs = self.resolve(request["inputs"])
        call = honesty.timed(lambda: _replay(steps, self), *inputs, what=request["what"])
        return timing.median_ms(call, **request.get("options", {}))

    def _note_launches(self, path: str) -> None:
        """The name of the kernel being launched, in `path`, in case the launch kills the process."""
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction

        note = open(path, "w", buffering=1)
        last = [None]
        for cls in (JITFunction, InterpretedFunction):
            def wrap(original):
                def run(self, *args, **kwargs):
                    name = getattr(self.fn, "__name__", "kernel")
                    if name != last[0]:
                        last[0] = name
                        note.seek(0)
                        note.write(name + "\n")
                        note.truncate()
                        note.flush()
                    return original(self, *args, **kwargs)
                return run
            cls.run = wrap(cls.run)


def _replay(steps, worker):
    """Run recorded calls (grader.remote.Recording): each step's arguments may name earlier results."""
    import torch

    results = []

    def value(v):
        if isinstance(v, tuple) and len(v) == 2 and v[0] == "__result__":
            return results[v[1]][0]
        if type(v) in (list, tuple):
            return type(v)(value(x) for x in v)
        return v
    for step in steps:
        if step["op"] == "call":
            fn = step["target"]
            args, kwargs = [value(a) for a in step["args"]], {k: value(v) for k, v in step["kwargs"].items()}
            for where, key in step.get("grad") or ():
                holder = args if where == "arg" else kwargs
                holder[key] = holder[key].detach().requires_grad_()
            results.append((fn(*args, **kwargs), [args[k] if w == "arg" else kwargs[k] for w, k in step.get("grad")
                                                  or ()]))
        else:  # a backward of an earlier call's output, with respect to that call's inputs
            out, leaves = results[step["of"]]
            outs = [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]
            grads = value(step["grads"])
            pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
            results.append((torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs]), []))
    return results[-1][0] if results else None


def _saved_by(outs) -> list:
    """Every tensor the autograd graph behind `outs` keeps for the backward: saved tensors and tensors
    held in the nodes' attributes (a custom function's ctx), up to the graph's leaves."""
    from grader.honesty import tensors_in

    saved, seen, stack = {}, set(), [o.grad_fn for o in outs]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        try:
            own = list(getattr(node, "saved_tensors", ()))
        except RuntimeError:  # freed, or not a custom function
            own = []
        for t in tensors_in(own + list(getattr(node, "__dict__", {}).values())):
            saved.setdefault(id(t), t)
        stack += [f for f, _ in node.next_functions]
    return list(saved.values())


def _error(exc: BaseException, worker) -> dict:
    """An exception of the graded code as plain data: each link of its chain (type, builtin base,
    message, honesty flags) and where in the course's files it was raised (grader.messages)."""
    import builtins

    from grader import messages, usage
    from grader.channel import ERROR

    chain = []
    for link in messages.chain(exc):
        base = next((c.__name__ for c in type(link).__mro__
                     if getattr(builtins, c.__name__, None) is c and issubclass(c, BaseException)), "Exception")
        chain.append({"type": type(link).__name__, "module": type(link).__module__, "base": base,
                      "message": str(link), "cheat": bool(getattr(link, "cheat", False)),
                      "function": getattr(link, "function", None) if isinstance(getattr(link, "function", None), str)
                      else None})
        if len(chain) >= 8:
            break
    return {ERROR: {"chain": chain, "where": messages.where_in_course(exc),
                    "traceback": "".join(traceback.format_exception(exc))[-20000:]},
            "cheats": usage.snapshot()["cheats"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader.worker")
    parser.add_argument("--tree", required=True)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--replies", type=int, required=True)
    parser.add_argument("--kernel-file", default=None)
    parser.add_argument("--crash-log", default=None)
    args = parser.parse_args(argv)
    if args.crash_log:  # grader.isolation names the kernel line from the Python traceback of a crash
        try:
            faulthandler.enable(open(args.crash_log, "a"))
        except OSError:  # run as another user (FA_WORKER_USER), who may not write there: to stderr
            faulthandler.enable()
    sys.meta_path.insert(0, _HideGrader())
    from grader import bounds, runtime

    runtime.configure()
    if runtime.interpreting():
        bounds.install()  # an unmasked store is named, instead of corrupting the heap
    from grader import channel, usage

    worker = Worker(args.tree, args.kernel_file)
    while True:
        try:
            request = channel.decode_request(channel.receive(args.requests))
        except channel.Closed:
            return 0
        usage.reset()
        try:
            if request.get("launches"):  # the kernels this request launches, as plain data (grader.honesty)
                from grader import honesty

                with honesty.record_launches() as kernels:
                    value = worker.serve(request)
                worker.extras["launches"] = [dataclasses.asdict(k) for k in kernels]
            else:
                value = worker.serve(request)
            reply = {"value": value, "cheats": usage.snapshot()["cheats"], **worker.extras}
            if worker.footprint is not None:
                reply["footprint"], worker.footprint = worker.footprint, None
        except BaseException as exc:  # noqa: BLE001 -- the graded code's error, carried to the grader
            reply = _error(exc, worker)
        worker.extras = {}
        try:
            payload = channel.encode_reply(reply)
        except Exception as exc:  # noqa: BLE001 -- a value torch.save cannot write
            payload = channel.encode_reply(_error(TypeError(f"the graded code returned a value the grader cannot "
                                                            f"receive: {exc}"), worker))
        channel.send(args.replies, payload)


if __name__ == "__main__":
    sys.exit(main())
