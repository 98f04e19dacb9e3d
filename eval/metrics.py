"""The metrics of a sweep cell, computed from the features its shards already hold.

A cell generates once and stores, per sample, its extractor features (``features``; raw pixels for exact-score
models) and, for text-to-image cells scored by CLIP, its CLIP image embeddings (``clip``). Every metric reads those:

| name | row fields | reads |
|---|---|---|
| ``fid`` | ``fid`` (in ``result.json``, from the float64 sums), ``fid_se`` | features, reference statistics |
| ``kid`` | ``kid``, ``kid_std``, ``kid_se``, ``kid_full``, ``kid_floor(_se)`` | features, reference features |
| ``pr`` | ``precision``, ``recall``, ``density``, ``coverage`` and their ``*_floor`` | features, reference features |
| ``clip`` | ``clip``, ``clip_se`` | CLIP image embeddings, prompts |

Each metric's values live in ``metrics/<name>.json`` beside the shards, with the settings that produced them; a
stored metric whose settings match is read back, so adding a metric to a finished sweep computes only that metric.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lml_sampler._io import atomic_write_json

from .fid import fid_jackknife
from .kid import DEFAULT_KID_SUBSETS, KIDReference, kernel_inception_distance, kid_subset_size
from .precision_recall import DEFAULT_K, check_k, knn_radii, precision_recall
from .shards import load_shards
from .uncertainty import DEFAULT_SE_GROUPS

__all__ = ["METRIC_NAMES", "DEFAULT_METRICS", "MetricSettings", "parse_metrics", "check_metric_inputs",
           "cell_metrics"]

METRIC_NAMES = ("fid", "kid", "pr", "clip")
DEFAULT_METRICS = ("fid", "kid")


@dataclass(frozen=True)
class MetricSettings:
    """Settings of the sample metrics; ``kid_subset_size=None`` is the protocol's 1000 capped by the sample counts."""

    se_groups: int = DEFAULT_SE_GROUPS
    kid_subsets: int = DEFAULT_KID_SUBSETS
    kid_subset_size: int | None = None
    kid_degree: int = 3
    pr_k: int = DEFAULT_K
    seed: int = 0


def parse_metrics(metrics) -> tuple[str, ...]:
    """``"fid,kid"`` or a sequence → a tuple of known metric names (order kept, repeats dropped)."""
    names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    unknown = [m for m in names if m not in METRIC_NAMES]
    if unknown or not names:
        raise ValueError(f"unknown metric(s) {unknown or names!r}: choose from {', '.join(METRIC_NAMES)} (--metrics)")
    return tuple(dict.fromkeys(names))


def check_metric_inputs(metrics: tuple[str, ...], model, num_samples: int, settings: MetricSettings) -> None:
    """Refuse, before any sample is generated, settings the sample counts cannot satisfy (KID subset size, k)."""
    if not {"kid", "pr"} & set(metrics):
        return
    if model.reference_features is None:
        raise ValueError(f"model {model.name!r} has no reference sample: KID and precision/recall are not available")
    r = _reference(model, num_samples).shape[0]
    if "kid" in metrics:
        kid_subset_size(num_samples, r, settings.kid_subset_size)
    if "pr" in metrics:
        check_k(settings.pr_k, num_samples, r)


def _reference(model, n: int) -> np.ndarray:
    return _memo(model, ("reference_features", n), lambda: np.asarray(model.reference_features(n), np.float64))


def _memo(model, key, compute: Callable[[], Any]) -> Any:
    if key not in model.cache:
        model.cache[key] = compute()
    return model.cache[key]


def _fid(features: np.ndarray, model, n: int, s: MetricSettings) -> dict:
    se, _ = fid_jackknife(features, model.reference(), s.se_groups)
    return {"fid_se": se}


def _kid(features: np.ndarray, model, n: int, s: MetricSettings) -> dict:
    real = _reference(model, n)
    size = kid_subset_size(features.shape[0], real.shape[0], s.kid_subset_size)
    ref = _memo(model, ("kid", n, size, s), lambda: KIDReference(real, s.kid_subsets, size, s.kid_degree,
                                                                  seed=s.seed))
    res = kernel_inception_distance(features, ref, groups=s.se_groups)
    row = {"kid": res.mean, "kid_std": res.std, "kid_se": res.se, "kid_full": res.full,
           "kid_subsets": res.subsets, "kid_subset_size": res.subset_size}
    if model.floor_features is not None:
        floor = _memo(model, ("kid_floor", n, size, s),
                      lambda: kernel_inception_distance(model.floor_features(n), ref, groups=s.se_groups))
        row.update(kid_floor=floor.mean, kid_floor_se=floor.se)
    return row


