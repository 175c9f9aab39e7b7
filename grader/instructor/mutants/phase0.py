"""Phase 0 mutants: naive attention, the cost model, the Triton softmax."""
from grader.instructor.mutants import Mutant

REF, COST, SOFTMAX = "phase0/reference.py", "phase0/cost.py", "phase0/softmax.py"

MUTANTS = [
    # ---------------------------------------------------------------- attention_reference
    Mutant("p0-ref-no-scale", REF,
           (("s = (q32 @ k32.transpose(-2, -1)) * sm_scale", "s = (q32 @ k32.transpose(-2, -1))"),),
           "scores not multiplied by sm_scale"),
    Mutant("p0-ref-divides-by-scale", REF,
           (("s = (q32 @ k32.transpose(-2, -1)) * sm_scale", "s = (q32 @ k32.transpose(-2, -1)) / sm_scale"),),
           "scores divided by sm_scale (= multiplied by sqrt(D)) instead of multiplied"),
    Mutant("p0-ref-causal-sees-next-key", REF,
           (("dtype=torch.bool, device=q.device).triu(1)", "dtype=torch.bool, device=q.device).triu(2)"),),
           "causal mask off by one: query i also sees key i+1"),
    Mutant("p0-ref-causal-bottom-right", REF,
           (("dtype=torch.bool, device=q.device).triu(1)", "dtype=torch.bool, device=q.device).triu(n_k - n_q + 1)"),),
           "causal mask aligned bottom-right (flash-attn's convention) instead of SDPA's top-left"),
    Mutant("p0-ref-softmax-over-queries", REF,
           (("p = torch.softmax(s, dim=-1)", "p = torch.softmax(s, dim=-2)"),),
           "softmax normalizes over the queries (dim=-2) instead of the keys"),
    Mutant("p0-ref-float32-result", REF,
           (("return (p @ v32).to(q.dtype)", "return p @ v32"),),
           "returns float32 for float16 inputs (the cast back to q's dtype forgotten)"),
    # ---------------------------------------------------------------- attention_cost
    Mutant("p0-cost-causal-not-halved", COST,
           (("    if causal:\n        flops //= 2\n", ""),),
           "causal FLOPs not halved"),
    Mutant("p0-cost-naive-two-trips", COST,
           (("naive_bytes = fused_bytes + 4 * s_bytes", "naive_bytes = fused_bytes + 2 * s_bytes"),),
           "naive traffic counts S and P once each (write only), not written and read back"),
    Mutant("p0-cost-fused-forgets-o", COST,
           (("fused_bytes = dtype_bytes * 4 * B * H * N * D", "fused_bytes = dtype_bytes * 3 * B * H * N * D"),),
           "fused traffic counts q, k, v but not the output o"),
    # ---------------------------------------------------------------- softmax
    Mutant("p0-softmax-no-max-subtraction", SOFTMAX,
           (("e = tl.exp(x - tl.max(x, axis=0))", "e = tl.exp(x)"),),
           "exp(x) without subtracting the row max: overflows for large logits"),
    Mutant("p0-softmax-pads-with-zero", SOFTMAX,
           (("x = tl.load(x_row + cols, mask=cols < n_cols, other=-float(\"inf\")).to(tl.float32)",
             "x = tl.load(x_row + cols, mask=cols < n_cols, other=0.0).to(tl.float32)"),),
           "padded lanes of a short row load 0 instead of -inf, so exp(0 - max) joins the sum"),
    Mutant("p0-softmax-wide-no-division", SOFTMAX,
           (("y = tl.exp(x.to(tl.float32) - row_max) / row_sum", "y = tl.exp(x.to(tl.float32) - row_max)"),),
           "wide rows: exp(x - max) written without dividing by the sum"),
    Mutant("p0-softmax-wide-sum-restarts", SOFTMAX,
           (("        total = tl.zeros([BLOCK], tl.float32)\n        for start in range(0, n_cols, BLOCK):\n"
             "            x = tl.load(x_row + start + cols, mask=start + cols < n_cols, other=-float(\"inf\"))\n"
             "            total += tl.exp(x.to(tl.float32) - row_max)",
             "        for start in range(0, n_cols, BLOCK):\n"
             "            total = tl.zeros([BLOCK], tl.float32)\n"
             "            x = tl.load(x_row + start + cols, mask=start + cols < n_cols, other=-float(\"inf\"))\n"
             "            total += tl.exp(x.to(tl.float32) - row_max)"),),
           "wide rows: the running sum is reset inside the loop, so only the last chunk is summed"),
    # ---------------------------------------------------------------- softmax: pointers and launch
    Mutant("p0-softmax-grid-one-program", SOFTMAX,
           (("softmax_kernel[(rows.shape[0],)](", "softmax_kernel[(1,)]("),),
           "the grid launches one program instead of one per row: only row 0 is written"),
    Mutant("p0-softmax-grid-over-width", SOFTMAX,
           (("softmax_kernel[(rows.shape[0],)](", "softmax_kernel[(rows.shape[1],)]("),),
           "the grid counts columns instead of rows (right only for a square input)"),
    Mutant("p0-softmax-y-with-x-stride", SOFTMAX,
           (("y_row = y_ptr + row * y_row_stride", "y_row = y_ptr + row * x_row_stride"),),
           "y's row pointer uses x's row stride (copy-paste): wrong whenever x's rows are further apart",
           killed_by="test_softmax[fp32-2x3x500-rows-apart] (added: no case had a row stride other than the width)"),
    Mutant("p0-softmax-stride-is-width", SOFTMAX,
           (("rows, y, n_cols, rows.stride(0), y.stride(0),", "rows, y, n_cols, n_cols, n_cols,"),),
           "the row stride is taken to be the row width: wrong for a view whose rows are further apart",
           killed_by="test_softmax[fp32-2x3x500-rows-apart] (added)"),
    Mutant("p0-softmax-block-not-power-of-two", SOFTMAX,
           (("block = min(triton.next_power_of_2(n_cols), MAX_BLOCK)", "block = min(n_cols, MAX_BLOCK)"),),
           "BLOCK = the row width, not a power of two: tl.arange refuses it"),
    Mutant("p0-softmax-always-one-block", SOFTMAX,
           (("ONE_BLOCK=n_cols <= block,", "ONE_BLOCK=True,"),),
           "ONE_BLOCK always True: rows wider than MAX_BLOCK keep only their first BLOCK values"),
    Mutant("p0-softmax-row-offset-int32", SOFTMAX,
           (("row = tl.program_id(0).to(tl.int64)", "row = tl.program_id(0)"),),
           "row * stride computed in int32: wraps around past element 2**31",
           where="gpu", tests="int64_offsets",
           killed_by="test_softmax_int64_offsets (added)"),
]
