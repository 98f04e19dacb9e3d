"""The path a FLUX user takes, offline: a tiny random FluxTransformer2DModel in a FluxPipeline, bf16, FLUX's
dynamically shifted flow-matching schedule, with LMLFlowMatchEulerDiscreteScheduler swapped in by ``from_config``.

No text encoders are built (the pipeline takes ``prompt_embeds`` directly), so nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

from lml_sampler.schedulers import LMLFlowMatchEulerDiscreteScheduler

#: FLUX.1's scheduler config (time shift from the image size).
FLUX_SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                      max_image_seq_len=4096)


def _tiny_flux() -> FluxPipeline:
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
    vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=vae, text_encoder=None,
                        tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch.bfloat16)


def _run(pipe: FluxPipeline) -> np.ndarray:
    g = torch.Generator().manual_seed(1)
    embeds = torch.randn(2, 8, 32, generator=g).to(torch.bfloat16)
    pooled = torch.randn(2, 32, generator=g).to(torch.bfloat16)
    return pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=16, width=16, num_inference_steps=3,
                guidance_scale=3.5, output_type="np", generator=torch.Generator().manual_seed(2)).images


def test_flux_pipeline_in_bf16_with_lml():
    pipe = _tiny_flux()
    stock = _run(pipe)
    pipe.scheduler = LMLFlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    assert pipe.scheduler.config.use_dynamic_shifting  # FLUX's schedule carries over
    # κ = 0 (the default) is the parent exactly, in bf16 too
    np.testing.assert_array_equal(_run(pipe), stock)
    pipe.scheduler = LMLFlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, kappa=1e-3, lm_gamma=0.5)
    corrected = _run(pipe)
    assert corrected.shape == stock.shape == (2, 16, 16, 3) and np.isfinite(corrected).all()
    assert not np.array_equal(corrected, stock)  # the correction acted
