# Generated from solutions/phase7/ring.py by `make exercises`: fill in the TODOs below.
# Regenerating never overwrites a file you have edited (unless forced).
"""Ring attention: sequence parallelism over a torch.distributed process group.

W ranks each hold a contiguous slice of the sequence: rank r holds queries, keys and values of
positions r * n .. (r + 1) * n - 1 (every rank the same n). Attention needs every query against every
key, so the K/V slices travel round the ring: at step t, rank r holds the slice of rank
(r - t) mod W, computes its block of attention with Phase 7's kernels, and meanwhile already sends
that slice on to rank r + 1 and receives the next from rank r - 1 (communication overlaps
computation). The partial results of the blocks merge exactly through their logsumexps (Phase 3's
`merge_partials`), so after W steps each rank has the attention of its queries over the whole
sequence, and no rank ever held more than two K/V slices.

Causal: the block of rank r's queries against rank s's keys is whole (s < r), the local causal
triangle (s == r, the kernels' own top-left mask) or invisible (s > r, skipped; its K/V still passes on).

The backward runs the same ring. dQ stays with its rank; the dK and dV of a slice are sums over every
rank's queries, so they travel round the ring with their K/V, each rank adding its block's share, and
after W steps (one hop more than the K/V) they are back with the slice's owner.
"""
import torch

from ..phase3 import merge_partials
from .backward import attention_backward
from .forward import attention_forward
from .options import attention_options


class _Ring:
    """The neighbours of this rank in `group` and non-blocking transfers between them.

    gloo sends CPU tensors only: CUDA tensors travel through host memory there (NCCL sends them directly).
    """

    def __init__(self, group, device):
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("ring_attention needs torch.distributed initialized (dist.init_process_group) on "
                               "every rank of the group")
        self.dist, self.group = dist, group
        whole = group if group is not None else dist.group.WORLD
        self.size, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.next = dist.get_global_rank(whole, (self.rank + 1) % self.size)
        self.prev = dist.get_global_rank(whole, (self.rank - 1) % self.size)
        self.staged = device.type == "cuda" and dist.get_backend(group) == "gloo"
        self.device = device
        self.tag = 0

    def pass_on(self, tensors):
        """Start sending `tensors` to the next rank and receiving as many of the same shapes from the
        previous one; `.wait()` on the result returns the received tensors."""
        return _Transfer(self, [t.contiguous() for t in tensors])


class _Transfer:
    def __init__(self, ring, tensors):
        dist, self.ring = ring.dist, ring
        self.requests, self.received, self.sent = [], [], []
        for t in tensors:
            ring.tag += 1
            outgoing = t.cpu() if ring.staged else t
            incoming = torch.empty_like(outgoing)
            # Posted together, sends and receives in the same order on every rank: no deadlock.
            self.requests.append(dist.isend(outgoing, ring.next, group=ring.group, tag=ring.tag))
            self.requests.append(dist.irecv(incoming, ring.prev, group=ring.group, tag=ring.tag))
            self.received.append(incoming)
            self.sent.append(outgoing)  # kept alive until the send completes

    def wait(self):
        for request in self.requests:
            request.wait()
        return [t.to(self.ring.device) if self.ring.staged else t for t in self.received]


def ring_forward(q, k, v, causal, ring):
    """(o, lse) of this rank's queries against the whole sequence's keys: o in q's dtype, lse float32."""
    opts = {c: attention_options(q, k, v, causal=c) for c in (False, True)}
    o = lse = None
    k_cur, v_cur = k, v
    # TODO(phase 7, ring-forward): W steps: compute on the K/V slice held while the next one travels
    # Contract: at step t this rank holds the K/V slice of rank (rank - t) mod W; the next slice is already on
    # its way (ring.pass_on, waited on after the block's computation); a block that no query here may see
    # (causal, a later rank's keys) costs no kernel; the diagonal block is causal; the blocks' partial (o, lse)
    # (float32 o from `attention_forward(..., out_dtype=torch.float32)`) merge through merge_partials.
    raise NotImplementedError("phase 7: W steps: compute on the K/V slice held while the next one travels")
    return o.to(q.dtype), lse


def ring_backward(do, q, k, v, o, lse, causal, ring):
    """(dq, dk, dv) of this rank's slices: dq from every key slice, dk and dv from every rank's queries."""
    opts = {c: attention_options(q, k, v, causal=c) for c in (False, True)}
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    k_cur, v_cur = k, v
    # TODO(phase 7, ring-backward): W steps of the ring again; dK/dV travel with their K/V back to the owner
    # Contract: dq sums the blocks of every key slice this rank's queries see; the float32 (dk, dv) of a slice
    # sum the blocks of every rank's queries, each rank adding its share as the pair passes through, and end
    # with the slice's owner (after one more hop than the K/V). Same blocks as the forward (skipped, causal
    # diagonal, whole); each block's gradients from `attention_backward` with the global o and lse.
    raise NotImplementedError("phase 7: W steps of the ring again; dK/dV travel with their K/V back to the owner")
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class RingAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, ring):
        o_lse = ring_forward(q, k, v, causal, ring)
        ctx.save_for_backward(q, k, v, *o_lse)  # o and lse: this rank's slices only, O(n * D)
        ctx.causal, ctx.ring = causal, ring
        return o_lse[0]

    @staticmethod
    def backward(ctx, do):
        grads = ring_backward(do, *ctx.saved_tensors, ctx.causal, ctx.ring)
        return (*grads, None, None)  # causal and the ring get no gradient


def ring_attention(q, k, v, causal=False, group=None):
    """Attention over a sequence split across the ranks of a torch.distributed group, differentiable.

    Every rank calls it with its own slice: q (B, H, n, D), k and v (B, H_kv, n, D), the positions
    rank * n .. rank * n + n - 1 of the sequence (same n on every rank; H_kv dividing H as in
    `flash_attention`). causal: top-left over the whole sequence (query position i sees keys <= i).
    Returns this rank's o (B, H, n, D); the gradients of q, k and v are this rank's slices'.
    group=None: the default process group (gloo or NCCL; with gloo, CUDA tensors travel through host memory).
    """
    attention_options(q, k, v, causal)
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"ring_attention: q ({q.shape[2]} rows) and k ({k.shape[2]} rows) must hold the same "
                         "positions of the sequence on each rank")
    return RingAttentionFunction.apply(q, k, v, causal, _Ring(group, q.device))
