"""Train the bundled "phantoms" DDPM: a diffusers UNet2DModel on random Shepp-Logan-like ellipse phantoms, 32x32.

Same recipe as ``scripts/train_digits.py`` (epsilon-prediction DDPM, linear betas, 1000 steps, AdamW, EMA,
resumable atomic checkpoints), meant to run in the background for as long as CPU allows; the EMA weights are
exported every ``--export-every`` minutes (atomic folder swap), so the package always holds the newest weights::

    python scripts/train_phantoms.py --out lml_sampler/models/weights/phantoms --minutes 90
    python scripts/train_phantoms.py --out lml_sampler/models/weights/phantoms --minutes 180 --resume

Data: phantoms from ``lml_sampler.data.phantoms.random_ellipse_phantoms`` mapped from [0, 1] to [-1, 1]. Rendering
costs about as much as a training step, so batches are drawn from a pool of ``--pool`` phantoms of which
``--refresh`` are regenerated every 100 steps (the model sees fresh phantoms all the time but pays ~5 % for them),
with random horizontal/vertical flips (the phantom distribution is flip-symmetric).

``--complex`` trains the 2-channel (real, imag) MRI variant on ``random_complex_phantoms`` instead
(default output ``.../weights/phantoms-complex``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from train_digits import TrainConfig, train_ddpm  # noqa: E402  (shared loop)

MRI_NOTE = (
    "The 2-channel complex MRI variant ('phantoms-complex', `--complex`: real/imag of the phantom times a smooth "
    "random phase) was not trained: the shared 2-core CPU (about half a core per job under load) went to this "
    "magnitude model, which CT needs and MRI can use on real-valued (zero-phase) phantoms, where the complex "
    "image is its real part. Train it with `python scripts/train_phantoms.py --complex --minutes 90` when CPU allows."
)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--ckpt", type=Path, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--complex", action="store_true", help="2-channel (real, imag) MRI variant")
    p.add_argument("--minutes", type=float, default=90.0, help="total training wall-time budget (incl. resumed)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--pool", type=int, default=4096)
    p.add_argument("--refresh", type=int, default=256)
    p.add_argument("--export-every", type=float, default=10.0, help="minutes between EMA exports")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--preview", type=Path, default=None, help="PNG for a DDIM-50 sample grid at each export")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from lml_sampler.data.phantoms import random_complex_phantoms, random_ellipse_phantoms

    name = "phantoms-complex" if args.complex else "phantoms"
    out = args.out or ROOT / "lml_sampler/models/weights" / name
    ckpt = args.ckpt or Path.home() / f".cache/lml_sampler/train_{name}.pt"
    channels = 2 if args.complex else 1

    def render(n: int, gen: torch.Generator) -> torch.Tensor:
        if args.complex:
            return random_complex_phantoms(n, args.size, gen)  # |x| <= 1 already: real/imag in [-1, 1]
        return random_ellipse_phantoms(n, args.size, gen) * 2.0 - 1.0

    cfg = TrainConfig(
        name=name,
        sample_size=args.size,
        in_channels=channels,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        minutes=args.minutes,
        max_steps=args.max_steps,
        export_every_min=args.export_every,
        data=(
            f"random_complex_phantoms (real, imag) {args.size}x{args.size}"
            if args.complex
            else f"random_ellipse_phantoms {args.size}x{args.size} mapped [0,1] -> [-1,1]"
        )
        + f", pool {args.pool} refreshed {args.refresh}/100 steps, random flips",
        extra={} if args.complex else {"mri_note": MRI_NOTE},
    )
    # The pool is seeded from (seed, step) so a resumed run continues with fresh, reproducible phantoms.
    state: dict = {}

    def get_batch(step: int, gen: torch.Generator) -> torch.Tensor:
        if "pool" not in state:
            state["pool"] = render(args.pool, torch.Generator().manual_seed(1000 * args.seed + step))
        elif step % 100 == 0:
            g = torch.Generator().manual_seed(1000 * args.seed + step + 1)
            idx = torch.randperm(args.pool, generator=g)[: args.refresh]
            state["pool"][idx] = render(args.refresh, g)
        pool = state["pool"]
        x = pool[torch.randint(0, pool.shape[0], (cfg.batch_size,), generator=gen)]
        flip_h = torch.rand(cfg.batch_size, generator=gen) < 0.5
        flip_v = torch.rand(cfg.batch_size, generator=gen) < 0.5
        x = torch.where(flip_h.view(-1, 1, 1, 1), x.flip(-1), x)
        return torch.where(flip_v.view(-1, 1, 1, 1), x.flip(-2), x)

    train_ddpm(cfg, get_batch, out, ckpt, args.resume, args.preview)


if __name__ == "__main__":
    main()
