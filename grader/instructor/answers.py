"""The answers a student copy must not hold, and the search for them in a copy's files.

The answers are what the solution regions of the released phases hold (`### BEGIN SOLUTION` ...
`### END SOLUTION` in solutions/) and what the hidden-test blocks of grader/ hold. One walk over
those regions gives two kinds of answer, compared with all whitespace removed:

- answer lines: every meaningful line of a region, code or comment, a fragment of a longer
  statement included; found where a line of a copy is that line;
- answer statements: every complete statement of a region, on one line or several joined, without
  its comment; found anywhere inside a line of a copy: a log line or a JSON message quoting the
  code, a hint's formula line, a comment in a stub, a lesson that re-wraps a multi-line statement.

Every file of a copy is read, whatever its suffix: its lines as they stand, and the same lines with
string escapes undone (`\\n`, `\\"`: code quoted inside a JSON, TOML or repr string). Only true
binaries of a known kind (a NUL byte, and a suffix in BINARY_SUFFIXES: the figures) are skipped;
any other binary file is reported, since nothing could be checked in it.

Not secret: a line or statement that the same phase or an earlier one shows outside its regions
(the student has it in front of them anyway), a short line (`else:`, `return o`) and a one-flag
header (`if CAUSAL:`). A line that only a *later* phase shows as given code stays secret: released
together, the later stub would give the earlier answer away.
"""
import re
from dataclasses import dataclass, field
from pathlib import Path

from grader.impl import ROOT

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
MARKERS = (BEGIN_SOLUTION, END_SOLUTION, BEGIN_HIDDEN, END_HIDDEN)
# Binary kinds a copy may hold (the lessons' figures): skipped once their bytes show they are binary.
BINARY_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".ico")
# A block header on one flag (`if CAUSAL:`, `if not EVEN_N:`) is syntax that any kernel of the course
# has, not an answer.
FLAG_HEADER = re.compile(r"^(if|elif|while)( not)? [A-Za-z_][A-Za-z0-9_]*:$")
IDENTIFIER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
# What may follow a quoted statement without making it part of a longer expression: not a name,
# an operator, a call, an index or an attribute (`x = f(a)` is not quoted by `x = f(a) + 1`).
CONTINUES = IDENTIFIER_CHARS | frozenset(".([+-*/%&|^<>=@")
AFTER_A_SPACE = IDENTIFIER_CHARS | frozenset("([")  # ... of these, what a space turns into prose
UNESCAPES = (("\\\\", "\0"), ("\\r\\n", "\n"), ("\\n", "\n"), ("\\t", " "), ('\\"', '"'), ("\\'", "'"), ("\0", "\\"))


def course_phases(root: Path = ROOT) -> list[int]:
    """The phases of solutions/ (phaseN folders), in order."""
    return sorted(int(p.name[len("phase"):]) for p in (root / "solutions").glob("phase*")
                  if p.is_dir() and p.name[len("phase"):].isdigit())


def squash(text: str) -> str:
    """`text` without whitespace: how lines and statements are compared."""
    return re.sub(r"\s+", "", text)


def _code(line: str) -> str:
    """A line without its comment (roughly: `#` to the end), stripped."""
    return line.split("#", 1)[0].strip()


def meaningful(line: str) -> bool:
    """Lines long enough to be an answer rather than syntax (`else:`, `)`, `return o`, blank)."""
    return len(line) >= 10 and re.search(r"[A-Za-z0-9]", line) is not None and not FLAG_HEADER.match(line)


def blocks(text: str, begin: str, end: str) -> list[tuple[bool, list[str]]]:
    """The runs of lines of `text` inside and outside the regions from `begin` to `end`, in order:
    (inside?, the run's lines, stripped), markers left out."""
    runs: list[tuple[bool, list[str]]] = [(False, [])]
    for line in text.splitlines():
        mark = line.strip()
        if mark in (begin, end):
            runs.append((mark == begin, []))
        else:
            runs[-1][1].append(mark)
    return [run for run in runs if run[1]]


