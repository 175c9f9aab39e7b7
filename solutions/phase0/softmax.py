"""Row-wise softmax in Triton, for any row width: the memory-bound building block of attention."""
import torch
import triton
import triton.language as tl

from .checks import check_float_tensor, check_triton_device

# Widest row kept whole in registers. 8192 float32 values over 8 warps is 32 per thread; wider
# rows are streamed through in chunks of this size instead of spilling.
MAX_BLOCK = 8192


@triton.jit
def softmax_kernel(x_ptr, y_ptr, n_cols, x_row_stride, y_row_stride,
                   BLOCK: tl.constexpr, ONE_BLOCK: tl.constexpr):
    # TODO(phase 0, row-pointers): this program's row: pointers to its first element in x and in y, and the lane offsets
    # Contract: program i of grid axis 0 owns row i; x_row and y_row point at element 0 of that row (rows
    # are x_row_stride and y_row_stride elements apart, which need not be equal); cols = 0 .. BLOCK-1.
    # Invariant: the row offset is computed in int64 (row * stride passes 2**31 on a large tensor).
    ### BEGIN SOLUTION
    row = tl.program_id(0).to(tl.int64)  # int64 before the multiply, or the product wraps in int32
    x_row = x_ptr + row * x_row_stride
    y_row = y_ptr + row * y_row_stride
    cols = tl.arange(0, BLOCK)
    ### END SOLUTION
    if ONE_BLOCK:
        # TODO(phase 0, one-block): softmax of one row that fits in a block
        # Contract: y = softmax(x) of this row, stored in y's dtype; lanes past n_cols are neither counted
        # nor stored. Invariant: no exponent above 0 (so nothing overflows), arithmetic in float32.
        ### BEGIN SOLUTION
        # Padding with -inf makes the padded lanes vanish: exp(-inf - m) = 0 adds nothing to the sum.
        x = tl.load(x_row + cols, mask=cols < n_cols, other=-float("inf")).to(tl.float32)
        e = tl.exp(x - tl.max(x, axis=0))  # subtracting the max keeps exp from overflowing
        y = e / tl.sum(e, axis=0)
        tl.store(y_row + cols, y.to(y_ptr.dtype.element_ty), mask=cols < n_cols)
        ### END SOLUTION
    else:
        # TODO(phase 0, three-sweeps): softmax of a row wider than a block, streamed in chunks of BLOCK
        # Contract: as the one-block case, without ever holding the whole row; each sweep reads the row
        # once, chunk by chunk (this version may read it three times).
        ### BEGIN SOLUTION
        # Three reads of the row: Phase 2's online softmax fuses the first two.
        m = tl.full([BLOCK], -float("inf"), tl.float32)
        for start in range(0, n_cols, BLOCK):
            x = tl.load(x_row + start + cols, mask=start + cols < n_cols, other=-float("inf"))
            m = tl.maximum(m, x.to(tl.float32))
        row_max = tl.max(m, axis=0)
        total = tl.zeros([BLOCK], tl.float32)
        for start in range(0, n_cols, BLOCK):
            x = tl.load(x_row + start + cols, mask=start + cols < n_cols, other=-float("inf"))
            total += tl.exp(x.to(tl.float32) - row_max)
        row_sum = tl.sum(total, axis=0)
        for start in range(0, n_cols, BLOCK):
            x = tl.load(x_row + start + cols, mask=start + cols < n_cols, other=-float("inf"))
            y = tl.exp(x.to(tl.float32) - row_max) / row_sum
            tl.store(y_row + start + cols, y.to(y_ptr.dtype.element_ty), mask=start + cols < n_cols)
        ### END SOLUTION


def as_rows(x):
    """`x` as a (rows, width) matrix with unit stride along each row, and an output like it.

    Shared by every row-wise kernel of the course (Phase 2's online softmax too): softmax runs over
    the last dimension of any shape, and a non-contiguous row is copied once so the kernel can
    walk it with stride 1.
    """
    check_float_tensor(x, "x")
    check_triton_device(x, "x")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (softmax runs over the last one)")
    rows = x.reshape(-1, x.shape[-1])
    if rows.numel() and rows.stride(-1) != 1:
        rows = rows.contiguous()
    return rows, torch.empty_like(rows)


def softmax(x):
    """softmax over the last dimension of `x` (any shape, any width, float16/bfloat16/float32)."""
    rows, y = as_rows(x)  # checks x; rows: (n_rows, n_cols) with unit stride along a row; y: like rows
    if rows.numel() == 0:
        return y.reshape(x.shape)
    # TODO(phase 0, launch): choose BLOCK and launch softmax_kernel with one program per row of `rows`, writing y
    # Contract: BLOCK is a power of two (tl.arange needs one) and at most MAX_BLOCK; ONE_BLOCK is True
    # exactly when a whole row fits in one BLOCK; the kernel gets the row strides of rows and of y
    # (rows may be a view whose rows are further apart than n_cols). Invariant: every row of y is written.
    ### BEGIN SOLUTION
    n_cols = rows.shape[1]
    block = min(triton.next_power_of_2(n_cols), MAX_BLOCK)
    num_warps = 4 if block <= 1024 else 8 if block <= 4096 else 16  # about 32 values per thread
    softmax_kernel[(rows.shape[0],)](rows, y, n_cols, rows.stride(0), y.stride(0),
                                     BLOCK=block, ONE_BLOCK=n_cols <= block, num_warps=num_warps)
    ### END SOLUTION
    return y.reshape(x.shape)
