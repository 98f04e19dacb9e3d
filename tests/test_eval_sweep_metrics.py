"""The metrics inside sweeps: features computed once per cell, a metric added to a finished sweep computes only that
metric, text-to-image guidance sweeps with CLIP score, and one-line CLI errors for inputs the metrics cannot use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lml_sampler.eval as ev
from lml_sampler.eval import cli
from lml_sampler.eval.metrics import MetricSettings
from lml_sampler.eval.models import load_eval_model
from lml_sampler.eval.report import fmt_pm, kid_scale
from lml_sampler.eval.shards import load_shards
from lml_sampler.eval.sweep import SweepConfig, run_sweep

from test_eval_metrics import save_tiny_clip, tiny_clip_tokenizer
from test_pipelines import tiny_sd_pipeline


def _mtimes(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_adding_metrics_to_a_finished_sweep_computes_only_those(tmp_path):
    base = dict(out=str(tmp_path / "run"), models=("gmm",), samplers=("dpm++2m",), nfe=(4,), num_samples=120,
                batch_size=40, shard_size=40, progress=False, grid_samples=0)
    (row,) = run_sweep(SweepConfig(**base, metrics=("fid",)))
    cell = tmp_path / "run" / row["cell"]
    assert row["fid_se"] > 0 and "kid" not in row
    before = _mtimes(cell)
    (row2,) = run_sweep(SweepConfig(**base, metrics=("fid", "kid", "pr")))
    after = _mtimes(cell)
    assert all(after[p] == t for p, t in before.items())  # shards, statistics, result and fid.json untouched
    assert sorted(p.name for p in set(after) - set(before)) == ["kid.json", "pr.json"]
    assert row2["fid"] == row["fid"] and row2["fid_se"] == row["fid_se"]
    # the stored metrics equal a direct computation on the stored features and an independently built reference
    features = load_shards(cell, "features")
    reference = load_eval_model("gmm").reference_features(120)
    kid = ev.kernel_inception_distance(features, reference, subsets=100, subset_size=120)
    assert row2["kid"] == pytest.approx(kid.mean, rel=1e-12) and row2["kid_se"] == pytest.approx(kid.se, rel=1e-10)
    pr = ev.precision_recall(features, reference, 3)
    assert (row2["precision"], row2["recall"], row2["coverage"]) == (pr.precision, pr.recall, pr.coverage)
    # floors: exact samples from the model itself score near zero KID (unbiased) and high precision/recall
    assert abs(row2["kid_floor"]) < 3 * row2["kid_floor_se"] and row2["recall_floor"] > row2["recall"]
    # changing one metric's settings recomputes that metric alone
    settled = _mtimes(cell)
    run_sweep(SweepConfig(**base, metrics=("fid", "kid", "pr"), metric_settings=MetricSettings(pr_k=5)))
    changed = {p.name for p, t in _mtimes(cell).items() if settled.get(p) != t}
    assert changed == {"pr.json"}
    assert json.loads((cell / "metrics" / "pr.json").read_text())["values"]["pr_k"] == 5


def test_main_job_tables_show_fid_and_kid_with_standard_errors(tmp_path):
    rows = run_sweep(SweepConfig(out=str(tmp_path / "run"), models=("gmm",), samplers=("ddim", "lml-ddim"), nfe=(3, 5),
                                 num_samples=60, batch_size=30, shard_size=30, progress=False, grid_samples=0))
    md = (tmp_path / "run" / "results.md").read_text()
    assert "**gmm** — exact Fréchet distance" in md
    scale, label = kid_scale(rows)
    assert f"**gmm** — {label}" in md
    for r in rows:
        assert r["kid_subset_size"] == 60 and r["kid_se"] > 0 and r["fid_se"] > 0
        assert fmt_pm(r["fid"], r["fid_se"]) in md and fmt_pm(r["kid"], r["kid_se"], scale) in md
    fid_lines = [line for line in md.splitlines() if line.startswith("| ddim |")]
    assert len(fid_lines) == 2 and all(line.count(" ± ") == 2 for line in fid_lines)  # FID and KID tables
    assert (tmp_path / "run" / "kid_vs_nfe.png").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# Text-to-image: guidance sweep, CLIP score, FID–CLIP plot
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def t2i(tmp_path_factory):
    """A tiny Stable-Diffusion-style pipeline with a working offline tokenizer, a tiny CLIP, prompts and reference
    statistics with features (random-conv extractor on 16×16 RGB)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    root = tmp_path_factory.mktemp("t2i")
    pipe = tiny_sd_pipeline()
    tok = tiny_clip_tokenizer(root, max_positions=16)
    torch.manual_seed(1)
    encoder = CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                           num_hidden_layers=1, vocab_size=len(tok), max_position_embeddings=16,
                                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    pipe.register_modules(tokenizer=tok, text_encoder=encoder)
    pipe.save_pretrained(root / "pipe")
    (root / "prompts.txt").write_text("a red ball\ntwo cats\n\nthe sea at night\n")
    real = ev.quantize_uint8(torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    np.save(root / "real.npy", real.numpy())
    assert cli.main(["stats", str(root / "real.npy"), "--out", str(root / "ref.npz"), "--extractor", "random-conv",
                     "--features"]) == 0
    return {"root": root, "pipe": root / "pipe", "prompts": root / "prompts.txt", "ref": root / "ref.npz",
            "clip": save_tiny_clip(root / "clip")}


def _t2i_args(t2i, out, *extra):
    return ["sweep", "--out", str(out), "--models", str(t2i["pipe"]), "--prompts", str(t2i["prompts"]),
            "--ref-stats", str(t2i["ref"]), "--extractor", "random-conv", "--samplers", "ddim", "--nfe", "2",
            "--num-samples", "9", "--batch-size", "5", "--shard-size", "5", "--no-progress", "--grid-samples", "0",
            "--device", "cpu", *extra]


def test_guidance_sweep_with_clip_score_and_fid_clip_plot(t2i, tmp_path, capsys):
    out = tmp_path / "t2i"
    assert cli.main(_t2i_args(t2i, out, "--guidance-scale", "1,4", "--metrics", "fid,kid,clip",
                              "--clip-model", str(t2i["clip"]))) == 0
    rows = json.loads((out / "results.json").read_text())
    assert sorted(r["guidance_scale"] for r in rows) == [1.0, 4.0]
    assert rows[0]["cell"] != rows[1]["cell"] and all("_cfg" in r["cell"] for r in rows)
    assert rows[0]["fid"] != rows[1]["fid"]  # the guidance scale reached the pipeline
    assert rows[0]["nfe_measured"] == 2 == rows[1]["nfe_measured"]  # CFG batches both halves into one call
    prompts = [p for p in t2i["prompts"].read_text().splitlines() if p.strip()]
    from lml_sampler.eval.clip_score import CLIPEmbedder, clip_score

    emb = CLIPEmbedder(t2i["clip"])
    for r in rows:
        cell = out / r["cell"]
        stored = load_shards(cell, "clip")
        assert stored.shape == (9, 8) and str(np.load(cell / "shard_000000.npz")["tag_clip"]) == str(t2i["clip"])
        # shard 0 keeps its images: its stored embeddings are those of the images it holds
        images0 = np.load(cell / "shard_000000.npz")["images"]
        np.testing.assert_allclose(stored[:5], emb.images(images0), atol=1e-6)
        text = emb.texts(prompts)[np.arange(9) % len(prompts)]
        mean, se, _ = clip_score(stored, text)
        assert r["clip"] == pytest.approx(mean, rel=1e-12) and r["clip_se"] == pytest.approx(se, rel=1e-12)
    md = (out / "results.md").read_text()
    assert "| ddim, cfg 1 |" in md and "| ddim, cfg 4 |" in md and "CLIP score" in md
    assert (out / "fid_vs_clip.png").read_bytes()[:4] == b"\x89PNG"


def test_clip_added_later_embeds_kept_images_without_regenerating(t2i, tmp_path):
    out = tmp_path / "later"
    assert cli.main(_t2i_args(t2i, out, "--metrics", "fid", "--keep-images")) == 0
    (row,) = json.loads((out / "results.json").read_text())
    cell = out / row["cell"]
    result_time = (cell / "result.json").stat().st_mtime_ns
    images = load_shards(cell, "images")
    timings = [float(np.load(f)["seconds"]) for f in sorted(cell.glob("shard_*.npz"))]
    assert cli.main(_t2i_args(t2i, out, "--metrics", "fid,clip", "--clip-model", str(t2i["clip"]), "--keep-images")) == 0
    (row2,) = json.loads((out / "results.json").read_text())
    assert (cell / "result.json").stat().st_mtime_ns == result_time and row2["fid"] == row["fid"]
    np.testing.assert_array_equal(load_shards(cell, "images"), images)
    # the shards were rewritten with embeddings, not regenerated (a regenerated shard records a new timing)
    assert [float(np.load(f)["seconds"]) for f in sorted(cell.glob("shard_*.npz"))] == timings
    from lml_sampler.eval.clip_score import CLIPEmbedder

    np.testing.assert_allclose(load_shards(cell, "clip"), CLIPEmbedder(t2i["clip"]).images(images), atol=1e-6)
    assert np.isfinite(row2["clip"]) and row2["clip_se"] > 0


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit status 2, before any work
# ---------------------------------------------------------------------------------------------------------------------


def _user_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "Traceback" not in err
    line = err.splitlines()[-1]
    assert line.startswith("lml-eval: error: ")
    return line


def test_metric_inputs_that_cannot_work_are_one_line_errors(tmp_path, capsys, t2i):
    rng = np.random.default_rng(0)
    ev.save_statistics(tmp_path / "a.npz", ev.compute_statistics(rng.normal(size=(30, 4))))
    ev.save_statistics(tmp_path / "b.npz", ev.compute_statistics(rng.normal(size=(30, 6))))
    line = _user_error(capsys, ["fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz")])
    assert "different feature dimensions (4 vs 6)" in line and "same --extractor" in line
    ev.save_features(tmp_path / "x.features.npz", rng.normal(size=(12, 4)))
    ev.save_features(tmp_path / "y.features.npz", rng.normal(size=(50, 4)))
    x, y = str(tmp_path / "x.features.npz"), str(tmp_path / "y.features.npz")
    assert "--kid-subset-size" in _user_error(capsys, ["kid", x, y, "--subset-size", "40"])
    assert "pass k <= 11" in _user_error(capsys, ["pr", x, y, "--k", "12"])
    assert "--features" in _user_error(capsys, ["kid", x, str(tmp_path / "a.npz")])  # statistics only: no features
    # sweeps refuse before generating anything
    out = tmp_path / "sweep"
    assert "--kid-subset-size" in _user_error(capsys, ["sweep", "--out", str(out), "--models", "gmm", "--samplers",
                                                       "ddim", "--nfe", "2", "--num-samples", "50",
                                                       "--metrics", "fid,kid", "--kid-subset-size", "80"])
    assert "--pr-k" in _user_error(capsys, ["sweep", "--out", str(out), "--models", "gmm", "--samplers", "ddim",
                                            "--nfe", "2", "--num-samples", "3", "--metrics", "pr"])
    assert "choose from fid, kid, pr, clip" in _user_error(capsys, ["sweep", "--out", str(out), "--metrics", "fid,is"])
    assert not (out / "cells").exists()
    noproc = save_tiny_clip(tmp_path / "weights-only", with_processor=False)
    line = _user_error(capsys, _t2i_args(t2i, tmp_path / "t", "--metrics", "clip", "--clip-model", str(noproc)))
    assert "no usable CLIP processor" in line and "save_pretrained" in line
    assert not (tmp_path / "t" / "cells").exists()


