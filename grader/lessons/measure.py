"""`python -m grader.lessons.measure [phaseN ...]`: run the lessons' GPU measurements into assets/."""
import sys

from grader import runtime
from grader.lessons import modules


def main(argv=None) -> int:
    runtime.configure()
    if not runtime.has_cuda():
        print("error: measurements need a CUDA GPU (they time kernels); `make figures` redraws stored data",
              file=sys.stderr)
        return 2
    selected = argv if argv else None
    found = {n: m for n, m in modules().items() if hasattr(m, "measure")}
    for name, module in found.items():
        if selected and name not in selected:
            continue
        print(f"== measuring {name}", flush=True)
        module.measure()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
