"""The four benchmarks: a model, its metric against the truth and the metric's estimator floor.

* Stationary Gaussian 16×16 (``docs/exact-score-benchmark.md §1``): linear samplers get the exact transfer-matrix
  Fréchet distance (``lml_sampler.eval.linear_sampler_distance``, §2); nonlinear samplers (LML with κ > 0, fp32
  rounding, Langevin) the stationary spectral FD with the input-noise control variate (§3,
  :func:`~benchmarks.lml_verdict.estimators.stationary_fd`). The plain full-covariance sample FD and its floor
  (N exact samples) are stored too, as a check.
* Gaussian mixture: a 10-component class-conditional diagonal Gaussian fit of the 8×8 digits (d = 64); FD in pixel
  space to the exact mixture moments, floor = N exact mixture samples (§4).
* Empirical digits 16×16 (``EmpiricalDenoiser.digits``): domain FID with the bundled ``digits-features`` classifier
  against the training set (the truth); floor = N exact draws from the training set (§4).
* Bundled digits DDPM (``load_pipeline("digits")``, if its weights exist): domain FID against the held-out test
  split; floor = N training images against the test split. Its cells live under ``bundled-<weights digest>``, so
  retrained weights start a fresh set of cells and leave the analytic benchmarks' cells alone.

Each benchmark also says which stock samplers it runs (:attr:`Benchmark.stock`), which released-expression specs
(:attr:`Benchmark.official`) and on how many discretisations per parent the γ family runs (:attr:`Benchmark.lml_top`).
"""

from __future__ import annotations

import abc
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import torch

from lml_sampler.data.digits import digits_dataset
from lml_sampler.eval import (
    Statistics,
    compute_statistics,
    extract_features,
    frechet_distance,
    linear_sampler_distance,
    load_feature_extractor,
    mixture_moments,
    monte_carlo_floor,
    quantize_uint8,
    sample_seed,
)

from lml_sampler.sampling import sample

from .estimators import full_fd, stationary_fd
from .specs import (
    BASE_CONFIG,
    GOAL_NFES,
    NFES,
    OFFICIAL,
    REPORT_SEEDS,
    STOCK_SOLVERS,
    TUNE_NFES,
    TUNE_SEED,
    stock_names,
)

#: Sample index of the floors' generators: far above any sampler cell's sample indices.
FLOOR_STREAM = 10**6

#: The solvers of the quick smoke run (every discretisation of each).
QUICK_SOLVERS = ("ddim", "dpm++2m", "unipc")
#: The trained model runs every stock solver but Euler (first order, last on every exact-score model).
BUNDLED_SOLVERS = tuple(s for s in STOCK_SOLVERS if s != "euler")
#: The released expression at κ = 0 on the analytic models other than the Gaussian (no CIFAR-equivalent λ).
REDUCED_OFFICIAL = ("lml-off-dpm", "lml-off-dpm++2m")
#: The files that determine the bundled digits pipeline's outputs: the cells of that benchmark are keyed on them.
BUNDLED_FILES = ("unet/diffusion_pytorch_model.safetensors", "unet/config.json", "scheduler/scheduler_config.json")


def weights_digest(folder) -> str:
    """First 12 hex digits of the SHA-256 of a bundled pipeline's :data:`BUNDLED_FILES` (names and bytes)."""
    from pathlib import Path

    h = hashlib.sha256()
    for rel in BUNDLED_FILES:
        h.update(rel.encode() + b"\0" + (Path(folder) / rel).read_bytes())
    return h.hexdigest()[:12]


def store_name(bench_name: str) -> str:
    """The cell-store folder of a benchmark: its name, and for the trained model the digest of its weights."""
    if bench_name != "bundled":
        return bench_name
    from lml_sampler.models.bundled import bundled_path

    return f"bundled-{weights_digest(bundled_path('digits'))}"


@dataclass(kw_only=True)
class Benchmark(abc.ABC):
    """A model with exactly known (or held-out) data, how to score samplers on it, and the study's grid for it.

    ``evaluate`` returns the metrics of one cell (``"value"`` is the reported error); ``floor`` the same metric of
    ``n`` exact data samples, which no sampler can beat at this N.
    """

    name: str
    title: str
    metric_label: str
    model: torch.nn.Module  # model(x, t): a UNet2DModel-like ε prediction
    shape: tuple[int, ...]
    base_config: dict
    n: int
    nfes: tuple[int, ...]
    tune_nfes: tuple[int, ...]  # NFEs tuned on seed set 0 (others use the nearest tuned NFE)
    #: The NFEs whose seed-0 stock values choose the discretisations the LML families run on (None: ``tune_nfes``);
    #: fixed, so that tuning at one more NFE adds cells without changing the grid of the others.
    rank_nfes: tuple[int, ...] | None = None
    grid_level: str
    stock: tuple[str, ...]  # stock names (solver-discretisation)
    official: tuple[str, ...]  # ids of the released-expression specs (specs.OFFICIAL)
    lml_top: int | None  # the γ family runs on the default and this many best other discretisations (None: all)
    dim: int
    dtype: torch.dtype = torch.float64
    seeds: tuple[int, ...] | None = None  # overrides the study's seed sets (the expensive trained model)

    @abc.abstractmethod
    def evaluate(self, out: torch.Tensor, noise: torch.Tensor) -> dict[str, float]:
        """Metrics of the outputs ``out`` of a sampler started from ``noise``."""

    @abc.abstractmethod
    def floor(self, seed: int) -> dict[str, float]:
        """The metric of ``n`` exact data samples of seed set ``seed``."""

    @property
    def store_name(self) -> str:
        return store_name(self.name)

    def exact_linear(self, scheduler, nfe: int) -> float | None:
        """The exact metric of a linear sampler, where the benchmark has one (else None: use the estimate)."""
        return None


