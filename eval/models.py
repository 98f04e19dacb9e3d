"""Models of the evaluation grid and how each one is scored.

| spec | model | metric | reference (FID) | reference sample (KID, precision/recall) |
|---|---|---|---|---|
| ``digits`` | bundled ``DDPMPipeline`` (1×16×16) | domain FID, ``digits-features`` extractor | held-out real digits ``digits_dataset(16, "test")`` | the same 359 test digits |
| ``gmm`` | ``GMMDenoiser``: 10 diagonal Gaussians fitted to the digit classes (train split, 16×16) | exact-moment Fréchet distance in pixel space (sample estimate; floor reported) | closed-form mixture mean/covariance | N exact samples (fixed seed) |
| ``gaussian`` | ``GaussianDenoiser.stationary()`` (docs/exact-score-benchmark.md §1) | exact Fréchet distance: transfer matrix for linear samplers, samples otherwise | N(0, Σ) | N exact samples (fixed seed) |
| folder / Hub id | any diffusers pipeline (``--prompts`` for text-to-image) | Inception FID (or ``--extractor``) | ``--ref-stats`` ``.npz`` | its ``.features.npz`` |

Named models live in :data:`MODEL_SPECS`; a new one is a function ``(name, ModelOptions) -> EvalModel`` decorated
with :func:`register_model`.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from .extractors import extract_features, load_feature_extractor
from .features import features_path, load_features, save_features
from .fid import Statistics, compute_statistics, frechet_distance, load_statistics, quantize_uint8, save_statistics

__all__ = ["EvalModel", "ModelOptions", "ModelSpec", "MODEL_SPECS", "register_model", "load_eval_model", "digits_gmm",
           "BUILTIN_MODELS"]

#: Seeds of the exact samples an analytic model draws: the KID / precision-recall reference set and the floor set.
REFERENCE_SAMPLE_SEED = 777
FLOOR_SAMPLE_SEED = 12345


@dataclass
class EvalModel:
    """A model of the sweep grid with its metric.

    Attributes:
        kind: ``"pipeline"`` (generated through the diffusers pipeline) or ``"analytic"`` (own loop, raw outputs).
        metric: ``"domain-fid"``, ``"inception-fid"`` or ``"exact-fd"``.
        reference: lazily computed reference statistics (features for FID, true moments for exact-fd).
        reference_features: ``n ->`` the reference *sample* in feature space, for KID and precision/recall (a data
            set returns its fixed set; an analytic model draws ``n`` exact samples, as many as a cell generates).
        floor: ``n ->`` the metric of n real (or exact) samples: what a perfect sampler scores at this N.
        floor_features: ``n ->`` those n real / exact samples in feature space (floors of the other metrics).
        linear: the model is linear-Gaussian, so linear samplers are scored exactly by their transfer matrix.
        accepts_guidance: the pipeline takes ``guidance_scale`` (a ``--guidance-scale`` list sweeps it).
        cache: per-model memo of reference-side metric work shared by the cells (kernel sums, k-NN radii, floors).
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
    reference_features: Callable[[int], np.ndarray] | None = None
    floor: Callable[[int], float] | None = None
    floor_features: Callable[[int], np.ndarray] | None = None
    linear: bool = False
    prompts: list[str] | None = None
    pipe_kwargs: dict[str, Any] = field(default_factory=dict)
    is_flow: bool = False
    accepts_guidance: bool = False
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)

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


def _cached(cache: Path | None, name: str, compute: Callable[[], Any], load: Callable, save: Callable,
            **meta: str) -> Any:
    """``compute()`` once, kept in ``cache/name.npz`` (recomputed when its metadata differs from ``meta``)."""
    if cache is None:
        return compute()
    path = cache / f"{name}.npz"
    if path.is_file():
        value, old = load(path, with_metadata=True)
        if all(old.get(k) == v for k, v in meta.items()):
            return value
    value = compute()
    save(path, value, **meta)
    return value


@dataclass(frozen=True)
class ModelOptions:
    """What the command line says about the models: extractor, reference statistics, prompts, cache, device."""

    extractor: str | None = None
    inception_weights: str | None = None
    ref_stats: str | None = None
    prompts: tuple[str, ...] | None = None
    cache_dir: Path | None = None
    device: str = "cpu"


@dataclass(frozen=True)
class ModelSpec:
    """A named model of the grid: ``build(name, options)`` returns its :class:`EvalModel`; ``takes_extractor`` is
    False for models scored in their own sample space (the sweep then does not pass ``--extractor``)."""

    build: Callable[[str, ModelOptions], EvalModel]
    takes_extractor: bool = True
    description: str = ""


