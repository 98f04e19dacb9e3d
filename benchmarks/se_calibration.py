"""Calibration of the jackknife standard errors (docs/metrics.md §4): the mean reported SE of KID and FID divided by
the actual standard deviation over independent generated sets.

* synthetic Gaussians, 200 independent draws of N = 300 in d = 8 against a fixed reference of 300, for a model equal
  to the data and one shifted by 0.3 in one coordinate;
* real digits: 8 disjoint sets of 179 training digits (``digits-features``) against the 359 test digits (a model
  that is the data, the floor case).

    OMP_NUM_THREADS=1 python -m benchmarks.se_calibration
"""

from __future__ import annotations

import sys

import numpy as np
import torch

import lml_sampler.eval as ev


def ratios(draws, reference: np.ndarray) -> tuple[float, float]:
    """(KID, FID): RMS of the reported SEs over the standard deviation of the values, across ``draws``."""
    stats, kid_ref = ev.compute_statistics(reference), ev.KIDReference(reference, subset_size=min(1000, len(reference) // 2))
    kid, kid_se, fid, fid_se = [], [], [], []
    for y in draws:
        r = ev.kernel_inception_distance(y, kid_ref)
        kid.append(r.mean)
        kid_se.append(r.se)
        fid.append(ev.frechet_distance(ev.compute_statistics(y), stats))
        fid_se.append(ev.fid_jackknife(y, stats)[0])
    return (float(np.sqrt(np.mean(np.square(kid_se))) / np.std(kid, ddof=1)),
            float(np.sqrt(np.mean(np.square(fid_se))) / np.std(fid, ddof=1)))


def main() -> int:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8))
    print("| case | KID | FID |\n|---|---|---|")
    for shift in (0.0, 0.3):
        draws = []
        for _ in range(200):
            y = rng.normal(size=(300, 8))
            y[:, 0] += shift
            draws.append(y)
        k, f = ratios(draws, x)
        print(f"| synthetic Gaussians, shift {shift:g} (d = 8, N = 300, 200 draws) | {k:.2f} | {f:.2f} |")
    from lml_sampler.data.digits import digits_dataset

    ext = ev.load_feature_extractor("digits-features")
    train = ev.extract_features(ext, ev.quantize_uint8(digits_dataset(16, "train"))).numpy()
    test = ev.extract_features(ext, ev.quantize_uint8(digits_dataset(16, "test"))).numpy()
    perm = np.random.default_rng(0).permutation(len(train))
    k, f = ratios([train[perm[g * 179 : (g + 1) * 179]] for g in range(8)], test)
    print(f"| real digits features, 8 disjoint sets of 179 training digits vs the test digits | {k:.2f} | {f:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
