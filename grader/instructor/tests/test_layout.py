"""The layout shows who each file is for, and the student copies rely on it.

`make release` and `make nbgrader` copy folders (release.STUDENT_FOLDERS, GRADER_FOLDERS), not
files picked out of a folder: so every folder of grader/ and of assets/ must belong to students or
stay home (release.HOME_FOLDERS, HOME_ASSETS), and nothing students get may import what stays home
or the solutions.
"""
import ast
import fnmatch
from pathlib import Path

from grader.impl import ROOT
from grader.instructor import release

FORBIDDEN = ("solutions", *(home.replace("/", ".") for home in release.HOME_FOLDERS))
# Commands for the course's authors that live in the student CLI: (file, function) -> what they may
# import. `python -m grader check-solutions` needs solutions/, which a student copy does not have.
INSTRUCTOR_COMMANDS = {("grader/__main__.py", "check_solutions"): {"grader.instructor.generate"}}


def _module_of(rel: Path) -> str:
    parts = rel.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = ROOT) -> list[tuple[str, str, int]]:
    """(imported module, enclosing function or '', line) for every import of a file, nested ones
    included, relative ones resolved; `from a import b` yields `a.b` as well as `a`."""
    rel = path.relative_to(root)
    package = _module_of(rel).split(".")
    if rel.name != "__init__.py":
        package = package[:-1]
    tree = ast.parse(path.read_text(), str(rel))
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Import):
                found.extend((alias.name, function, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join([*package[:len(package) - child.level + 1], *([base] if base else [])])
                found.append((base, function, child.lineno))
                found.extend((f"{base}.{alias.name}", function, child.lineno) for alias in child.names)
            elif isinstance(child, ast.Constant) and isinstance(child.value, str) and \
                    child.value.startswith(tuple(f"{f}." for f in FORBIDDEN if f != "solutions")):
                found.append((child.value.split()[0], function, child.lineno))  # -p plugin names, import_module
            visit(child, inner)

    visit(tree, "")
    return found


def forbidden_imports(root: Path = ROOT) -> list[str]:
    problems = []
    for rel in release.student_files(root):
        if rel.suffix != ".py":
            continue
        for name, function, line in imports(root / rel, root):
            if not any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                continue
            allowed = INSTRUCTOR_COMMANDS.get((rel.as_posix(), function), ())
            if any(name == a or name.startswith(a + ".") for a in allowed):
                continue
            problems.append(f"{rel}:{line}: {name} (in {function or 'the module'})")
    return problems


def test_every_grader_folder_is_for_students_or_stays_home():
    folders = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "grader").rglob("*.py")
               if "__pycache__" not in p.parts}
    unassigned = sorted(f for f in folders if f not in release.GRADER_FOLDERS and
                        not any(f == h or f.startswith(h + "/") for h in release.HOME_FOLDERS))
    assert not unassigned, (f"{unassigned}: list each in release.GRADER_FOLDERS (students get it) or "
                            "release.HOME_FOLDERS (it stays home)")
    assert set(release.GRADER_FOLDERS) <= folders


def test_every_asset_folder_ships_with_its_lesson_or_stays_home():
    """assets/phaseN/ holds what the lessons show (release.LESSON_ASSETS); any other folder of assets/
    must be listed in release.HOME_ASSETS (grading records), so a new one cannot ship unseen."""
    folders = {p.relative_to(ROOT).as_posix() for p in (ROOT / "assets").iterdir() if p.is_dir()}
    lessons = {f for f in folders if fnmatch.fnmatch(f, release.LESSON_ASSETS.removesuffix("/**"))}
    assert lessons, "no lesson folder in assets/"
    unassigned = sorted(folders - lessons - set(release.HOME_ASSETS))
    assert not unassigned, f"{unassigned}: name them in release.HOME_ASSETS (they stay home) or as assets/phaseN/"
    shipped = {rel.as_posix() for rel in release.student_files() if rel.parts[0] == "assets"}
    assert shipped and not [f for f in shipped if f.startswith(tuple(h + "/" for h in release.HOME_ASSETS))]


def test_student_folders_import_nothing_that_stays_home():
    shipped = [rel for rel in release.student_files() if rel.suffix == ".py"]
    assert {"grader/plugin.py", "grader/phases/test_phase0.py", "exercises/phase0/__init__.py"} <= \
        {rel.as_posix() for rel in shipped}
    assert not [rel for rel in shipped if rel.parts[:2] in (("grader", "instructor"), ("grader", "lessons"))]
    problems = forbidden_imports()
    assert not problems, "student code imports what students do not get:\n  " + "\n  ".join(problems)


def test_the_import_check_can_fail(tmp_path):
    """A student module that imports the solutions, a lesson script or an instructor tool, at the top
    or inside a function, relatively or by a plugin name, is caught."""
    (tmp_path / "grader" / "phases").mkdir(parents=True)
    (tmp_path / "exercises" / "phase0").mkdir(parents=True)
    (tmp_path / "grader" / "__init__.py").write_text("")
    (tmp_path / "grader" / "bad.py").write_text(
        "import solutions.phase0\nfrom grader.lessons import common\n\n\ndef f():\n"
        "    from .instructor import release\n    return ['-p', 'grader.instructor.mutants.select']\n")
    (tmp_path / "grader" / "__main__.py").write_text(
        "def check_solutions():\n    from grader.instructor.generate import write_fresh\n")
    (tmp_path / "exercises" / "phase0" / "a.py").write_text("from solutions.phase0 import softmax\n")
    problems = forbidden_imports(tmp_path)
    assert [p.split(":")[0:2] for p in problems] == [
        ["exercises/phase0/a.py", "1"], ["exercises/phase0/a.py", "1"],
        ["grader/bad.py", "1"], ["grader/bad.py", "2"], ["grader/bad.py", "2"],
        ["grader/bad.py", "6"], ["grader/bad.py", "6"], ["grader/bad.py", "7"]], problems
