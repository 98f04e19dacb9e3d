"""Models of the evaluation grid and how each one is scored.

| spec | model | metric | reference |
|---|---|---|---|
| ``digits`` | bundled ``DDPMPipeline`` (1×16×16) | domain FID, ``digits-features`` extractor | held-out real digits ``digits_dataset(16, "test")`` |
| ``gmm`` | ``GMMDenoiser``: 10 diagonal Gaussians fitted to the digit classes (train split, 16×16) | exact-moment Fréchet distance in pixel space (sample estimate; floor reported) | closed-form mixture mean/covariance |
| ``gaussian`` | ``GaussianDenoiser.stationary()`` (docs/exact-score-benchmark.md §1) | exact Fréchet distance: transfer matrix for linear samplers, samples otherwise | N(0, Σ) |
| folder / Hub id | any diffusers pipeline (``--prompts`` for text-to-image) | Inception FID (or ``--extractor``) | ``--ref-stats`` ``.npz`` |
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from .extractors import extract_features, load_feature_extractor
from .fid import Statistics, compute_statistics, load_statistics, quantize_uint8, save_statistics

__all__ = ["EvalModel", "load_eval_model", "digits_gmm", "BUILTIN_MODELS"]

BUILTIN_MODELS = ("digits", "gmm", "gaussian")


@dataclass
class EvalModel:
    """A model of the sweep grid with its metric.

    Attributes:
        kind: ``"pipeline"`` (generated through the diffusers pipeline) or ``"analytic"`` (own loop, raw outputs).
        metric: ``"domain-fid"``, ``"inception-fid"`` or ``"exact-fd"``.
        reference: lazily computed reference statistics (features for FID, true moments for exact-fd).
        floor: for exact-fd, ``n -> `` distance of n exact samples to the truth (the Monte-Carlo floor).
        linear: the model is linear-Gaussian, so linear samplers are scored exactly by their transfer matrix.
    """

    name: str
    kind: str
    metric: str
    scheduler_config: dict[str, Any]
    pipe: Any = None
    denoiser: nn.Module | None = None
    extractor: nn.Module | None = None
    extractor_name: str = ""
    reference: Callable[[], Statistics] | None = None
    reference_desc: str = ""
    floor: Callable[[int], float] | None = None
    linear: bool = False
    prompts: list[str] | None = None
    pipe_kwargs: dict[str, Any] = field(default_factory=dict)
    is_flow: bool = False

    def features(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """Features of one generated batch: extractor features of the uint8 images, or raw samples (exact-fd)."""
        if self.metric == "exact-fd":
            raw = outputs["raw"]
            return raw.reshape(raw.shape[0], -1).astype(np.float64)
        return extract_features(self.extractor, torch.from_numpy(outputs["images"])).numpy()


def digits_gmm(size: int = 16, variance_floor: float = 1e-3, **kwargs: Any):
    """A 10-component diagonal GMM on 16×16 digits: class means and per-pixel class variances of the train split.

    Multimodal and image-shaped, yet its mean and covariance are known in closed form.
    """
    from lml_sampler.data.digits import digits_dataset
    from lml_sampler.models.analytic import GMMDenoiser

    x, y = digits_dataset(size, "train", return_labels=True)
    x = x.double()
    classes = torch.unique(y)
    weights = torch.stack([(y == c).double().mean() for c in classes])
    means = torch.stack([x[y == c].mean(0) for c in classes])
    variances = torch.stack([x[y == c].var(0) for c in classes]).clamp_min(variance_floor)
    return GMMDenoiser.from_components(weights, means, variances, **kwargs)


def _cached_stats(cache: Path | None, name: str, compute: Callable[[], Statistics], **meta: str) -> Statistics:
    if cache is not None:
        path = cache / f"{name}.npz"
        if path.is_file():
            stats, old = load_statistics(path, with_metadata=True)
            if all(old.get(k) == v for k, v in meta.items()):
                return stats
        stats = compute()
        save_statistics(path, stats, **meta)
        return stats
    return compute()


def load_eval_model(spec: str, extractor: str | None = None, inception_weights: str | None = None,
                    ref_stats: str | None = None, prompts: list[str] | None = None, cache_dir: str | Path | None = None,
                    guidance_scale: float | None = None, device: str | torch.device = "cpu") -> EvalModel:
    """Build the :class:`EvalModel` of ``spec`` (see the module table). Reference statistics are cached as ``.npz``
    in ``cache_dir`` (keyed by extractor) and computed on first use."""
    cache = Path(cache_dir) if cache_dir is not None else None
    if spec in ("gmm", "gaussian"):
        if extractor is not None:
            raise ValueError(f"model {spec!r} is scored by the exact Fréchet distance in pixel space; drop --extractor")
        from lml_sampler.models.analytic import GaussianDenoiser

        if spec == "gmm":
            den = digits_gmm()
            w, m, v = den.weights.double(), den.means.double(), den.variances.double()
            from .exact import mixture_moments

            truth = mixture_moments(w.numpy(), m.reshape(len(w), -1).numpy(), v.numpy())
            desc, linear = "closed-form moments of the 10-class digits GMM", False
        else:
            den = GaussianDenoiser.stationary(dtype=torch.float64)
            d = den.dim
            truth = Statistics(den.mean.double().reshape(-1).numpy(), den.covariance().numpy(), None)
            desc, linear = "N(0, Σ), stationary 1/|f|² spectrum, trace 64", True
        den = den.to(device)

        @functools.lru_cache(maxsize=None)
        def floor(n: int, den=den, truth=truth) -> float:
            from .fid import frechet_distance

            xs = den.sample_data(n, torch.Generator().manual_seed(12345), dtype=torch.float64)
            return frechet_distance(compute_statistics(xs.reshape(n, -1).cpu()), truth)

        sched = {"_class_name": "DDPMScheduler", "clip_sample": False,
                 **{k: den.config[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                               "trained_betas", "prediction_type")}}
        return EvalModel(spec, "analytic", "exact-fd", sched, denoiser=den, reference=lambda: truth,
                         reference_desc=desc, floor=floor, linear=linear,
                         is_flow=den.config.prediction_type == "flow")

    # pipelines
    from lml_sampler.models.bundled import load_pipeline

    pipe = load_pipeline(spec)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    in_channels = 3 if getattr(pipe, "vae", None) is not None else int(getattr(denoiser.config, "in_channels", 3))
    pipe_kwargs: dict[str, Any] = {}
    if guidance_scale is not None:
        pipe_kwargs["guidance_scale"] = guidance_scale
    sched_cfg = dict(pipe.scheduler.config)
    is_flow = "FlowMatch" in str(sched_cfg.get("_class_name", ""))

    if spec == "digits":
        name = extractor or "digits-features"
        try:
            ext = load_feature_extractor(name, inception_weights, in_channels=1)
        except FileNotFoundError as exc:
            if extractor is not None:
                raise
            warnings.warn(f"{exc}; falling back to the random-conv stand-in extractor", stacklevel=2)
            name, ext = "random-conv", load_feature_extractor("random-conv", in_channels=1)
        ext = ext.to(device)

        def reference(ext=ext, name=name) -> Statistics:
            from lml_sampler.data.digits import digits_dataset

            def compute() -> Statistics:
                real = quantize_uint8(digits_dataset(16, "test"))
                return compute_statistics(extract_features(ext, real))

            return _cached_stats(cache, f"digits-test_{name}", compute, extractor=name, source="digits_dataset(16,test)")

        @functools.lru_cache(maxsize=None)
        def floor(n: int, ext=ext) -> float:
            """FID of n real *train* digits (a random subset, with repeats past 1438) vs the test statistics."""
            from lml_sampler.data.digits import digits_dataset

            from .fid import fid_from_features

            train = quantize_uint8(digits_dataset(16, "train"))
            idx = torch.randint(train.shape[0], (n,), generator=torch.Generator().manual_seed(0)) \
                if n > train.shape[0] else torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(0))[:n]
            return fid_from_features(extract_features(ext, train[idx]), reference())

        return EvalModel(spec, "pipeline", "domain-fid", sched_cfg, pipe=pipe, extractor=ext, extractor_name=name,
                         reference=reference, reference_desc="359 held-out real digits (test split)", floor=floor,
                         pipe_kwargs=pipe_kwargs, is_flow=is_flow)

    name = extractor or "inception"
    ext = load_feature_extractor(name, inception_weights, in_channels=in_channels).to(device)
    if ref_stats is None:
        raise ValueError(f"model {spec!r} needs reference statistics: pass --ref-stats FILE.npz (lml-eval stats)")
    stats, meta = load_statistics(ref_stats, with_metadata=True)
    if meta.get("extractor") not in (None, name):
        raise ValueError(f"{ref_stats} was computed with extractor {meta['extractor']!r}, not {name!r}")
    metric = "inception-fid" if name == "inception" else "domain-fid"
    return EvalModel(Path(spec).name if Path(spec).is_dir() else spec, "pipeline", metric, sched_cfg, pipe=pipe,
                     extractor=ext, extractor_name=name, reference=lambda: stats, reference_desc=str(ref_stats),
                     prompts=prompts, pipe_kwargs=pipe_kwargs, is_flow=is_flow)
