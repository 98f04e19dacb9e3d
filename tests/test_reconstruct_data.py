"""Tests of users' data through lml-reconstruct and the loaders: fastMRI-layout k-space, sinograms, images,
folders (resume, shards, metrics.csv), bad input, and memory against the number of slices."""

import json
import math
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from lml_sampler.data.phantoms import random_ellipse_phantoms, random_smooth_phase
from lml_sampler.operators import ParallelBeamCT, simulate_coil_sensitivities, sparse_view_angles, uniform1d_mask
from lml_sampler.pipelines import reconstruct
from lml_sampler.pipelines.common import psnr
from lml_sampler.pipelines.io import KspaceSource, SinogramSource, simulate_kspace, write_kspace_file
from lml_sampler.pipelines.reconstruct import fitted_gaussian_prior, gaussian_prior, main, power_law_fit


def _images(slices, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = max(h, w)
    mag = random_ellipse_phantoms(slices, n, g)[:, 0]
    img = mag * torch.exp(1j * random_smooth_phase(slices, n, g)[:, 0])
    r, c = (n - h) // 2, (n - w) // 2
    return img[:, r : r + h, c : c + w]


def _kspace_file(path, slices=2, coils=6, shape=(64, 64), crop=None, mask=None, noise=0.002, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    maps = simulate_coil_sensitivities(coils, shape, g) if coils > 1 else None
    k, ref = simulate_kspace(_images(slices, *shape, seed=seed), maps, noise=noise, generator=g)
    return write_kspace_file(path, k, ref, mask=mask, crop=crop)


def _run(args, capsys=None):
    rc = main([*args, "--no-progress"])
    err = capsys.readouterr().err if capsys is not None else ""
    return rc, err


def _metrics(folder):
    return json.loads((folder / "metrics.json").read_text())


@pytest.mark.parametrize("coils", [1, 6])
@pytest.mark.parametrize("with_mask", [False, True])
def test_fastmri_round_trip(tmp_path, coils, with_mask):
    """Fully sampled data through the zero-filled path reproduce the file's reference: the FFT convention, the
    centre crop and the intensity scale all round-trip (non-square k-space, cropped 64×64 reference)."""
    mask = np.ones(72, dtype=np.float32) if with_mask else None
    f = _kspace_file(tmp_path / "vol.h5", coils=coils, shape=(80, 72), crop=(64, 64), mask=mask)
    src = KspaceSource(f, acceleration=1)
    assert src.info["mask_source"] == ("file" if with_mask else "retrospective uniform1d x1")
    assert src.output_shape == (64, 64) and src.image_shape == (80, 72) and len(src) == 2
    rc, _ = _run(["--kspace", str(f), "--acc", "1", "--method", "zerofill", "--out", str(tmp_path / "out")])
    assert rc == 0
    with h5py.File(tmp_path / "out" / "reconstruction.h5") as h:
        rec = h["reconstruction"][()]
    assert rec.shape == (2, 64, 64) and rec.dtype == np.float32
    m = _metrics(tmp_path / "out")
    assert len(m["per_slice"]["psnr"]) == 2 and m["slices"] == 2
    # Single coil: |ifft2c(k)| is the reference itself (float32 round-off). Multi-coil: SENSE with ESPIRiT maps
    # against the RSS reference (noise 0.002 per entry) agrees to > 40 dB.
    assert m["psnr"] > (80.0 if coils == 1 else 40.0)
    assert m["baseline_psnr"] > 80.0  # the zero-filled RSS of fully sampled data is the reference
    assert len(list((tmp_path / "out" / "png").glob("slice_*.png"))) == 2


def test_undersampled_file_mask_and_dds_beats_zero_filled(tmp_path):
    """An under-sampled file (its own mask) reconstructs with DDS and the data-fitted Gaussian prior above the
    zero-filled RSS baseline, and the mask in the file is the one used."""
    w = 96
    mask = uniform1d_mask(w, 4, generator=torch.Generator().manual_seed(3)).mask[0].numpy()
    f = _kspace_file(tmp_path / "u.h5", slices=1, coils=8, shape=(w, w), mask=mask)
    src = KspaceSource(f)
    assert torch.equal(src.mask[0], torch.from_numpy(mask))
    p = src.problem([0])
    assert bool((p.y * (1 - src.mask)).abs().max() == 0)
    rc, _ = _run(["--kspace", str(f), "--model", "gaussian", "--nfe", "10", "--out", str(tmp_path / "dds")])
    assert rc == 0
    m = _metrics(tmp_path / "dds")
    # Measured 24.0 vs 17.9 dB at 96², 8 coils, x4 (one draw); a 2 dB margin leaves room for other draws.
    assert m["psnr"] > m["baseline_psnr"] + 2.0, m


def test_power_law_fit_and_data_sized_prior():
    r = torch.fft.fftshift((torch.fft.fftfreq(48)[:, None] ** 2 + torch.fft.fftfreq(40)[None, :] ** 2).sqrt())
    power = (3.0 * r.clamp_min(1e-9) ** -2.5).to(torch.float64)
    log_c, alpha = power_law_fit(power, torch.rand(48, 40) > 0.5)
    # Exact up to the curvature of r^-α within an annulus (24 annuli over the band: ~1e-3).
    assert alpha == pytest.approx(2.5, abs=5e-3) and log_c == pytest.approx(math.log(3.0), abs=2e-2)
    prior = gaussian_prior((48, 40), channels=2)
    assert tuple(prior.unet.spectrum.shape) == (2, 48, 40) and prior.unet.config.sample_size == [48, 40]
    # Default: variance 0.25 per pixel and channel (trace Σ = Σ_f p(f)).
    assert float(prior.unet.spectrum.double().sum()) == pytest.approx(0.25 * 2 * 48 * 40, rel=1e-5)


def test_fitted_prior_sees_the_image_decay(tmp_path):
    f = _kspace_file(tmp_path / "a.h5", slices=1, coils=4, shape=(96, 96), noise=0.0)
    p = KspaceSource(f, acceleration=1).problem([0])
    prior = fitted_gaussian_prior(p, "mri")
    spec = prior.unet.spectrum.double()
    # Ellipse phantoms decay faster than 1/|f|² (edges): the fitted exponent is between 2 and 4.
    r = (torch.fft.fftfreq(96)[:, None] ** 2 + torch.fft.fftfreq(96)[None, :] ** 2).sqrt()
    alpha = -math.log(float(spec[0, 0, 8] / spec[0, 0, 32])) / math.log(float(r[0, 8] / r[0, 32]))
    assert 2.0 < alpha < 4.0


def test_ct_from_a_sinogram_file(tmp_path):
    """A sinogram written with the documented geometry (line integrals in pixel units, angles in degrees) comes
    back through FBP at the right intensity, with --angles and with --views alike."""
    n, views = 64, 90
    x = random_ellipse_phantoms(2, n, torch.Generator().manual_seed(0))[:, 0].double() * 0.02
    ct = ParallelBeamCT(n, sparse_view_angles(views), normalize=False)
    sino = ct.A(x[:, None])[:, 0].numpy().astype(np.float32)
    np.save(tmp_path / "sino.npy", sino)
    np.save(tmp_path / "angles.npy", sparse_view_angles(views).numpy())
    np.save(tmp_path / "ref.npy", x.numpy().astype(np.float32))
    outs = {}
    for how in (["--angles", str(tmp_path / "angles.npy")], ["--views", str(views)]):
        out = tmp_path / how[0].strip("-")
        rc, _ = _run(["--task", "ct", "--sinogram", str(tmp_path / "sino.npy"), *how, "--reference",
                      str(tmp_path / "ref.npy"), "--method", "fbp", "--out", str(out)])
        assert rc == 0
        outs[how[0]] = _metrics(out)
    m = outs["--angles"]
    assert m["source"]["size"] == n and m["slices"] == 2
    assert m["psnr"] > 25.0  # FBP of 90 noiseless views at 64²; a wrong scale or geometry gives < 15 dB
    assert m["psnr"] == pytest.approx(outs["--views"]["psnr"], abs=1e-6)
    rc, _ = _run(["--task", "ct", "--sinogram", str(tmp_path / "sino.npy"), "--views", str(views), "--model",
                  "gaussian", "--nfe", "4", "--method", "dds", "--out", str(tmp_path / "dds")])
    assert rc == 0 and _metrics(tmp_path / "dds")["nfe"] == 4


def test_image_input_at_its_own_size(tmp_path):
    import matplotlib.image

    img = random_ellipse_phantoms(1, 40, torch.Generator().manual_seed(5))[0, 0].numpy()
    matplotlib.image.imsave(tmp_path / "x.png", img, cmap="gray", vmin=0, vmax=1)
    rc, _ = _run(["--task", "deblur", "--image", str(tmp_path / "x.png"), "--method", "tv", "--out",
                  str(tmp_path / "out")])
    assert rc == 0
    with h5py.File(tmp_path / "out" / "reconstruction.h5") as h:
        assert h["reconstruction"].shape == (1, 40, 40)
    m = _metrics(tmp_path / "out")
    assert m["psnr"] > m["baseline_psnr"]  # TV deblurring beats the blurred Aᴴy


def test_folders_resume_shard_and_summarise(tmp_path, monkeypatch):
    data = tmp_path / "data"
    for i in range(3):
        _kspace_file(data / f"f{i}.h5", slices=1, coils=1, shape=(32, 32), seed=i)
    calls = []
    real = reconstruct._reconstruct_file

    def counting(args, source, *rest):
        calls.append(source.path.name)
        return real(args, source, *rest)

    monkeypatch.setattr(reconstruct, "_reconstruct_file", counting)
    from lml_sampler.eval.distributed import DistInfo

    # Rank 1 of 2 owns the second block of files (owned_shards: [1, 3)), as under accelerate launch.
    monkeypatch.setattr("lml_sampler.eval.distributed.dist_info", lambda cpu=None: DistInfo(1, 2))
    out = tmp_path / "out"
    args = ["--kspace", str(data), "--method", "zerofill", "--out", str(out)]
    assert _run(args)[0] == 0
    assert calls == ["f1.h5", "f2.h5"] and not (out / "f0").exists() or not (out / "f0" / "metrics.json").exists()
    monkeypatch.setattr("lml_sampler.eval.distributed.dist_info", lambda cpu=None: DistInfo(0, 1))
    assert _run(args)[0] == 0
    assert calls == ["f1.h5", "f2.h5", "f0.h5"]  # finished files are skipped
    assert _run(args)[0] == 0 and len(calls) == 3
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("file,slices,psnr") and len(rows) == 4
    # Another method into the same folder would mix two runs: refused before any work.
    rc, _ = _run(["--kspace", str(data), "--method", "cgls", "--out", str(out)])
    assert rc == 2 and len(calls) == 3


def test_an_interrupted_file_leaves_no_output(tmp_path, monkeypatch):
    f = _kspace_file(tmp_path / "v.h5", slices=3, coils=1, shape=(32, 32))
    from lml_sampler.pipelines import io

    real = io.ReconstructionWriter.add
    seen = []

    def failing(self, indices, *a):
        seen.append(indices)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(self, indices, *a)

    monkeypatch.setattr(io.ReconstructionWriter, "add", failing)
    with pytest.raises(KeyboardInterrupt):
        main(["--kspace", str(f), "--method", "zerofill", "--no-progress", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "reconstruction.h5").exists() and not (tmp_path / "out" / "metrics.json").exists()
    assert not list((tmp_path / "out").glob(".*tmp"))
    monkeypatch.setattr(io.ReconstructionWriter, "add", real)
    assert _run(["--kspace", str(f), "--method", "zerofill", "--out", str(tmp_path / "out")])[0] == 0
    assert (tmp_path / "out" / "metrics.json").is_file()


def _bad_files(tmp_path):
    good = _kspace_file(tmp_path / "good.h5", slices=1, coils=4, shape=(32, 32))
    with h5py.File(tmp_path / "misnamed.h5", "w") as h:
        h["kspace_data"] = np.zeros((1, 4, 32, 32), np.complex64)
    with h5py.File(tmp_path / "real.h5", "w") as h:
        h["kspace"] = np.zeros((1, 4, 32, 32), np.float32)
    with h5py.File(tmp_path / "mask.h5", "w") as h:
        h["kspace"] = np.zeros((1, 4, 32, 32), np.complex64)
        h["mask"] = np.ones(30, np.float32)
    with h5py.File(tmp_path / "ref.h5", "w") as h:
        h["kspace"] = np.zeros((2, 4, 32, 32), np.complex64)
        h["reconstruction_rss"] = np.zeros((1, 32, 32), np.float32)
    np.save(tmp_path / "sino.npy", np.zeros((10, 46), np.float32))
    np.save(tmp_path / "angles.npy", np.arange(12, dtype=np.float64))
    return good


@pytest.mark.parametrize("args, needle", [
    (["--kspace", "{d}/misnamed.h5"], "misnamed.h5: dataset 'kspace': missing (the file has ['kspace_data'])"),
    (["--kspace", "{d}/real.h5"], "real.h5: dataset 'kspace': must be complex"),
    (["--kspace", "{d}/mask.h5"], "mask.h5: dataset 'mask': has length 30 but kspace has W = 32"),
    (["--kspace", "{d}/ref.h5"], "ref.h5: dataset 'reconstruction_rss': must be (slices, h, w) = (2,"),
    (["--kspace", "{d}/nothere.h5"], "nothere.h5: no such file"),
    (["--task", "ct", "--sinogram", "{d}/sino.npy", "--angles", "{d}/angles.npy"],
     "sino.npy: dataset 'sinogram': has 10 views (axis -2) but angles"),
    (["--task", "ct", "--sinogram", "{d}/sino.npy", "--views", "12"], "has 10 views (axis -2) but views=12"),
    (["--kspace", "{d}/good.h5", "--model", "random-tiny"], "complex data need a 2-channel (Re, Im) model"),
    (["--kspace", "{d}/good.h5", "--task", "ct"], "--kspace reconstructs MRI"),
    (["--kspace", "{d}/good.h5", "--method", "cgls", "--tv-z", "0.1"], "--tv-z couples the slices"),
    (["--task", "deblur", "--image", "{d}/good.h5"], "images must be .png or .npy"),
])
def test_bad_input_is_one_line_exit_2_before_work(tmp_path, capsys, args, needle):
    _bad_files(tmp_path)
    out = tmp_path / "out"
    rc, err = _run([a.format(d=tmp_path) for a in args] + ["--out", str(out)], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lml-reconstruct: ") and needle in lines[0], err
    assert not (out / "reconstruction.h5").exists()


def test_model_size_mismatch_and_out_is_a_file(tmp_path, capsys):
    good = _bad_files(tmp_path)
    (tmp_path / "file").write_text("x")
    rc, err = _run(["--kspace", str(good), "--out", str(tmp_path / "file")], capsys)
    assert rc == 2 and "is a file, not a folder" in err
    big = _kspace_file(tmp_path / "big.h5", slices=1, coils=1, shape=(48, 48))
    rc, err = _run(["--kspace", str(big), "--model", "random-tiny", "--real-image", "--out", str(tmp_path / "o")],
                   capsys)
    assert rc == 2 and "the model is 32×32 but the images are 48×48: use --model gaussian" in err


_MEMORY_SCRIPT = """
import resource, sys
from lml_sampler.pipelines.reconstruct import main
peaks = []
for f, out in zip(sys.argv[1::2], sys.argv[2::2]):
    assert main(["--kspace", f, "--method", "zerofill", "--no-png", "--no-progress", "--out", out]) == 0
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(peaks[1] - peaks[0])
"""


def test_memory_is_bounded_in_the_number_of_slices(tmp_path):
    """One process reconstructs a 2-slice file, then a 24-slice one: the high-water mark of its memory rises by far
    less than the 22 extra slices' size (slices are streamed from the file and written as they finish)."""
    shape, coils = (128, 128), 12
    files = []
    for slices in (2, 24):
        g = torch.Generator().manual_seed(0)
        maps = simulate_coil_sensitivities(coils, shape, g)
        k, ref = simulate_kspace(_images(1, *shape).expand(slices, *shape), maps, noise=0.001, generator=g)
        # Stored maps: no ESPIRiT, so the run is quick and only the streaming is measured.
        files += [str(write_kspace_file(tmp_path / f"s{slices}.h5", k, ref,
                                        sensitivities=maps.expand(slices, *maps.shape))), str(tmp_path / f"o{slices}")]
    run = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, *files], capture_output=True, text=True, check=True,
                         env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    rise = float(run.stdout.strip().splitlines()[-1])
    data_mb = 22 * coils * shape[0] * shape[1] * 8 * 2 / 2**20  # 22 extra slices of k-space and maps: 66 MB
    # Holding every slice would raise the peak by at least the data (k-space, maps, coil images: more).
    assert rise < 0.25 * data_mb, rise
