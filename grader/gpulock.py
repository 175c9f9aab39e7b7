"""One GPU, several gradings at once: a readers-writer lock between processes.

`make check-solutions` grades every phase at the same time on a GPU machine (compiling is CPU work
and the machine has many cores). Correctness tests may share the machine; a timing may not: a kernel
timed while another process's kernels run beside it would measure the other process too, and a
wrapper whose Python runs before its kernels (the host is part of the call) would be timed on a
CPU busy compiling for someone else. So every test of every grading holds this lock shared
(grader.plugin), except the throughput tests, whose timings hold it exclusively
(grader.timing.median_ms): the student's kernel and the PyTorch baseline it is compared with are
each timed with the GPU, and the other gradings' tests, paused. A timing waits until no test holds
the lock (flock favours neither side, so it may wait until the other gradings' correctness tests
are done: the throughput tests then run one after another at the end).

`flock` on one file per user: every process on the machine sees it, and the kernel releases it when
its holder dies, so a crashed test never leaves the GPU locked. A single grading takes the lock
without ever waiting for it.
"""
import contextlib
import fcntl
import os
import tempfile


def path() -> str:
    return os.path.join(tempfile.gettempdir(), f"fa-course-gpu-{os.getuid()}.lock")


@contextlib.contextmanager
def hold(exclusive: bool):
    fd = os.open(path(), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
