"""The DDPM training loop of the bundled priors (lml_sampler/models/training.py): schedule, loss weights, exact
resumption, the portable checkpoint, warm starts across channel counts, and the exported pipeline."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from lml_sampler.models.bundled import load_pipeline
from lml_sampler.models.training import TrainConfig, learning_rate, loss_weights, train_ddpm


def tiny(**overrides) -> TrainConfig:
    base = dict(name="tiny", sample_size=8, block_out_channels=(8, 16), attention=(False, False), norm_num_groups=4,
                batch_size=4, warmup_steps=2, lr=1e-3, total_steps=6, ckpt_every_min=0.0)
    return TrainConfig(**{**base, **overrides})


def batches(channels: int = 1):
    def get_batch(step: int, gen: torch.Generator) -> torch.Tensor:
        return torch.rand(4, channels, 8, 8, generator=gen) * 2 - 1

    return get_batch


def unet_weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def test_learning_rate_warmup_then_cosine_to_zero():
    cfg = tiny(lr_schedule="cosine", total_steps=100, warmup_steps=10)
    assert learning_rate(cfg, 0) == pytest.approx(1e-4 * 0.5 * (1 + math.cos(0)))
    assert learning_rate(cfg, 50) == pytest.approx(1e-3 * 0.5)  # half-way down the cosine
    assert learning_rate(cfg, 100) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(tiny(), 5) == 1e-3  # constant after warm-up
    with pytest.raises(ValueError, match="total_steps"):
        TrainConfig(name="x", sample_size=8, lr_schedule="cosine")


def test_min_snr_weights_cap_the_clean_steps():
    abar = torch.tensor([0.999, 5 / 6, 0.5, 0.01], dtype=torch.float64)  # SNR 999, 5, 1, ~0.01
    w = loss_weights(tiny(loss_weighting="min-snr", min_snr_gamma=5.0), abar)
    assert torch.allclose(w, torch.tensor([5 / 999, 1.0, 1.0, 1.0], dtype=torch.float64), rtol=1e-12)
    assert torch.equal(loss_weights(tiny(), abar), torch.ones(4, dtype=torch.float64))


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    cfg = tiny(lr_schedule="cosine", loss_weighting="min-snr")
    straight = train_ddpm(cfg, batches(), tmp_path / "a", tmp_path / "ck_a", log=lambda _: None)
    assert straight["steps"] == 6 and json.loads((tmp_path / "a" / "training.json").read_text())["status"] == "final"
    with pytest.raises(_Killed):  # the run dies after 3 steps (each step was checkpointed: ckpt_every_min=0)
        train_ddpm(cfg, _killed_at(3), tmp_path / "b", tmp_path / "ck_b", log=lambda _: None)
    train_ddpm(cfg, batches(), tmp_path / "b", tmp_path / "ck_b", log=lambda _: None)
    a, b = unet_weights(tmp_path / "a"), unet_weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit: RNG and moments resumed


class _Killed(Exception):
    pass


def _killed_at(step_to_die: int):
    source = batches()

    def get_batch(step: int, gen: torch.Generator) -> torch.Tensor:
        if step == step_to_die:
            raise _Killed
        return source(step, gen)

    return get_batch


def test_portable_checkpoint_resumes_and_a_changed_config_is_refused(tmp_path):
    cfg = tiny(total_steps=3)
    train_ddpm(cfg, batches(), tmp_path / "out", tmp_path / "ck", log=lambda _: None)
    (tmp_path / "ck" / "full.pt").unlink()  # what a repository keeps: raw weights + counters only
    info = train_ddpm(tiny(total_steps=3), batches(), tmp_path / "out", tmp_path / "ck", log=lambda _: None)
    assert info["steps"] == 3  # resumed from the portable state: already done, nothing more to train
    with pytest.raises(ValueError, match="another configuration"):
        train_ddpm(tiny(total_steps=3, lr=5e-4), batches(), tmp_path / "out", tmp_path / "ck", log=lambda _: None)


def test_export_is_a_loadable_ddpm_pipeline_with_umask_permissions(tmp_path):
    train_ddpm(tiny(total_steps=2), batches(), tmp_path / "out", tmp_path / "ck", log=lambda _: None)
    pipe = load_pipeline(tmp_path / "out")
    assert pipe.unet.config.sample_size == 8 and pipe.scheduler.config.prediction_type == "epsilon"
    modes = {p.stat().st_mode & 0o777 for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert modes == {0o644}  # the test process runs under umask 022


def test_warm_start_adapts_a_magnitude_prior_to_two_channels(tmp_path):
    train_ddpm(tiny(total_steps=2), batches(), tmp_path / "mag", tmp_path / "ck1", log=lambda _: None)
    cfg = tiny(total_steps=1, in_channels=2, init_from=str(tmp_path / "mag"), lr=1e-12)
    train_ddpm(cfg, batches(2), tmp_path / "cplx", tmp_path / "ck2", log=lambda _: None)
    src, dst = unet_weights(tmp_path / "mag"), unet_weights(tmp_path / "cplx")
    assert dst["conv_in.weight"].shape[1] == 2 and dst["conv_out.weight"].shape[0] == 2
    # input filters tiled and halved (so the activation scale is kept), output filters tiled; lr ~ 0 keeps them
    assert torch.allclose(dst["conv_in.weight"][:, 1:], src["conv_in.weight"] / 2, atol=1e-6)
    assert torch.allclose(dst["conv_out.weight"][1:], src["conv_out.weight"], atol=1e-6)
    key = "down_blocks.0.resnets.0.conv1.weight"
    assert torch.allclose(dst[key], src[key], atol=1e-6)


def test_lineage_is_recorded_when_a_warm_started_run_begins(tmp_path):
    """A run warm-started from a folder records that folder's chain when it starts: re-shipping the folder while the
    run trains (a longer run of the parent) must not rewrite the child's history."""
    from lml_sampler.models.training import run_lineage

    log = lambda _: None  # noqa: E731
    parent = tmp_path / "parent"
    info = train_ddpm(tiny(total_steps=2), batches(), parent, tmp_path / "ck1", log=log)
    (parent / "training.json").write_text(json.dumps({**info, "lineage": run_lineage(info)}))
    child = train_ddpm(tiny(total_steps=1, init_from=str(parent), lr=1e-4), batches(), tmp_path / "child",
                       tmp_path / "ck2", log=log)
    # the parent folder now holds a longer run
    longer = train_ddpm(tiny(total_steps=4), batches(), tmp_path / "longer", tmp_path / "ck3", log=log)
    (parent / "training.json").write_text(json.dumps({**longer, "lineage": run_lineage(longer)}))
    chain = run_lineage(child)
    assert [c["steps"] for c in chain] == [2, 1]
    # a record-less (older) run falls back to the folder as it is now
    legacy = {k: v for k, v in child.items() if k not in ("init_lineage", "init_config")}
    assert [c["steps"] for c in run_lineage(legacy)] == [4, 1]
