"""Sample grids of the bundled models (offline) and the README "models" section.

    python -m scripts.make_model_grids            # full 1000-step DDPM sampling, 64 digits + 36 phantoms
    python -m scripts.make_model_grids --steps 250 --no-readme

Writes ``docs/images/{digits,phantoms}_grid.png`` (model samples) and ``docs/images/{digits,phantoms}_real_grid.png``
(training data, for comparison), then regenerates the README section "models" with the grids, a table of the
training budgets read from each ``training.json``, the classifier's held-out accuracy, and two cheap sample-quality
indicators (digits: the classifier's confidence and class coverage on the samples; phantoms: pixel statistics of
samples vs. real phantoms).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.readme import IMAGES, update_readme_section
from lml_sampler.eval.fid import quantize_uint8
from lml_sampler.eval.report import save_image_grid


def save_grid(x: torch.Tensor, path: Path, nrow: int, scale: int = 4) -> None:
    """Save images in [-1, 1] as a PNG grid, pixels enlarged ``scale`` times so 16×16 images stay visible."""
    save_image_grid(quantize_uint8(x.clamp(-1, 1)).numpy(), path, nrow=nrow, scale=scale)


@torch.no_grad()
def sample(name: str, n: int, steps: int, seed: int) -> tuple[torch.Tensor, dict]:
    """``n`` samples in [-1, 1] of bundled pipeline ``name`` (ancestral DDPM, ``steps`` steps), and the
    ``training.json`` of the weights that produced them (read at load time: a background training run may export
    newer weights while this samples)."""
    from lml_sampler.models.bundled import WEIGHTS_DIR, load_pipeline

    info = json.loads((WEIGHTS_DIR / name / "training.json").read_text())
    pipe = load_pipeline(name)
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(seed)
    out = pipe(batch_size=n, num_inference_steps=steps, generator=gen, output_type="np")
    # DDPMPipeline returns channels-last numpy in [0, 1]
    return torch.as_tensor(out.images).permute(0, 3, 1, 2).float() * 2 - 1, info


def _phantom_stats(x: torch.Tensor) -> dict:
    """Pixel statistics in [0, 1] units: mean, background fraction (< 0.05), bright-ring fraction (> 0.8)."""
    v = (x + 1) / 2
    return {
        "mean": v.mean().item(),
        "background": (v < 0.05).float().mean().item(),
        "bright": (v > 0.8).float().mean().item(),
    }


def _mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors")) / 1e6


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1000, help="DDPM sampling steps (1000 = the training chain)")
    p.add_argument("--n-digits", type=int, default=64)
    p.add_argument("--n-phantoms", type=int, default=36)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-readme", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from lml_sampler.data.digits import digits_dataset
    from lml_sampler.data.phantoms import random_ellipse_phantoms
    from lml_sampler.models.bundled import WEIGHTS_DIR, load_classifier

    IMAGES.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    tj = {}
    digits, tj["digits"] = sample("digits", args.n_digits, args.steps, args.seed)
    t_digits = time.monotonic() - t0
    save_grid(digits, IMAGES / "digits_grid.png", nrow=8)
    real_digits = digits_dataset(16, "test")[: args.n_digits]
    save_grid(real_digits, IMAGES / "digits_real_grid.png", nrow=8)

    t0 = time.monotonic()
    phantoms, tj["phantoms"] = sample("phantoms", args.n_phantoms, args.steps, args.seed)
    t_phantoms = time.monotonic() - t0
    save_grid(phantoms, IMAGES / "phantoms_grid.png", nrow=6, scale=3)
    real_ph = random_ellipse_phantoms(args.n_phantoms, 32, torch.Generator().manual_seed(12345)) * 2 - 1
    save_grid(real_ph, IMAGES / "phantoms_real_grid.png", nrow=6, scale=3)

    clf = load_classifier("digits-features")
    with torch.no_grad():
        prob = clf.logits(digits).softmax(1)
        prob_real = clf.logits(real_digits).softmax(1)
    conf, conf_real = prob.max(1).values.mean().item(), prob_real.max(1).values.mean().item()
    counts = torch.bincount(prob.argmax(1), minlength=10).tolist()
    s_fake, s_real = _phantom_stats(phantoms), _phantom_stats(real_ph)
    print(f"digits: {t_digits:.0f} s, classifier confidence {conf:.3f} (real {conf_real:.3f}), classes {counts}")
    print(f"phantoms: {t_phantoms:.0f} s, samples {s_fake}, real {s_real}")
    if args.no_readme:
        return

    tj["digits-features"] = json.loads((WEIGHTS_DIR / "digits-features" / "training.json").read_text())
    rows = []
    labels = {"digits": "sklearn digits, split 'train', 16x16", "phantoms": "random ellipse phantoms, 32x32"}
    for n in ("digits", "phantoms"):
        t = tj[n]
        rows.append(
            f"| `{n}` | {t['params'] / 1e6:.2f} M | {labels[n]} | {t['steps']} | "
            f"{t['train_minutes']:.0f} | {t['final_loss_ema']:.4f} | {_mb(WEIGHTS_DIR / n):.1f} MB |"
        )
    c = tj["digits-features"]
    rows.append(
        f"| `digits-features` | {c['params'] / 1e6:.2f} M | digits split 'train' (classifier) | {c['steps']} | "
        f"{c['train_minutes']:.0f} | held-out accuracy **{c['heldout_accuracy'] * 100:.2f} %** | "
        f"{_mb(WEIGHTS_DIR / 'digits-features'):.1f} MB |"
    )
    md = f"""
