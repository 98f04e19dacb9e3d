"""Bundled offline models (lml_sampler/models/bundled.py) and their data helpers (lml_sampler/data/)."""

from __future__ import annotations

import math

import pytest
import torch

from lml_sampler.data.digits import digits_dataset
from lml_sampler.data.phantoms import random_complex_phantoms, random_ellipse_phantoms, random_smooth_phase
from lml_sampler.models.bundled import (
    WEIGHTS_DIR,
    DigitsClassifier,
    available_models,
    load_classifier,
    load_pipeline,
)


# ----------------------------------------------------------------------------------------------------------- data
def test_digits_dataset_shapes_range_and_disjoint_split():
    train, y_train = digits_dataset(16, "train", return_labels=True)
    test = digits_dataset(16, "test")
    assert train.shape == (1438, 1, 16, 16) and test.shape == (359, 1, 16, 16) and y_train.shape == (1438,)
    assert train.dtype == torch.float32 and train.min() >= -1 and train.max() <= 1
    # raw 8x8: exactly the 17 levels of x/8 - 1, with both ends present (background -1, full ink +1)
    raw = digits_dataset(8, "all")
    assert raw.min() == -1 and raw.max() == 1 and torch.allclose(raw * 8, (raw * 8).round())
    # the split is a partition: no test image appears in train (images are distinct up to a few duplicates,
    # so compare by index via the fixed permutation instead of by content)
    from lml_sampler.data.digits import _split_indices

    tr, te = _split_indices(1797)
    assert len(set(tr.tolist()) & set(te.tolist())) == 0 and len(tr) + len(te) == 1797
    assert torch.equal(digits_dataset(16, "test"), test)  # seeded: identical on every call
    with pytest.raises(ValueError, match="split"):
        digits_dataset(16, "validation")
    with pytest.raises(ValueError, match="size"):
        digits_dataset(4)


def test_phantoms_range_reproducible_and_structured():
    x = random_ellipse_phantoms(8, 32, torch.Generator().manual_seed(3))
    assert x.shape == (8, 1, 32, 32) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    assert torch.equal(x, random_ellipse_phantoms(8, 32, torch.Generator().manual_seed(3)))
    # corners are outside the body ellipse (semi-axes <= 0.95, centre offset <= 0.06): background exactly 0
    assert (x[..., 0, 0] == 0).all() and (x[..., -1, -1] == 0).all()
    # the skull ring reaches intensity ~1 in every phantom
    assert (x.amax(dim=(1, 2, 3)) > 0.9).all()
    phase = random_smooth_phase(4, 32, torch.Generator().manual_seed(0))
    assert phase.shape == (4, 1, 32, 32) and phase.abs().max() <= math.pi + 1e-6
    # smooth: neighbouring pixels differ by far less than the range (low-frequency modes only)
    assert (phase.diff(dim=-1).abs().max() < 0.5) and (phase.diff(dim=-2).abs().max() < 0.5)
    z = random_complex_phantoms(2, 16, torch.Generator().manual_seed(0))
    assert z.shape == (2, 2, 16, 16) and z.pow(2).sum(1).sqrt().max() <= 1 + 1e-6
    with pytest.raises(ValueError, match="n must"):
        random_ellipse_phantoms(0, 32)


# --------------------------------------------------------------------------------------------- bundled pipelines
@pytest.mark.parametrize("name,size", [("digits", 16), ("phantoms", 32)])
def test_bundled_pipeline_loads_offline_and_samples(name, size):
    from diffusers import DDPMPipeline

    assert name in available_models()["pipelines"]
    pipe = DDPMPipeline.from_pretrained(WEIGHTS_DIR / name, local_files_only=True)
    assert pipe.unet.config.sample_size == size and pipe.unet.config.in_channels == 1
    assert sum(p.numel() for p in pipe.unet.parameters()) < 2_000_000  # "small": the package stays light
    out = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np")
    img = out.images
    assert img.shape == (2, size, size, 1) and (img >= 0).all() and (img <= 1).all()
    # same weights through the loader
    loaded = load_pipeline(name)
    assert isinstance(loaded, DDPMPipeline)
    ref = dict(pipe.unet.named_parameters())
    for k, v in loaded.unet.named_parameters():
        assert torch.equal(v, ref[k])


def test_bundled_weights_total_size_is_small():
    total = sum(f.stat().st_size for f in WEIGHTS_DIR.rglob("*.safetensors"))
    # 3 x 4.5 MB UNets (digits, phantoms, phantoms-complex) + 0.5 MB classifier = 14 MB; 16 MB leaves no room for a
    # fourth model or a float64 export slipping in
    assert total < 16e6, f"bundled weights take {total / 1e6:.1f} MB"


def test_load_pipeline_local_folder(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50)).save_pretrained(tmp_path / "tiny")
    pipe = load_pipeline(tmp_path / "tiny")
    assert isinstance(pipe, DDPMPipeline) and pipe.scheduler.config.num_train_timesteps == 50
    assert torch.equal(pipe.unet.conv_in.weight, unet.conv_in.weight)
    assert isinstance(load_pipeline(str(tmp_path / "tiny")), DDPMPipeline)


def test_load_pipeline_bad_names(tmp_path):
    with pytest.raises(ValueError, match="unknown pipeline 'digitz'"):
        load_pipeline("digitz")
    with pytest.raises(ValueError, match="does not exist"):
        load_pipeline(tmp_path / "missing")
    with pytest.raises(ValueError, match="does not exist"):
        load_pipeline("./no/such/folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="model_index.json"):
        load_pipeline(tmp_path / "empty")
    with pytest.raises(TypeError, match="name_or_path"):
        load_pipeline(3)
    with pytest.raises(ValueError, match="unknown feature extractor"):
        load_classifier("inception")
    with pytest.raises(ValueError, match="bundled names or local folders"):
        load_classifier("someone/some-model")


# ------------------------------------------------------------------------------------------ feature extractor
def test_classifier_heldout_accuracy_and_feature_interface():
    model = load_classifier("digits-features")
    assert isinstance(model, DigitsClassifier) and isinstance(model, torch.nn.Module) and not model.training
    x, y = digits_dataset(16, "test", return_labels=True)
    with torch.no_grad():
        acc = (model.logits(x).argmax(1) == y).double().mean().item()
        feats = model(x[:5])
        feats32 = model(torch.nn.functional.interpolate(x[:5], size=32, mode="bilinear", align_corners=False))
    # 359 held-out images: 0.98 allows 7 errors; the bundled model makes 1 (training.json)
    assert acc >= 0.98, acc
    assert feats.shape == (5, model.num_features) == (5, 64) and torch.isfinite(feats).all()
    assert feats32.shape == feats.shape  # other resolutions are resized to 16x16 internally
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(2, 3, 16, 16))
