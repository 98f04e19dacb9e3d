"""Sample-quality measurements of the bundled priors, the yardstick of ``docs/training.md``.

    python -m benchmarks.prior_quality digits lml_sampler/models/weights/digits
    python -m benchmarks.prior_quality phantoms runs/recipes/phantoms/min-snr-cosine/pipeline

Every measurement samples with DPM-Solver++ 2M at 20 steps (the solver users run), seed set 0, per-index seeds:

- ``digits``: the bundled classifier's mean top-class probability on 200 samples and how often each class occurs;
  domain FID (``digits-features``) of 500 samples against the held-out test split, and its floor: the same FID of
  500 real training digits.
- ``phantoms`` / ``phantoms-complex``: the fraction of raw (unclamped) pixels outside [-1, 1] by more than one
  uint8 level (and by more than 0.1); the inner-ellipse statistics of :func:`inner_ellipse_stats` against real phantoms (count of
  interior features and their mean contrast); the Fréchet distance of 8×8 average-pooled images (pixel space) to
  real phantoms, with its floor (as many real phantoms).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lml_sampler.eval.extractors import extract_features, load_feature_extractor
from lml_sampler.eval.fid import compute_statistics, frechet_distance, quantize_uint8
from lml_sampler.eval.seeding import initial_noise, sample_generators
from lml_sampler.models.bundled import load_classifier, load_pipeline
from lml_sampler.sampling import sample
from lml_sampler.schedulers.registry import make_scheduler

SAMPLER, NFE, SEED = "dpm++2m", 20, 0
#: Deviation from the brain's median level above which a pixel belongs to an inner feature; the smallest inner
#: ellipse contrast of the phantom generator is 0.08·0.35 ≈ 0.03 (negative features), most are > 0.08.
FEATURE_THRESHOLD = 0.04


@torch.no_grad()
def draw(folder: str | Path, n: int, batch: int = 250) -> torch.Tensor:
    """``n`` raw samples (no clamping) of the pipeline in ``folder``, DPM-Solver++ 2M at 20 steps."""
    pipe = load_pipeline(str(folder))
    unet = pipe.unet.eval()
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    out = []
    for start in range(0, n, batch):
        idx = list(range(start, min(start + batch, n)))
        x_T = initial_noise(SEED, idx, shape)
        x0, _ = sample(unet, make_scheduler(SAMPLER, pipe.scheduler.config), x_T, NFE,
                       generator=sample_generators(SEED, idx))
        out.append(x0.float())
    return torch.cat(out)


def digits_quality(folder: str | Path, n_conf: int = 200, n_fid: int = 500) -> dict:
    from lml_sampler.data.digits import digits_dataset

    x = draw(folder, max(n_conf, n_fid))
    clf = load_classifier("digits-features")
    prob = clf.logits(x[:n_conf].clamp(-1, 1)).softmax(1)
    counts = torch.bincount(prob.argmax(1), minlength=10).tolist()
    ext = load_feature_extractor("digits-features")
    test = compute_statistics(extract_features(ext, quantize_uint8(digits_dataset(16, "test"))))
    train = digits_dataset(16, "train")
    train = train[torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(0))[:n_fid]]
    fid = frechet_distance(compute_statistics(extract_features(ext, quantize_uint8(x[:n_fid]))), test)
    floor = frechet_distance(compute_statistics(extract_features(ext, quantize_uint8(train))), test)
    real_conf = clf.logits(digits_dataset(16, "test")).softmax(1).max(1).values.mean().item()
    return {"confidence": round(prob.max(1).values.mean().item(), 4), "real_confidence": round(real_conf, 4),
            "class_counts": counts, "all_classes": min(counts) > 0, "fid": round(fid, 4), "fid_floor": round(floor, 4),
            "fid_over_floor": round(fid / floor, 3), "n_confidence": n_conf, "n_fid": n_fid,
            "sampler": f"{SAMPLER}, {NFE} steps"}


def inner_ellipse_stats(v: torch.Tensor) -> dict:
    """Interior-feature statistics of phantom images ``v`` (N, 1, H, W) in [0, 1], the same estimator for real and
    generated images. The body is the hole-filled region above 0.05; eroding it by two pixels removes the skull
    ring (at most 1.5 px wide at 32×32). A pixel of that interior is a feature when it deviates from the interior's
    median by more than ``FEATURE_THRESHOLD``; features are the 8-connected components of at least 2 pixels.
    Returns the mean count per image and the mean |deviation| of feature pixels."""
    from scipy import ndimage

    counts, contrasts = [], []
    for img in v[:, 0].double().numpy():
        interior = ndimage.binary_erosion(ndimage.binary_fill_holes(img > 0.05), iterations=2)
        if interior.sum() < 10:
            counts.append(0)
            continue
        dev = np.abs(img - np.median(img[interior]))
        feature = interior & (dev > FEATURE_THRESHOLD)
        labels, k = ndimage.label(feature, structure=np.ones((3, 3)))
        sizes = ndimage.sum(feature, labels, range(1, k + 1)) if k else np.zeros(0)
        counts.append(int((sizes >= 2).sum()))
        if feature.any():
            contrasts.append(float(dev[feature].mean()))
    return {"count": float(np.mean(counts)), "contrast": float(np.mean(contrasts)) if contrasts else 0.0}


def pooled_fd(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance of 8×8 average-pooled images (d = 64 per channel) of two sets."""
    pool = lambda x: F.adaptive_avg_pool2d(x.double(), 8).flatten(1)  # noqa: E731
    return frechet_distance(compute_statistics(pool(a)), compute_statistics(pool(b)))


