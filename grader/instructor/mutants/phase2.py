"""Phase 2 mutants: the online softmax and the first fused kernel."""
from grader.instructor.mutants import Mutant

ONLINE, FLASH = "phase2/online_softmax.py", "phase2/flash.py"

MUTANTS = [
    # ---------------------------------------------------------------- online_softmax
    Mutant("p2-online-no-rescale-l", ONLINE,
           (("l = l * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)",
             "l = l + tl.sum(tl.exp(x - m_new), axis=0)"),),
           "the running sum is not rescaled when the max grows"),
    Mutant("p2-online-no-max", ONLINE,
           (("l = l * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)", "l = l + tl.sum(tl.exp(x), axis=0)"),
            ("y = tl.exp(x - m) / l", "y = tl.exp(x) / l")),
           "no max subtraction at all: exp(x) overflows for large inputs"),
    Mutant("p2-online-max-not-updated", ONLINE,
           (("        m = m_new\n", ""),),
           "m_new computed but never stored back into m"),
    # ---------------------------------------------------------------- flash_attention_v1
    Mutant("p2-flash-no-acc-rescale", FLASH,
           (("        acc = acc * alpha[:, None]\n", ""),),
           "acc not rescaled by alpha when the running max grows"),
    Mutant("p2-flash-no-l-rescale", FLASH,
           (("l_i = l_i * alpha + tl.sum(p, axis=1)", "l_i = l_i + tl.sum(p, axis=1)"),),
           "l_i not rescaled by alpha when the running max grows"),
    Mutant("p2-flash-no-final-division", FLASH,
           (("    acc = acc / l_i[:, None]\n", ""),),
           "the final division by l_i is forgotten"),
    Mutant("p2-flash-exp-in-log2-units", FLASH,
           (("p = tl.math.exp2(qk - m_ij[:, None])", "p = tl.exp(qk - m_ij[:, None])"),),
           "exp where exp2 belongs: the scores are in log2 units (qk_scale includes log2(e))"),
    Mutant("p2-flash-scale-without-log2e", FLASH,
           (("flash_v1_kernel[grid](q, k, v, o, sm_scale * LOG2E,", "flash_v1_kernel[grid](q, k, v, o, sm_scale,"),),
           "exp2 in the kernel but the host passes sm_scale without the log2(e) factor"),
    Mutant("p2-flash-tail-keys-unmasked", FLASH,
           (("        if not EVEN_N:\n"
             "            qk = tl.where(start_n + offs_n[None, :] < N_K, qk, -float(\"inf\"))\n", ""),),
           "keys past N_K (loaded as 0) are not masked to -inf: each adds exp(0 - m) to l_i"),
    Mutant("p2-flash-max-not-updated", FLASH,
           (("        m_i = m_ij\n", ""),),
           "m_i never updated: every key tile is rescaled by exp2(-inf) = 0, only the last one counts"),
    Mutant("p2-flash-alpha-inverted", FLASH,
           (("alpha = tl.math.exp2(m_i - m_ij)", "alpha = tl.math.exp2(m_ij - m_i)"),),
           "alpha = exp2(m_new - m_old) instead of exp2(m_old - m_new)"),
    Mutant("p2-flash-stores-rows-past-nq", FLASH,
           (("acc.to(o_ptr.dtype.element_ty), mask=offs_m[:, None] < N_Q)", "acc.to(o_ptr.dtype.element_ty))"),),
           "o stored without the row mask: rows past N_Q written past the tensor's end",
           killed_by="the interpreter's bounds check (grader/bounds.py)"),
    # A block too small for tensor cores: the interpreter computes it right, the compiler refuses.
    Mutant("p2-flash-block-below-16", FLASH,
           (("CONFIGS = {16: (128, 64, 4, 3),", "CONFIGS = {16: (128, 8, 4, 3),"),),
           "BLOCK_N = 8 for D = 16: tl.dot needs at least 16 on every side when compiled",
           tiers=("compile",), tests="flash_kernel_compiles"),
]
