"""The harness of ``python -m benchmarks.lml_verdict``: its Fréchet estimators, NFE accounting, resumable cells,
tuning rule."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

import lml_sampler.eval as ev
from benchmarks.lml_verdict import runner
from benchmarks.lml_verdict.benchmarks import GaussianBenchmark
from benchmarks.lml_verdict.estimators import stationary_fd
from benchmarks.lml_verdict.specs import BASE_CONFIG, corrector_plan, grid_specs
from lml_sampler._io import CellStore
from lml_sampler.models.analytic import GaussianDenoiser
from lml_sampler.sampling import sample
from lml_sampler.schedulers.registry import make_scheduler

BASE = DDPMScheduler(**BASE_CONFIG).config


@pytest.fixture(scope="module")
def gaussian():
    return GaussianDenoiser.stationary(dtype=torch.float64)


def _noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sampler,nfe", [("dpm++2m", 5), ("ddim", 10)])
def test_control_variate_estimator_recovers_transfer_matrix_value(gaussian, sampler, nfe):
    """A linear sampler of the stationary model is a Fourier multiplier, so the ratio estimator is exact."""
    exact = ev.linear_sampler_distance(gaussian, make_scheduler(sampler, BASE), nfe)
    x_T = _noise(64)
    out, _ = sample(gaussian, make_scheduler(sampler, BASE), x_T, nfe)
    fd, se = stationary_fd(out, gaussian.spectrum, x_T)
    # Exact up to rounding, which is fp32 for DPM-Solver: diffusers' DPMSolverMultistepScheduler.step casts the sample
    # to float32, so the per-sample gain at a frequency deviates by up to ~3e-5 (measured; DDIM stays at 1e-12) and
    # the estimate by ~4e-7. 1e-5 absolute (1e-6 of the value) covers this and nothing else: a Monte-Carlo
    # estimator at N = 64 would be off by ~0.5.
    assert fd == pytest.approx(exact, abs=1e-5)
    assert se < 1e-5


def test_plain_estimator_within_its_stated_error(gaussian):
    """Without the control variate the estimate is Monte-Carlo; the jackknife SE must cover the exact value."""
    exact = ev.linear_sampler_distance(gaussian, make_scheduler("ddim", BASE), 10)
    x_T = _noise(1024, seed=3)
    out, _ = sample(gaussian, make_scheduler("ddim", BASE), x_T, 10)
    fd, se = stationary_fd(out, gaussian.spectrum)
    # 4 SE: a correct estimator fails this with probability ~1e-4; SE ~ 0.07 here, so a biased or mis-scaled
    # spectrum convention (errors of order 1) cannot pass
    assert 0 < se < 0.2
    assert abs(fd - exact) < 4 * se


def test_spectral_fd_closed_form(gaussian):
    """Exact data built from the same noise scores 0; data scaled by 1.1 scores (1.1 − 1)²·trace Σ."""
    z = _noise(128, seed=1)
    root = gaussian.spectrum.double().sqrt()
    x = torch.fft.ifft2(root * torch.fft.fft2(z, norm="ortho"), norm="ortho").real
    fd0, _ = stationary_fd(x, gaussian.spectrum, z)
    fd1, _ = stationary_fd(1.1 * x, gaussian.spectrum, z)
    assert fd0 == pytest.approx(0.0, abs=1e-18 * 64)  # round-off of a sum of squares of ~1e-16 differences
    assert fd1 == pytest.approx(0.01 * 64.0, rel=1e-10)  # trace Σ = 64 by construction


def test_stationary_fd_rejects_bad_shapes(gaussian):
    with pytest.raises(ValueError, match="out must be"):
        stationary_fd(torch.zeros(4, 2, 16, 16), gaussian.spectrum)
    with pytest.raises(ValueError, match="noise must"):
        stationary_fd(torch.zeros(4, 1, 16, 16), gaussian.spectrum, torch.zeros(3, 1, 16, 16))


@pytest.mark.parametrize("nfe,corrected,placement", [(5, 1, "late"), (10, 2, "late"), (10, 1, "early")])
def test_corrector_plan_spends_exactly_the_nfe(nfe, corrected, placement):
    plan = corrector_plan(nfe, corrected, placement)
    assert plan.predictor_steps + len(plan.steps) == nfe
    assert max(plan.steps) < plan.predictor_steps - 1  # never on the last (noise-free) step
    assert min(plan.steps) >= 1  # step 0 has no history for the preconditioner


def test_corrector_plan_rejects_impossible_budgets():
    with pytest.raises(ValueError, match="corrected"):
        corrector_plan(4, 2, "late")
    with pytest.raises(ValueError, match="placement"):
        corrector_plan(10, 1, "middle")
    two_late = next(s for s in grid_specs("full") if s.id.startswith("lgv-late2"))
    assert not two_late.feasible(5) and two_late.feasible(6)


def test_langevin_cell_runs_at_nominal_nfe_and_cells_resume(tmp_path, monkeypatch):
    bench = GaussianBenchmark.build(quick=True)
    bench.n = 16
    store = CellStore(tmp_path)
    spec = next(s for s in grid_specs("quick") if s.kind == "langevin" and s.settings["extra_nfe"])
    cell = runner.ensure_cell(store, bench, spec, 6, seed=0, log=False)  # run_sampler raises on an NFE mismatch
    assert cell["nfe"] == 6 and cell["value"] > 0
    key = runner.cell_key(bench.name, spec.id, 6, 0)
    assert runner.stored_result(store, key)["value"] == cell["value"]
    assert not list((tmp_path / key).glob(".*.tmp"))  # the atomic write leaves no temp file

    def boom(*args, **kwargs):
        raise AssertionError("a finished cell must be read, not recomputed")

    monkeypatch.setattr(runner, "compute_cell", boom)
    assert runner.ensure_cell(store, bench, spec, 6, seed=0, log=False) == cell
    # a cell folder never mixes two runs: the same key with another N is refused
    bench.n = 32
    with pytest.raises(ValueError, match="different run"):
        runner.ensure_cell(store, bench, spec, 6, seed=0, log=False)


def test_selection_uses_only_the_tuning_seed(tmp_path):
    specs = [s for s in grid_specs("full") if s.family == "gamma-dpm++2m"][:3]
    store = CellStore(tmp_path)
    # seed 0 prefers specs[1]; seed 1 (a report seed) would prefer specs[2] and must be ignored
    for spec, v0, v1 in zip(specs, (3.0, 1.0, 2.0), (3.0, 9.0, 0.5)):
        for seed, v in ((0, v0), (1, v1)):
            store.cell(runner.cell_key("fake", spec.id, 10, seed)).save({"value": v})
    chosen = runner.select(store, "fake", (10,), specs)
    assert chosen[("gamma-dpm++2m", 10)] == specs[1]
    assert runner.nearest(8, (5, 10)) == 10 and runner.nearest(6, (5, 10)) == 5