#: Named models; any other spec is a diffusers pipeline folder or Hub id (:func:`_pipeline_model`).
MODEL_SPECS: dict[str, ModelSpec] = {}


def register_model(name: str, takes_extractor: bool = True, description: str = ""):
    """Decorator adding ``build(name, options) -> EvalModel`` to :data:`MODEL_SPECS` under ``name``."""
    def deco(build: Callable[[str, ModelOptions], EvalModel]):
        if name in MODEL_SPECS:
            raise ValueError(f"model {name!r} is already registered")
        MODEL_SPECS[name] = ModelSpec(build, takes_extractor, description)
        return build
    return deco


def load_eval_model(spec: str, extractor: str | None = None, inception_weights: str | None = None,
                    ref_stats: str | None = None, prompts: list[str] | None = None, cache_dir: str | Path | None = None,
                    device: str | torch.device = "cpu") -> EvalModel:
    """Build the :class:`EvalModel` of ``spec``: a name of :data:`MODEL_SPECS` (see the module table) or a pipeline
    folder / Hub id. Reference statistics and features are cached as ``.npz`` in ``cache_dir`` (keyed by extractor)
    and computed on first use."""
    opts = ModelOptions(extractor, inception_weights, ref_stats, tuple(prompts) if prompts else None,
                        Path(cache_dir) if cache_dir is not None else None, str(device))
    entry = MODEL_SPECS.get(spec)
    return entry.build(spec, opts) if entry is not None else _pipeline_model(spec, opts)


def _analytic_model(spec: str, den, truth: Statistics, desc: str, linear: bool, opts: ModelOptions) -> EvalModel:
    """An exact-score model scored in pixel space against its known moments; its samples are exact references."""
    if opts.extractor is not None:
        raise ValueError(f"model {spec!r} is scored by the exact Fréchet distance in pixel space; drop --extractor")
    den = den.to(opts.device)

    def exact_samples(n: int, seed: int) -> np.ndarray:
        xs = den.sample_data(n, torch.Generator().manual_seed(seed), dtype=torch.float64)
        return xs.reshape(n, -1).cpu().numpy()

    @functools.lru_cache(maxsize=None)
    def floor_features(n: int) -> np.ndarray:
        return exact_samples(n, FLOOR_SAMPLE_SEED)

    @functools.lru_cache(maxsize=None)
    def reference_features(n: int) -> np.ndarray:
        return exact_samples(n, REFERENCE_SAMPLE_SEED)

    @functools.lru_cache(maxsize=None)
    def floor(n: int) -> float:
        return frechet_distance(compute_statistics(floor_features(n)), truth)

    sched = {"_class_name": "DDPMScheduler", "clip_sample": False,
             **{k: den.config[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                           "trained_betas", "prediction_type")}}
    return EvalModel(spec, "analytic", "exact-fd", sched, denoiser=den, reference=lambda: truth,
                     reference_desc=desc, reference_features=reference_features, floor=floor,
                     floor_features=floor_features, linear=linear, is_flow=den.config.prediction_type == "flow")


@register_model("gmm", takes_extractor=False, description="10-class diagonal GMM fitted to 16×16 digits")
def _gmm_model(spec: str, opts: ModelOptions) -> EvalModel:
    from .exact import mixture_moments

    den = digits_gmm()
    w, m, v = den.weights.double(), den.means.double(), den.variances.double()
    truth = mixture_moments(w.numpy(), m.reshape(len(w), -1).numpy(), v.numpy())
    return _analytic_model(spec, den, truth, "closed-form moments of the 10-class digits GMM", False, opts)


@register_model("gaussian", takes_extractor=False, description="stationary Gaussian (linear-Gaussian, exact)")
def _gaussian_model(spec: str, opts: ModelOptions) -> EvalModel:
    from lml_sampler.models.analytic import GaussianDenoiser

    den = GaussianDenoiser.stationary(dtype=torch.float64)
    truth = Statistics(den.mean.double().reshape(-1).numpy(), den.covariance().numpy(), None)
    return _analytic_model(spec, den, truth, "N(0, Σ), stationary 1/|f|² spectrum, trace 64", True, opts)


def _load_pipe(spec: str, opts: ModelOptions):
    from lml_sampler.models.bundled import load_pipeline

    pipe = load_pipeline(spec)
    pipe.to(opts.device)
    pipe.set_progress_bar_config(disable=True)
    sched_cfg = dict(pipe.scheduler.config)
    is_flow = "FlowMatch" in str(sched_cfg.get("_class_name", ""))
    accepts_guidance = "guidance_scale" in inspect.signature(pipe.__call__).parameters
    return pipe, sched_cfg, is_flow, accepts_guidance


