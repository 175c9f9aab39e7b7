"""`python -m grader.lessons.figures`: redraw plots and generated tables from the data in assets/."""
import sys

from grader.lessons import modules, readme


def main() -> int:
    for name, module in modules().items():
        if hasattr(module, "figures"):
            for line in module.figures() or []:
                print(f"{name}: {line}")
    for line in readme.update():
        print(f"README: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
