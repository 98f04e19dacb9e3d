"""Compare training recipes of a bundled prior at equal CPU time, then measure the samples of each.

    python -m scripts.compare_recipes train digits --recipes wave1,min-snr-cosine,wide-shallow --minutes 15
    python -m scripts.compare_recipes measure digits          # quality of every finished run -> comparison.json

Each recipe first runs 20 steps to measure its speed, then gets the number of steps that fills ``--minutes``
(the cosine schedules end exactly there). Runs live under ``runs/recipes/<prior>/<recipe>/`` and resume.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from lml_sampler._io import atomic_write_json
from lml_sampler.models.training import RECIPES, TrainConfig, build_unet

from .priors import PRIORS, prior_data

ROOT = Path("runs/recipes")


def steps_per_second(prior: str, recipe: str, batch_size: int | None = None, probe: int = 20) -> float:
    """Training steps per second of ``recipe`` on this machine (forward, backward and Adam on real batches)."""
    data = prior_data(prior)
    cfg = TrainConfig(name=prior, sample_size=data.sample_size, in_channels=data.in_channels,
                      **{**RECIPES[recipe], "lr_schedule": "constant"})
    unet = build_unet(cfg)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    get_batch, gen = data.batches(batch_size or cfg.batch_size), torch.Generator().manual_seed(0)
    get_batch(0, gen)
    t0 = time.perf_counter()
    for i in range(probe):
        x = get_batch(i + 1, gen)
        loss = unet(x, torch.randint(0, 1000, (x.shape[0],), generator=gen)).sample.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return probe / (time.perf_counter() - t0)


def cmd_train(args) -> int:
    from .train_prior import main as train_main

    for recipe in args.recipes:
        folder = ROOT / args.prior / recipe
        plan = folder / "plan.json"
        if plan.is_file():
            steps = json.loads(plan.read_text())["steps"]
        else:
            rate = steps_per_second(args.prior, recipe)
            steps = int(rate * args.minutes * 60)
            folder.mkdir(parents=True, exist_ok=True)
            plan.write_text(json.dumps({"steps": steps, "steps_per_second": rate, "minutes": args.minutes}) + "\n")
        print(f"[{args.prior}/{recipe}] {steps} steps", flush=True)
        train_main([args.prior, "--recipe", recipe, "--steps", str(steps), "--out", str(folder / "pipeline"),
                    "--ckpt", str(folder / "ckpt"), "--threads", str(args.threads)])
    return 0


def cmd_measure(args) -> int:
    from benchmarks.prior_quality import measure

    rows = []
    for plan in sorted((ROOT / args.prior).glob("*/plan.json")):
        folder = plan.parent
        info_path = folder / "pipeline" / "training.json"
        if not info_path.is_file():
            continue
        info = json.loads(info_path.read_text())
        if info.get("status") != "final":
            continue
        quality_path = folder / "quality.json"
        if quality_path.is_file():
            quality = json.loads(quality_path.read_text())
        else:
            quality = measure(args.prior, folder / "pipeline")
            atomic_write_json(quality_path, quality)
        rows.append({"recipe": folder.name, "steps": info["steps"], "train_minutes": info["train_minutes"],
                     "params": info["params"], **quality})
        print(json.dumps(rows[-1]), flush=True)
    atomic_write_json(ROOT / args.prior / "comparison.json", rows)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("prior", choices=PRIORS)
    t.add_argument("--recipes", type=lambda s: s.split(","), default=list(RECIPES))
    t.add_argument("--minutes", type=float, default=15.0)
    t.add_argument("--threads", type=int, default=1)
    t.set_defaults(func=cmd_train)
    m = sub.add_parser("measure")
    m.add_argument("prior", choices=PRIORS)
    m.set_defaults(func=cmd_measure)
    args = p.parse_args(argv)
    torch.set_num_threads(getattr(args, "threads", 1))
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
