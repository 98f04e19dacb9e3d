"""The exact-score models in the rectified-flow parametrisation x_t = (1 − t)·x0 + t·z (velocity output), and exact
classifier-free guidance on a class-conditional mixture (lml_sampler/models/analytic/guidance.py).

References are independent of the model code: torch.distributions log-densities of the flow marginal p_t, autograd
for the score, central finite differences in t and x for the continuity equation. Budget: a few seconds.
"""

from __future__ import annotations

import pytest
import torch

from lml_sampler.models.analytic import GMMDenoiser, GuidedMixtureDenoiser

from test_analytic_models import ALL_MODELS, F64, _log_marginal

T = 1000  # num_train_timesteps: the model sees timestep t·T


def _flow_points(model, ts, seed):
    """Points x_t = (1 − t)x0 + t z on the flow path at the times ts (B,)."""
    g = torch.Generator().manual_seed(seed)
    x0 = model.sample_data(ts.numel(), generator=g, dtype=F64)
    z = torch.randn(x0.shape, generator=g, dtype=F64)
    t = ts.view(-1, 1, 1, 1)
    return (1 - t) * x0 + t * z


@pytest.mark.parametrize("name", list(ALL_MODELS))
def test_flow_velocity_is_the_score_identity(name):
    """E[z − x0 | x_t] = −(x + t·∇log p_t(x))/(1 − t) (Tweedie on the flow path: α = 1 − t, σ = t), with p_t from
    torch.distributions and autograd."""
    model = ALL_MODELS[name](prediction_type="flow")
    ts = torch.tensor([0.02, 0.3, 0.5, 0.81, 0.97], dtype=F64)
    x = _flow_points(model, ts, seed=5).requires_grad_(True)
    (score,) = torch.autograd.grad(_log_marginal(model, x, 1 - ts, ts).sum(), x)
    t = ts.view(-1, 1, 1, 1)
    expected = -(x.detach() + t * score) / (1 - t)
    # float64 closed forms on both sides; 1/(1 − t) ≤ 33 amplifies round-off only: 1e-8 is far below a modelling
    # error (a wrong α/σ convention changes v at O(1)).
    torch.testing.assert_close(model(x.detach(), ts * T).sample, expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", ["gmm-iso", "gmm-diag", "empirical", "gauss-diag"])
def test_flow_velocity_transports_the_marginals(name):
    """The continuity equation ∂_t log p_t + ∇·v + v·∇log p_t = 0: the exact velocity moves p_t along the path.
    ∂_t and ∇· by central finite differences, ∇log p_t by autograd."""
    model = ALL_MODELS[name](prediction_type="flow")
    ts = torch.tensor([0.1, 0.4, 0.7, 0.9], dtype=F64)
    x = _flow_points(model, ts, seed=6)
    h = 1e-5
    dt_logp = (_log_marginal(model, x, 1 - ts - h, ts + h) - _log_marginal(model, x, 1 - ts + h, ts - h)) / (2 * h)
    flat = x.reshape(x.shape[0], -1)
    div = torch.zeros(x.shape[0], dtype=F64)
    for i in range(flat.shape[1]):
        e = torch.zeros_like(flat)
        e[:, i] = h
        vp = model((flat + e).reshape(x.shape), ts * T).sample.reshape(flat.shape)[:, i]
        vm = model((flat - e).reshape(x.shape), ts * T).sample.reshape(flat.shape)[:, i]
        div += (vp - vm) / (2 * h)
    xg = x.clone().requires_grad_(True)
    (score,) = torch.autograd.grad(_log_marginal(model, xg, 1 - ts, ts).sum(), xg)
    v = model(x, ts * T).sample
    residual = dt_logp + div + (v * score).flatten(1).sum(1)
    # Central differences: O(h²) truncation (~1e-10) plus round-off ~ulp·|log p|/h ≈ 1e-10 per term; a velocity off
    # by a factor (1 + 1e-3) already leaves a residual ~1e-3·|∇·v| ≳ 1e-3.
    torch.testing.assert_close(residual, torch.zeros_like(residual), rtol=0, atol=1e-5)


def _class_gmm(prediction_type: str):
    """Three classes, five isotropic/diagonal components (class 1 has two), 1×2×2 images."""
    g = torch.Generator().manual_seed(3)
    means = 1.5 * torch.randn(5, 1, 2, 2, generator=g, dtype=F64)
    variances = 0.05 + 0.3 * torch.rand(5, 1, 2, 2, generator=g, dtype=F64)
    weights = torch.tensor([0.3, 0.1, 0.2, 0.25, 0.15], dtype=F64)
    classes = torch.tensor([0, 1, 1, 2, 0])
    return GMMDenoiser.from_components(weights, means, variances, chunk_size=2,
                                       prediction_type=prediction_type), classes, (weights, means, variances)


@pytest.mark.parametrize("prediction_type", ["epsilon", "flow"])
@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0, 7.5])
def test_guidance_combines_the_two_exact_outputs(prediction_type, scale):
    """out = out_u + w·(out_c − out_u), with the conditional output of each sample from a separately built mixture
    of its class's components (weights renormalised)."""
    gmm, classes, (w, m, v) = _class_gmm(prediction_type)
    labels = torch.tensor([0, 1, 2, 1, 0, 2])
    guided = GuidedMixtureDenoiser(gmm, classes, labels, scale)
    t = torch.tensor([30.0, 200, 450, 600, 850, 990], dtype=F64)
    x = 2 * torch.randn(6, 1, 2, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    uncond = gmm(x, t).sample
    cond = torch.cat([
        GMMDenoiser.from_components(w[classes == c], m[classes == c], v[classes == c],
                                    prediction_type=prediction_type)(x[i : i + 1], t[i : i + 1]).sample
        for i, c in enumerate(labels.tolist())])
    # Same float64 closed forms, summed in another order: round-off only.
    torch.testing.assert_close(guided(x, t).sample, uncond + scale * (cond - uncond), rtol=1e-10, atol=1e-10)


def test_guidance_refuses_bad_input():
    gmm, classes, _ = _class_gmm("flow")
    with pytest.raises(ValueError, match="component_classes"):
        GuidedMixtureDenoiser(gmm, classes[:3], torch.tensor([0]), 1.0)
    with pytest.raises(ValueError, match="no component"):
        GuidedMixtureDenoiser(gmm, classes, torch.tensor([7]), 1.0)
    with pytest.raises(ValueError, match="guidance_scale"):
        GuidedMixtureDenoiser(gmm, classes, torch.tensor([0]), -1.0)
    with pytest.raises(ValueError, match="batch size"):
        GuidedMixtureDenoiser(gmm, classes, torch.tensor([0, 1]), 2.0)(torch.zeros(3, 1, 2, 2), 500.0)
