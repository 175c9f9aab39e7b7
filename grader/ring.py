"""One rank of Phase 7's ring-attention test (grader.distributed starts `world` of them).

Each rank runs the graded code (it imports the graded tree, like grader.worker, and gets the same
environment without the instructor's variables), so it lives here and not in the phase's grader,
whose hidden tests a rank must not import. Its results go back as tensors (torch.load with
weights_only in the grading process); the comparison with the references is made there.
"""
from grader import impl
from grader.honesty import HonestyError, _count_triton_launches, graded_call

PHASE = 7


def rank_main(rank, world, payload):
    """In each rank's process: its slices of q, k, v and dO through ring_attention, forward and backward,
    under the grader's honesty rules."""
    import torch

    if payload["device"] == "cuda":
        torch.cuda.set_device(0)
    api = impl.load(PHASE, payload["tree"])
    results = {}
    for name, case in payload["cases"].items():
        n = case["q"].shape[2] // world
        rows = slice(rank * n, (rank + 1) * n)
        q, k, v, do = (case[t][:, :, rows].to(payload["device"]) for t in ("q", "k", "v", "do"))

        def run(q, k, v, do):
            qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))
            o = api.ring_attention(qg, kg, vg, causal=case["causal"])
            return (o.detach(), *torch.autograd.grad(o, (qg, kg, vg), do))
        with _count_triton_launches() as launches:
            # The result is merged by PyTorch (merge_partials), so it is not required to come from a kernel
            # store; launching kernels, not calling torch's attention, softmax or matmul, leaving inputs
            # unchanged still are.
            out = graded_call(run, q, k, v, do, what="ring_attention", triton=False)
        if launches.count == 0:
            raise HonestyError("ring_attention launched no Triton kernel: the blocks must run on your kernels",
                               function="ring_attention")
        results[name] = [t.detach().cpu() for t in out]
    return results
