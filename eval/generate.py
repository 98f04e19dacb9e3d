"""Sample generators for the sweep: a batch of sample indices in, arrays out (raw samples and uint8 images).

:class:`ModelSampler` runs an unconditional denoiser (the analytic models) through the package's sampling loop;
:class:`PipelineSampler` runs a diffusers pipeline. Both draw sample ``i`` from its own generator
(:mod:`~lml_sampler.eval.seeding`), so outputs do not depend on batching, sharding or the number of processes.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from lml_sampler.sampling import sample

from .fid import quantize_uint8
from .seeding import sample_generators

__all__ = ["ModelSampler", "PipelineSampler"]


def _sample_unconditional(model, scheduler, steps: int, seed: int, indices, shape: tuple[int, ...],
                          dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, int]:
    """x_T from each index's own CPU generator, then :func:`lml_sampler.sampling.sample`; the same generators
    continue into the scheduler's per-step noise (as in ``DDPMPipeline``), so stochastic samplers stay per-index."""
    gens = sample_generators(seed, indices)
    # drawn on the CPU and moved: the same samples on every device; equals diffusers' randn_tensor with a list
    x_T = torch.stack([torch.randn(shape, generator=g, dtype=dtype) for g in gens]).to(device)
    return sample(model, scheduler, x_T, steps, generator=gens)


class ModelSampler:
    """Sampler over an unconditional denoiser called like ``UNet2DModel`` (analytic models), own loop, no clamping.

    Returns ``{"raw": float32 outputs, "images": uint8}`` (images quantised from ``value_range``; only for
    image-shaped outputs) and records the measured NFE in ``self.nfe``.
    """

    def __init__(self, model, scheduler, num_inference_steps: int, seed: int, sample_shape: tuple[int, ...],
                 value_range: tuple[float, float] = (-1.0, 1.0), dtype: torch.dtype = torch.float32) -> None:
        self.model, self.scheduler, self.steps, self.seed = model, scheduler, int(num_inference_steps), int(seed)
        self.sample_shape, self.value_range, self.dtype = tuple(sample_shape), value_range, dtype
        self.nfe: int | None = None

    @torch.no_grad()
    def __call__(self, indices) -> dict[str, np.ndarray]:
        device = next((b.device for b in self.model.buffers()), torch.device("cpu")) \
            if isinstance(self.model, torch.nn.Module) else torch.device("cpu")
        x0, self.nfe = _sample_unconditional(self.model, self.scheduler, self.steps, self.seed, indices,
                                             self.sample_shape, self.dtype, device)
        out = {"raw": x0.float().cpu().numpy()}
        if x0.ndim == 4:
            out["images"] = quantize_uint8(x0.float().cpu(), self.value_range).numpy()
        return out


class PipelineSampler:
    """Sampler over a diffusers pipeline (unconditional, or text-to-image with ``prompts``).

    Sample ``i`` uses prompt ``prompts[i % len(prompts)]`` and the generator of ``sample_seed(seed, i)``. Outputs
    are quantised to uint8 by rounding (what saving a PNG does). The NFE is measured by counting denoiser calls.

    Pipelines made of only ``unet`` + ``scheduler`` (``DDPMPipeline``, ``DDIMPipeline``) are run by an own loop on
    ``pipe.unet`` that mirrors them: ``DDPMPipeline`` always passes ``generator=`` to ``scheduler.step`` (UniPC
    rejects it) and never applies ``init_noise_sigma`` / ``scale_model_input`` (wrong for Euler); the loop forwards
    ``generator`` only where accepted and applies both, then post-processes like the pipeline
    (``(x/2 + 0.5).clamp(0, 1)``). Other pipelines are called with ``output_type="np"``.
    """

    def __init__(self, pipe, scheduler, num_inference_steps: int, seed: int, prompts: list[str] | None = None,
                 **pipe_kwargs: Any) -> None:
        self.pipe, self.scheduler, self.steps, self.seed = pipe, scheduler, int(num_inference_steps), int(seed)
        self.prompts, self.pipe_kwargs = prompts, pipe_kwargs
        self.nfe: int | None = None
        self.denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        if self.denoiser is None:
            raise ValueError("pipeline has neither .unet nor .transformer: cannot count NFE")
        components = getattr(pipe, "components", None)
        self.own_loop = prompts is None and isinstance(components, dict) and set(components) <= {"unet", "scheduler"}

    @torch.no_grad()
    def __call__(self, indices) -> dict[str, np.ndarray]:
        if self.own_loop:
            unet = self.denoiser
            cfg = unet.config
            size = cfg.sample_size if isinstance(cfg.sample_size, (tuple, list)) else (cfg.sample_size,) * 2
            x0, self.nfe = _sample_unconditional(unet, self.scheduler, self.steps, self.seed, indices,
                                                 (cfg.in_channels, *size), unet.dtype, unet.device)
            x = (x0 / 2 + 0.5).clamp(0, 1).float().cpu()
            return {"images": quantize_uint8(x, (0.0, 1.0)).numpy()}
        self.pipe.scheduler = self.scheduler
        # CPU generators: diffusers' randn_tensor draws on the CPU and moves, so samples do not depend on the device
        gens = sample_generators(self.seed, indices)
        kwargs = dict(self.pipe_kwargs, generator=gens, num_inference_steps=self.steps, output_type="np")
        if self.prompts is not None:
            kwargs["prompt"] = [self.prompts[int(i) % len(self.prompts)] for i in indices]
        elif "batch_size" in inspect.signature(self.pipe.__call__).parameters:
            kwargs["batch_size"] = len(indices)
        if hasattr(self.pipe, "set_progress_bar_config"):
            self.pipe.set_progress_bar_config(disable=True)
        calls = [0]
        hook = self.denoiser.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        try:
            out = self.pipe(**kwargs)
        finally:
            hook.remove()
        self.nfe = calls[0]
        images = out.images if hasattr(out, "images") else out[0]
        x = torch.as_tensor(np.asarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
        return {"images": quantize_uint8(x, (0.0, 1.0)).numpy()}
