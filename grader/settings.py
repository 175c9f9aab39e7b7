"""Every FA_* environment variable of the course, in one place: its name, default, who sets it, and why.

The grader, the instructor's tools and the lessons' measurements read them only through this module
(`settings.SEED.get()`) and hand them to child processes by name (`env[settings.IMPL.name] = ...`),
so that no variable can appear, or change its meaning, without showing up here and in the README's
table, which `make figures` generates from VARIABLES. grader/instructor/tests/test_settings.py
checks both: no other module of grader/ names an FA_* variable, and the README's table is current.

FA_AUTOTUNE is listed for the table only: the Phase 5 kernels read it themselves, because solutions/
and exercises/ never import the grader.
"""
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Variable:
    name: str
    default: str | None  # None: unset, and no value stands in for it
    who: str             # who sets it
    purpose: str         # one line for the README's table

    def get(self) -> str | None:
        """The value in the environment, or the default."""
        return os.environ.get(self.name, self.default)

    def is_set(self) -> bool:
        """Set to something other than the empty string."""
        return bool(os.environ.get(self.name))


STUDENT, INSTRUCTOR, AUTHOR, INTERNAL = "anyone", "instructor", "course author", "internal"

IMPL = Variable("FA_IMPL", "exercises", INTERNAL,
                "the tree a grading run grades: exercises, solutions or a submission folder (`make grade IMPL=...` "
                "sets it for the grader's processes)")
SEED = Variable("FA_GRADER_SEED", None, INSTRUCTOR,
                "a secret seed for the inputs and the hidden cases' shapes (unset: the public seed 0); reports show "
                "`secret`, never the value")
ISOLATE = Variable("FA_ISOLATE", "1", STUDENT,
                   "`0` grades in one process (for a debugger), where a crash ends the run; otherwise each test runs "
                   "in a child process that may crash alone")
BOUNDS_CHECK = Variable("FA_BOUNDS_CHECK", "1", STUDENT,
                        "`0` turns off the interpreter's check of loads and stores outside the tensors a kernel was "
                        "given")
SKIP_THROUGHPUT = Variable("FA_SKIP_THROUGHPUT", None, STUDENT,
                           "any value skips the throughput tier on a GPU (correctness and memory only)")
FORCE_CPU = Variable("FA_FORCE_CPU", None, AUTHOR,
                     "`1` runs the interpreter tier on a machine with a GPU, as a laptop would")
WARM_SHARDS = Variable("FA_WARM_SHARDS", None, STUDENT,
                       "GPU warm-up that compiles the kernels in parallel processes before grading: `0` turns it off, "
                       "`K` forces K processes even when the cache is known to be warm (unset: automatic)")
GRADE_TIMEOUT = Variable("FA_GRADE_TIMEOUT", "900", INSTRUCTOR,
                         "seconds each submission may take in `make grade-all` (TIMEOUT=... overrides it)")
NOTEBOOK_TIMEOUT = Variable("FA_NOTEBOOK_TIMEOUT", "1800", INSTRUCTOR,
                            "seconds one grading run may take in an nbgrader notebook's test cell")
MEASURE_DEADLINE = Variable("FA_MEASURE_DEADLINE", "inf", AUTHOR,
                            "a wall-clock deadline (seconds since the epoch) at which `make measure`'s sweeps stop, "
                            "keeping what they measured")
NBGRADER_PHASES = Variable("FA_NBGRADER_PHASES", None, AUTHOR,
                           "the phases the course's nbgrader round-trip test builds, e.g. `0,1` (unset: every phase)")
AUTOTUNE = Variable("FA_AUTOTUNE", None, STUDENT,
                    "`1` lets Triton autotune Phase 5's forward on a GPU instead of the pinned configuration "
                    "(read by the kernel code, solutions/phase5/forward.py)")
CRASH_LOG = Variable("FA_CRASH_LOG", None, INTERNAL,
                     "the file where a grading child process writes the Python traceback of a crash "
                     "(faulthandler), from which the grader names the kernel line")
BENCH_PHASE = Variable("FA_BENCH_PHASE", "3", INTERNAL, "the phase `make bench` times (set from PHASE)")
WORKER_USER = Variable("FA_WORKER_USER", None, INSTRUCTOR,
                       "a user name: a grading run started as root runs the graded code (the worker) as that user, "
                       "who cannot read what it is not given (see the instructors' guide)")
RING_TIMEOUT = Variable("FA_RING_TIMEOUT", "90", STUDENT,
                        "seconds a process of Phase 7's ring-attention test waits for its neighbours before it "
                        "gives up (a send or receive that never matches)")

VARIABLES = (IMPL, SEED, ISOLATE, BOUNDS_CHECK, SKIP_THROUGHPUT, FORCE_CPU, WARM_SHARDS, GRADE_TIMEOUT,
             NOTEBOOK_TIMEOUT, MEASURE_DEADLINE, NBGRADER_PHASES, AUTOTUNE, CRASH_LOG, BENCH_PHASE, WORKER_USER,
             RING_TIMEOUT)


def table() -> str:
    """The README's table of the variables (Markdown)."""
    lines = ["| variable | default | set by | what it does |", "|---|---|---|---|"]
    lines += [f"| `{v.name}` | {'unset' if v.default is None else f'`{v.default}`'} | {v.who} | {v.purpose} |"
              for v in VARIABLES]
    return "\n".join(lines) + "\n"
