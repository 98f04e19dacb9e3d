"""Tests of ESPIRiT coil sensitivities (lml_sampler.operators.coils) against known simulated maps."""

import pytest
import torch

from lml_sampler.data.phantoms import random_ellipse_phantoms, random_smooth_phase
from lml_sampler.operators import MultiCoilMRI, fft2c, poisson_disc_mask, simulate_coil_sensitivities, uniform1d_mask
from lml_sampler.operators.coils import acs_region, calibration_region, espirit_maps, map_error
from lml_sampler.pipelines.baselines import cg_least_squares
from lml_sampler.pipelines.common import psnr


def _slice(n=64, coils=8, seed=0, noise=0.002):
    g = torch.Generator().manual_seed(seed)
    S = simulate_coil_sensitivities(coils, n, g)
    x = (random_ellipse_phantoms(1, n, g)[0, 0] * torch.exp(1j * random_smooth_phase(1, n, g)[0, 0]))
    k = fft2c(S * x.to(torch.complex64))
    k = k + noise * torch.randn(k.shape, dtype=torch.complex64, generator=g)
    return S, x, k


def test_acs_region_of_column_and_2d_masks():
    m = uniform1d_mask(64, 4, 0.125, generator=torch.Generator().manual_seed(0)).mask
    rows, cols = acs_region(m)
    assert (rows.start, rows.stop) == (0, 64) and cols.stop - cols.start >= 8 and cols.start <= 32 < cols.stop
    assert bool(m[:, cols].all())
    pd = poisson_disc_mask(32, 4, calib=6, generator=torch.Generator().manual_seed(0)).mask
    r2, c2 = acs_region(pd)
    assert bool(pd[r2, c2].all()) and min(r2.stop - r2.start, c2.stop - c2.start) >= 6
    hole = torch.ones(16, 16)
    hole[8, 8] = 0
    with pytest.raises(ValueError, match="centre is not sampled"):
        acs_region(hole)
    # A narrow calibration region gets a narrower kernel (several patch positions across it), and too narrow fails.
    def centre_columns(n):
        m = torch.zeros(64, 64)
        m[:, 32 - n // 2 : 32 - n // 2 + n] = 1
        return m

    assert calibration_region(centre_columns(5))[2] == 3
    assert calibration_region(centre_columns(25))[2] == 6
    with pytest.raises(ValueError, match="at least 3"):
        calibration_region(centre_columns(2))


@pytest.mark.parametrize("sampled", ["full", "uniform1d x4"])
def test_espirit_recovers_simulated_maps(sampled):
    S, x, k = _slice()
    mask = torch.ones(64, 64) if sampled == "full" else uniform1d_mask(64, 4, generator=torch.Generator().manual_seed(1)).mask
    est = espirit_maps(k * mask, mask)
    support = x.abs() > 0.05
    rss = est.abs().pow(2).sum(0)
    kept = rss > 0
    assert torch.allclose(rss[kept], torch.ones_like(rss[kept]), atol=1e-5)  # unit norm where kept, else 0
    assert float(kept[support].float().mean()) > 0.99  # the object is kept
    # Phase-aligned map error on the object (the maps are defined up to a per-pixel phase the image absorbs):
    # 0.5 % from a 24×24 fully sampled centre, 3-7 % (across draws) from the 5-column ACS of a x4 mask at 64².
    err = map_error(est, S, support)
    assert err < (0.01 if sampled == "full" else 0.1)
    assert map_error(est.conj(), S, support) > 0.3  # the error measure does tell a wrong convention apart


def test_reconstruction_with_estimated_maps_is_as_good_as_with_true_maps():
    """CG-SENSE (15 iterations) at x4 with ESPIRiT maps vs the true maps, PSNR on the object.

    Measured: 27.9 dB with ESPIRiT vs 22.8 dB with the true maps at 64² (8 coils), 27.2 vs 23.1 at 128²: ESPIRiT
    crops its maps to the object, a support constraint that removes aliased unknowns the true (everywhere smooth)
    maps keep. The test requires the estimate to lose nothing (0.5 dB slack for the draw)."""
    S, x, k = _slice(seed=3)
    mask = uniform1d_mask(64, 4, generator=torch.Generator().manual_seed(2)).mask
    y = (k * mask)[None]
    est = espirit_maps(y[0], mask)
    support = (x.abs() > 0.05).to(torch.float32)
    out = {}
    for name, maps in (("true", S), ("espirit", est)):
        op = MultiCoilMRI(mask, maps)
        rec = cg_least_squares(op, y, 15)[0, 0].abs() * maps.abs().pow(2).sum(0).sqrt()
        out[name] = float(psnr((rec * support)[None, None], (x.abs() * support)[None, None].float(), 1.0))
    assert out["espirit"] > 20.0  # far above the zero-filled image's ~14 dB
    assert out["espirit"] > out["true"] - 0.5
