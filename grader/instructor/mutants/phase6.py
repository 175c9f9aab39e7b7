"""Phase 6 mutants: the dropout mask, where 1/(1-p) enters, and the varlen offsets."""
from grader.instructor.mutants import Mutant

DROPOUT, FWD, BWD = "phase6/dropout.py", "phase6/forward.py", "phase6/backward.py"
# Kernel mutants skip the compile and throughput tiers (CORRECTNESS_TIERS, the default).
DROPOUT_TESTS = "dropout or mask or seed or kept"
VARLEN_TESTS = "varlen"

MUTANTS = [
    Mutant("p6-dq-no-key-tail-mask", BWD,
           (("            keep = in_k\n            if CAUSAL:\n"
             "                keep = keep & (offs_n[None, :] <= offs_m[:, None])\n"
             "            p = tl.where(keep, p, 0.0)\n",
             "            if CAUSAL:\n                p = tl.where(offs_n[None, :] <= offs_m[:, None], p, 0.0)\n"),),
           "the varlen dQ kernel masks only the causal diagonal, not the padded keys of its last key block",
           tests=VARLEN_TESTS,
           killed_by="test_varlen_backward_strongly_negative_logits (issue 21: exp(-lse) = inf when lse < -88)"),
    # ---------------------------------------------------------------- the mask
    Mutant("p6-backward-redraws-mask", BWD,
           (("keepT = dropout_keep(seed, bh, offs_m[None, :], offs_n[:, None], MAX_Q, MAX_K, dropout_p)",
             "keepT = dropout_keep(seed + 1, bh, offs_m[None, :], offs_n[:, None], MAX_Q, MAX_K, dropout_p)"),),
           "the dK/dV kernel draws a fresh mask (another seed) instead of the forward's", tests=DROPOUT_TESTS),
    Mutant("p6-dq-mask-not-transposed", BWD,
           (("kept = dropout_keep(seed, bh, offs_m[:, None], offs_n[None, :], MAX_Q, MAX_K, dropout_p)",
             "kept = dropout_keep(seed, bh, offs_n[None, :], offs_m[:, None], MAX_Q, MAX_K, dropout_p)"),),
           "the dQ kernel swaps rows and columns of the mask's counter", tests=DROPOUT_TESTS),
    Mutant("p6-mask-without-head", DROPOUT,
           (("counter = (bh.to(tl.int64) * MAX_Q + rows) * MAX_K + cols",
             "counter = (rows * MAX_K + cols).to(tl.int64)"),),
           "the counter leaves out the head: every head gets the same mask", tests=DROPOUT_TESTS),
    Mutant("p6-keeps-p-not-1-minus-p", DROPOUT,
           (("return tl.rand(seed, counter) >= dropout_p", "return tl.rand(seed, counter) < dropout_p"),),
           "keeps an element with probability p instead of 1 - p", tests=DROPOUT_TESTS),
    # ---------------------------------------------------------------- where 1/(1-p) enters
    Mutant("p6-forward-no-rescale", FWD,
           (("o = acc * ((1.0 / (1.0 - dropout_p)) / l_i)[:, None]", "o = acc / l_i[:, None]"),),
           "the forward forgets the survivors' 1/(1-p)", tests=DROPOUT_TESTS),
    Mutant("p6-dv-no-rescale", BWD,
           (("        dv *= 1.0 / (1.0 - dropout_p)  # P_drop = P * M / (1 - p): the scale of dV, once per key row\n",
             "        dv *= 1.0\n"),),
           "dV without 1/(1-p)", tests=DROPOUT_TESTS),
    Mutant("p6-ds-no-rescale", BWD,
           (("dpT = tl.where(keepT, dpT * (1.0 / (1.0 - dropout_p)), 0.0)", "dpT = tl.where(keepT, dpT, 0.0)"),),
           "dS in the dK/dV kernel without 1/(1-p)", tests=DROPOUT_TESTS),
    Mutant("p6-dq-ignores-mask", BWD,
           (("            dp = tl.where(kept, dp * (1.0 / (1.0 - dropout_p)), 0.0)\n",
             "            dp = dp\n"),),
           "the dQ kernel forgets dropout: dS from the undropped dP", tests=DROPOUT_TESTS),
    Mutant("p6-mask-before-row-sum", FWD,
           (("        l_i = l_i * alpha + tl.sum(p, 1)\n        acc = acc * alpha[:, None]\n",
             "        if DROPOUT:\n"
             "            p = tl.where(dropout_keep(seed, bh, offs_m[:, None], cols[None, :], MAX_Q, MAX_K, dropout_p),"
             " p, 0.0)\n"
             "        l_i = l_i * alpha + tl.sum(p, 1)\n        acc = acc * alpha[:, None]\n"),),
           "dropout applied to P before the row sum: the softmax renormalizes over the kept keys only",
           tests=DROPOUT_TESTS),
    # ---------------------------------------------------------------- varlen
    Mutant("p6-varlen-k-offset-off-by-one", FWD,
           (("    k_start = tl.load(CU_K + seq)\n    N_K = tl.load(CU_K + seq + 1) - k_start\n    if start_m",
             "    k_start = tl.load(CU_K + seq) + 1\n    N_K = tl.load(CU_K + seq + 1) - k_start\n    if start_m"),),
           "the forward starts each sequence's keys one row late", tests=VARLEN_TESTS),
    Mutant("p6-varlen-q-length-from-k", BWD,
           (("    N_Q = tl.load(CU_Q + seq + 1) - q_start\n    k_start = tl.load(CU_K + seq)\n"
             "    N_K = tl.load(CU_K + seq + 1) - k_start\n    if start_n >= N_K:",
             "    N_Q = tl.load(CU_K + seq + 1) - tl.load(CU_K + seq)\n    k_start = tl.load(CU_K + seq)\n"
             "    N_K = tl.load(CU_K + seq + 1) - k_start\n    if start_n >= N_K:"),),
           "the dK/dV kernel takes the query length from cu_seqlens_k (right only when Nq = Nk)",
           tests=VARLEN_TESTS),
    Mutant("p6-causal-across-sequences", FWD,
           (("    q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=row_ok, other=0.0)\n",
             "    q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=row_ok, other=0.0)\n"
             "    offs_m = offs_m + q_start - k_start  # positions in the pack instead of in the sequence\n"),),
           "the causal mask compares positions in the pack, not in the sequence", tests=VARLEN_TESTS),
    Mutant("p6-dq-lse-without-offset", BWD,
           (("    lse2 = tl.load(LSE2 + h * TOTAL_Q + q_start + offs_m, mask=in_q, other=0.0)",
             "    lse2 = tl.load(LSE2 + h * TOTAL_Q + offs_m, mask=in_q, other=0.0)"),),
           "the dQ kernel reads lse at the row's index in its sequence, not in the pack", tests=VARLEN_TESTS),
]
