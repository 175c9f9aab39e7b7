"""Phase 5 mutants: the phase skipped behind its names, and the tuned kernel's own bugs.

Phase 5's kernels compute what Phases 3 and 4 compute, so its characteristic "bug" is not doing the
phase: grading the previous phase's kernels under Phase 5's names, or dropping what the phase adds
(descriptors, pinned configurations). Those are correct answers; only the checks of what the graded
calls launch (and, on a GPU, the throughput against the student's own Phases 3 and 4) catch them.
"""
from grader.instructor.mutants import Mutant

FWD, BWD, AUTOGRAD = "phase5/forward.py", "phase5/backward.py", "phase5/attention.py"
USES = "runs_phase5 or pinned"  # the checks of what the graded calls launch

MUTANTS = [
    # ---------------------------------------------------------------- the phase skipped
    Mutant("p5-forward-is-phase3", FWD,
           (("    return forward(q, k, v, causal=causal, sm_scale=sm_scale)\n",
             "    from ..phase3 import flash_attention_forward as phase3_forward\n"
             "    return phase3_forward(q, k, v, causal=causal, sm_scale=sm_scale)\n"),),
           "flash_attention_forward runs Phase 3's kernel (the tuned one kept for the ablation only)", tests=USES,
           killed_by="test_runs_phase5_forward_kernel (issue 25: Phase 3's kernel scored full marks)"),
    Mutant("p5-autograd-is-phase4", AUTOGRAD,
           (("    return FlashAttentionFunction.apply(q, k, v, causal, sm_scale)\n",
             "    from ..phase4 import flash_attention as phase4_flash_attention\n"
             "    return phase4_flash_attention(q, k, v, causal=causal, sm_scale=sm_scale)\n"),),
           "flash_attention is Phase 4's: Phase 3's forward kernel, Phase 4's backward configuration", tests=USES,
           killed_by="test_runs_phase5_forward_kernel (issue 25)"),
    Mutant("p5-never-descriptors", FWD,
           (("use_tma = (cfg.tma and tma_allowed(q, k, v, o)) if switches.tma is None else switches.tma",
             "use_tma = False if switches.tma is None else switches.tma"),),
           "the forward always takes the pointer path: descriptors only when an ablation forces them", tests=USES,
           killed_by="test_runs_phase5_forward_kernel (issue 25)"),
    # ---------------------------------------------------------------- GPU only
    Mutant("p5-pinned-forward-ignored", FWD,
           (("return PINNED.get(_arch(device), {}).get((head_dim, causal, n_k >= 8192), DEFAULT[head_dim])",
             "return DEFAULT[head_dim]"),),
           "the forward launches the unmeasured-GPU default on every GPU, the pinned table unread",
           where="gpu", tiers=("gpu",), tests=USES, killed_by="test_runs_phase5_forward_kernel on sm_90 (issue 25)"),
    Mutant("p5-backward-config-phase4", BWD,
           (("        if pinned:\n            return pinned\n", ""),),
           "backward_config always returns Phase 4's choice", where="gpu", tiers=("gpu",), tests=USES,
           killed_by="test_backward_uses_pinned_configuration on sm_90 (issue 25)"),
    Mutant("p5-pointer-offsets-int32", FWD,
           (("q_base = Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh",
             "q_base = Q + off_b * stride_qb + off_h * stride_qh"),),
           "the pointer path's batch offset of q in int32: wraps past 2**31 elements", where="gpu", tiers=("gpu",),
           tests="int64", killed_by="test_int64_offsets (issue 25: Phase 5 had no case past 2**31 elements)"),
]