Three small models ship inside the package (`lml_sampler/models/weights/`, safetensors) so that everything runs
offline; `lml_sampler.models.bundled.load_pipeline("digits" | "phantoms" | <folder> | <Hub id>)` returns a diffusers
pipeline and `load_classifier("digits-features")` the digit classifier whose features the domain FID uses. All were trained on CPU with one
thread (`python -m scripts.train_prior`, `python -m scripts.train_classifier`; seeded, resumable).
The DDPMs are epsilon-prediction UNet2DModels (block channels 32/64/64, attention only at the coarsest level), linear
betas, 1000 training steps, AdamW + EMA weights.

| model | params | data | train steps | train minutes (CPU) | final loss (EMA) / accuracy | weights |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

The table lists the weights the grids below were drawn from (a background `train_phantoms.py` run exports newer
`phantoms` weights periodically; rerun this script after it ends).

Samples ({args.steps}-step ancestral DDPM, seed {args.seed}; generated by `scripts/make_model_grids.py`) next to real
data:

| `digits` samples | real digits (test split) | `phantoms` samples | real phantoms |
|---|---|---|---|
| ![digits samples](docs/images/digits_grid.png) | ![real digits](docs/images/digits_real_grid.png) | ![phantom samples](docs/images/phantoms_grid.png) | ![real phantoms](docs/images/phantoms_real_grid.png) |

Sample-quality indicators (cheap, not FID): on the {args.n_digits} digit samples the classifier's mean top-class
probability is {conf:.3f} (real test digits: {conf_real:.3f}) and the predicted classes 0-9 occur {counts} times.
Phantom samples vs. real phantoms: mean intensity {s_fake['mean']:.3f} vs {s_real['mean']:.3f}, background fraction
{s_fake['background']:.3f} vs {s_real['background']:.3f}, bright (> 0.8, skull) fraction {s_fake['bright']:.3f} vs
{s_real['bright']:.3f}.

**MRI.** {tj['phantoms'].get('mri_note', 'The 2-channel complex variant `phantoms-complex` was not trained within the CPU budget; MRI experiments use the magnitude `phantoms` prior (`scripts/train_phantoms.py --complex` trains it).')}
"""
    update_readme_section("models", md)
    print("README section 'models' updated")


if __name__ == "__main__":
    main()
