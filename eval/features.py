"""Raw feature sets: the one validator of ``(N, d)`` features and the features ``.npz`` beside a statistics file.

FID needs only ``(mu, sigma)``; KID and precision/recall need the features themselves. ``lml-eval stats SOURCE --out
ref.npz --features`` therefore writes two files: ``ref.npz`` (pytorch-fid / clean-fid compatible statistics) and
``ref.features.npz`` (:func:`features_path`), with keys ``features`` (N, d), ``n`` and ``meta_<key>`` strings.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from lml_sampler._io import atomic_open

__all__ = ["as_features", "check_same_dim", "features_path", "save_features", "load_features"]


def as_features(features, name: str = "features", min_samples: int = 1) -> torch.Tensor:
    """``features`` as a float64 CPU tensor ``(N, d)`` with ``N >= min_samples`` and finite entries."""
    if isinstance(features, np.ndarray):
        features = torch.from_numpy(features)
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{name} must be an (N, d) array or tensor, got {type(features).__name__}")
    if features.ndim != 2:
        raise ValueError(f"{name} must be (N, d), got shape {tuple(features.shape)}; flatten with .reshape(N, -1)")
    if features.shape[0] < min_samples:
        raise ValueError(f"{name} has {features.shape[0]} samples, at least {min_samples} are needed")
    f = features.detach().to("cpu", torch.float64)
    if not torch.isfinite(f).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return f


def check_same_dim(dim_a: int, dim_b: int, what: str = "features") -> None:
    """Refuse to compare feature sets of different dimension (they come from different extractors)."""
    if int(dim_a) != int(dim_b):
        raise ValueError(f"{what} have different feature dimensions ({dim_a} vs {dim_b}): they come from different "
                         "extractors; compute both with the same --extractor")


def features_path(stats_path: str | os.PathLike) -> Path:
    """The features file that accompanies a statistics file: ``ref.npz`` → ``ref.features.npz``."""
    p = Path(stats_path)
    return p.with_name(p.name.removesuffix(".npz") + ".features.npz")


def save_features(path: str | os.PathLike, features, **metadata: str) -> Path:
    """Write ``features`` (N, d) atomically; float32 when that is lossless (extractor outputs are float32)."""
    f = as_features(features).numpy()
    f32 = f.astype(np.float32)
    arrays = {"features": f32 if np.array_equal(f32.astype(np.float64), f) else f,
              "n": np.asarray(f.shape[0], dtype=np.int64)}
    arrays.update({f"meta_{k}": np.asarray(str(v)) for k, v in metadata.items()})
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"features path must end in .npz, got {str(path)!r}")
    with atomic_open(path) as fh:
        np.savez(fh, **arrays)
    return path


def load_features(path: str | os.PathLike, with_metadata: bool = False):
    """Read a features ``.npz`` (key ``features``); returns float64 ``(N, d)`` (and the metadata dict)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"features file {str(path)!r} not found (write it with `lml-eval stats SOURCE --out "
                                f"{str(path).removesuffix('.features.npz')}.npz --features`)")
    with np.load(path) as data:
        if "features" not in data:
            raise ValueError(f"{path} holds no raw 'features' (keys: {sorted(data.keys())}); KID and precision/recall "
                             "need them: write them with `lml-eval stats SOURCE --out REF.npz --features`")
        f = data["features"].astype(np.float64)
        meta = {k[5:]: str(data[k]) for k in data.keys() if k.startswith("meta_")}
    return (f, meta) if with_metadata else f
