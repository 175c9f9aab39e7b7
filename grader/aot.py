"""The compile tier: build every graded kernel ahead of time for sm_80 and sm_90, no GPU needed.

The interpreter runs kernels as numpy and accepts code the compiler rejects (shapes that are not
powers of two, unsupported dtypes in `tl.dot`, ...). Compiling for real targets catches that on a
laptop, and the compiled metadata tells how heavy each kernel is: registers per thread, bytes
spilled to local memory, and shared memory per program.

Kernels are compiled in a child process without TRITON_INTERPRET (the parent may be interpreting,
and `@triton.jit` fixed its choice when the module was imported). Run as
`python -m grader.aot` with a JSON list of specs on stdin; it prints a JSON list of results.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field

from grader import impl, settings, usage

ARCHS = (80, 90)
# Bytes of shared memory one program may opt into, per architecture (A100, H100).
SHARED_LIMIT = {"sm_80": 166912, "sm_90": 232448}


@dataclass
class KernelSpec:
    """One kernel to compile: where it lives, its argument types and its compile-time constants."""
    module: str                      # e.g. "softmax" for <tree>.phase0.softmax
    kernel: str                      # attribute name of the @triton.jit function
    signature: dict                  # argument name -> Triton type ("*fp16", "i32", "fp32", "constexpr")
    constexprs: dict = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3
    label: str = ""                  # shown in the report, e.g. "fp16, BLOCK=1024"
    archs: tuple = ARCHS             # e.g. (90,) for code that needs Hopper (tensor descriptors)
    runs_on: tuple | None = None     # the archs whose GPUs launch this configuration (a Hopper-sized
                                     # tile is compiled for sm_80 too, to catch errors, but never runs
                                     # there); None: every arch it is compiled for


def compile_all(phase: int, tree: str, specs: list[KernelSpec], timeout: int = 300) -> list[dict]:
    usage.note_modules(s.module for s in specs)  # these points belong to the functions of these modules
    from grader import remote

    # This child imports the graded code: no instructor secret in its environment, a working directory
    # of its own; its JSON answer is parsed, never unpickled (advisory: the graded code could forge it).
    env = {k: v for k, v in remote.worker_env().items() if k != "TRITON_INTERPRET"}
    env[settings.IMPL.name] = tree
    if remote.tree_is_path(tree) or tree.startswith(impl.SUBMISSION_PREFIX):
        env["PYTHONPATH"] = os.pathsep.join([str(impl.links_dir()), env["PYTHONPATH"]])
    request = json.dumps({"phase": phase, "specs": [asdict(s) for s in specs]})
    with tempfile.TemporaryDirectory(prefix="fa-aot-") as home:
        proc = subprocess.run([sys.executable, "-m", "grader.aot"], input=request, capture_output=True,
                              text=True, cwd=home, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the compile tier's child process failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_compiles(phase: int, specs: list[KernelSpec], record_property, no_spills: bool = False) -> list[dict]:
    """The compile tier's test, for every phase: compile `specs` for their archs, put the results
    (registers, spills, shared memory) in the report, and fail on the first kernel that
    - does not compile,
    - needs more shared memory than one program may use on a GPU that launches it (SHARED_LIMIT),
    - with `no_spills`, spills registers to local memory (the tile does not fit in registers)."""
    results = compile_all(phase, impl.tree(), specs)
    record_property("compiled", results)
    for r in results:
        if "error" in r:
            raise AssertionError(f"{r['kernel']} [{r['label']}] does not compile for {r['arch']}: {r['error']}")
    for r in results:
        if r["runs_here"] and r["shared_bytes"] > SHARED_LIMIT[r["arch"]]:
            raise AssertionError(f"{r['kernel']} [{r['label']}] needs {r['shared_bytes']} B of shared memory, "
                                 f"more than {r['arch']}'s {SHARED_LIMIT[r['arch']]} B")
    spilled = [r for r in results if r.get("spill_bytes")] if no_spills else []
    if spilled:
        r = spilled[0]
        raise AssertionError(f"{r['kernel']} [{r['label']}] spills {r['spill_bytes']} B per thread on {r['arch']}: "
                             "the tile does not fit in registers")
    return results


def _cuobjdump() -> str | None:
    import triton

    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return bundled if os.path.exists(bundled) else shutil.which("cuobjdump")


def _resources(cubin: bytes) -> dict:
    """Registers and local memory (spills) per thread, read from the cubin with cuobjdump."""
    tool = _cuobjdump()
    if tool is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    found = dict(re.findall(r"\b(REG|STACK|LOCAL):(\d+)", out))
    return {"registers": int(found.get("REG", 0)), "spill_bytes": int(found.get("LOCAL", 0)),
            "stack_bytes": int(found.get("STACK", 0))}


def _chain_text(exc: BaseException) -> str:
    """The messages of an exception and of its causes: Triton reports an error raised inside a
    @triton.jit helper as the cause of an error at the call site."""
    texts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(reversed(texts))


def _headline(message: str) -> str:
    """The line of a compiler error worth showing: a stub's "phase N: ..." text or Triton's own
    message, not the caret that points into the source (the last line when the error is raised in
    a @triton.jit function called from the kernel)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    for line in lines:
        if re.search(r"phase \d+: ", line):
            return line
    meaningful = [line for line in lines if set(line) - set("^~ ")]
    return meaningful[-1] if meaningful else ""


