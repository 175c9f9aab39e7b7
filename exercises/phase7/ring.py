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
That leaves the last rank W blocks of work and rank 0 one. layout="zigzag" balances it: the sequence is
cut into 2W chunks and rank r holds chunks r and 2W-1-r, one early and one late; every block then costs
half a whole block (s != r) or the causal diagonal (s == r) on every rank. Which parts of a block to
compute is given code (`block_pieces`): each pair of a query chunk and a key chunk is compared by its
global chunk index (earlier key chunk: whole; the same chunk: causal; a later one: skipped).

The backward runs the same ring. dQ stays with its rank; the dK and dV of a slice are sums over every
rank's queries, so they travel round the ring with their K/V, each rank adding its block's share, and
after W steps (one hop more than the K/V) they are back with the slice's owner.
"""
import torch

from ..phase3 import merge_partials
from .backward import attention_backward
from .forward import attention_forward
from .options import attention_options

LAYOUTS = ("contiguous", "zigzag")


def check_layout(layout):
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def layout_chunks(rank, world, layout):
    """(chunk indices of the sequence this rank holds, in its slice's order; the number of chunks).
    contiguous: chunk r of W; zigzag: chunks r and 2W-1-r of 2W (ascending, since r < W <= 2W-1-r)."""
    check_layout(layout)
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in 0 .. {world - 1} for world={world}, got {rank}")
    return ((rank,), world) if layout == "contiguous" else ((rank, 2 * world - 1 - rank), 2 * world)


def shard_sequence(x, rank, world, layout="contiguous", dim=2):
    """This rank's slice of the full-sequence tensor x along `dim` (its chunks, concatenated in order)."""
    chunks, count = layout_chunks(rank, world, layout)
    if x.shape[dim] % count:
        raise ValueError(f"shard_sequence: a sequence of {x.shape[dim]} positions does not split into {count} "
                         f"equal chunks ({layout} layout, world={world})")
    size = x.shape[dim] // count
    return torch.cat([x.narrow(dim, c * size, size) for c in chunks], dim=dim)


def unshard_sequence(slices, layout="contiguous", dim=2):
    """The full sequence from every rank's slice (slices[r] from rank r), the inverse of shard_sequence."""
    world = len(slices)
    placed = {}
    for rank, part in enumerate(slices):
        chunks, count = layout_chunks(rank, world, layout)
        if part.shape[dim] % len(chunks):
            raise ValueError(f"unshard_sequence: rank {rank}'s slice of {part.shape[dim]} positions does not hold "
                             f"{len(chunks)} equal chunks ({layout} layout)")
        for c, piece in zip(chunks, part.chunk(len(chunks), dim=dim)):
            placed[c] = piece
    return torch.cat([placed[c] for c in range(count)], dim=dim)


def block_pieces(q_chunks, k_chunks, size, causal):
    """The parts of one ring block (queries of chunks q_chunks against keys of chunks k_chunks, `size`
    positions a chunk) that some query sees: a list of (query rows, key rows, diagonal), slices of the
    two local slices; diagonal means the kernels' top-left causal mask over the piece.

    Pairs of chunks compare by global chunk index: an earlier key chunk is seen whole, a later one not at
    all, the same chunk through the causal triangle. A rank's own block (the same ascending chunks) is
    one causal piece: local order is global order there. Other blocks share no chunk: each query chunk
    sees a run of whole key chunks, and query chunks seeing the same run become one piece."""
    whole = slice(None)
    if not causal:
        return [(whole, whole, False)]
    if tuple(q_chunks) == tuple(k_chunks):
        if list(q_chunks) != sorted(q_chunks):
            raise ValueError(f"block_pieces: the chunks {q_chunks} of a slice must ascend")
        return [(whole, whole, True)]
    pieces = []
    for i, a in enumerate(q_chunks):
        seen = [j for j, b in enumerate(k_chunks) if b < a]
        if not seen:
            continue
        if seen != list(range(seen[0], seen[-1] + 1)):
            raise ValueError(f"block_pieces: query chunk {a} sees key chunks {seen} of {k_chunks}: not one run")
        rows, cols = slice(i * size, (i + 1) * size), slice(seen[0] * size, (seen[-1] + 1) * size)
        if pieces and pieces[-1][1] == cols and pieces[-1][0].stop == rows.start:
            rows = slice(pieces.pop()[0].start, rows.stop)
        pieces.append((rows, cols, False))
    return pieces


class _Ring:
    """The neighbours of this rank in `group` and non-blocking transfers between them.

    gloo sends CPU tensors only: CUDA tensors travel through host memory there (NCCL sends them directly).
    """

    def __init__(self, group, device, layout="contiguous", n=1):
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
        self.layout, self.chunks_held = layout, len(layout_chunks(self.rank, self.size, layout)[0])
        self.chunk = n // self.chunks_held

    def pieces(self, owner, causal):
        """The parts of the block of this rank's queries against `owner`'s K/V slice to compute (see
        block_pieces): [(query rows, key rows, diagonal)], empty for a block no query sees."""
        return block_pieces(layout_chunks(self.rank, self.size, self.layout)[0],
                            layout_chunks(owner, self.size, self.layout)[0], self.chunk, causal)

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
    # Nothing seen yet: lse = -inf weighs 0 in merge_partials.
    o = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
    k_cur, v_cur = k, v
    # TODO(phase 7, ring-forward): W steps: compute on the K/V slice held while the next one travels
    # Contract: at step t this rank holds the K/V slice of rank (rank - t) mod W; the next slice is already on
    # its way (ring.pass_on, waited on after the block's computation); the block costs one kernel per piece of
    # ring.pieces(owner, causal) (query rows, key rows, diagonal: causal mask) and none when it has no piece;
    # each piece's partial (o, lse) (float32 o from `attention_forward(..., out_dtype=torch.float32)`) merges
    # into the rows of o and lse it covers through merge_partials.
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
    # with the slice's owner (after one more hop than the K/V). Same pieces as the forward
    # (ring.pieces(owner, causal)), each piece's gradients from `attention_backward` on its query rows (do, o,
    # lse included) and key rows, added into those rows only.
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


def ring_attention(q, k, v, causal=False, group=None, layout="contiguous"):
    """Attention over a sequence split across the ranks of a torch.distributed group, differentiable.

    Every rank calls it with its own slice: q (B, H, n, D), k and v (B, H_kv, n, D) (same n on every rank;
    H_kv dividing H as in `flash_attention`). layout="contiguous": rank r holds positions r * n .. r * n + n - 1;
    layout="zigzag": the sequence is cut into 2W chunks of n / 2 and rank r holds chunks r and 2W-1-r,
    concatenated (n even), which balances causal work. `shard_sequence` and `unshard_sequence` cut and join
    a full sequence for either layout. causal: top-left over the whole sequence (query position i sees keys
    <= i, in global positions). Returns this rank's o (B, H, n, D); the gradients of q, k and v are this
    rank's slices'. group=None: the default process group (gloo or NCCL; with gloo, CUDA tensors travel
    through host memory).
    """
    check_layout(layout)
    attention_options(q, k, v, causal)
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"ring_attention: q ({q.shape[2]} rows) and k ({k.shape[2]} rows) must hold the same "
                         "positions of the sequence on each rank")
    if layout == "zigzag" and q.shape[2] % 2:
        raise ValueError(f"ring_attention: layout='zigzag' holds two equal chunks per rank, so the slice length "
                         f"must be even, got {q.shape[2]}")
    return RingAttentionFunction.apply(q, k, v, causal, _Ring(group, q.device, layout, q.shape[2]))
