"""Exact classifier-free guidance on a class-conditional Gaussian mixture.

A mixture whose components carry class labels has two exact denoisers: the unconditional one (all components) and
the conditional one for class c (the components of class c, with their weights renormalised). Classifier-free
guidance with scale w combines the two model outputs as

    out = out_u + w·(out_c − out_u),

and since every prediction type is affine in x̂0 at fixed (x, t) with the same coefficients for both
(``prediction_from_x0``), this equals the output of the guided posterior mean x̂0_u + w·(x̂0_c − x̂0_u). So the
guided ε, v or flow velocity is exact, for VP and flow-matching schedules alike (docs/cfg.md §1).
"""

from __future__ import annotations

import torch
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import Tensor

from .base import prediction_from_x0
from .gmm import GMMDenoiser

__all__ = ["GuidedMixtureDenoiser"]


class GuidedMixtureDenoiser(torch.nn.Module):
    """``model(sample, timestep).sample``: the exactly guided output of a class-conditional :class:`GMMDenoiser`.

    Args:
        mixture: the mixture; its ``prediction_type`` and schedule are used.
        component_classes: (K,) integer class of each component.
        labels: (B,) the class each sample of a batch is conditioned on (every call must have batch size B).
        guidance_scale: w ≥ 0; 1 is the conditional model, 0 the unconditional one.
    """

    def __init__(self, mixture: GMMDenoiser, component_classes: Tensor, labels: Tensor, guidance_scale: float):
        super().__init__()
        component_classes, labels = torch.as_tensor(component_classes), torch.as_tensor(labels)
        if component_classes.shape != mixture.weights.shape:
            raise ValueError(f"component_classes must have shape {tuple(mixture.weights.shape)} (one class per "
                             f"component), got {tuple(component_classes.shape)}")
        if labels.ndim != 1:
            raise ValueError(f"labels must be a (batch,) tensor of classes, got shape {tuple(labels.shape)}")
        missing = set(labels.tolist()) - set(component_classes.tolist())
        if missing:
            raise ValueError(f"labels {sorted(missing)} have no component; classes are {sorted(set(component_classes.tolist()))}")
        if not isinstance(guidance_scale, (int, float)) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a number >= 0, got {guidance_scale!r}")
        self.mixture = mixture
        self.guidance_scale = float(guidance_scale)
        # (B, K): component k is in the class of sample b
        self.register_buffer("member", labels[:, None] == component_classes[None, :], persistent=False)

    @property
    def config(self):
        return self.mixture.config

    @property
    def dtype(self) -> torch.dtype:
        return self.mixture.dtype

    def posterior_means(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂0 unconditional, x̂0 conditional), float64, for float64 x (B, C, H, W), α, σ (B,)."""
        if x.shape[0] != self.member.shape[0]:
            raise ValueError(f"batch size {x.shape[0]} != number of labels {self.member.shape[0]}")
        chunks = list(self.mixture._component_chunks(x, alpha, sigma))
        logits = torch.cat([lg for lg, _ in chunks], dim=1)
        w_u = torch.softmax(logits, dim=1)
        w_c = torch.softmax(logits.masked_fill(~self.member.to(x.device), float("-inf")), dim=1)
        sizes = [lg.shape[1] for lg, _ in chunks]

        def average(w: Tensor) -> Tensor:
            return sum(contract(part) for (_, contract), part in zip(chunks, w.split(sizes, dim=1)))

        return average(w_u), average(w_c)

    def forward(self, sample: Tensor, timestep, return_dict: bool = True):
        alpha, sigma = self.mixture.alpha_sigma(timestep, sample.shape[0])
        x, a, s = self.mixture._float64_inputs(sample, alpha, sigma)
        x0_u, x0_c = self.posterior_means(x, a, s)
        x0 = x0_u + self.guidance_scale * (x0_c - x0_u)
        out = prediction_from_x0(x, x0, a, s, self.mixture.schedule.prediction_type).to(sample.dtype)
        return UNet2DOutput(sample=out) if return_dict else (out,)
