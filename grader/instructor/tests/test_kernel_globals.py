"""Module-level float constants beside Triton kernels are `tl.constexpr` (issue 21, item 5).

A kernel may read a global only when it is a `tl.constexpr`; the interpreter does not check this, so
a plain `LOG2E = 1.44...` used inside a kernel passes every interpreter test and fails only the
compile tier. Stubs put such constants next to the kernels where a student needs them, so every
float constant of a module that holds a `@triton.jit` function must be usable there."""
import ast

import pytest

from grader.impl import ROOT, phases


def _is_jit(node: ast.AST) -> bool:
    return isinstance(node, ast.FunctionDef) and any(
        "jit" in ast.unparse(d) for d in node.decorator_list)


def plain_float_globals(source: str) -> list[str]:
    """Names bound at module level to a float literal (or arithmetic on them), in a module with kernels."""
    tree = ast.parse(source)
    if not any(_is_jit(node) for node in tree.body):
        return []
    found = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = node.value
            literals = [n for n in ast.walk(value) if isinstance(n, ast.Constant)]
            if literals and all(isinstance(n, (ast.Constant, ast.BinOp, ast.UnaryOp, ast.operator, ast.unaryop))
                                for n in ast.walk(value)) and any(isinstance(n.value, float) for n in literals):
                found.append(node.targets[0].id)
    return found


def _kernel_modules():
    for tree in ("solutions", "exercises"):
        for phase in phases():
            yield from sorted((ROOT / tree / f"phase{phase}").glob("*.py"))


@pytest.mark.parametrize("path", list(_kernel_modules()), ids=lambda p: str(p.relative_to(ROOT)))
def test_float_constants_beside_kernels_are_constexpr(path):
    names = plain_float_globals(path.read_text())
    assert not names, (f"{path.relative_to(ROOT)}: {names} are plain floats beside @triton.jit kernels; a kernel that"
                       " uses one runs in the interpreter and fails to compile. Write NAME = tl.constexpr(value)"
                       " and read NAME.value on the host.")


def test_the_check_sees_a_plain_float():
    kernel = "@triton.jit\ndef k(X):\n    pass\n"
    assert plain_float_globals("LOG2E = 1.4426950408889634\nN = 4096\n" + kernel) == ["LOG2E"]
    assert plain_float_globals("LN2 = -(0.5 * 2.0)\n" + kernel) == ["LN2"]
    assert plain_float_globals("LOG2E = tl.constexpr(1.4426950408889634)\n" + kernel) == []
    assert plain_float_globals("LOG2E = 1.4426950408889634\n") == []  # no kernel beside it
