"""GPU experiments behind design decisions in the solutions: a kernel config, a launch path, a check.

The lesson measurements (`measure()` in grader/lessons/phaseN.py) regenerate the lessons' tables;
an experiment here answers one question once, and the comment or lesson that states its answer cites
the data it wrote under assets/. Each runs by hand on a CUDA GPU, from the repository root:

    python -m grader.lessons.experiments.phase4_memory       Phase 4's memory test, outside the grader
    python -m grader.lessons.experiments.phase5_vs_previous  Phase 5's bars: against Phases 3/4 and cuDNN
    python -m grader.lessons.experiments.phase6_varlen       varlen against dense, by cu_seqlens check
    python -m grader.lessons.experiments.phase7_variants     decode configs, GQA backward orders
    python -m grader.lessons.experiments.phase7_decode_graph flash_decode replayed from a CUDA graph, by config
    python -m grader.lessons.experiments.phase8_gluon        the Gluon forward against cuDNN, flash, Phase 5

`--out DIR` writes the data there instead of assets/ (a scratch run); the table comes last on stdout.
"""
import argparse
import statistics
import time
from pathlib import Path

from grader.lessons import common


def output_path(description: str, relpath: str, argv=None) -> Path:
    """Parse `--out DIR` (default: assets/); the path the experiment's data goes to."""
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help=f"write the data to DIR/{Path(relpath).name} instead of assets/{relpath}")
    args = parser.parse_args(argv)
    path = args.out / Path(relpath).name if args.out else common.ASSETS / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def require_cuda() -> None:
    """Configure Triton as the grader does (before any kernel module is imported); exit without a GPU."""
    from grader import runtime

    runtime.configure()
    if not runtime.has_cuda():
        raise SystemExit("error: this experiment times kernels and needs a CUDA GPU")


def host_us(fn, reps: int = 200) -> float:
    """Median host time of one call in microseconds, the GPU idle before each: what the call costs the
    CPU, waits for the GPU inside it included."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times = []
    for _ in range(reps):
        sync()
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e6)
    sync()
    return statistics.median(times)
