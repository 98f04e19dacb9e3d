"""Sweeps: per-index seeding, samplers by name, resumable shards (a real run killed and resumed), sharding over two
accelerate processes, reports and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

import lml_sampler.eval as ev
from lml_sampler.eval import cli
from lml_sampler.eval.shards import owned_shards, shard_ranges
from lml_sampler.eval.report import markdown_table, readme_markdown
from lml_sampler.schedulers.registry import make_scheduler, parse_sampler, sampler_names
from lml_sampler.eval.sweep import SweepConfig, run_sweep

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def tiny_pipe():
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000))


# ---------------------------------------------------------------------------------------------------------------------
# Seeding and samplers
# ---------------------------------------------------------------------------------------------------------------------


def test_sample_seed_is_per_index():
    seeds = {ev.sample_seed(s, i) for s in range(3) for i in range(500)}
    assert len(seeds) == 1500  # no collisions between (seed, index) pairs, unlike seed + index
    assert ev.sample_seed(0, 7) == ev.sample_seed(0, 7) and 0 <= ev.sample_seed(5, 9) < 2**63
    a = ev.initial_noise(0, [3, 4, 5], (1, 4, 4))
    b = ev.initial_noise(0, [5, 9, 3], (1, 4, 4))
    assert torch.equal(a[0], b[2]) and torch.equal(a[2], b[0]) and not torch.equal(a[1], b[1])


def test_pipeline_sample_independent_of_batch(tiny_pipe):
    sched = make_scheduler("ddim", tiny_pipe.scheduler.config)
    s = ev.PipelineSampler(tiny_pipe, sched, 4, seed=1)
    whole = s(list(range(6)))["images"]
    assert s.nfe == 4 and whole.dtype == np.uint8 and whole.shape == (6, 1, 8, 8)
    parts = np.concatenate([s([0, 1])["images"], s([2, 3, 4])["images"], s([5])["images"]])
    # same per-index noise; a different batch size may change CPU conv rounding by ulps, i.e. at most 1 grey level
    assert np.abs(whole.astype(int) - parts.astype(int)).max() <= 1
    assert (whole == parts).mean() > 0.99
    assert not np.array_equal(whole[0], whole[1])
    # the own loop mirrors the stock DDPMPipeline call (same per-index generators, same post-processing)
    assert s.own_loop
    tiny_pipe.scheduler = make_scheduler("ddim", tiny_pipe.scheduler.config)
    stock = tiny_pipe(batch_size=6, generator=ev.sample_generators(1, range(6)), num_inference_steps=4,
                      output_type="np").images
    tiny_pipe.scheduler = DDPMScheduler(num_train_timesteps=1000)
    np.testing.assert_array_equal(ev.quantize_uint8(torch.from_numpy(stock).permute(0, 3, 1, 2), (0.0, 1.0)).numpy(),
                                  whole)
    # UniPC: the stock DDPMPipeline passes generator= to step(), which UniPC rejects; the own loop does not
    u = ev.PipelineSampler(tiny_pipe, make_scheduler("unipc", tiny_pipe.scheduler.config), 4, seed=1)
    assert u([0, 1])["images"].shape == (2, 1, 8, 8) and u.nfe == 4


def test_text_to_image_prompts_follow_the_sample_index():
    """A stand-in text-to-image pipeline: sample i gets prompt i mod P and the generator of (seed, i)."""

    class FakeT2I:
        def __init__(self):
            self.unet = torch.nn.Identity()
            self.calls = []

        def __call__(self, prompt, generator, num_inference_steps, output_type, guidance_scale=7.5):
            assert output_type == "np" and len(prompt) == len(generator)
            self.calls.append((list(prompt), guidance_scale))
            for _ in range(num_inference_steps):
                self.unet(torch.zeros(1))
            noise = torch.stack([torch.rand(3, 4, 4, generator=g) for g in generator])
            return type("Out", (), {"images": noise.permute(0, 2, 3, 1).numpy()})()

    pipe = FakeT2I()
    s = ev.PipelineSampler(pipe, scheduler=None, num_inference_steps=3, seed=2, prompts=["a", "b", "c"],
                           guidance_scale=2.0)
    out = s([4, 5, 6, 7])["images"]
    assert pipe.calls == [(["b", "c", "a", "b"], 2.0)] and s.nfe == 3 and out.shape == (4, 3, 4, 4)
    again = s([7])["images"]
    np.testing.assert_array_equal(again[0], out[3])


def test_every_sampler_builds_from_a_ddpm_config():
    cfg = DDPMScheduler().config
    names = sampler_names(include_discretisations=True)
    assert {"dpm++2m-karras", "dpm++2m-lu", "lml-dpm++2m-karras", "unipc-karras", "deis", "ddim-trailing"} <= set(names)
    for name in names:
        if "flow" in name:
            continue
        sched = make_scheduler(name, cfg, **({"lamb": 0.5, "kappa": 1e-3} if name.startswith("lml-") else {}))
        assert sched.config.num_train_timesteps == 1000
        if name.startswith("lml-"):
            assert sched.config.lamb == 0.5 and sched.config.kappa == 1e-3 and sched.config.lm is True
    assert make_scheduler("ddim", cfg).config.timestep_spacing == "trailing"
    assert make_scheduler("dpm", cfg).config.algorithm_type == "dpmsolver"
    assert make_scheduler("dpm++3m", cfg).config.solver_order == 3
    assert make_scheduler("dpm++2m-karras", cfg).config.use_karras_sigmas is True
    assert make_scheduler("dpm++2m-lu", cfg).config.use_lu_lambdas is True
    with pytest.raises(ValueError, match="only to lml"):
        make_scheduler("ddim", cfg, lamb=1.0)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_scheduler("heun", cfg)


def test_sampler_names_parse_with_settings_and_refuse_what_does_not_exist():
    spec = parse_sampler("lml-dpm++2m-karras@kappa=1e-2:lm_gamma=0.3:lm_formula=stable")
    assert (spec.name, spec.solver, spec.discretisation, spec.lml) == ("lml-dpm++2m-karras", "dpm++2m", "karras", True)
    assert spec.settings == {"kappa": 0.01, "lm_gamma": 0.3, "lm_formula": "stable"}
    assert parse_sampler("unipc").settings == {} and parse_sampler("dpm++2m@solver_order=3").settings == {"solver_order": 3}
    with pytest.raises(ValueError, match="only to lml"):
        parse_sampler("ddim@kappa=1")
    with pytest.raises(ValueError, match="no config key"):
        parse_sampler("lml-ddim@gamma=1")
    with pytest.raises(ValueError, match="key=value"):
        parse_sampler("lml-ddim@kappa")
    with pytest.raises(ValueError, match="discretisation"):
        parse_sampler("ddim-karras")  # DDIMScheduler has no Karras sigmas
    with pytest.raises(ValueError, match="no LML variant"):
        parse_sampler("lml-unipc")


def test_shards_partition_indices():
    ranges = shard_ranges(103, 10)
    assert [len(r) for r in ranges] == [10] * 10 + [3]
    for world in (1, 2, 3, 4):
        owned = [k for rank in range(world) for k in owned_shards(len(ranges), rank, world)]
        assert owned == list(range(len(ranges)))  # disjoint, complete, contiguous per rank


# ---------------------------------------------------------------------------------------------------------------------
# Sweep in-process: pipeline model, reports, caching
# ---------------------------------------------------------------------------------------------------------------------


def test_sweep_on_a_pipeline_folder_with_reports(tmp_path, tiny_pipe):
    model_dir = tmp_path / "tiny"
    tiny_pipe.save_pretrained(model_dir)
    real = ev.quantize_uint8(torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    ref_path = tmp_path / "ref.npz"
    np.save(tmp_path / "real.npy", real.numpy())
    assert cli.main(["stats", str(tmp_path / "real.npy"), "--out", str(ref_path), "--extractor", "random-conv",
                     "--features"]) == 0
    assert (tmp_path / "ref.features.npz").is_file()
    cfg = SweepConfig(out=str(tmp_path / "run"), models=(str(model_dir),), samplers=("ddim", "lml-ddim"), nfe=(2, 3),
                      num_samples=24, batch_size=8, shard_size=12, extractor="random-conv", ref_stats=str(ref_path),
                      kappa=1e-3, progress=False, grid_samples=4)
    rows = run_sweep(cfg)
    assert [(r["sampler_name"], r["nfe"]) for r in rows] == [("ddim", 2), ("ddim", 3), ("lml-ddim", 2),
                                                              ("lml-ddim", 3)]
    for r in rows:
        assert r["num_samples"] == 24 and r["nfe_measured"] == r["nfe"] and np.isfinite(r["fid"]) and r["fid"] > 0
        assert r["seconds_per_sample"] > 0 and r["metric"] == "domain-fid"
        # default metrics fid,kid: every cell has both with standard errors (KID subsets capped at N = 24)
        assert r["fid_se"] > 0 and np.isfinite(r["kid"]) and r["kid_se"] > 0 and r["kid_subset_size"] == 24
    assert rows[2]["kappa"] == 1e-3 and rows[0]["kappa"] is None
    out = Path(cfg.out)
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert {"model", "sampler", "nfe", "seed", "fid", "seconds_per_sample"} <= set(header)
    assert len(json.loads((out / "results.json").read_text())) == 4
    md_text = (out / "results.md").read_text()
    assert "| ddim |" in md_text and " ± " in md_text and "— KID" in md_text
    assert (out / "kid_vs_nfe.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "fid_vs_nfe.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((out / "grids").glob("*.png"))) == 2
    # the FID of a cell equals the FID of its stored features against the reference (nothing lost or doubled)
    cell = out / rows[0]["cell"]
    assert rows[0]["cell"] == "cells/tiny/ddim/nfe002_seed0" and "kappa0.001" in rows[2]["cell"]
    feats = np.concatenate([np.load(p)["features"] for p in sorted(cell.glob("shard_*.npz"))])
    assert feats.shape[0] == 24
    # one-pass float64 sums (the sweep) vs two-pass covariance (fid_from_features): the FID is a difference of traces
    # ~100x larger than itself, so float64 cancellation shows at ~1e-10 relative; 1e-8 still catches any lost sample
    assert rows[0]["fid"] == pytest.approx(ev.fid_from_features(feats, ref_path), rel=1e-8)
    # a re-run resumes: finished cells are read back, not recomputed
    stamp = (cell / "result.json").stat().st_mtime_ns
    assert run_sweep(cfg) == rows and (cell / "result.json").stat().st_mtime_ns == stamp
    # the README section's Markdown: returned by the library, written into the README by benchmarks/fid_sweep.py
    md = readme_markdown(rows, "docs/images/fid_vs_nfe.png")
    assert "![FID vs NFE](docs/images/fid_vs_nfe.png)" in md and "| lml-ddim" in md


def test_markdown_marks_exact_cells():
    rows = [{"model": "g", "sampler": "ddim", "nfe": 5, "fid": 1.5, "metric": "exact-fd", "method": "transfer-matrix",
             "seconds_per_sample": 0.1, "num_samples": 0},
            {"model": "g", "sampler": "lml-ddim", "nfe": 5, "fid": 2.0, "metric": "exact-fd", "method": "samples",
             "seconds_per_sample": 0.1, "num_samples": 100, "floor": 0.3}]
    md = markdown_table(rows)
    assert "| ddim | 1.5* |" in md and "| lml-ddim | 2 |" in md and "floor" in md


def test_cli_stats_and_fid_on_image_folder(tmp_path, capsys):
    from PIL import Image

    imgs = ev.quantize_uint8(torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(3)))
    (tmp_path / "imgs").mkdir()
    for i, im in enumerate(imgs):
        Image.fromarray(im[0].numpy()).save(tmp_path / "imgs" / f"{i:03d}.png")
    loaded = cli.load_images(str(tmp_path / "imgs"))
    assert torch.equal(loaded, imgs)  # PNG round trip is lossless for uint8
    stats = tmp_path / "s.npz"
    cli.main(["stats", str(tmp_path / "imgs"), "--out", str(stats), "--extractor", "random-conv"])
    cli.main(["fid", str(tmp_path / "imgs"), str(stats), "--extractor", "random-conv"])
    line = capsys.readouterr().out.strip().splitlines()[-1]  # "FID: value ± se (standard error: ...)"
    assert line.startswith("FID: ") and " ± " in line
    assert float(line.split()[1]) == pytest.approx(0.0, abs=1e-6) and float(line.split()[3]) > 0
    with pytest.raises(FileNotFoundError):
        cli.load_images(str(tmp_path / "nope"))


# ---------------------------------------------------------------------------------------------------------------------
# Subprocess runs: kill-and-resume, two accelerate processes
# ---------------------------------------------------------------------------------------------------------------------

GMM_ARGS = ["--models", "gmm", "--samplers", "dpm++2m", "--nfe", "20", "--no-progress", "--grid-samples", "0"]


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())[0]


def _shard_arrays(out: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    cell = next((out / "cells" / "gmm").glob("*/nfe*"))
    files = sorted(cell.glob("shard_*.npz"))
    idx = np.concatenate([np.load(p)["indices"] for p in files])
    return idx, np.concatenate([np.load(p)[key] for p in files])


def test_killed_run_resumes_without_loss_or_double_count(tmp_path):
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "lml_sampler.eval.cli", "sweep", "--out", str(out), *GMM_ARGS, "--num-samples", "400",
            "--shard-size", "10", "--batch-size", "10"]
    proc = subprocess.Popen(args, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    shards = []
    while time.monotonic() < deadline and proc.poll() is None:
        shards = list(out.glob("cells/gmm/*/nfe*/shard_*.npz"))
        if len(shards) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    before = {p: p.stat().st_mtime_ns for p in out.glob("cells/gmm/*/nfe*/shard_*.npz")}
    assert 2 <= len(before) < 40 and not (out / "results.json").exists()
    subprocess.run(args, cwd=REPO, env=ENV, check=True, capture_output=True)
    # finished shards were skipped, not regenerated
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    idx, raw = _shard_arrays(out, "features")
    np.testing.assert_array_equal(np.sort(idx), np.arange(400))  # every index exactly once
    # reference: the same run in one go (here in-process, bit-identical per-index samples)
    fresh = tmp_path / "fresh"
    cli.main(["sweep", "--out", str(fresh), *GMM_ARGS, "--num-samples", "400", "--shard-size", "10",
              "--batch-size", "10"])
    idx2, raw2 = _shard_arrays(fresh, "features")
    np.testing.assert_array_equal(idx, idx2)
    np.testing.assert_array_equal(raw, raw2)
    r, r2 = _results(out), _results(fresh)
    assert r["num_samples"] == 400 and r["fid"] == r2["fid"]


def test_two_accelerate_processes_match_one(tmp_path):
    common = [*GMM_ARGS, "--num-samples", "200", "--shard-size", "25", "--batch-size", "25"]
    two = tmp_path / "two"
    # `accelerate launch --cpu --num_processes 2` starts ONE process without an MPI hostfile (accelerate 1.15);
    # --multi_gpu uses torchrun, and eval picks the gloo backend on a CPU-only machine
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
              "-m", "lml_sampler.eval.cli", "sweep", "--out", str(two), "--device", "cpu"]
    res = subprocess.run(launch + common, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    one = tmp_path / "one"
    cli.main(["sweep", "--out", str(one), *common])
    cell2 = next((two / "cells" / "gmm").glob("*/nfe*"))
    ranks = {int(np.load(p)["rank"]): None for p in cell2.glob("shard_*.npz")}
    assert set(ranks) == {0, 1}  # both processes generated shards
    idx1, f1 = _shard_arrays(one, "features")
    idx2, f2 = _shard_arrays(two, "features")
    np.testing.assert_array_equal(idx1, idx2)
    np.testing.assert_array_equal(f1, f2)  # per-index seeds: the same samples whoever generates them
    r1, r2 = _results(one), _results(two)
    assert r2["num_samples"] == r1["num_samples"] == 200
    # the 2-process statistics are all-reduced float64 partial sums: equal up to summation order (O(1e-16) relative
    # per sum; values are O(1), so 1e-12 absolute has margin and still catches any missing or doubled sample)
    s1 = ev.load_statistics(next((one / "cells" / "gmm").glob("*/nfe*")) / "statistics.npz")
    s2 = ev.load_statistics(cell2 / "statistics.npz")
    assert s1.n == s2.n == 200
    np.testing.assert_allclose(s2.mu, s1.mu, rtol=0, atol=1e-12)
    np.testing.assert_allclose(s2.sigma, s1.sigma, rtol=0, atol=1e-12)
    # FID: with N=200 < d=256, Σ is singular and √eig of its ~0 eigenvalues turns 1e-16 rounding into ~1e-8
    assert r2["fid"] == pytest.approx(r1["fid"], rel=1e-6)
    # the other metrics read the same stored features (rank 0 computes them after the barrier): identical values
    assert r2["kid"] == r1["kid"] and r2["kid_se"] == r1["kid_se"] and r2["fid_se"] == pytest.approx(r1["fid_se"], rel=1e-6)
