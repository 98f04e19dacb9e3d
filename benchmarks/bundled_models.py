"""Regenerate the README section "models": what ships, how it was trained, how good its samples are.

    python -m benchmarks.bundled_models                 # measure every bundled prior, grids in runs/, print
    python -m benchmarks.bundled_models --readme        # ... grids in docs/images/ and the README section

For each bundled prior the sample-quality measurements of ``benchmarks.prior_quality`` are taken from its
``training.json`` (``scripts.ship_prior`` stores them there) or measured now; the section lists them against the
targets, the recipe comparison that chose the recipe, and sample grids (DPM-Solver++ 2M, 20 steps, seed set 0)
next to real data. Grids go to ``--out`` (``docs/images/`` with ``--readme``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from lml_sampler.eval.fid import quantize_uint8
from lml_sampler.eval.report import save_image_grid
from lml_sampler.models.bundled import WEIGHTS_DIR, available_models

from .prior_quality import draw, measure
from .readme import IMAGES, update_readme_section

PRIORS = ("digits", "phantoms", "phantoms-complex")
DATA = {"digits": "sklearn digits, split 'train', 1×16×16", "phantoms": "random ellipse phantoms, 1×32×32",
        "phantoms-complex": "phantom × smooth random phase, (Re, Im) 2×32×32"}


def _mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors")) / 1e6


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def targets(prior: str, q: dict) -> list[str]:
    """The issue's targets for ``prior`` with this measurement, each ending in met / not met."""
    if prior == "digits":
        return [f"mean classifier confidence {q['confidence']:.3f} ≥ 0.90 (real test digits {q['real_confidence']:.3f})"
                f" with every class present ({q['class_counts']}): {_met(q['confidence'] >= 0.9 and q['all_classes'])}",
                f"domain FID {q['fid']:.3f} ≤ 1.5 × floor {q['fid_floor']:.3f} = {1.5 * q['fid_floor']:.3f} "
                f"({q['fid_over_floor']:.2f}×): {_met(q['fid_over_floor'] <= 1.5)}"]
    rows = [f"out-of-range pixel fraction {100 * q['out_of_range_fraction']:.3f} % ≤ 0.1 % (beyond 0.1: "
            f"{100 * q['out_of_range_fraction_0.1']:.3f} %): {_met(q['out_of_range_fraction'] <= 1e-3)}",
            f"inner features per image {q['inner_count']:.2f} vs real {q['inner_count_real']:.2f} "
            f"({q['inner_count_ratio']:.2f}×), contrast {q['inner_contrast']:.3f} vs {q['inner_contrast_real']:.3f} "
            f"({q['inner_contrast_ratio']:.2f}×), both within 10 %: "
            f"{_met(abs(q['inner_count_ratio'] - 1) <= 0.1 and abs(q['inner_contrast_ratio'] - 1) <= 0.1)}",
            f"pooled (8×8) pixel Fréchet distance to real phantoms {q['pooled_fd']:.3f} (floor {q['pooled_fd_floor']:.3f})"]
    return rows


def comparison_table(prior: str, rows: list[dict]) -> str:
    if prior == "digits":
        head = "| recipe | params | steps | CPU min | confidence | domain FID (floor) |\n|---|---|---|---|---|---|"
        body = [f"| {r['recipe']} | {r['params'] / 1e6:.2f} M | {r['steps']} | {r['train_minutes']:.0f} | "
                f"{r['confidence']:.3f} | {r['fid']:.2f} ({r['fid_floor']:.2f}) |" for r in rows]
    else:
        head = ("| recipe | params | steps | CPU min | out of range | inner count ratio | inner contrast ratio | "
                "pooled FD (floor) |\n|---|---|---|---|---|---|---|---|")
        body = [f"| {r['recipe']} | {r['params'] / 1e6:.2f} M | {r['steps']} | {r['train_minutes']:.0f} | "
                f"{100 * r['out_of_range_fraction']:.2f} % | {r['inner_count_ratio']:.2f} | "
                f"{r['inner_contrast_ratio']:.2f} | {r['pooled_fd']:.3f} ({r['pooled_fd_floor']:.3f}) |" for r in rows]
    return "\n".join([head, *body])