@dataclass(kw_only=True)
class GaussianBenchmark(Benchmark):
    denoiser: Any  # lml_sampler.models.analytic.GaussianDenoiser
    spectrum: torch.Tensor
    truth: tuple[torch.Tensor, torch.Tensor]  # (mean, covariance)

    @classmethod
    def build(cls, quick: bool) -> GaussianBenchmark:
        from lml_sampler.models.analytic import GaussianDenoiser

        g = GaussianDenoiser.stationary(dtype=torch.float64)
        return cls(
            name="gaussian", title="Stationary Gaussian 16×16 (exact score)",
            metric_label="Fréchet distance (trace Σ = 64)", model=g, shape=tuple(g.data_shape),
            base_config=dict(BASE_CONFIG), n=512 if quick else 4096, nfes=(5, 10) if quick else NFES,
            tune_nfes=(5, 10) if quick else NFES, grid_level="quick" if quick else "full",
            stock=stock_names(QUICK_SOLVERS if quick else STOCK_SOLVERS), official=tuple(OFFICIAL),
            lml_top=1 if quick else None, dim=g.dim, denoiser=g, spectrum=g.spectrum.double(),
            truth=(torch.zeros(g.dim, dtype=torch.float64), g.covariance()),
        )

    def evaluate(self, out, noise):
        fd_cv, se_cv = stationary_fd(out, self.spectrum, noise)
        fd_sp, se_sp = stationary_fd(out, self.spectrum)
        return {"value": fd_cv, "se": se_cv, "fd_spectral_plain": fd_sp, "se_spectral_plain": se_sp,
                "fd_full": full_fd(out, self.truth)}

    def floor(self, seed):
        x = self.denoiser.sample_data(self.n, torch.Generator().manual_seed(sample_seed(seed, FLOOR_STREAM)))
        fd_sp, _ = stationary_fd(x, self.spectrum)
        fd_full = monte_carlo_floor(lambda k, gen: self.denoiser.sample_data(k, gen), self.truth, self.n,
                                    seed=sample_seed(seed, FLOOR_STREAM + 1))
        return {"value": fd_sp, "fd_full": fd_full}

    def exact_linear(self, scheduler, nfe):
        """The transfer-matrix FD; inf if the sampler's output is not finite (a NaN step coefficient, which a
        linear sampler applies to every input alike, so one probe sample shows it)."""
        probe = torch.ones(1, *self.shape, dtype=torch.float64)
        out, _ = sample(self.denoiser, scheduler, probe, nfe)
        if not bool(torch.isfinite(out).all()):
            return float("inf")
        value = linear_sampler_distance(self.denoiser, scheduler, nfe)
        return value if math.isfinite(value) else float("inf")


@dataclass(kw_only=True)
class GMMBenchmark(Benchmark):
    denoiser: Any  # lml_sampler.models.analytic.GMMDenoiser
    truth: Statistics  # the exact mixture moments

    @classmethod
    def build(cls, quick: bool) -> GMMBenchmark:
        from lml_sampler.models.analytic import GMMDenoiser

        x, y = digits_dataset(8, "train", return_labels=True)
        x = x.double()
        weights = torch.stack([(y == k).double().mean() for k in range(10)])
        means = torch.stack([x[y == k].mean(0) for k in range(10)])
        # per-pixel class variances plus 0.01 so that no component is degenerate (the always-black borders)
        variances = torch.stack([x[y == k].var(0) for k in range(10)]) + 0.01
        gmm = GMMDenoiser.from_components(weights, means, variances)
        return cls(
            name="gmm", title="Gaussian mixture: 10 diagonal components fitted to the 8×8 digits (exact score)",
            metric_label="pixel Fréchet distance to the exact mixture moments", model=gmm,
            shape=tuple(gmm.data_shape), base_config=dict(BASE_CONFIG), n=512 if quick else 2000,
            nfes=(5, 10) if quick else NFES, tune_nfes=(5, 10) if quick else TUNE_NFES, rank_nfes=GOAL_NFES,
            grid_level="quick" if quick else "reduced", stock=stock_names(QUICK_SOLVERS if quick else STOCK_SOLVERS),
            official=REDUCED_OFFICIAL, lml_top=1 if quick else 2, dim=gmm.dim, denoiser=gmm,
            truth=mixture_moments(weights.numpy(), means.numpy(), variances.numpy()),
        )

    def evaluate(self, out, noise):
        return {"value": full_fd(out, self.truth)}

    def floor(self, seed):
        return {"value": monte_carlo_floor(lambda k, gen: self.denoiser.sample_data(k, gen), self.truth, self.n,
                                           seed=sample_seed(seed, FLOOR_STREAM))}