def _kernel_location(exc: BaseException, tree: str) -> str:
    """file:line and the source line of the innermost compile error, in the graded code.

    Triton's CompilationError knows the failing node's line within the @triton.jit function's own
    source (`src`), not the file: the function with that source, among the graded tree's loaded
    modules, gives the file and the line of its `def`."""
    from triton.compiler.errors import CompilationError
    from triton.runtime.jit import JITFunction

    from grader.messages import location

    innermost = None
    while exc is not None:
        if isinstance(exc, CompilationError) and exc.src and hasattr(exc.node, "lineno"):
            innermost = exc
        exc = exc.__cause__ or exc.__context__
    if innermost is None:
        return ""
    for name, module in list(sys.modules.items()):
        if not name.startswith(tree + "."):
            continue
        for value in list(vars(module).values()):
            while hasattr(value, "fn") and not isinstance(value, JITFunction):  # autotune, heuristics
                value = value.fn
            if isinstance(value, JITFunction) and value.src == innermost.src:
                line = innermost.node.lineno
                return location(value.file_name, value.def_file_line_number + line - 1,
                                innermost.src.splitlines()[line - 1])
    return ""


def _aligned(kernel, signature: dict) -> dict:
    """Every pointer and integer argument marked divisible by 16, as Triton's JIT marks them when a
    real call's values are (torch's allocations; strides and sizes of D = 64 or 128 heads). That is
    the kernel that runs on aligned inputs: with it the compiler vectorizes loads and pipelines them
    through shared memory. Without these hints the compile tier measured a third of the shared
    memory the GPU then needed (Phase 6's varlen forward: 48 KiB instead of 128 KiB)."""
    return {(kernel.arg_names.index(name),): [["tt.divisibility", 16]]
            for name, kind in signature.items() if kind.startswith("*") or kind in ("i32", "i64")}


def _compile_one(phase: int, spec: dict, arch: int) -> dict:
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    tree = settings.IMPL.get()
    module = importlib.import_module(f"{tree}.phase{phase}.{spec['module']}")
    from triton.runtime.jit import JITFunction

    kernel = getattr(module, spec["kernel"])
    while not isinstance(kernel, JITFunction):  # unwrap @triton.autotune / @triton.heuristics
        kernel = kernel.fn
    result = {"kernel": spec["kernel"], "label": spec["label"], "arch": f"sm_{arch}",
              "runs_here": spec.get("runs_on") is None or arch in spec["runs_on"]}
    try:
        src = ASTSource(fn=kernel, signature=spec["signature"], constexprs=spec["constexprs"],
                        attrs=_aligned(kernel, spec["signature"]))
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]})
    except Exception as exc:  # a stub's static_assert, or code the compiler rejects
        headline = _headline(_chain_text(exc))
        where = "" if re.search(r"phase \d+: ", headline) else _kernel_location(exc, tree)  # a stub says its TODO
        result["error"] = headline + (f" (at {where})" if where else "")
        result["detail"] = str(exc)[-1500:]
        return result
    result["shared_bytes"] = int(compiled.metadata.shared)
    result.update(_resources(compiled.asm["cubin"]))
    return result


def _preload(phase: int, modules: set) -> None:
    import importlib

    import triton  # noqa: F401

    tree = settings.IMPL.get()
    for module in sorted(modules):
        try:
            importlib.import_module(f"{tree}.phase{phase}.{module}")
        except Exception:  # noqa: BLE001 -- the worker compiling it reports the error against its spec
            pass


def _compile_job(job) -> dict:
    return _compile_one(*job)


def main():
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    request = json.loads(sys.stdin.read())
    jobs = [(request["phase"], spec, arch) for spec in request["specs"] for arch in spec.get("archs", ARCHS)]
    # Each compile is single-threaded and takes seconds on Triton 3.6: one process per core.
    workers = min(len(jobs), os.cpu_count() or 1, 16)
    if workers <= 1:
        results = [_compile_job(job) for job in jobs]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # Import once here, so that the forked workers start with triton, torch and the graded
        # modules loaded (a second or two each otherwise; most of the tier's time once Triton's
        # cache holds the kernels). Fork stays safe: importing starts neither CUDA nor a thread pool.
        _preload(request["phase"], {spec["module"] for spec in request["specs"]})
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(_compile_job, jobs))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
