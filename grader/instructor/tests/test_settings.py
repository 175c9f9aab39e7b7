"""Every FA_* environment variable is read in grader/settings.py and listed in the README's table."""
import ast
import re
from pathlib import Path

from grader import settings
from grader.impl import ROOT

NAME = re.compile(r"^FA_[A-Z0-9_]+$")


def named_variables(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every FA_* name in a Python file's code: a string that is exactly the name
    (`os.environ.get("FA_X")`) or a keyword argument (`dict(env, FA_X=...)`); docs that mention a
    variable in a sentence do not count."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and NAME.match(node.value):
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.keyword) and node.arg and NAME.match(node.arg):
            found.append((node.value.lineno, node.arg))
    return found


def test_no_module_but_settings_names_a_variable():
    outside = [f"{path.relative_to(ROOT)}:{line}: {name}" for path in sorted((ROOT / "grader").rglob("*.py"))
               if "__pycache__" not in path.parts and path != ROOT / "grader" / "settings.py"
               for line, name in named_variables(path)]
    assert not outside, "read FA_* variables through grader/settings.py:\n  " + "\n  ".join(outside)
    assert {name for _, name in named_variables(ROOT / "grader" / "settings.py")} == \
        {v.name for v in settings.VARIABLES}


def test_the_check_sees_reads_and_keyword_arguments(tmp_path):
    one, two = "FA_" + "ONE", "FA_" + "TWO"  # not spelled out here, where the check above looks too
    (tmp_path / "m.py").write_text(f'"""Set {one}=0 to debug."""\nimport os\n'
                                   f'a = os.environ.get("{one}")\nb = dict(os.environ, {two}="1")\n')
    assert named_variables(tmp_path / "m.py") == [(3, one), (4, two)]


def test_variables_of_the_kernel_code_are_listed():
    """solutions/ and exercises/ cannot import the grader: a variable they read is listed all the same."""
    used = {name for tree in ("solutions", "exercises") for path in (ROOT / tree).rglob("*.py")
            for name in re.findall(r"\bFA_[A-Z0-9_]+\b", path.read_text())}
    assert used <= {v.name for v in settings.VARIABLES}, used


def test_variables_are_unique_and_read_with_their_default(monkeypatch):
    names = [v.name for v in settings.VARIABLES]
    assert len(names) == len(set(names)) and all(NAME.match(n) for n in names)
    monkeypatch.delenv(settings.IMPL.name, raising=False)
    assert settings.IMPL.get() == "exercises"
    monkeypatch.setenv(settings.SKIP_THROUGHPUT.name, "")
    assert not settings.SKIP_THROUGHPUT.is_set() and settings.SKIP_THROUGHPUT.get() == ""
    monkeypatch.setenv(settings.SKIP_THROUGHPUT.name, "1")
    assert settings.SKIP_THROUGHPUT.is_set()


def test_the_readme_lists_every_variable():
    block = re.search(r"<!-- BEGIN GENERATED settings -->\n(.*?)<!-- END GENERATED settings -->",
                      (ROOT / "README.md").read_text(), re.DOTALL)
    assert block, "README.md has no GENERATED settings block"
    assert block.group(1) == settings.table(), "README's variables are stale: run `make figures`"