@dataclass(frozen=True)
class DomainFID:
    """FID in the feature space of the bundled ``digits-features`` classifier against fixed reference images."""

    extractor: Any
    reference: Statistics

    @classmethod
    def against(cls, images: torch.Tensor) -> DomainFID:
        extractor = load_feature_extractor("digits-features")
        return cls(extractor, compute_statistics(extract_features(extractor, quantize_uint8(images))))

    def __call__(self, images: torch.Tensor) -> float:
        feats = extract_features(self.extractor, quantize_uint8(images))
        return frechet_distance(compute_statistics(feats), self.reference)


@dataclass(kw_only=True)
class EmpiricalBenchmark(Benchmark):
    denoiser: Any  # lml_sampler.models.analytic.EmpiricalDenoiser
    fid: DomainFID  # against the training set, which is the exact data law of the empirical denoiser

    @classmethod
    def build(cls, quick: bool) -> EmpiricalBenchmark:
        from lml_sampler.models.analytic import EmpiricalDenoiser

        emp = EmpiricalDenoiser.digits(size=16)
        return cls(
            name="empirical", title="Empirical digits 16×16 (exact score of the 1438 training images)",
            metric_label="domain FID (digits-features) vs training set", model=emp, shape=tuple(emp.data_shape),
            base_config=dict(BASE_CONFIG), n=512 if quick else 2000, nfes=(5, 10) if quick else NFES,
            tune_nfes=(5, 10) if quick else TUNE_NFES, rank_nfes=GOAL_NFES, grid_level="quick" if quick else "reduced",
            stock=stock_names(QUICK_SOLVERS if quick else STOCK_SOLVERS), official=REDUCED_OFFICIAL,
            lml_top=1 if quick else 2, dim=emp.dim, denoiser=emp, fid=DomainFID.against(digits_dataset(16, "train")),
        )

    def evaluate(self, out, noise):
        return {"value": self.fid(out)}

    def floor(self, seed):
        return {"value": self.fid(self.denoiser.sample_data(
            self.n, torch.Generator().manual_seed(sample_seed(seed, FLOOR_STREAM))))}


@dataclass(kw_only=True)
class BundledBenchmark(Benchmark):
    fid: DomainFID  # against the held-out test split
    train: torch.Tensor  # the floor's exact samples

    @classmethod
    def build(cls, quick: bool) -> BundledBenchmark:
        from lml_sampler.models.bundled import bundled_path, load_pipeline

        pipe = load_pipeline("digits")
        unet = pipe.unet.eval().requires_grad_(False)
        config = dict(pipe.scheduler.config)
        config["clip_sample"] = False  # as for every other sampler here: no x̂0 clipping inside DDIM
        size = unet.config.sample_size
        info_path = bundled_path("digits") / "training.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        trained = f", {info['steps']} training steps, {info.get('status', '?')}" if "steps" in info else ""
        return cls(
            name="bundled", title=f"Bundled digits DDPM (trained UNet{trained})",
            metric_label="domain FID (digits-features) vs held-out test digits", model=unet,
            shape=(unet.config.in_channels, size, size), base_config=config, n=128 if quick else 256,
            nfes=(5, 10) if quick else NFES, tune_nfes=(5, 10) if quick else TUNE_NFES, rank_nfes=GOAL_NFES,
            grid_level="quick",
            # a UNet call costs ~100x an analytic one: no Euler and no beta σ, the worst solver and the worst
            # discretisation on all three exact-score models
            stock=stock_names(QUICK_SOLVERS if quick else BUNDLED_SOLVERS, exclude=("beta",)),
            official=("lml-off-dpm",), lml_top=1,
            dim=unet.config.in_channels * size * size, dtype=torch.float32,
            seeds=(TUNE_SEED, REPORT_SEEDS[0]),  # a UNet forward costs ~100x an analytic one: one report seed set
            fid=DomainFID.against(digits_dataset(16, "test")), train=digits_dataset(16, "train"),
        )

    def evaluate(self, out, noise):
        return {"value": self.fid(out)}

    def floor(self, seed):
        idx = torch.randint(self.train.shape[0], (self.n,),
                            generator=torch.Generator().manual_seed(sample_seed(seed, FLOOR_STREAM)))
        return {"value": self.fid(self.train[idx])}


#: Benchmark name -> constructor(quick); the report lists the benchmarks in this order.
BENCHMARKS = {"gaussian": GaussianBenchmark.build, "gmm": GMMBenchmark.build, "empirical": EmpiricalBenchmark.build,
              "bundled": BundledBenchmark.build}
