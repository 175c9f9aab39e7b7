"""Phase 1 mutants: tiled scores, the three-sweep tile softmax, tiled P v."""
from grader.instructor.mutants import Mutant

SCORES, ATTN = "phase1/scores.py", "phase1/attention.py"

MUTANTS = [
    # ---------------------------------------------------------------- scores_kernel
    Mutant("p1-scores-no-scale", SCORES,
           (("s = tl.dot(q, kT, input_precision=PRECISION) * sm_scale  #",
             "s = tl.dot(q, kT, input_precision=PRECISION)  #"),),
           "scores not multiplied by sm_scale"),
    Mutant("p1-scores-k-masked-by-nq", SCORES,
           (("mask=offs_n[None, :] < N_K, other=0.0)", "mask=offs_n[None, :] < N_Q, other=0.0)"),),
           "key rows masked against N_Q instead of N_K (right whenever Nq == Nk)"),
    Mutant("p1-scores-k-with-q-strides", SCORES,
           (("k_ptr += off_b * stride_kb + off_h * stride_kh", "k_ptr += off_b * stride_qb + off_h * stride_qh"),),
           "k's batch/head offset computed with q's strides (copy-paste)"),
    Mutant("p1-scores-stores-rows-past-nq", SCORES,
           (("mask = (offs_m[:, None] < N_Q) & (offs_n[None, :] < N_K)", "mask = offs_n[None, :] < N_K"),),
           "S stored without the query-row mask: rows past N_Q written past the tensor's end",
           killed_by="the interpreter's bounds check (grader/bounds.py)"),
    Mutant("p1-scores-grid-drops-last-tile", SCORES,
           (("grid = (triton.cdiv(Nq, BLOCK_M), triton.cdiv(Nk, BLOCK_N), B * H)",
             "grid = (Nq // BLOCK_M, triton.cdiv(Nk, BLOCK_N), B * H)"),),
           "launch grid rounds Nq down: the last, partial query tile is never computed"),
    # ---------------------------------------------------------------- softmax_tiles_kernel
    Mutant("p1-softmax-sum-pads-with-zero", ATTN,
           (("s = tl.load(s_rows + start_n + cols[None, :], mask=mask, other=-float(\"inf\"))\n"
             "        l_i += tl.sum(",
             "s = tl.load(s_rows + start_n + cols[None, :], mask=mask, other=0.0)\n"
             "        l_i += tl.sum("),),
           "the sum sweep pads keys past N_K with 0 instead of -inf: exp(0 - m) joins the sum"),
    Mutant("p1-softmax-no-max-subtraction", ATTN,
           (("l_i += tl.sum(tl.exp(s - m_i[:, None]), axis=1)", "l_i += tl.sum(tl.exp(s), axis=1)"),
            ("p = tl.exp(s - m_i[:, None]) / l_i[:, None]", "p = tl.exp(s) / l_i[:, None]")),
           "exp(s) without subtracting the row max: overflows for large scores",
           killed_by="test_tiled_attention_attention_sink (added: the phase had no score past exp's range)"),
    Mutant("p1-softmax-no-division", ATTN,
           (("p = tl.exp(s - m_i[:, None]) / l_i[:, None]", "p = tl.exp(s - m_i[:, None])"),),
           "P = exp(s - m) stored without dividing by the row sum"),
    Mutant("p1-softmax-max-not-running", ATTN,
           (("m_i = tl.maximum(m_i, tl.max(s, axis=1))", "m_i = tl.max(s, axis=1)"),),
           "the max sweep keeps the last key tile's max, not the running max: exp(s - m) overflows "
           "when an earlier tile holds a much larger score",
           killed_by="test_tiled_attention_attention_sink (added)"),
    # ---------------------------------------------------------------- pv_kernel
    Mutant("p1-pv-p-tail-unmasked", ATTN,
           (("mask=(offs_m[:, None] < N_Q) & (cols[None, :] < N_K), other=0.0)",
             "mask=offs_m[:, None] < N_Q, other=0.0)"),),
           "P tile loaded without the key mask: columns past N_K read the next row's probabilities"),
    Mutant("p1-pv-acc-overwritten", ATTN,
           (("acc += tl.dot(p, v, input_precision=PRECISION)", "acc = tl.dot(p, v, input_precision=PRECISION)"),),
           "acc = instead of acc += : only the last key tile counts"),
]