def grids(prior: str, folder: Path = IMAGES) -> tuple[str, str]:
    """Sample and real grids of ``prior`` in ``folder``; returns their paths (relative, for the README)."""
    from lml_sampler.data.digits import digits_dataset
    from lml_sampler.data.phantoms import random_complex_phantoms, random_ellipse_phantoms

    n, nrow, scale = (64, 8, 4) if prior == "digits" else (36, 6, 3)
    x = draw(WEIGHTS_DIR / prior, n)
    if prior == "digits":
        real = digits_dataset(16, "test")[:n]
    elif prior == "phantoms":
        real = random_ellipse_phantoms(n, 32, torch.Generator().manual_seed(12345)) * 2 - 1
    else:
        real = random_complex_phantoms(n, 32, torch.Generator().manual_seed(12345))
    if x.shape[1] == 2:  # complex: show the magnitude, mapped from [0, 1] to [-1, 1]
        x, real = (x.pow(2).sum(1, keepdim=True).sqrt() * 2 - 1), (real.pow(2).sum(1, keepdim=True).sqrt() * 2 - 1)
    paths = []
    for name, images in ((f"{prior}_grid.png", x), (f"{prior}_real_grid.png", real)):
        save_image_grid(quantize_uint8(images.clamp(-1, 1)).numpy(), folder / name, nrow=nrow, scale=scale)
        paths.append((folder / name).as_posix())
    return paths[0], paths[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--readme", action="store_true", help="grids in docs/images/ and the README section 'models'")
    p.add_argument("--out", type=Path, default=Path("runs/bundled_models"), help="grids without --readme")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    present = available_models()["pipelines"]
    rows, sections, pictures = [], [], []
    for prior in PRIORS:
        if prior not in present:
            sections.append(f"**`{prior}`**: not trained (no weights ship); `python -m scripts.train_prior {prior}` "
                            "trains it.")
            continue
        info = json.loads((WEIGHTS_DIR / prior / "training.json").read_text())
        quality = info.get("quality") or measure(prior, WEIGHTS_DIR / prior)
        cfg = info["config"]
        recipe = cfg.get("notes", {}).get("recipe", "wave1")
        rows.append(f"| `{prior}` | {info['params'] / 1e6:.2f} M | {DATA[prior]} | {recipe} | {info['steps']} | "
                    f"{info['train_minutes']:.0f} | {_mb(WEIGHTS_DIR / prior):.1f} MB |")
        text = [f"**`{prior}`** ({quality['sampler']}, seed set 0):", ""]
        text += [f"- {t}" for t in targets(prior, quality)]
        chain = info.get("lineage") or []
        if len(chain) > 1:  # warm starts, oldest first (scripts/ship_prior.py lineage)
            text.append("- trained in warm-started runs, oldest first: " + " → ".join(
                f"{r['steps']} steps ({r['recipe'] or 'wave1'}, {r['train_minutes']:.0f} min)" for r in chain))
        if info.get("recipe_comparison"):
            text += ["", f"Recipes at equal CPU time (`python -m scripts.compare_recipes train {prior}`; CPU minutes "
                     "on a shared 2-core machine, so equal steps of the same architecture are equal compute):", "",
                     comparison_table(prior, info["recipe_comparison"])]
        sections.append("\n".join(text))
        sample_grid, real_grid = grids(prior, IMAGES if args.readme else args.out)
        pictures.append((prior, sample_grid, real_grid))
    clf = json.loads((WEIGHTS_DIR / "digits-features" / "training.json").read_text())
    rows.append(f"| `digits-features` | {clf['params'] / 1e6:.2f} M | digits split 'train' (classifier) | — | "
                f"{clf['steps']} | {clf['train_minutes']:.0f} | {_mb(WEIGHTS_DIR / 'digits-features'):.1f} MB |")
    header = "| " + " | ".join(f"`{p}` samples | real" for p, _, _ in pictures) + " |"
    md = "\n".join([
        "Small models ship inside the package (`lml_sampler/models/weights/`, safetensors) so that everything runs "
        "offline: `lml_sampler.models.load_pipeline(\"digits\" | \"phantoms\" | \"phantoms-complex\" | <folder> | "
        "<Hub id>)` returns a diffusers pipeline, `load_classifier(\"digits-features\")` the digit classifier whose "
        "features the domain FID uses. The priors are ε-prediction `UNet2DModel`s on the linear-β DDPM schedule, "
        "trained by `python -m scripts.train_prior` (the loop and recipes: docs/training.md); the classifier has "
        f"{100 * clf['heldout_accuracy']:.2f} % held-out accuracy. Regenerate: `python -m benchmarks.bundled_models --readme`.",
        "", "| model | params | data | recipe | train steps | CPU minutes | weights |", "|---|---|---|---|---|---|---|",
        *rows, "", *[s + "\n" for s in sections],
        "Samples (DPM-Solver++ 2M, 20 steps, seed set 0) next to real data:", "", header,
        "|" + "---|" * (2 * len(pictures)),
        "| " + " | ".join(f"![{p} samples]({s}) | ![real]({r})" for p, s, r in pictures) + " |",
    ])
    print(md)
    if args.readme:
        update_readme_section("models", md)
        print("README section 'models' updated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
