"""One rank of Phase 7's ring-attention test (grader.distributed starts `world` of them).

Each rank runs the graded code (it imports the graded tree, like grader.worker, and gets the same
environment without the instructor's variables), so it lives here and not in the phase's grader,
whose hidden tests a rank must not import. Its results go back as tensors (torch.load with
weights_only in the grading process); the comparison with the references is made there.

One process group serves every ring size: a case of `case["world"]` ranks runs on the last that many
ranks of the group (a subgroup from dist.new_group, so `group=` and the mapping of group ranks to
global ranks are exercised; a case as large as the group passes group=None). Which positions a rank
holds is computed here (`held_positions`), never by the graded code's own shard helpers.
"""
from grader import impl
from grader.honesty import HonestyError, _count_triton_launches, graded_call

PHASE = 7


def held_positions(n_total, rank, world, layout):
    """The sequence positions rank `rank` of `world` holds, in its slice's order. contiguous: one run of
    n_total / world; zigzag: chunks rank and 2 * world - 1 - rank of 2 * world equal chunks."""
    chunks, count = {"contiguous": ((rank,), world), "zigzag": ((rank, 2 * world - 1 - rank), 2 * world)}[layout]
    assert n_total % count == 0, f"{n_total} positions do not split into {count} chunks"
    size = n_total // count
    return [c * size + i for c in chunks for i in range(size)]


def ring_ranks(world, ring_world):
    """The global ranks of a ring of `ring_world` ranks inside a group of `world`: the last ones."""
    return list(range(world - ring_world, world))


def rank_main(rank, world, payload):
    """In each rank's process: its slices of q, k, v and dO through ring_attention, forward and backward,
    under the grader's honesty rules."""
    import torch
    import torch.distributed as dist

    if payload["device"] == "cuda":
        torch.cuda.set_device(0)
    api = impl.load(PHASE, payload["tree"])
    # Every rank creates every subgroup, in the same order (dist.new_group is collective).
    sizes = sorted({case["world"] for case in payload["cases"].values()})
    groups = {w: (None if w == world else dist.new_group(ring_ranks(world, w))) for w in sizes}
    results = {}
    for name, case in payload["cases"].items():
        members = ring_ranks(world, case["world"])
        if rank not in members:
            continue
        rows = held_positions(case["q"].shape[2], members.index(rank), case["world"], case["layout"])
        q, k, v, do = (case[t][:, :, rows].to(payload["device"]) for t in ("q", "k", "v", "do"))
        options = {"causal": case["causal"], "group": groups[case["world"]]}
        if case["layout"] != "contiguous":  # the default layout is also graded through the default argument
            options["layout"] = case["layout"]

        def run(q, k, v, do):
            qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))
            o = api.ring_attention(qg, kg, vg, **options)
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
