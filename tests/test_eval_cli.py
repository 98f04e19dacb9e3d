"""lml-eval refuses user errors before any work: one line on stderr, exit status 2, no traceback; a sweep over a
subset of cells of an existing --out merges into its reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lml_sampler.eval import cli

FAST = ["--models", "gaussian", "--samplers", "ddim", "--no-progress", "--grid-samples", "0", "--device", "cpu"]


def _refused(argv, capsys, monkeypatch) -> str:
    """Run ``lml-eval argv`` in-process, with the sweep itself replaced by a tripwire (nothing may run)."""
    import lml_sampler.eval.sweep as sweep

    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **k: pytest.fail("the sweep started despite a bad input"))
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("lml-eval: error: ")
    return err


@pytest.mark.parametrize("flag, value, says", [
    ("--nfe", "0", "--nfe: must be >= 1, got 0"),
    ("--nfe", "-5", "--nfe: must be >= 1, got -5"),
    ("--nfe", "2.5", "--nfe: expected an int >= 1, got '2.5'"),
    ("--nfe", "5,,x", "--nfe: expected an int >= 1, got 'x'"),
    ("--nfe", ",", "--nfe: expected a comma list"),
    ("--num-samples", "1", "--num-samples: must be >= 2"),
    ("--shard-size", "0", "--shard-size: must be >= 1"),
    ("--batch-size", "-1", "--batch-size: must be >= 1"),
    ("--seed", "-1", "--seed: must be >= 0"),
    ("--lamb", "0", "--lamb: must be > 0"),
    ("--kappa", "-1e-3", "--kappa: must be in [0.0, inf]"),
    ("--kappa", "nan", "--kappa: must be finite"),
    ("--freeze", "1.5", "--freeze: must be in [0.0, 1.0]"),
    ("--kid-subsets", "0", "--kid-subsets: must be >= 1"),
    ("--kid-subset-size", "1", "--kid-subset-size: must be >= 2"),
    ("--pr-k", "0", "--pr-k: must be >= 1"),
    ("--se-groups", "1", "--se-groups: must be >= 2"),
    ("--grid-samples", "-1", "--grid-samples: must be >= 0"),
    ("--guidance-scale", "1,inf", "--guidance-scale: expected a comma list of finite numbers"),
])
def test_sweep_numeric_flags_are_refused_before_any_work(flag, value, says, tmp_path, capsys, monkeypatch):
    err = _refused(["sweep", "--out", str(tmp_path / "run"), *FAST, f"{flag}={value}"], capsys, monkeypatch)
    assert says in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, says", [
    (["kid", "a", "b", "--subsets", "0"], "--subsets: must be >= 1"),
    (["kid", "a", "b", "--degree", "0"], "--degree: must be >= 1"),
    (["pr", "a", "b", "--k", "-3"], "--k: must be >= 1"),
    (["fid", "a", "b", "--se-groups", "x"], "--se-groups: expected an int >= 2"),
])
def test_comparison_numeric_flags_are_refused(argv, says, capsys, monkeypatch):
    assert says in _refused(argv, capsys, monkeypatch)


def test_missing_and_unknown_arguments_are_one_line(tmp_path, capsys, monkeypatch):
    assert "required: --out" in _refused(["sweep"], capsys, monkeypatch)
    assert "unrecognized arguments: --nope" in _refused(["sweep", "--out", str(tmp_path), "--nope"], capsys,
                                                        monkeypatch)
    assert "unknown sampler 'foo'" in _refused(["sweep", "--out", str(tmp_path / "r"), "--samplers", "foo"], capsys,
                                               monkeypatch)


def test_an_out_that_is_a_file_or_below_a_file_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "is a file, not a folder" in _refused(["sweep", "--out", str(blocker), *FAST], capsys, monkeypatch)
    assert "cannot be created" in _refused(["sweep", "--out", str(blocker / "run"), *FAST], capsys, monkeypatch)
    assert "must end in .npz" in _refused(["stats", "digits:test", "--out", str(tmp_path / "ref.txt")], capsys,
                                          monkeypatch)
    (tmp_path / "d.npz").mkdir()
    assert "is a folder" in _refused(["stats", "digits:test", "--out", str(tmp_path / "d.npz")], capsys, monkeypatch)
    assert "is a file, not a folder" in _refused(["stats", "digits:test", "--out", str(blocker / "ref.npz")], capsys,
                                           monkeypatch)


def test_missing_inputs_are_one_line(tmp_path, capsys, monkeypatch):
    assert "is neither a folder of images" in _refused(["fid", str(tmp_path / "nope"), str(tmp_path / "r.npz")],
                                                       capsys, monkeypatch)
    for flag in ("--prompts", "--ref-stats"):
        err = _refused(["sweep", "--out", str(tmp_path / "r"), *FAST, flag, str(tmp_path / "nope")], capsys,
                       monkeypatch)
        assert f"{flag} {tmp_path / 'nope'} does not exist" in err


def test_a_sweep_over_some_cells_merges_into_the_existing_reports(tmp_path):
    out = tmp_path / "run"
    common = ["sweep", "--out", str(out), "--models", "gaussian", "--no-progress", "--grid-samples", "0",
              "--device", "cpu"]
    assert cli.main([*common, "--samplers", "ddim,dpm++2m", "--nfe", "2,3"]) == 0
    first = json.loads((out / "results.json").read_text())
    assert len(first) == 4
    assert cli.main([*common, "--samplers", "ddim", "--nfe", "3,4"]) == 0  # one old cell again, one new cell
    rows = json.loads((out / "results.json").read_text())
    assert [(r["sampler"], r["nfe"]) for r in rows] == [(r["sampler"], r["nfe"]) for r in first] + [("ddim", 4)]
    csv_lines = (out / "results.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + 5
    md = (out / "results.md").read_text()
    assert "dpm++2m" in md  # the rows of the first sweep are still reported
