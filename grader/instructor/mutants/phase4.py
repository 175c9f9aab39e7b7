"""Phase 4 mutants: the backward kernels and the autograd function."""
from grader.instructor.mutants import Mutant

BWD, AUTOGRAD = "phase4/backward.py", "phase4/attention.py"
# Kernel mutants are graded without the training test (`training_matches_sdpa`, most of Phase 4's
# interpreter time): a kernel bug shows in the gradient tests, which compare every gradient with
# float64. Mutants of the autograd function run every correctness test.
KERNEL_TESTS = "not training"

MUTANTS = [
    # ---------------------------------------------------------------- preprocess
    Mutant("p4-delta-from-do-do", BWD,
           (("delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)",
             "delta = tl.sum(do.to(tl.float32) * do.to(tl.float32), axis=1)"),),
           "delta = rowsum(dO * dO) instead of rowsum(dO * O)", tests=KERNEL_TESTS),
    Mutant("p4-lse-not-in-log2", BWD,
           (("tl.store(LSE2 + bh * N_Q + offs_m, lse * LOG2E, mask=in_q)",
             "tl.store(LSE2 + bh * N_Q + offs_m, lse, mask=in_q)"),),
           "lse passed on in natural-log units while the kernels use exp2", tests=KERNEL_TESTS),
    Mutant("p4-delta-one-head-only", BWD,
           (("tl.store(DELTA + bh * N_Q + offs_m, delta, mask=in_q)", "tl.store(DELTA + offs_m, delta, mask=in_q)"),),
           "delta stored without the (batch, head) offset", tests=KERNEL_TESTS),
    # ---------------------------------------------------------------- dK, dV
    Mutant("p4-dkdv-sign-of-ds", BWD,
           (("dsT = pT * (dpT - delta[None, :])", "dsT = pT * (delta[None, :] - dpT)"),),
           "dS^T = P^T (delta - dP^T): the sign of dS flipped in the dK/dV kernel", tests=KERNEL_TESTS),
    Mutant("p4-dk-not-scaled", BWD,
           (("    dk *= sm_scale  # S = sm_scale * q k^T, so dK = sm_scale * dS^T q\n", ""),),
           "dK not multiplied by sm_scale", tests=KERNEL_TESTS),
    Mutant("p4-dkdv-no-causal-mask", BWD,
           (("            pT = tl.where(offs_n[:, None] <= offs_m[None, :], pT, 0.0)\n", "            pT = pT\n"),),
           "causal: the diagonal block of the dK/dV kernel is not masked", tests=KERNEL_TESTS),
    Mutant("p4-dkdv-mask-off-by-one", BWD,
           (("pT = tl.where(offs_n[:, None] <= offs_m[None, :], pT, 0.0)",
             "pT = tl.where(offs_n[:, None] < offs_m[None, :], pT, 0.0)"),),
           "causal off by one in the dK/dV kernel: key n hidden from query m = n", tests=KERNEL_TESTS),
    Mutant("p4-dv-before-mask", BWD,
           (("        if MASK:  # the diagonal block: causal, key n is visible to query m only when n <= m\n"
             "            pT = tl.where(offs_n[:, None] <= offs_m[None, :], pT, 0.0)\n"
             "        dv += tl.dot(pT.to(do.dtype), do, input_precision=PRECISION)\n",
             "        dv += tl.dot(pT.to(do.dtype), do, input_precision=PRECISION)\n"
             "        if MASK:  # the diagonal block: causal, key n is visible to query m only when n <= m\n"
             "            pT = tl.where(offs_n[:, None] <= offs_m[None, :], pT, 0.0)\n"),),
           "dV accumulated from P^T before the causal mask is applied", tests=KERNEL_TESTS),
    Mutant("p4-dkdv-diagonal-skipped", BWD,
           (("        dk, dv = _dkdv_inner(dk, dv, k, v, Q, DO, LSE2, DELTA, stride_qn, stride_don,\n"
             "                             start_n, start_n, start_n + BLOCK_N, N_Q, qk_scale,\n"
             "                             HEAD_DIM, MASK_BLOCK_M, BLOCK_N, True, PRECISION)\n", ""),),
           "causal: the dK/dV kernel skips the diagonal block of queries", tests=KERNEL_TESTS),
    Mutant("p4-dkdv-diagonal-twice", BWD,
           (("        lo = start_n + BLOCK_N", "        lo = start_n"),),
           "causal: the unmasked sweep starts at the diagonal again, counting it twice", tests=KERNEL_TESTS),
    Mutant("p4-dkdv-last-query-block-skipped", BWD,
           (("start_n, lo, N_Q, N_Q, qk_scale,", "start_n, lo, N_Q // BLOCK_M * BLOCK_M, N_Q, qk_scale,"),),
           "the dK/dV kernel's query sweep stops at the last whole block", tests=KERNEL_TESTS),
    # ---------------------------------------------------------------- dQ
    Mutant("p4-dq-sign-of-ds", BWD,
           (("ds = p * (dp - delta[:, None])", "ds = p * (delta[:, None] - dp)"),),
           "dS = P (delta - dP): the sign of dS flipped in the dQ kernel", tests=KERNEL_TESTS),
    Mutant("p4-dq-not-scaled", BWD,
           (("    dq *= sm_scale  # dQ = sm_scale * dS k\n", ""),),
           "dQ not multiplied by sm_scale", tests=KERNEL_TESTS),
    Mutant("p4-dq-scaled-by-qk-scale", BWD,
           (("    dq *= sm_scale  # dQ = sm_scale * dS k\n", "    dq *= qk_scale\n"),),
           "dQ multiplied by qk_scale (sm_scale * log2 e) instead of sm_scale", tests=KERNEL_TESTS),
    Mutant("p4-dq-no-causal-mask", BWD,
           (("                keep = keep & (offs_n[None, :] <= offs_m[:, None])\n", "                keep = keep\n"),),
           "causal: the dQ kernel does not mask keys after the query", tests=KERNEL_TESTS),
    Mutant("p4-dq-last-key-block-skipped", BWD,
           (("        mid = n_k_full\n        hi = N_K", "        mid = n_k_full\n        hi = n_k_full"),),
           "non-causal: the dQ kernel stops at the last whole key block, the partial one is skipped",
           tests=KERNEL_TESTS),
    Mutant("p4-dq-causal-unmasked-past-diagonal", BWD,
           (("mid = tl.minimum(start_m, n_k_full)", "mid = n_k_full"),),
           "causal: the unmasked key sweep of dQ runs past the diagonal", tests=KERNEL_TESTS),
    Mutant("p4-dq-no-key-tail-mask", BWD,
           (("            keep = in_k\n            if CAUSAL:\n"
             "                keep = keep & (offs_n[None, :] <= offs_m[:, None])\n"
             "            p = tl.where(keep, p, 0.0)\n",
             "            if CAUSAL:\n                p = tl.where(offs_n[None, :] <= offs_m[:, None], p, 0.0)\n"),),
           "the dQ kernel masks only the causal diagonal, not the padded keys of its last, partial key block",
           tests=KERNEL_TESTS,
           killed_by="test_backward_strongly_negative_logits (issue 21: a padded key's p = exp(-lse) is harmless "
                     "times k = 0 until lse < -88 makes it inf, and inf * 0 = NaN)"),
    Mutant("p4-dq-lse-natural-log", BWD,
           (("p = tl.math.exp2(s * qk_scale - lse2[:, None])", "p = tl.math.exp(s * qk_scale - lse2[:, None])"),),
           "dQ kernel: exp instead of exp2 when recomputing P in log2 units", tests=KERNEL_TESTS),
    # ---------------------------------------------------------------- the autograd function
    Mutant("p4-autograd-saves-p", AUTOGRAD,
           (("        ctx.save_for_backward(q, k, v, o, lse)\n",
             "        from ..phase1 import tiled_scores\n"
             "        ctx.save_for_backward(q, k, v, o, lse, tiled_scores(q, k, sm_scale))\n"),
            ("        q, k, v, o, lse = ctx.saved_tensors\n", "        q, k, v, o, lse, _ = ctx.saved_tensors\n")),
           "the scores (an Nq x Nk tensor) saved for the backward"),
    Mutant("p4-autograd-drops-causal", AUTOGRAD,
           (("causal=ctx.causal, sm_scale=ctx.sm_scale)", "sm_scale=ctx.sm_scale)"),),
           "backward called without causal=: a causal forward gets a non-causal backward"),
    Mutant("p4-autograd-grads-swapped", AUTOGRAD,
           (("return dq, dk, dv, None, None", "return dk, dq, dv, None, None"),),
           "dq and dk returned in the wrong order"),
    Mutant("p4-autograd-drops-scale", AUTOGRAD,
           (("causal=ctx.causal, sm_scale=ctx.sm_scale)", "causal=ctx.causal)"),),
           "backward called without sm_scale=: right only for the default scale",
           killed_by="test_flash_attention_autograd_with_scale (added: every autograd case used the default scale)"),
    Mutant("p4-autograd-hides-p", AUTOGRAD,
           (("        ctx.save_for_backward(q, k, v, o, lse)\n",
             "        from ..phase1 import tiled_scores\n"
             "        ctx.save_for_backward(q, k, v, o, lse)\n"
             "        ctx.cache = [tiled_scores(q, k, sm_scale)]  # out of sight of saved_tensors\n"),),
           "the scores kept in the autograd context inside a list, out of sight of saved_tensors",
           killed_by="test_saves_no_n_by_n_tensor walking lists and objects of the context (added in bc2a858)"),
    # ---------------------------------------------------------------- GPU only
    # Memory that nothing in the autograd graph points to: only the GPU tier's memory test sees it.
    Mutant("p4-autograd-caches-s-globally", AUTOGRAD,
           (("        ctx.save_for_backward(q, k, v, o, lse)\n",
             "        from ..phase1 import tiled_scores\n"
             "        ctx.save_for_backward(q, k, v, o, lse)\n"
             "        _SCORES[id(ctx)] = tiled_scores(q, k, sm_scale)  # kept \"for the backward\"\n"),
            ("        q, k, v, o, lse = ctx.saved_tensors\n",
             "        q, k, v, o, lse = ctx.saved_tensors\n        _SCORES.pop(id(ctx), None)\n"),
            ("class FlashAttentionFunction(", "_SCORES = {}\n\n\nclass FlashAttentionFunction(")),
           "the scores cached in a module-level dict between forward and backward: memory grows as N^2",
           where="gpu", tiers=("gpu",), tests="memory_grows_linearly"),
]
