"""Train (or continue training) a bundled prior: ``digits``, ``phantoms`` or ``phantoms-complex``.

    python -m scripts.train_prior digits --recipe min-snr-cosine --steps 12000 --out lml_sampler/models/weights/digits
    python -m scripts.train_prior phantoms --steps 8000 --minutes 240        # stops at whichever comes first
    python -m scripts.train_prior digits --steps 12000                        # rerun: resumes from --ckpt

The loop is ``lml_sampler.models.training.train_ddpm``; the recipes are ``lml_sampler.models.training.RECIPES``.
Checkpoints go to ``--ckpt`` (default ``checkpoints/<prior>/``): the portable part (raw weights and counters) is
small enough to commit, the exact one (``full.pt``, with the optimizer) is ignored by git. ``--init-from FOLDER``
starts from the weights of an exported pipeline (e.g. the currently bundled one) with a new schedule.
``--device cuda`` and larger ``--size``/``--channels`` give the GPU recipe.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lml_sampler.models.training import RECIPES, TrainConfig, train_ddpm

from .priors import PRIORS, prior_data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prior", choices=PRIORS)
    p.add_argument("--recipe", choices=sorted(RECIPES), default="min-snr-cosine")
    p.add_argument("--steps", type=int, default=None, help="total optimizer steps (the cosine schedule's length)")
    p.add_argument("--minutes", type=float, default=None, help="training-time budget, counted over resumed runs")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", default=None, help="exported pipeline folder whose UNet weights start the run")
    p.add_argument("--out", type=Path, default=None, help="exported pipeline (default: runs/train/<prior>)")
    p.add_argument("--ckpt", type=Path, default=None, help="checkpoint folder (default: checkpoints/<prior>)")
    p.add_argument("--export-every", type=float, default=None, help="minutes between exports of the EMA weights")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cuda for the GPU recipe (with e.g. --size 64 --widths 64,128,128)")
    p.add_argument("--size", type=int, default=None, help="image size of the phantom priors (default 32)")
    p.add_argument("--widths", default=None, help="UNet block widths, e.g. 64,128,128 (default: the recipe's)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    args = p.parse_args(argv)
    if args.steps is None and args.minutes is None:
        p.error("give --steps, --minutes or both")
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = prior_data(args.prior, size=args.size)
    overrides = dict(RECIPES[args.recipe])
    if args.widths:
        widths = tuple(int(w) for w in args.widths.split(","))
        overrides["block_out_channels"] = widths
        overrides["attention"] = (False,) * (len(widths) - 1) + (True,)  # attention at the coarsest level only
    for key in ("batch_size", "lr"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if overrides.get("lr_schedule") == "cosine" and args.steps is None:
        print("train_prior: the cosine recipes need --steps (the length of the schedule)", file=sys.stderr)
        return 2
    cfg = TrainConfig(name=args.prior, sample_size=data.sample_size, in_channels=data.in_channels,
                      seed=args.seed, total_steps=args.steps, data=data.description,
                      init_from=args.init_from, notes={"recipe": args.recipe}, **overrides)
    try:
        train_ddpm(cfg, data.batches(cfg.batch_size), args.out or Path("runs/train") / args.prior,
                   args.ckpt or Path("checkpoints") / args.prior, minutes=args.minutes, resume=not args.fresh,
                   export_every_min=args.export_every, log=lambda m: print(m, flush=True), device=args.device)
    except ValueError as exc:  # a checkpoint of another run, a bad init folder: the user's to fix
        print(f"train_prior: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
