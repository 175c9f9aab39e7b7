"""Phase 4's memory test outside the grader: the peak extra CUDA memory of one causal forward +
backward (B=1, H=8, D=64, bf16) at N = 4096 and 16384, twice each, with grader.timing.peak_extra_bytes.

Linear memory (o, lse and the gradients, no N x N matrix) measured 16.4 MiB at 4096 and 65.5 at 16384.
The grader once read 4 MiB at 4096 inside a full side-by-side grading, before peak_extra_bytes
collected garbage first (assets/reports/phase4-solutions-memory-gc-miss-h100.json); alone, it reads
right (assets/reports/phase4-memory-alone-h100.txt, whose table this prints).

    python -m grader.lessons.experiments.phase4_memory   ->  assets/reports/phase4-memory-alone-<gpu>.txt
"""
from grader.lessons.experiments import output_path, require_cuda


def main(argv=None) -> None:
    require_cuda()
    from grader.lessons import common

    path = output_path(__doc__, f"reports/phase4-memory-alone-{common.device_tag()}.txt", argv)
    import torch

    from grader import timing
    from grader.inputs import qkv, randn
    from solutions import phase4 as api

    meta = common.device_record()
    lines = [f"# python -m grader.lessons.experiments.phase4_memory on {meta['device']} (torch {meta['torch']}, "
             f"Triton {meta['triton']}, {meta['date']}); B=1 H=8 D=64 bf16 causal fwd+bwd.",
             "rep N     extra MiB  allocated before MiB"]
    for rep in range(2):
        for n in (4096, 16384):
            gen = torch.Generator().manual_seed(n + rep)
            q, k, v = (t.requires_grad_() for t in qkv(1, 8, n, n, 64, torch.bfloat16, "cuda", gen))
            do = randn((1, 8, n, 64), torch.bfloat16, "cuda", gen)

            def step():
                o = api.flash_attention(q, k, v, causal=True)
                torch.autograd.grad(o, (q, k, v), do)
            step()
            extra = timing.peak_extra_bytes(step) / 2**20
            lines.append(f"{rep:<3} {n:<5} {extra:9.1f}  {torch.cuda.memory_allocated() / 2**20:9.1f}")
            print(lines[-1], flush=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"data: {path}")


if __name__ == "__main__":
    main()
