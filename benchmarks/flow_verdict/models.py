"""The exact-score flow benchmarks, their metrics and estimator floors.

* ``gaussian-flow``: the stationary Gaussian 16×16 (``docs/exact-score-benchmark.md §1``) with the velocity output.
  Linear samplers get the exact transfer-matrix Fréchet distance; nonlinear ones (LML with κ > 0, fp32 rounding) the
  stationary spectral FD with the input-noise control variate (``benchmarks.lml_verdict.estimators``).
* ``gmm-flow``: the 10-class diagonal GMM of the 8×8 digits (d = 64) with the velocity output; pixel FD to the exact
  mixture moments; floor = N exact mixture samples.
* ``cfg``: the same GMM conditioned on class ``i mod 10`` for sample i with exact classifier-free guidance
  (``GuidedMixtureDenoiser``), as a VP (ε) and as a flow (velocity) model. Guided sampling has no closed-form target
  law, so the target is the converged guided ODE from the same noise (docs/cfg.md §2): FD of the outputs to the
  moments of the reference outputs, floor = that FD between two reference solutions of different step counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from benchmarks.lml_verdict.estimators import full_fd, stationary_fd
from benchmarks.lml_verdict.specs import BASE_CONFIG
from lml_sampler.eval.models import digits_gmm
from lml_sampler.eval import (
    Statistics,
    compute_statistics,
    linear_sampler_distance,
    mixture_moments,
    monte_carlo_floor,
    sample_seed,
)

__all__ = ["FLOW_CONFIG", "FlowBenchmark", "gaussian_flow", "gmm_flow", "class_gmm", "CFG_REFERENCE"]

#: The flow models' scheduler config: FlowMatchEulerDiscreteScheduler's (1000 training steps, no shift).
FLOW_CONFIG = {"num_train_timesteps": 1000, "shift": 1.0}
#: Sample index of the floors' generators, far above any sampler cell's.
FLOOR_STREAM = 10**6
#: Converged guided ODE: (sampler, steps) of the reference and of the coarser solution that sets the floor.
CFG_REFERENCE = {"flow": ("flow-heun", 100, 50), "vp": ("dpm++2m-lu", 200, 100)}


@dataclass(kw_only=True)
class FlowBenchmark:
    """A model with exactly known data, how to score a sampler's outputs on it, and its estimator floor."""

    name: str
    title: str
    metric_label: str
    model: torch.nn.Module
    shape: tuple[int, ...]
    n: int
    evaluate: Callable[[torch.Tensor, torch.Tensor], dict[str, float]]
    floor: Callable[[int], float]
    grid_level: str = "full"  # the γ grid (specs.LEVELS)
    exact_linear: Callable[[Any, int], float] | None = None
    base_config: dict = field(default_factory=lambda: dict(FLOW_CONFIG))


def gaussian_flow(quick: bool) -> FlowBenchmark:
    from lml_sampler.models.analytic import GaussianDenoiser

    g = GaussianDenoiser.stationary(dtype=torch.float64, prediction_type="flow")
    spectrum = g.spectrum.double()

    def evaluate(out, noise):
        fd, se = stationary_fd(out, spectrum, noise)
        return {"value": fd, "se": se}

    def floor(seed):
        x = g.sample_data(n, torch.Generator().manual_seed(sample_seed(seed, FLOOR_STREAM)))
        return stationary_fd(x, spectrum)[0]

    n = 256 if quick else 2048
    return FlowBenchmark(name="gaussian-flow", title="Stationary Gaussian 16×16, flow parametrisation (exact velocity)",
                         metric_label="Fréchet distance (trace Σ = 64)", model=g, shape=tuple(g.data_shape), n=n,
                         evaluate=evaluate, floor=floor, grid_level="quick" if quick else "full",
                         exact_linear=lambda sched, steps: linear_sampler_distance(g, sched, steps))


def class_gmm(prediction_type: str):
    """The 10-class diagonal GMM of the 8×8 digits (class k = component k) and its exact moments."""
    gmm = digits_gmm(size=8, variance_floor=1e-2, prediction_type=prediction_type)
    w, m, v = gmm.weights.double(), gmm.means.double(), gmm.variances.double()
    return gmm, mixture_moments(w.numpy(), m.reshape(len(w), -1).numpy(), v.numpy())


def gmm_flow(quick: bool) -> FlowBenchmark:
    gmm, truth = class_gmm("flow")
    n = 256 if quick else 1000

    def floor(seed):
        return monte_carlo_floor(lambda k, gen: gmm.sample_data(k, gen), truth, n,
                                 seed=sample_seed(seed, FLOOR_STREAM))

    return FlowBenchmark(name="gmm-flow", title="Digits GMM 8×8 (10 diagonal components), flow parametrisation",
                         metric_label="pixel Fréchet distance to the exact mixture moments", model=gmm,
                         shape=tuple(gmm.data_shape), n=n, evaluate=lambda out, noise: {"value": full_fd(out, truth)},
                         floor=floor, grid_level="quick" if quick else "reduced")


def vp_config() -> dict:
    return dict(BASE_CONFIG)


def reference_statistics(out: torch.Tensor) -> Statistics:
    return compute_statistics(out.reshape(out.shape[0], -1).double().numpy())


#: Benchmark name -> constructor(quick), in report order.
BENCHMARKS = {"gaussian-flow": gaussian_flow, "gmm-flow": gmm_flow}
