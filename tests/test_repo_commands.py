"""Repository commands leave tracked files (README.md, docs/images/) alone unless asked with --readme, and the
README text they write states the command that reproduces it."""

from __future__ import annotations

import pytest

import benchmarks.bundled_models as bundled_models
import benchmarks.fid_sweep as fid_sweep
import benchmarks.scheduler_overhead as scheduler_overhead


def _tripwire(*_a, **_k):
    pytest.fail("a tracked file was written without --readme")


def test_scheduler_overhead_header_states_the_settings_that_produced_the_table():
    parser = scheduler_overhead.build_parser()
    args = parser.parse_args(["--repeats", "15", "--kappa", "0.3", "--readme"])
    rows = [dict(scheduler="DDIM", parent_s=1.0, lml_s=1.0, ratio=1.0, step_parent_ms=0.1, step_lml_ms=0.2,
                 model_ms=90.0)]
    md = scheduler_overhead.to_markdown(rows, args)
    assert "median of 15 alternating repeats" in md and "κ=0.3" in md
    cmd = md.split("Regenerate: `", 1)[1].split("`", 1)[0]
    assert cmd == "python -m benchmarks.scheduler_overhead --repeats 15 --kappa 0.3 --readme"
    assert vars(parser.parse_args(cmd.split()[3:])) == vars(args)  # the stated command reproduces every setting
    assert scheduler_overhead.command(parser.parse_args([])) == "python -m benchmarks.scheduler_overhead --readme"


def test_fid_sweep_without_readme_leaves_the_readme_and_docs_images_alone(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(fid_sweep, "run_sweep", lambda cfg: [])
    monkeypatch.setattr(fid_sweep, "readme_markdown", lambda rows, image, command, kid_image: f"cmd: {command}")
    monkeypatch.setattr(fid_sweep, "update_readme_section", _tripwire)
    monkeypatch.setattr(fid_sweep, "publish_image", _tripwire)
    assert fid_sweep.main(["--out", str(tmp_path)]) == 0
    assert f"python -m benchmarks.fid_sweep --out {tmp_path} --readme" in capsys.readouterr().out


def test_bundled_models_without_readme_leaves_the_readme_alone(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(bundled_models, "available_models", lambda: {"pipelines": []})
    monkeypatch.setattr(bundled_models, "update_readme_section", _tripwire)
    monkeypatch.setattr(bundled_models, "grids", _tripwire)
    assert bundled_models.main(["--out", str(tmp_path)]) == 0
    assert "Regenerate: `python -m benchmarks.bundled_models --readme`" in capsys.readouterr().out
