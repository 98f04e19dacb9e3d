"""Exact metrics: the transfer-matrix Fréchet distances of docs/exact-score-benchmark.md §2, mixture moments, the Monte-Carlo floor."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from diffusers import DDPMScheduler

import lml_sampler.eval as ev
from lml_sampler.sampling import sample
from lml_sampler.schedulers.registry import make_scheduler
from lml_sampler.models.analytic import GaussianDenoiser

BASE = DDPMScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000,
                     clip_sample=False).config


@pytest.fixture(scope="module")
def gaussian():
    return GaussianDenoiser.stationary(dtype=torch.float64)


# (sampler, NFE, dtype, value from the published table of docs/exact-score-benchmark.md §2, printed to 4 significant digits)
CELLS = [("ddim", 10, torch.float64, 4.049), ("dpm++2m", 5, torch.float64, 9.919),
         ("dpm++3m", 20, torch.float64, 0.3456), ("unipc", 10, torch.float32, 2.432)]


@pytest.mark.parametrize("sampler,nfe,dtype,expected", CELLS)
def test_reproduces_benchmark_table(gaussian, sampler, nfe, dtype, expected):
    sched = make_scheduler(sampler, BASE)  # ddim: trailing spacing, as in the table
    value = ev.linear_sampler_distance(gaussian, sched, nfe, dtype=dtype)
    # the table prints 4 significant digits: agreement to half a unit in the last printed digit
    assert value == pytest.approx(expected, abs=0.5 * 10 ** (np.floor(np.log10(expected)) - 3))


def test_transfer_matrix_law_matches_samples(gaussian):
    """The transfer-matrix law N(b, MMᵀ) equals the law of actual sampler outputs (a Monte-Carlo check)."""
    sched = make_scheduler("ddim", BASE)
    m = ev.transfer_matrix(gaussian, sched, 5, gaussian.data_shape)
    x = torch.randn(64, *gaussian.data_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out, nfe = sample(gaussian, sched, x, 5)
    assert nfe == 5
    # linear sampler on a zero-mean model: x_0 = M x_T exactly, up to float64 rounding of the FFTs
    torch.testing.assert_close(out.reshape(64, -1), x.reshape(64, -1) @ m.T, rtol=1e-9, atol=1e-9)


def test_gaussian_frechet_closed_form():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    b = torch.randn(6, 6, generator=g, dtype=torch.float64)
    s1, s2 = a @ a.T, b @ b.T + torch.eye(6, dtype=torch.float64)
    mu1, mu2 = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    r1 = scipy.linalg.sqrtm(s1.numpy())
    ref = 6.0 + np.trace(s1.numpy() + s2.numpy() - 2 * scipy.linalg.sqrtm(r1 @ s2.numpy() @ r1).real)
    # float64 eigvals vs sqrtm: relative rounding ~1e-12
    assert ev.gaussian_frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9)


def test_mixture_moments_match_samples():
    w = np.array([0.2, 0.5, 0.3])
    means = np.array([[0.0, 1.0], [2.0, -1.0], [-1.0, 0.5]])
    var = np.array([[0.1, 0.2], [0.3, 0.05], [0.2, 0.2]])  # diagonal
    st = ev.mixture_moments(w, means, var)
    rng = np.random.default_rng(0)
    k = rng.choice(3, size=200_000, p=w)
    x = means[k] + rng.standard_normal((200_000, 2)) * np.sqrt(var[k])
    # Monte-Carlo error of moments with 2e5 samples: ~ sd/sqrt(n) ≈ 3e-3; tolerance 2e-2 is > 6 sigma
    np.testing.assert_allclose(st.mu, x.mean(0), atol=2e-2)
    np.testing.assert_allclose(st.sigma, np.cov(x.T), atol=2e-2)
    iso = ev.mixture_moments(w, means, np.array([0.1, 0.2, 0.3]))
    np.testing.assert_allclose(np.diag(iso.sigma) - np.diag(ev.mixture_moments(w, means).sigma), [0.21, 0.21])  # Σ wₖ sₖ² = 0.02 + 0.10 + 0.09
    with pytest.raises(ValueError, match="weights"):
        ev.mixture_moments([0.5, 0.6], means[:2])


def test_monte_carlo_floor_shrinks_with_n(gaussian):
    truth = ev.Statistics(np.zeros(gaussian.dim), gaussian.covariance().numpy(), None)
    small = ev.monte_carlo_floor(gaussian.sample_data, truth, 500)
    large = ev.monte_carlo_floor(gaussian.sample_data, truth, 4000)
    # the bias of the estimated Fréchet distance scales like d²/n: 8x the samples, clearly smaller floor
    assert 0 < large < small / 3