def statements(lines: list[str]) -> list[tuple[int, int, str]]:
    """(index of the first line, number of lines, the code joined by spaces) of each statement: a
    line whose brackets stay open continues on the next. Comments are dropped; so are lines that
    hold nothing but a comment."""
    found, parts, start, depth = [], [], 0, 0
    for i, line in enumerate(lines):
        code = _code(line)
        if not parts:
            if not code:
                continue
            start = i
        parts.append(code)
        depth += sum(code.count(c) for c in "([{") - sum(code.count(c) for c in ")]}")
        if depth <= 0:
            found.append((start, i + 1 - start, " ".join(parts)))
            parts, depth = [], 0
    return found


@dataclass
class Answers:
    """squashed text -> (where it comes from, the text as written)."""
    lines: dict[str, tuple[str, str]] = field(default_factory=dict)
    statements: dict[str, tuple[str, str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.lines) + len(self.statements)


@dataclass
class _Shown:
    """What a group of files holds outside the regions, and what inside: squashed lines and statements."""
    outside_lines: set[str] = field(default_factory=set)
    outside_statements: set[str] = field(default_factory=set)
    inside: Answers = field(default_factory=Answers)

    def add(self, text: str, begin: str, end: str, where: str) -> None:
        for inside, run in blocks(text, begin, end):
            if not inside:
                self.outside_lines.update(squash(line) for line in run)
                self.outside_statements.update(squash(code) for _, _, code in statements(run))
                continue
            for line in run:
                if meaningful(line):
                    self.inside.lines.setdefault(squash(line), (where, line))
            for _, _, code in statements(run):
                if meaningful(code):
                    self.inside.statements.setdefault(squash(code), (where, code))


def _phase_of(path: Path, tree: Path) -> int | None:
    first = path.relative_to(tree).parts[0]
    return int(first[len("phase"):]) if first.startswith("phase") and first[len("phase"):].isdigit() else None


def _sources(folder: Path):
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def answers(root: Path = ROOT, phases: list[int] | None = None) -> Answers:
    """The answers of a copy holding `phases` (default: every phase), from one walk over the
    solution regions of solutions/ and the hidden-test blocks of grader/ (see the module's doc)."""
    phases = course_phases(root) if phases is None else phases
    by_phase: dict[int | None, _Shown] = {}
    for path in _sources(root / "solutions"):
        shown = by_phase.setdefault(_phase_of(path, root / "solutions"), _Shown())
        shown.add(path.read_text(), BEGIN_SOLUTION, END_SOLUTION, str(path.relative_to(root)))
    found = Answers()
    for phase in phases:
        earlier = [s for p, s in by_phase.items() if p is None or p <= phase]
        seen_lines = set().union(*(s.outside_lines for s in earlier))
        seen_statements = set().union(*(s.outside_statements for s in earlier))
        mine = by_phase.get(phase, _Shown()).inside
        for key, value in mine.lines.items():
            if key not in seen_lines:
                found.lines.setdefault(key, value)
        for key, value in mine.statements.items():
            if key not in seen_statements:
                found.statements.setdefault(key, value)
    hidden = _Shown()
    for path in _sources(root / "grader"):
        hidden.add(path.read_text(), BEGIN_HIDDEN, END_HIDDEN, str(path.relative_to(root)))
    for key, value in hidden.inside.lines.items():
        if key not in hidden.outside_lines:
            found.lines.setdefault(key, value)
    for key, value in hidden.inside.statements.items():
        if key not in hidden.outside_statements:
            found.statements.setdefault(key, value)
    return found


def unescape(line: str) -> list[str]:
    """The pieces of a line that quotes text in a string (`\\n`, `\\"`, `\\\\` undone), split at the
    line breaks it quotes."""
    for escaped, plain in UNESCAPES:
        line = line.replace(escaped, plain)
    return line.split("\n")


def _candidates(lines: list[str]) -> list[tuple[int, str]]:
    """(line number, text) of everything in `lines` where an answer may stand: each line, the
    pieces of its escaped strings, and each statement that spans several lines, joined."""
    found = [(n, line) for n, line in enumerate(lines, 1)]
    found += [(n, piece) for n, line in enumerate(lines, 1) if "\\" in line for piece in unescape(line)]
    found += [(start + 1, code) for start, count, code in statements(lines) if count > 1]
    return found


def _quotes(text: str, key: str) -> bool:
    """Does `text` hold squashed statement `key` whole, whitespace aside: not as part of a longer name
    or expression (see CONTINUES)? A space before it ends a word (`the answer is x = f(a)`); a word or
    a bracket after a space is prose (`x = f(a) after ...`, `x = f(a) (the ...)`), an operator is not."""
    kept = [(i, c) for i, c in enumerate(text) if not c.isspace()]
    squashed = "".join(c for _, c in kept)
    i = squashed.find(key)
    while i >= 0:
        j = i + len(key)
        whole_name = i == 0 or (squashed[i - 1] not in IDENTIFIER_CHARS and squashed[i - 1] != ".") or \
            kept[i][0] > kept[i - 1][0] + 1
        ends = j == len(squashed) or squashed[j] not in CONTINUES or \
            (squashed[j] in AFTER_A_SPACE and kept[j][0] > kept[j - 1][0] + 1)
        if whole_name and ends:
            return True
        i = squashed.find(key, i + 1)
    return False


def search(lines: list[str], found: Answers) -> list[tuple[int, str]]:
    """(line number, what it holds) for each answer or marker in the lines of one text."""
    problems: list[tuple[int, str]] = []
    candidates = [(n, text, squash(text)) for n, text in _candidates(lines)]
    for n, text, squashed in candidates:
        mark = text.strip()
        if mark in MARKERS:
            problems.append((n, f"marker {mark!r} left in"))
            continue
        for key in (squashed, squash(mark.strip("\"'`,;"))):
            if key in found.lines:
                where, line = found.lines[key]
                problems.append((n, f"a line of {where} that students must not see: {line[:80]!r}"))
                break
    blob = "\n".join(squashed for _, _, squashed in candidates)
    flagged = {n for n, _ in problems}
    for key, (where, code) in found.statements.items():
        if key not in blob:  # most answers are nowhere in a file: one search rules them out
            continue
        for n, text, squashed in candidates:
            if n not in flagged and key in squashed and _quotes(text, key):
                problems.append((n, f"quotes a statement of {where} that students must not see: {code[:80]!r}"))
                flagged.add(n)
    return sorted(set(problems))  # a line and the pieces of its strings may hold the same answer


def file_lines(path: Path) -> list[str] | None:
    """The lines of any file, or None for a binary of a kind that may hold no text (BINARY_SUFFIXES).
    A binary of any other kind raises ValueError: nothing could be checked in it."""
    data = path.read_bytes()
    if b"\0" in data:
        if path.suffix.lower() in BINARY_SUFFIXES:
            return None
        raise ValueError("a binary file that the check cannot read (leave it out of the copy, or add its kind "
                         "to answers.BINARY_SUFFIXES if it can hold no text)")
    return data.decode("utf-8", errors="replace").splitlines()


def leaks(copy: Path, root: Path = ROOT, phases: list[int] | None = None) -> list[str]:
    """Problems of a student copy holding `phases` (default every phase), as `file:line: what`:
    solutions/ present, markers left, answers found in any file."""
    problems = []
    if (copy / "solutions").exists():
        problems.append("solutions/ is in the copy")
    found = answers(root, phases)
    for path in sorted(p for p in copy.rglob("*") if p.is_file()):
        rel = path.relative_to(copy)
        try:
            lines = file_lines(path)
        except ValueError as exc:
            problems.append(f"{rel}: {exc}")
            continue
        if lines is not None:
            problems += [f"{rel}:{n}: {what}" for n, what in search(lines, found)]
    return problems
