"""Wall time of a full sampling loop: each LML scheduler against its diffusers parent, same model, same NFE.

Timings on shared cores are noisy, so runs of parent and child alternate, each configuration is repeated, and the
README reports the median of the per-pair ratios from one run of this script:

    python -m benchmarks.scheduler_overhead            # measure and print
    python -m benchmarks.scheduler_overhead --readme   # ... and write the README section "overhead"

The section states the command that reproduces it, with every setting that differs from the defaults.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel

from lml_sampler import LMLDDIMScheduler, LMLDPMSolverMultistepScheduler, LMLFlowMatchEulerDiscreteScheduler

CASES = [
    ("DDIM", DDIMScheduler, LMLDDIMScheduler, {}),
    ("DPM-Solver++ 2M", DPMSolverMultistepScheduler, LMLDPMSolverMultistepScheduler, {}),
    ("DPM-Solver 3 (noise)", DPMSolverMultistepScheduler, LMLDPMSolverMultistepScheduler,
     dict(solver_order=3, algorithm_type="dpmsolver", final_sigmas_type="sigma_min")),
    ("Flow-matching Euler", FlowMatchEulerDiscreteScheduler, LMLFlowMatchEulerDiscreteScheduler, {}),
]


def build_model(size: int) -> UNet2DModel:
    """A ~1 M-parameter UNet like the bundled digits model (random weights: the timing does not depend on them)."""
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=size, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, norm_num_groups=8,
    ).eval()


@torch.no_grad()
def sample_loop(model, scheduler, x: torch.Tensor, steps: int) -> float:
    scheduler.set_timesteps(steps)
    start = time.perf_counter()
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t).sample, t, x).prev_sample
    return time.perf_counter() - start


@torch.no_grad()
def step_only(scheduler, x: torch.Tensor, eps: torch.Tensor, steps: int) -> float:
    """Seconds per `step` call alone, with a fixed model output: the scheduler's own cost."""
    scheduler.set_timesteps(steps)
    start = time.perf_counter()
    for t in scheduler.timesteps:
        x = scheduler.step(eps, t, x).prev_sample
    return (time.perf_counter() - start) / steps


def measure(batch: int, size: int, steps: int, repeats: int, lamb: float, kappa: float) -> list[dict]:
    model = build_model(size)
    x = torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(0))
    rows = []
    for name, parent, child, cfg in CASES:
        base, lml = parent(**cfg), child(**cfg, lamb=lamb, kappa=kappa)
        sample_loop(model, base, x, steps), sample_loop(model, lml, x, steps)  # warm-up
        ratios, t_base, t_lml = [], [], []
        for _ in range(repeats):
            a, b = sample_loop(model, base, x, steps), sample_loop(model, lml, x, steps)
            t_base.append(a), t_lml.append(b), ratios.append(b / a)
        eps = 0.9 * x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        step_base = statistics.median(step_only(base, x, eps, steps) for _ in range(5 * repeats))
        step_lml = statistics.median(step_only(lml, x, eps, steps) for _ in range(5 * repeats))
        rows.append(dict(scheduler=name, parent_s=statistics.median(t_base), lml_s=statistics.median(t_lml),
                         ratio=statistics.median(ratios), step_parent_ms=1e3 * step_base, step_lml_ms=1e3 * step_lml,
                         model_ms=1e3 * statistics.median(t_base) / steps))
    return rows


def to_markdown(rows: list[dict], args) -> str:
    lines = [
        f"Full {args.steps}-step loop, batch {args.batch} of 1×{args.size}×{args.size}, a ~1 M-parameter UNet2DModel, "
        f"CPU ({torch.get_num_threads()} threads), LM active (λ={args.lamb}, κ={args.kappa}); median of "
        f"{args.repeats} alternating repeats. Regenerate: `{command(args)}`.",
        "",
        "| scheduler | parent loop (s) | LML loop (s) | LML / parent | parent step (ms) | LML step (ms) | step + model (ms) | (step + model) ratio from step costs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['scheduler']} | {r['parent_s']:.3f} | {r['lml_s']:.3f} | {r['ratio']:.3f} | {r['step_parent_ms']:.2f} "
        f"| {r['step_lml_ms']:.2f} | {r['model_ms']:.1f} "
        f"| {(r['model_ms'] - r['step_parent_ms'] + r['step_lml_ms']) / r['model_ms']:.4f} |"
        for r in rows
    ]
    lines += [
        "",
        "The loop ratio is the measured one (±1 % run-to-run noise on shared cores); the last column predicts it from "
        "the scheduler's own per-step cost, timed separately with a fixed model output (the LM work is O(d) in float64 "
        "plus, for DPM-Solver, a second evaluation of the parent's affine update at x = 0).",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--lamb", type=float, default=1e-2)
    parser.add_argument("--kappa", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the header reports them)")
    parser.add_argument("--readme", action="store_true", help="write the README section 'overhead'")
    return parser


def command(args) -> str:
    """The command line that reproduces ``args``: the settings that differ from the defaults, then ``--readme``."""
    defaults = vars(build_parser().parse_args([]))
    flags = [f"--{k} {v:g}" if isinstance(v, float) else f"--{k} {v}" for k, v in vars(args).items()
             if k != "readme" and v != defaults[k]]
    return " ".join(["python -m benchmarks.scheduler_overhead", *flags, "--readme"])


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    md = to_markdown(measure(args.batch, args.size, args.steps, args.repeats, args.lamb, args.kappa), args)
    print(md)
    if args.readme:
        from .readme import update_readme_section

        update_readme_section("overhead", md)


if __name__ == "__main__":
    main()