@register_model("digits", description="bundled 16×16 digits DDPM, domain FID with the digits classifier")
def _digits_model(spec: str, opts: ModelOptions) -> EvalModel:
    pipe, sched_cfg, is_flow, accepts_guidance = _load_pipe(spec, opts)
    name = opts.extractor or "digits-features"
    try:
        ext = load_feature_extractor(name, opts.inception_weights, in_channels=1)
    except FileNotFoundError as exc:
        if opts.extractor is not None:
            raise
        warnings.warn(f"{exc}; falling back to the random-conv stand-in extractor", stacklevel=2)
        name, ext = "random-conv", load_feature_extractor("random-conv", in_channels=1)
    ext = ext.to(opts.device)
    meta = dict(extractor=name, source="digits_dataset(16,test)")

    def reference_features(n: int | None = None) -> np.ndarray:
        from lml_sampler.data.digits import digits_dataset

        def compute() -> np.ndarray:
            return extract_features(ext, quantize_uint8(digits_dataset(16, "test"))).numpy()

        return _cached(opts.cache_dir, f"digits-test_{name}.features", compute, load_features, save_features, **meta)

    def reference() -> Statistics:
        return _cached(opts.cache_dir, f"digits-test_{name}", lambda: compute_statistics(reference_features()),
                       load_statistics, save_statistics, **meta)

    @functools.lru_cache(maxsize=None)
    def floor_features(n: int) -> np.ndarray:
        """n real *train* digits (a random subset, with repeats past 1438) in feature space."""
        from lml_sampler.data.digits import digits_dataset

        train = quantize_uint8(digits_dataset(16, "train"))
        g = torch.Generator().manual_seed(0)
        idx = torch.randint(train.shape[0], (n,), generator=g) if n > train.shape[0] \
            else torch.randperm(train.shape[0], generator=g)[:n]
        return extract_features(ext, train[idx]).numpy()

    @functools.lru_cache(maxsize=None)
    def floor(n: int) -> float:
        """FID of n real train digits vs the test statistics."""
        return frechet_distance(compute_statistics(floor_features(n)), reference())

    return EvalModel(spec, "pipeline", "domain-fid", sched_cfg, pipe=pipe, extractor=ext, extractor_name=name,
                     reference=reference, reference_desc="359 held-out real digits (test split)",
                     reference_features=reference_features, floor=floor, floor_features=floor_features,
                     is_flow=is_flow, accepts_guidance=accepts_guidance)


def _pipeline_model(spec: str, opts: ModelOptions) -> EvalModel:
    """Any diffusers pipeline (folder or Hub id), scored against ``--ref-stats`` (and its ``.features.npz``)."""
    pipe, sched_cfg, is_flow, accepts_guidance = _load_pipe(spec, opts)
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    in_channels = 3 if getattr(pipe, "vae", None) is not None else int(getattr(denoiser.config, "in_channels", 3))
    name = opts.extractor or "inception"
    ext = load_feature_extractor(name, opts.inception_weights, in_channels=in_channels).to(opts.device)
    if opts.ref_stats is None:
        raise ValueError(f"model {spec!r} needs reference statistics: pass --ref-stats FILE.npz (lml-eval stats)")
    stats, meta = load_statistics(opts.ref_stats, with_metadata=True)
    if meta.get("extractor") not in (None, name):
        raise ValueError(f"{opts.ref_stats} was computed with extractor {meta['extractor']!r}, not {name!r}: "
                         f"pass --extractor {meta['extractor']} or statistics made with {name}")

    @functools.lru_cache(maxsize=None)
    def reference_features(n: int | None = None) -> np.ndarray:
        path = features_path(opts.ref_stats)
        if not path.is_file():
            raise FileNotFoundError(f"KID and precision/recall need the reference's raw features, {path} is missing: "
                                    f"write it with `lml-eval stats SOURCE --out {opts.ref_stats} --features`")
        feats, fmeta = load_features(path, with_metadata=True)
        if fmeta.get("extractor") not in (None, name):
            raise ValueError(f"{path} was computed with extractor {fmeta['extractor']!r}, not {name!r}")
        return feats

    metric = "inception-fid" if name == "inception" else "domain-fid"
    return EvalModel(Path(spec).name if Path(spec).is_dir() else spec, "pipeline", metric, sched_cfg, pipe=pipe,
                     extractor=ext, extractor_name=name, reference=lambda: stats, reference_desc=str(opts.ref_stats),
                     reference_features=reference_features, prompts=list(opts.prompts) if opts.prompts else None,
                     is_flow=is_flow, accepts_guidance=accepts_guidance)


BUILTIN_MODELS = tuple(MODEL_SPECS)