def phantom_quality(folder: str | Path, complex_valued: bool, n: int = 500) -> dict:
    from lml_sampler.data.phantoms import random_complex_phantoms, random_ellipse_phantoms

    x = draw(folder, n)
    excess = x.abs() - 1.0
    out_of_range = float((excess > 2.0 / 255).double().mean())  # one uint8 level of [0, 1] is 2/255 in [-1, 1]
    out_of_range_loose = float((excess > 0.1).double().mean())
    g = torch.Generator().manual_seed(4242)
    if complex_valued:
        real = random_complex_phantoms(n, x.shape[-1], g)
        real_ref = random_complex_phantoms(n, x.shape[-1], torch.Generator().manual_seed(4343))
        mag = lambda z: z.pow(2).sum(1, keepdim=True).sqrt().clamp(0, 1)  # noqa: E731
        v, v_real = mag(x), mag(real)
    else:
        real = random_ellipse_phantoms(n, x.shape[-1], g) * 2 - 1
        real_ref = random_ellipse_phantoms(n, x.shape[-1], torch.Generator().manual_seed(4343)) * 2 - 1
        v, v_real = ((x + 1) / 2).clamp(0, 1), (real + 1) / 2
    gen, ref = inner_ellipse_stats(v), inner_ellipse_stats(v_real)
    return {"out_of_range_fraction": out_of_range, "out_of_range_fraction_0.1": out_of_range_loose,
            "inner_count": round(gen["count"], 3),
            "inner_count_real": round(ref["count"], 3), "inner_contrast": round(gen["contrast"], 4),
            "inner_contrast_real": round(ref["contrast"], 4),
            "inner_count_ratio": round(gen["count"] / ref["count"], 3),
            "inner_contrast_ratio": round(gen["contrast"] / ref["contrast"], 3),
            "pooled_fd": round(pooled_fd(x, real), 4), "pooled_fd_floor": round(pooled_fd(real_ref, real), 4),
            "n": n, "sampler": f"{SAMPLER}, {NFE} steps"}


def measure(prior: str, folder: str | Path) -> dict:
    """The quality record of the pipeline in ``folder`` for bundled prior ``prior``."""
    if prior == "digits":
        return digits_quality(folder)
    if prior in ("phantoms", "phantoms-complex"):
        return phantom_quality(folder, prior == "phantoms-complex")
    raise ValueError(f"unknown prior {prior!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prior", choices=("digits", "phantoms", "phantoms-complex"))
    p.add_argument("folder")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps(measure(args.prior, args.folder), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