def _pr(features: np.ndarray, model, n: int, s: MetricSettings) -> dict:
    real = _reference(model, n)
    radii = _memo(model, ("knn_radii", n, s.pr_k), lambda: knn_radii(real, s.pr_k))
    res = precision_recall(features, real, s.pr_k, real_radii=radii)
    row = {"precision": res.precision, "recall": res.recall, "density": res.density, "coverage": res.coverage,
           "pr_k": res.k}
    if model.floor_features is not None:
        floor = _memo(model, ("pr_floor", n, s.pr_k),
                      lambda: precision_recall(model.floor_features(n), real, s.pr_k, real_radii=radii))
        row.update(precision_floor=floor.precision, recall_floor=floor.recall, density_floor=floor.density,
                   coverage_floor=floor.coverage)
    return row


_FEATURE_METRICS = {"fid": _fid, "kid": _kid, "pr": _pr}


def _settings(name: str, model, n: int, s: MetricSettings, clip) -> dict:
    if name == "fid":
        return {"se_groups": s.se_groups}
    if name == "kid":
        size = kid_subset_size(n, _reference(model, n).shape[0], s.kid_subset_size)
        return {"subsets": s.kid_subsets, "subset_size": size, "degree": s.kid_degree, "seed": s.seed,
                "se_groups": s.se_groups}
    if name == "pr":
        return {"k": s.pr_k}
    return {"clip_model": clip.name if clip is not None else None}


def cell_metrics(metrics: tuple[str, ...], cell_dir: str | Path, model, row: dict, settings: MetricSettings,
                 clip=None) -> dict:
    """The values of every requested metric of a finished cell (``row`` is its ``result.json``).

    Stored values are read back when their settings match; the others are computed from the shards' features and
    stored. Cells scored exactly from a transfer matrix have no samples: their FID has no Monte-Carlo error
    (``fid_se = 0``) and the sample metrics do not apply.
    """
    cell_dir = Path(cell_dir)
    n = int(row.get("num_samples") or 0)
    exact = str(row.get("method", "")).startswith("transfer")
    features: list[np.ndarray] = []

    def cell_features() -> np.ndarray:
        if not features:
            f = load_shards(cell_dir, "features")
            if f.shape[0] != n:
                raise RuntimeError(f"{cell_dir}: expected {n} samples, the shards hold {f.shape[0]}")
            features.append(f.reshape(n, -1))
        return features[0]

    out: dict[str, Any] = {}
    for name in metrics:
        if exact:
            if name == "fid":
                out["fid_se"] = 0.0
            continue
        if name == "clip" and model.prompts is None:
            continue
        manifest = {**_settings(name, model, n, settings, clip), "num_samples": n}
        path = cell_dir / "metrics" / f"{name}.json"
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored.get("settings") == json.loads(json.dumps(manifest)):
                out.update(stored["values"])
                continue
        if name == "clip":
            values = _clip(cell_dir, model, n, clip)
        else:
            values = _FEATURE_METRICS[name](cell_features(), model, n, settings)
        atomic_write_json(path, {"settings": manifest, "values": values})
        out.update(json.loads(path.read_text())["values"])
    return out


def _clip(cell_dir: Path, model, n: int, clip) -> dict:
    from .clip_score import clip_score

    if clip is None:
        raise ValueError("the clip metric needs a CLIP model: pass --clip-model FOLDER_OR_HUB_ID")
    images = load_shards(cell_dir, "clip")
    if images.shape[0] != n:
        raise RuntimeError(f"{cell_dir}: expected {n} CLIP embeddings, the shards hold {images.shape[0]}")
    prompts = model.prompts
    text = _memo(model, ("clip_text", clip.name), lambda: clip.texts(prompts))
    mean, se, _ = clip_score(images, text[np.arange(n) % len(prompts)])
    return {"clip": mean, "clip_se": se, "clip_model": clip.name}