def test_kid_and_pr_commands_on_an_image_folder_match_the_library(tmp_path, capsys):
    from PIL import Image

    g = torch.Generator().manual_seed(4)
    (tmp_path / "imgs").mkdir()
    for i, im in enumerate(ev.quantize_uint8(torch.rand(30, 1, 8, 8, generator=g))):
        Image.fromarray(im[0].numpy()).save(tmp_path / "imgs" / f"{i:03d}.png")
    real = ev.quantize_uint8(torch.rand(40, 1, 8, 8, generator=g) ** 2)
    np.save(tmp_path / "real.npy", real.numpy())
    ref = tmp_path / "ref.npz"
    assert cli.main(["stats", str(tmp_path / "real.npy"), "--out", str(ref), "--extractor", "random-conv",
                     "--features"]) == 0
    ext = ev.load_feature_extractor("random-conv")
    fake = ev.extract_features(ext, cli.load_images(str(tmp_path / "imgs"))).numpy()
    real_f = ev.load_features(ev.features_path(ref))
    capsys.readouterr()
    # a statistics file finds its features companion; the folder is featurised with the same extractor
    assert cli.main(["kid", str(tmp_path / "imgs"), str(ref), "--extractor", "random-conv", "--subsets", "7"]) == 0
    kid = ev.kernel_inception_distance(fake, real_f, subsets=7)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"KID: {kid.mean:.6g} (std over 7 subsets of 30: {kid.std:.3g}; standard error: {kid.se:.3g}")
    assert cli.main(["pr", str(tmp_path / "imgs"), str(ev.features_path(ref)), "--extractor", "random-conv"]) == 0
    pr = ev.precision_recall(fake, real_f, 3)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"precision: {pr.precision:.4f}  recall: {pr.recall:.4f}")
    # a statistics file of another extractor is refused
    assert cli.main(["stats", str(tmp_path / "real.npy"), "--out", str(tmp_path / "d.npz"), "--extractor",
                     "digits-features"]) == 0
    line = _user_error(capsys, ["fid", str(tmp_path / "imgs"), str(tmp_path / "d.npz"), "--extractor", "random-conv"])
    assert "different extractors ('random-conv' vs 'digits-features')" in line


def test_reference_without_features_defaults_to_fid_and_refuses_explicit_kid(t2i, tmp_path, capsys):
    import shutil

    stats_only = tmp_path / "stats-only.npz"
    shutil.copyfile(t2i["ref"], stats_only)  # e.g. a pytorch-fid / clean-fid statistics file: mu and sigma only
    args = _t2i_args(t2i, tmp_path / "run", "--guidance-scale", "2")
    args[args.index("--ref-stats") + 1] = str(stats_only)
    assert cli.main(args) == 0
    (row,) = json.loads((tmp_path / "run" / "results.json").read_text())
    assert row["fid_se"] > 0 and "kid" not in row
    assert "FID only" in capsys.readouterr().err
    line = _user_error(capsys, args + ["--metrics", "fid,kid"])
    assert "stats-only.features.npz is missing" in line and "--features" in line
