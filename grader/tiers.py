"""The four tiers of grading, which of them this machine can run, and what it is."""
import platform

from grader import runtime, settings

# In the order the report lists them. "correctness" tests run on the interpreter without a GPU and
# compiled on the GPU when there is one; the other tiers need what their name says.
ORDER = ("interpreter", "compile", "gpu", "throughput")


def of(item) -> str:
    marker = item.get_closest_marker("tier")
    if marker:
        return marker.args[0]
    return "gpu" if runtime.has_cuda() else "interpreter"


def _compile_reason():
    try:
        import triton.backends.nvidia  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the Triton build
        return f"Triton has no NVIDIA backend here ({exc})"
    return None


def detect() -> dict:
    """tier -> None when it runs here, else the reason it does not."""
    no_gpu = None if runtime.has_cuda() else "no CUDA GPU on this machine"
    throughput = no_gpu or (f"{settings.SKIP_THROUGHPUT.name} is set" if settings.SKIP_THROUGHPUT.is_set() else None)
    return {
        "interpreter": "a CUDA GPU runs the kernels compiled instead" if runtime.has_cuda() else None,
        "compile": _compile_reason(),
        "gpu": no_gpu,
        "throughput": throughput,
    }


def environment() -> dict:
    import numpy
    import torch
    import triton

    env = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
           "numpy": numpy.__version__, "interpreter": runtime.interpreting()}
    if runtime.has_cuda():
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, capability=f"sm_{props.major}{props.minor}",
                   sms=props.multi_processor_count, cuda=torch.version.cuda)
    else:
        env["device"] = f"CPU ({platform.machine()}), Triton interpreter"
    return env
