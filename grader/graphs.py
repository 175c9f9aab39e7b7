"""A call of the graded code captured in a CUDA graph, replayed and timed: how inference engines run a
decoding step (grader/phases/test_phase7.py). In the grading process the graph lives in the worker
(grader.remote.capture), next to the graded code; run by hand without a worker, here.

    captured = graphs.capture(api.flash_decode, q, k, v, seqlens)   # RuntimeError if it cannot be captured
    captured.out, captured.launches                                  # the output buffer, kernels captured
    o = captured.replay({0: new_q, 3: new_lengths})                  # new values in the same buffers
    ms = captured.median_ms()                                        # replays timed (advisory in a worker)
"""
from grader import remote, timing


class _Here:
    """The same interface in this process (no worker)."""

    def __init__(self, fn, args, kwargs):
        from grader import honesty

        self.args, self.kwargs = list(args), dict(kwargs)
        with honesty.record_launches() as kernels:
            self.graph, self.out = timing.capture_graph(lambda: fn(*self.args, **self.kwargs))
        self.launches = len(kernels)

    def replay(self, updates=None):
        import torch

        for key, value in (updates or {}).items():
            (self.args[key] if isinstance(key, int) else self.kwargs[key]).copy_(value)
        self.graph.replay()
        torch.cuda.synchronize()
        return self.out

    def median_ms(self, warmup_ms: int = 25, rep_ms: int = 100) -> float:
        return timing.median_ms(self.graph.replay, warmup_ms, rep_ms)


def capture(fn, *args, **kwargs):
    if remote.active() and isinstance(fn, remote.Remote):
        return remote.capture(fn, args, kwargs)
    return _Here(fn, args, kwargs)
