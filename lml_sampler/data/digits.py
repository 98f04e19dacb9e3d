"""The bundled offline data set: sklearn's 8x8 handwritten digits, upsampled and mapped to [-1, 1].

``sklearn.datasets.load_digits`` ships inside scikit-learn (no download), which is what lets the digits models,
their FID feature extractor and the tests run offline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Seed of the fixed train/test permutation; changing it changes every held-out number in the README.
SPLIT_SEED = 0
#: Fraction of the 1797 images used for training; the rest is the held-out "test" split.
TRAIN_FRACTION = 0.8


def _split_indices(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed seeded permutation of ``range(n)`` cut 80/20 into (train, test) indices."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_train = int(round(TRAIN_FRACTION * n))
    return perm[:n_train], perm[n_train:]


def digits_dataset(size: int = 16, split: str = "train", return_labels: bool = False):
    """Digits images as a float32 tensor ``(N, 1, size, size)`` with values in ``[-1, 1]``.

    Pixel values 0..16 are mapped linearly to [-1, 1] (``x / 8 - 1``) and the 8x8 images are upsampled
    bilinearly (``align_corners=False``, clamped back to [-1, 1]) to ``size``.

    Args:
        size: output side length (>= 8; 8 returns the raw images).
        split: ``"train"`` (80 %, 1438 images), ``"test"`` (20 %, 359 images) or ``"all"``; the split is a fixed
            seeded permutation, identical on every machine.
        return_labels: also return the int64 class labels ``(N,)``.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8 (the raw digits are 8x8), got {size!r}")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    if split != "all":
        train_idx, test_idx = _split_indices(x.shape[0])
        idx = train_idx if split == "train" else test_idx
        x, y = x[idx], y[idx]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(-1.0, 1.0)
    return (x, y) if return_labels else x
