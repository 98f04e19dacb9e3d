"""LML schedulers swapped into stock diffusers pipelines built from tiny random local models (no network)."""

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDPMPipeline,
    DDPMScheduler,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from lml_sampler import LMLDDIMScheduler, LMLDPMSolverMultistepScheduler, LMLFlowMatchEulerDiscreteScheduler

ACTIVE = dict(lamb=1e-2, kappa=0.3)


def counting(module):
    """Wrap a module's forward to count model evaluations (NFE)."""
    module.nfe = 0
    forward = module.forward

    def counted(*args, **kwargs):
        module.nfe += 1
        return forward(*args, **kwargs)

    module.forward = counted
    return module


@pytest.fixture(scope="module")
def ddpm_pipe():
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )
    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler())


@pytest.mark.parametrize("cls,kwargs", [
    (LMLDDIMScheduler, {}),
    (LMLDPMSolverMultistepScheduler, dict(solver_order=3, algorithm_type="dpmsolver", final_sigmas_type="sigma_min")),
    (LMLDPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver++")),
])
def test_ddpm_pipeline_swap(ddpm_pipe, cls, kwargs):
    pipe = DDPMPipeline(unet=ddpm_pipe.unet, scheduler=ddpm_pipe.scheduler)
    parent = cls.__mro__[2] if cls.__mro__[1].__name__ == "LMStateMixin" else cls.__mro__[1]
    results = {}
    for name, sched in {
        "parent": parent.from_config(pipe.scheduler.config, **kwargs),
        "identity": cls.from_config(pipe.scheduler.config, **kwargs),
        "active": cls.from_config(pipe.scheduler.config, **kwargs, **ACTIVE),
    }.items():
        pipe.scheduler = sched
        counting(pipe.unet)
        out = pipe(batch_size=2, num_inference_steps=6, generator=torch.Generator().manual_seed(0), output_type="np")
        assert pipe.unet.nfe == 6  # zero extra model evaluations
        results[name] = torch.from_numpy(out.images)
        del pipe.unet.forward  # restore the class forward
    assert torch.equal(results["identity"], results["parent"])
    assert not torch.equal(results["active"], results["parent"])


def test_pipeline_save_and_load_keeps_the_scheduler_class_and_config(ddpm_pipe, tmp_path):
    pipe = DDPMPipeline(unet=ddpm_pipe.unet, scheduler=ddpm_pipe.scheduler)
    pipe.scheduler = LMLDPMSolverMultistepScheduler.from_config(pipe.scheduler.config, solver_order=3, **ACTIVE)
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded.scheduler) is LMLDPMSolverMultistepScheduler
    assert (loaded.scheduler.config.solver_order, loaded.scheduler.config.kappa, loaded.scheduler.config.lamb) == (3, 0.3, 1e-2)
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    a = pipe(batch_size=1, num_inference_steps=4, generator=gen(), output_type="np").images
    b = loaded(batch_size=1, num_inference_steps=4, generator=gen(), output_type="np").images
    assert (a == b).all()


def tiny_sd_pipeline():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=4,
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 8], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=4, sample_size=16,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, vocab_size=100,
        max_position_embeddings=8, projection_dim=16,
    ))
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    # No tokenizer can be built offline without vocabulary files, so the test passes prompt embeddings.
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=None, unet=unet, scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )


@pytest.mark.parametrize("cls", [LMLDDIMScheduler, LMLDPMSolverMultistepScheduler])
def test_stable_diffusion_style_pipeline_swap(cls):
    pipe = tiny_sd_pipeline()
    embeds = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(0))
    outs = {}
    for name, extra in {"identity": {}, "active": ACTIVE}.items():
        pipe.scheduler = cls.from_config(pipe.scheduler.config, **extra)
        counting(pipe.unet)
        out = pipe(prompt_embeds=embeds, negative_prompt_embeds=torch.zeros_like(embeds), num_inference_steps=5,
                   guidance_scale=3.0, height=16, width=16, output_type="pt", generator=torch.Generator().manual_seed(0))
        assert pipe.unet.nfe == 5  # CFG batches both halves into one call per step
        outs[name] = out.images
        del pipe.unet.forward
    parent = cls.__mro__[2]
    pipe.scheduler = parent.from_config(pipe.scheduler.config)
    ref = pipe(prompt_embeds=embeds, negative_prompt_embeds=torch.zeros_like(embeds), num_inference_steps=5,
               guidance_scale=3.0, height=16, width=16, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(outs["identity"], ref)
    assert torch.isfinite(outs["active"]).all() and not torch.equal(outs["active"], ref)


def tiny_flux_pipeline():
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=[2, 2, 4],
    )
    vae = AutoencoderKL(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=1,
        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )
    # Text encoders need vocabulary files to tokenize; Flux accepts precomputed embeddings instead.
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)


def test_flux_pipeline_swap():
    pipe = tiny_flux_pipeline()
    g = torch.Generator().manual_seed(0)
    kwargs = dict(prompt_embeds=torch.randn(1, 4, 16, generator=g), pooled_prompt_embeds=torch.randn(1, 16, generator=g),
                  num_inference_steps=4, height=16, width=16, output_type="pt", guidance_scale=1.0)
    ref = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    outs = {}
    for name, extra in {"identity": {}, "active": ACTIVE}.items():
        pipe.scheduler = LMLFlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, **extra)
        counting(pipe.transformer)
        outs[name] = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
        assert pipe.transformer.nfe == 4
        del pipe.transformer.forward
    assert torch.equal(outs["identity"], ref)
    assert torch.isfinite(outs["active"]).all() and not torch.equal(outs["active"], ref)
