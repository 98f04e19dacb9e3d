"""lml-reconstruct refuses bad options before any work: one line on stderr, exit status 2, no traceback."""

import numpy as np
import pytest

from lml_sampler.pipelines import reconstruct


@pytest.fixture
def no_work(monkeypatch):
    """Any model load, phantom task or data file opened means the options were not checked first."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr(reconstruct, "load_prior", forbidden)
    monkeypatch.setattr(reconstruct, "make_task", forbidden)
    monkeypatch.setattr(reconstruct, "_open_sources", forbidden)


def _refused(argv, capsys, needle):
    """main(argv) (or argparse inside it) ends with status 2 and one stderr line holding ``needle``."""
    try:
        rc = reconstruct.main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("lml-reconstruct: ") and needle in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("flag, value, needle", [
    ("--nfe", "0", "--nfe must be >= 1, got 0"),
    ("--nfe", "-5", "--nfe must be >= 1, got -5"),
    ("--n", "0", "--n must be >= 1"),
    ("--views", "0", "--views must be >= 1, got 0"),
    ("--cg-iters", "-1", "--cg-iters must be >= 0"),
    ("--coils", "0", "--coils must be >= 1"),
    ("--batch", "0", "--batch must be >= 1"),
    ("--admm-iters", "0", "--admm-iters must be >= 1"),
    ("--size", "0", "--size must be >= 1"),
    ("--acc", "0.5", "--acc must be >= 1.0"),
    ("--acc", "nan", "--acc must be finite"),
    ("--sigma", "-0.1", "--sigma must be >= 0.0"),
    ("--gamma", "0", "--gamma must be > 0"),
    ("--eta", "1.5", "--eta must be <= 1.0"),
    ("--tv-z", "-1", "--tv-z must be >= 0.0"),
    ("--det-spacing", "0", "--det-spacing must be > 0"),
    ("--espirit-crop", "1", "--espirit-crop must be < 1"),
])
def test_numeric_option_out_of_range(tmp_path, capsys, no_work, flag, value, needle):
    _refused(["--task", "mri", flag, value, "--out", str(tmp_path / "o")], capsys, needle)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag, value", [("--nfe", "abc"), ("--acc", "x"), ("--task", "nope")])
def test_unparsable_option_is_one_line(tmp_path, capsys, no_work, flag, value):
    _refused(["--task", "mri", flag, value, "--out", str(tmp_path / "o")], capsys, f"argument {flag}")


def test_nfe_beyond_the_training_steps(tmp_path, capsys, monkeypatch):
    """--nfe above the prior's 1000 training steps: refused once the (tiny) prior is known, before the task."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the task was built before --nfe was checked against the prior")

    monkeypatch.setattr(reconstruct, "make_task", forbidden)
    _refused(["--task", "ct-sparse", "--model", "random-tiny", "--nfe", "1001", "--out", str(tmp_path / "o")],
             capsys, "--nfe must be <= 1000, got 1001")


def test_out_is_a_file(tmp_path, capsys, no_work):
    (tmp_path / "f").write_text("x")
    _refused(["--task", "ct-sparse", "--out", str(tmp_path / "f")], capsys, "is a file, not a folder")


def test_out_below_a_file(tmp_path, capsys, no_work):
    (tmp_path / "f").write_text("x")
    _refused(["--task", "ct-sparse", "--out", str(tmp_path / "f" / "sub")], capsys, "cannot be created")


def test_out_not_writable(tmp_path, capsys, no_work, monkeypatch):
    """A read-only parent folder (simulated through os.access: the suite may run as root, who may write anywhere)."""
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real(p, mode))
    _refused(["--task", "ct-sparse", "--out", str(tmp_path / "o")], capsys, "cannot be written")


def test_missing_data_files(tmp_path, capsys):
    """Missing inputs are named (the data are opened, and so checked, before any model loads)."""
    _refused(["--kspace", str(tmp_path / "none.h5"), "--out", str(tmp_path / "o")], capsys, "none.h5: no such file")
    np.save(tmp_path / "sino.npy", np.zeros((12, 46), np.float32))
    _refused(["--sinogram", str(tmp_path / "sino.npy"), "--angles", str(tmp_path / "angles.npy"), "--out",
              str(tmp_path / "o")], capsys, "angles.npy")
