"""The harness of ``python -m benchmarks.lml_verdict``: its Fréchet estimators, NFE accounting, resumable cells,
tuning rule, the choice of discretisations, best-stock selection, weight-keyed cells, the report's verdict and the
recommended-settings table."""

from __future__ import annotations

import json
import types
import math
from dataclasses import asdict

import pytest
import torch
from diffusers import DDPMScheduler

import lml_sampler.eval as ev
import lml_sampler.models.bundled as bundled_module
from benchmarks import recommended
from benchmarks.lml_verdict import benchmarks as verdict_benchmarks
from benchmarks.lml_verdict import report, runner
from benchmarks.lml_verdict.benchmarks import GaussianBenchmark, store_name, weights_digest
from benchmarks.lml_verdict.estimators import stationary_fd
from benchmarks.lml_verdict.specs import (
    BASE_CONFIG,
    LML_PARENTS,
    STOCK_SOLVERS,
    TUNE_SEED,
    chosen_bases,
    corrector_plan,
    default_stock,
    gamma_specs,
    langevin_specs,
    linear_spec,
    rank_discretisations,
    split_stock,
    stock_names,
)
from lml_sampler._io import CellStore, atomic_write_json
from lml_sampler.models.analytic import GaussianDenoiser
from lml_sampler.sampling import sample
from lml_sampler.schedulers.registry import (
    DISCRETISATIONS,
    default_discretisation,
    format_sampler,
    make_scheduler,
    parse_sampler,
    sampler_names,
    solver_discretisations,
)

BASE = DDPMScheduler(**BASE_CONFIG).config


@pytest.fixture(scope="module")
def gaussian():
    return GaussianDenoiser.stationary(dtype=torch.float64)


def _noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------------------
# Estimators and NFE accounting
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler,nfe", [("dpm++2m", 5), ("ddim", 10), ("dpm++2m-lu", 8)])
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
    two_late = next(s for s in langevin_specs("full", ("dpm++2m-karras",)) if s.id.startswith("lgv-late2"))
    assert not two_late.feasible(5) and two_late.feasible(6)


class _NaNStepScheduler:
    """A linear 'scheduler' whose step coefficient is NaN, like diffusers' DPM-Solver 3 with a repeated final σ."""

    init_noise_sigma = 1.0

    def set_timesteps(self, n):
        self.timesteps = torch.arange(n - 1, -1, -1)

    def step(self, eps, t, x):
        return type("Out", (), {"prev_sample": x * float("nan") if int(t) == 0 else 0.5 * x})()


def test_exact_linear_reports_a_nan_sampler_as_diverged_and_cells_store_inf(tmp_path):
    bench = GaussianBenchmark.build(quick=True)
    assert bench.exact_linear(_NaNStepScheduler(), 3) == float("inf")
    assert runner.evaluate(bench, torch.full((2, 1, 16, 16), 1e5), None) == {"value": float("inf"), "finite": False}
    # a real case: DPM-Solver 3 (noise prediction, final σ = σ_min) on Karras σ at NFE 15 steps from σ_min to σ_min
    bench.n = 8
    cell = runner.ensure_cell(CellStore(tmp_path), bench, linear_spec("dpm-karras"), 15, seed=1, log=False)
    assert cell["value"] == float("inf")
    assert math.isfinite(runner.ensure_cell(CellStore(tmp_path), bench, linear_spec("dpm-karras"), 10, 1,
                                            log=False)["value"])


def test_langevin_cell_runs_at_nominal_nfe_and_cells_resume(tmp_path, monkeypatch):
    bench = GaussianBenchmark.build(quick=True)
    bench.n = 16
    store = CellStore(tmp_path)
    spec = next(s for s in langevin_specs("quick", ("dpm++2m-linspace",)) if s.settings["extra_nfe"])
    cell = runner.ensure_cell(store, bench, spec, 6, seed=0, log=False)  # run_sampler raises on an NFE mismatch
    assert cell["nfe"] == 6 and cell["value"] > 0
    key = runner.cell_key(bench.store_name, spec.id, 6, 0)
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
    specs = gamma_specs("full", ("dpm++2m-karras",))[:3]
    store = CellStore(tmp_path)
    # seed 0 prefers specs[1]; seed 1 (a report seed) would prefer specs[2] and must be ignored
    for spec, v0, v1 in zip(specs, (3.0, 1.0, 2.0), (3.0, 9.0, 0.5)):
        for seed, v in ((0, v0), (1, v1)):
            store.cell(runner.cell_key("fake", spec.id, 10, seed)).save({"value": v})
    chosen = runner.select(store, "fake", (10,), specs)
    assert chosen[("gamma:dpm++2m-karras", 10)] == specs[1]
    assert runner.nearest(8, (5, 10)) == 10 and runner.nearest(6, (5, 10)) == 5


# ----------------------------------------------------------------------------------------------------------------------
# Registry names of the discretisations
# ----------------------------------------------------------------------------------------------------------------------


def test_every_stock_and_lml_discretisation_name_builds_with_its_override():
    names = stock_names()
    listed = {n for n in sampler_names(include_discretisations=True) if not n.startswith("lml-") and "-" in
              n.replace("dpm++", "dpmpp") and not n.startswith("flow")}
    assert set(names) == listed  # the study runs every discretisation the registry offers its stock solvers
    assert {"dpm++2m-karras", "dpm++2m-lu", "unipc-karras", "deis-karras", "dpm++3m-lu", "ddim-trailing"} <= set(names)
    for name in names:
        solver, disc = split_stock(name)
        sched = make_scheduler(name, BASE)
        for key, value in DISCRETISATIONS[disc].items():
            assert getattr(sched.config, key) == value, name
        if solver in LML_PARENTS:
            spec = gamma_specs("quick", (name,))[0]
            lml = make_scheduler(parse_sampler(spec.sampler_name()), BASE)
            assert lml.config.lm_gamma == spec.settings["gamma"] and lml.config.kappa > 0
            for key, value in DISCRETISATIONS[disc].items():
                assert getattr(lml.config, key) == value, spec.sampler_name()
    assert "lu" not in solver_discretisations("unipc") and "karras" not in solver_discretisations("ddim")
    for solver in STOCK_SOLVERS:  # the suffix-free name is the solver's default discretisation
        plain, suffixed = make_scheduler(solver, BASE).config, make_scheduler(default_stock(solver), BASE).config
        assert plain.timestep_spacing == suffixed.timestep_spacing == default_discretisation(solver)
    assert default_discretisation("ddim") == "trailing" and default_discretisation("dpm++2m") == "linspace"


def test_format_sampler_round_trips_through_the_parser():
    name = format_sampler("lml-dpm++2m-lu", {"lm_gamma": 0.1, "kappa": 1e-3, "lm_rank": 2, "lm": True})
    assert name == "lml-dpm++2m-lu@kappa=0.001:lm=true:lm_gamma=0.1:lm_rank=2"
    assert parse_sampler(name).settings == {"kappa": 1e-3, "lm": True, "lm_gamma": 0.1, "lm_rank": 2}
    assert format_sampler("dpm++2m-karras") == "dpm++2m-karras"
    with pytest.raises(ValueError, match="stock name"):
        split_stock("lml-dpm++2m-karras")


def test_discretisations_are_ranked_by_mean_rank_and_the_default_always_runs():
    values = {"dpm++2m-linspace": {5: 9.0, 10: 2.0}, "dpm++2m-karras": {5: 1.0, 10: 0.9},
              "dpm++2m-lu": {5: 1.5, 10: 0.1}, "dpm++2m-beta": {5: 40.0, 10: float("nan")},
              "unipc-karras": {5: 0.5, 10: 0.5}}
    ranked = rank_discretisations(values, "dpm++2m")
    # mean ranks: karras (0 + 1)/2 = lu (1 + 0)/2 < linspace 2 < beta 3 (NaN ranks last); ties keep the given order
    assert ranked == ["dpm++2m-karras", "dpm++2m-lu", "dpm++2m-linspace", "dpm++2m-beta"]
    assert chosen_bases(ranked, "dpm++2m", 1) == ("dpm++2m-linspace", "dpm++2m-karras")
    assert chosen_bases(ranked, "dpm++2m", None) == ("dpm++2m-linspace", "dpm++2m-karras", "dpm++2m-lu",
                                                     "dpm++2m-beta")


# ----------------------------------------------------------------------------------------------------------------------
# Results: best stock over discretisations, weight-keyed cells, the verdict
# ----------------------------------------------------------------------------------------------------------------------

REPORT = (1, 2)


def _fake_run(root, key, stock: dict, tuned: dict, tune_values: dict | None = None, nfes=(5, 10)):
    """A finished run under ``root/key``: {stock name: {NFE: value}} and {spec: {NFE: value}} on the report seed
    sets (seed set 2 = seed set 1 + 0.01), tuning values {spec: {NFE: value}} on seed set 0."""
    store = CellStore(root)
    for spec_id, by_nfe in {**stock, **{s.id: v for s, v in tuned.items()}}.items():
        for nfe, v in by_nfe.items():
            for seed in REPORT:
                store.cell(runner.cell_key(key, spec_id, nfe, seed)).save({"value": v + 0.01 * (seed - 1)})
    for spec, by_nfe in (tune_values or {s: v for s, v in tuned.items()}).items():
        for nfe, v in by_nfe.items():
            store.cell(runner.cell_key(key, spec.id, nfe, TUNE_SEED)).save({"value": v})
    meta = runner.RunMeta(title=key, metric="FD", n=8, nfes=nfes, tune_nfes=nfes, grid_level="full",
                          report_seeds=REPORT, stock=tuple(stock), official=(), lml_top=None,
                          grid=tuple(s.to_json() for s in tuned))
    atomic_write_json(root / key / "meta.json", asdict(meta))


def test_best_stock_is_the_minimum_over_every_discretisation(tmp_path):
    g = gamma_specs("full", ("dpm++2m-linspace", "dpm++2m-lu"))
    lin, lu = g[4], g[len(g) // 2 + 1]  # γ = 0.5 on linspace, γ = 0.05 on uniform λ
    stock = {"dpm++2m-linspace": {5: 9.0, 10: 2.5}, "dpm++2m-karras": {5: 1.0, 10: float("inf")},
             "dpm++2m-lu": {5: 1.5, 10: 0.08}, "unipc-linspace": {5: 8.0, 10: 2.4}}
    _fake_run(tmp_path, "gmm", stock, {lin: {5: 7.0, 10: 1.7}, lu: {5: 1.4, 10: 0.09}})
    res = runner.collect(tmp_path, "gmm")
    b5, b10 = res.best_stock(5), res.best_stock(10)
    assert (b5.family, b10.family) == ("stock:dpm++2m-karras", "stock:dpm++2m-lu")  # diverged never wins
    assert b10.value == pytest.approx(0.085) and b10.spec.sampler_name() == "dpm++2m-lu"
    assert res.best_stock(10, default_only=True).family == "stock:unipc-linspace"
    assert res.best_lml(10).family == "gamma:dpm++2m-lu" and res.best_lml(10).spec == lu
    assert res.best_lml(10, default_only=True).spec == lin
    cells = {c.nfe: c for c in report.headline({"gmm": res})}
    assert cells[10].ratio == pytest.approx(0.095 / 0.085)
    assert cells[10].default_ratio == pytest.approx(1.705 / 2.405)  # the earlier protocol: default steps only
    ok, parts = report.targets(list(cells.values()), {"gmm": res})
    assert not ok and "not met" in parts[0]
    md = report.markdown({"gmm": res}, quick=False, plot_link="x.png")
    assert md.startswith("**The LML targets are not met**") and "GMM 1.40× / 1.12×" in md.split("\n")[0]
    assert "- empirical digits: not run." in md and "(not run: NFE 6, 8, 15, 20)" in md
    assert "`dpm++2m-lu`" in md and "lml-dpm++2m-lu@kappa=0.001:lm_gamma=0.05" in md
    unstable, never = report.instabilities(res)
    # Karras beats linspace at NFE 5 and diverges at NFE 10: reported, not hidden
    assert [(u.stock, [c[0] for c in u.cases]) for u in unstable] == [("dpm++2m-karras", [10])] and never == []


def test_targets_are_met_only_when_every_ratio_is_at_most_its_goal(tmp_path):
    g = gamma_specs("full", ("dpm++2m-lu",))
    stock = {"dpm++2m-linspace": {5: 9.0, 10: 2.5}, "dpm++2m-lu": {5: 1.0, 10: 1.0}}
    for name, lml, met in (("gmm", {5: 0.79, 10: 0.5}, True), ("empirical", {5: 0.79, 10: 0.82}, False)):
        _fake_run(tmp_path / name, name, stock, {g[0]: lml})
        res = runner.collect(tmp_path / name, name)
        rs = [c.ratio for c in report.headline({name: res})]
        assert all(r <= 0.8 for r in rs) == met  # seed set 2 adds 0.01: 0.795 and 0.825 / 1.005
        assert report.targets(report.headline({name: res}), {name: res})[1][0].endswith(
            "met)" if met else "not met)")


def test_trained_model_cells_are_keyed_on_its_weights(tmp_path, monkeypatch):
    folder = tmp_path / "digits"
    for rel in verdict_benchmarks.BUNDLED_FILES:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"{}" if rel.endswith(".json") else b"weights v1")
    (folder / "training.json").write_text('{"steps": 1}')
    monkeypatch.setattr(bundled_module, "bundled_path", lambda name: folder)
    key_v1 = store_name("bundled")
    assert key_v1 == f"bundled-{weights_digest(folder)}" and store_name("gaussian") == "gaussian"
    runs = tmp_path / "runs"
    _fake_run(runs, key_v1, {"dpm++2m-linspace": {5: 5.0, 10: 4.0}}, {})
    _fake_run(runs, "gaussian", {"dpm++2m-linspace": {5: 9.9, 10: 2.5}}, {})
    assert runner.collect(runs, "bundled").meta.title == key_v1
    (folder / "training.json").write_text('{"steps": 2}')  # metadata only: same outputs, same cells
    assert store_name("bundled") == key_v1
    (folder / "unet/diffusion_pytorch_model.safetensors").write_bytes(b"weights v2")
    assert store_name("bundled") != key_v1
    assert runner.collect(runs, "bundled") is None  # retrained weights: the old cells no longer describe them
    assert runner.collect(runs, "gaussian").meta.title == "gaussian"  # the analytic benchmarks' cells stay


def test_lml_grid_runs_on_the_chosen_discretisations():
    bench = GaussianBenchmark.build(quick=True)
    bench.lml_top = 1
    seed0 = {n: {5: 1.0 if n.endswith("-lu") else 5.0, 10: 1.0 if n.endswith("-lu") else 5.0} for n in bench.stock}
    grid = runner.lml_grid(bench, seed0)
    bases = {s.family for s in grid}
    assert {"gamma:dpm++2m-linspace", "gamma:dpm++2m-lu", "rank:dpm++2m-lu", "langevin-lm:dpm++2m-lu",
            "gamma:ddim-trailing"} <= bases
    assert "gamma:dpm++2m-karras" not in bases  # top-1: only the best other discretisation
    assert all(split_stock(s.base)[0] in LML_PARENTS for s in grid)


# ----------------------------------------------------------------------------------------------------------------------
# The recommended-settings table
# ----------------------------------------------------------------------------------------------------------------------


def _rec(study, model, nfe, stock="dpm++2m-lu", lml="lml-dpm++2m-lu@kappa=0.001:lm_gamma=0.1", err=(1.0, 0.9)):
    return recommended.Recommendation(model=model, nfe=nfe, metric="FD", stock=stock, stock_error=err[0], lml=lml,
                                      lml_error=err[1], study=study)


def test_recommended_table_merges_studies_and_each_study_replaces_only_its_rows(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- BEGIN: recommended -->\nold\n<!-- END: recommended -->\ntail\n")
    folder = tmp_path / "rows"
    recommended.publish("lml_verdict", [_rec("lml_verdict", "Gaussian", 5)], readme, folder)
    recommended.publish("flow_cfg", [_rec("flow_cfg", "flow model", 10, stock="flow-euler-karras", lml=None)],
                        readme, folder)
    recommended.publish("lml_verdict", [_rec("lml_verdict", "Gaussian", 10, err=(1.0, 1.2))], readme, folder)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("tail\n") and "old" not in text
    body = text.split("<!-- BEGIN: recommended -->")[1]
    assert "| Gaussian | 10 | `dpm++2m-lu`" in body and "| Gaussian | 5 |" not in body  # replaced, not appended
    assert "| flow model | 10 | `flow-euler-karras`" in body  # the other study's row stays
    assert "1.20× (hurts)" in body and "in 2 of 2 rows" in body
    assert json.loads((folder / "flow_cfg.json").read_text())["best"][0]["study"] == "flow_cfg"
    with pytest.raises(ValueError, match="study"):
        recommended.save("lml_verdict", [_rec("flow_cfg", "x", 5)], folder)
    assert _rec("s", "m", 5, err=(1.0, 0.5)).verdict() == "0.50× (helps)"
    assert _rec("s", "m", 5, err=(1.0, 1.01)).verdict() == "1.01× (no gain)"


def _trusted(study, parent, nfe, lml, worst, trained=float("nan")):
    return recommended.Trusted(parent=parent, nfe=nfe, lml=lml, worst_exact=worst, worst_model="GMM", trained=trained,
                               models=3, study=study)


def test_trusted_settings_table_lists_every_study_and_says_leave_lml_off(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- BEGIN: recommended -->\n<!-- END: recommended -->\n")
    folder = tmp_path / "rows"
    recommended.publish("lml_verdict", [_rec("lml_verdict", "Gaussian", 5)], readme, folder,
                        trusted=[_trusted("lml_verdict", "DDIM", 5, None, 1.04, 1.0),
                                 _trusted("lml_verdict", "DPM++", 5, "lml-dpm++2m@kappa=0.001:lm_gamma=0.5", 0.9, 0.95)])
    recommended.publish("flow_verdict", [], readme, folder,
                        trusted=[_trusted("flow_verdict", "Flow Euler", 8, "lml-flow-euler@kappa=0.001:lm_gamma=0.5", 0.3)])
    body = readme.read_text()
    assert "| DDIM | 5 | **leave LML off** | 1.04 (GMM, 3 models) | 1.00 |" in body
    assert "| DPM++ | 5 | `lml-dpm++2m@kappa=0.001:lm_gamma=0.5` | 0.90 (GMM, 3 models) | 0.95 |" in body
    assert "| Flow Euler | 8 | `lml-flow-euler@kappa=0.001:lm_gamma=0.5` | 0.30 (GMM, 3 models) | not run |" in body
    assert "recommended in 2 of 3" in body and "Best per model" in body
    with pytest.raises(ValueError, match="study"):
        recommended.save("lml_verdict", [], folder, trusted=[_trusted("flow_verdict", "x", 5, None, 1.0)])


def test_trusted_settings_pick_the_setting_that_helps_everywhere_and_spare_the_trained_model(monkeypatch):
    """Three models, two γ on one parent: γ=0.5 helps most on the exact models but hurts the trained one, γ=0.05
    helps everywhere a little; at NFE 10 nothing helps every exact model."""
    grid = gamma_specs("quick", ("dpm++2m-linspace",))  # γ ∈ {0.05, 0.5}
    small, large = grid[0].id, grid[1].id
    values = {  # model -> NFE -> spec id -> seed-0 value
        "gaussian": {5: {"dpm++2m-linspace": 1.0, small: 0.9, large: 0.5}, 10: {"dpm++2m-linspace": 1.0, small: 0.9, large: 1.2}},
        "gmm": {5: {"dpm++2m-linspace": 2.0, small: 1.8, large: 1.0}, 10: {"dpm++2m-linspace": 1.0, small: 1.1, large: 0.8}},
        "bundled": {5: {"dpm++2m-linspace": 3.0, small: 2.9, large: 3.6}, 10: {"dpm++2m-linspace": 3.0, small: 3.0, large: 3.0}},
    }

    class Fake:
        tuning_ratio = runner.BenchmarkResults.tuning_ratio  # the real ratio over the fake cells

        def __init__(self, name):
            self.name = name
            self.meta = types.SimpleNamespace(grid_specs=lambda: grid, tune_nfes=(5, 10))

        def tuning_value(self, sid, nfe):
            return values[self.name][nfe].get(sid)

    rows = report.trusted_settings({n: Fake(n) for n in values})
    by = {(r.parent.split(",")[1].split("→")[0].strip(), r.nfe): r for r in rows}
    five, ten = by[("DPM-Solver++ 2M", 5)], by[("DPM-Solver++ 2M", 10)]
    assert five.lml == grid[0].sampler_name() and five.worst_exact == pytest.approx(0.9)
    assert five.trained == pytest.approx(2.9 / 3.0)
    assert ten.lml is None and ten.worst_exact == pytest.approx(1.1)  # γ=0.05 is the least bad, and still hurts


def test_lml_on_a_diverging_parent_is_stored_as_diverged_and_other_errors_propagate(tmp_path, monkeypatch):
    bench = GaussianBenchmark.build(quick=True)
    bench.n = 8
    spec = gamma_specs("quick", ("dpm-karras",))[0]  # its parent steps σ_min → σ_min at NFE 15: NaN increments
    cell = runner.ensure_cell(CellStore(tmp_path), bench, spec, 15, seed=1, log=False)
    assert cell["value"] == float("inf") and cell["parent_diverged"]
    real, message = runner.run_sampler, {}

    def failing(bench, spec, *args):
        if spec.kind == "lml":
            raise ValueError(message["text"])
        return real(bench, spec, *args)

    monkeypatch.setattr(runner, "run_sampler", failing)  # the parent, dpm++2m-lu, converges
    converging = gamma_specs("quick", ("dpm++2m-lu",))[0]
    message["text"] = runner.NONFINITE_LAMBDA + ", ..."  # LML's own increment blew up: a divergence
    assert runner.compute_cell(bench, converging, 10, 1) == {"value": float("inf"), "finite": False}
    message["text"] = "a bug, not a divergence"
    with pytest.raises(ValueError, match="a bug"):
        runner.compute_cell(bench, converging, 10, 1)


def test_report_seed_sets_run_only_the_families_chosen_on_seed_set_0(tmp_path):
    store, key = CellStore(tmp_path), "gmm"
    bases = ("dpm++2m-linspace", "dpm++2m-karras", "dpm++2m-lu", "ddim-trailing")
    specs = [gamma_specs("quick", (b,))[0] for b in bases] + langevin_specs("quick", ("dpm++2m-linspace",))
    for i, spec in enumerate(specs):  # seed-0 value = position: the first base is the best
        store.cell(runner.cell_key(key, spec.id, 5, TUNE_SEED)).save({"value": float(i)})
    chosen = runner.select(store, key, (5,), specs)
    everything = runner.report_families(store, key, chosen, 5, None)
    assert sorted(everything) == sorted({s.family for s in specs})
    top = runner.report_families(store, key, chosen, 5, 1)
    # the best LML (which is also the best deterministic and on a default discretisation), the best LM corrector,
    # the isotropic control; not the other γ families
    assert top == ["gamma:dpm++2m-linspace", "langevin-lm:dpm++2m-linspace", "langevin-iso:dpm++2m-linspace"]


def test_runs_restricted_to_some_nfes_add_up_in_the_meta(tmp_path, monkeypatch):
    bench = GaussianBenchmark.build(quick=True)
    bench.n, bench.stock, bench.official = 4, ("ddim-trailing", "dpm++2m-linspace"), ()
    bench.nfes = bench.tune_nfes = (5, 6)
    bench.grid_level = "quick"
    calls = []

    def counting(bench, spec, nfe, seed):
        calls.append((spec.id, nfe, seed))
        return {"value": 1.0 + nfe / 100}

    monkeypatch.setattr(runner, "compute_cell", counting)
    monkeypatch.setattr(runner, "ensure_band_diagnostic", lambda *a: None)

    def meta():
        return runner.RunMeta.from_json(json.loads((tmp_path / "gaussian" / "meta.json").read_text()))

    runner.run_benchmark(tmp_path, bench, (0, 1), log=False, nfes=(5,), report_top=1)
    assert {n for _, n, s in calls if s == 1} == {5}  # report seed set: NFE 5 only
    assert (meta().nfes, meta().tune_nfes, meta().report_top) == ((5,), (5,), 1)
    calls.clear()
    runner.run_benchmark(tmp_path, bench, (0, 1), log=False, nfes=(6,), report_top=1)
    assert calls and {n for _, n, s in calls if s == 1} == {6}  # NFE 5 is stored: only NFE 6 runs
    assert (meta().nfes, meta().tune_nfes) == ((5, 6), (5, 6))


def test_report_seed_sets_run_the_best_stock_by_seed_set_0_and_every_default():
    stock = [linear_spec(n) for n in ("ddim-trailing", "ddim-linspace", "dpm++2m-linspace", "dpm++2m-karras",
                                      "dpm++2m-lu", "dpm++2m-beta")]
    seed0 = {"ddim-linspace": {5: 3.0}, "ddim-trailing": {5: 9.0}, "dpm++2m-linspace": {5: 8.0},
             "dpm++2m-karras": {5: 1.0}, "dpm++2m-lu": {5: float("nan")}, "dpm++2m-beta": {5: 40.0}}
    assert runner.report_stock(seed0, stock, 5, None) == stock
    picked = [s.id for s in runner.report_stock(seed0, stock, 5, 1)]
    # the 2 best (a NaN ranks last), and the defaults of DDIM (trailing) and DPM-Solver++ 2M (linspace)
    assert picked == ["ddim-trailing", "ddim-linspace", "dpm++2m-linspace", "dpm++2m-karras"]


def test_gamma_transfer_holds_out_each_model():
    """γ ∈ {0.05, 0.5} on DPM-Solver++ 2M's default steps, three models: the γ chosen on A and B (0.5) hurts C, so
    the held-out check says so; fitted on all three the rule picks 0.05 (the smallest worst ratio)."""
    base = default_stock("dpm++2m")
    grid = gamma_specs("quick", (base,))
    small, large = grid[0].id, grid[1].id
    ratios = {"gaussian": (0.9, 0.5), "gmm": (0.95, 0.6), "empirical": (0.98, 1.3)}  # (γ=0.05, γ=0.5)

    class Fake:
        tuning_ratio = runner.BenchmarkResults.tuning_ratio  # the real ratio over the fake cells

        def __init__(self, name):
            self.name = name
            self.meta = types.SimpleNamespace(grid_specs=lambda: grid, tune_nfes=(5,))

        def tuning_value(self, sid, nfe):
            return {base: 2.0, small: 2.0 * ratios[self.name][0], large: 2.0 * ratios[self.name][1]}.get(sid)

    results = {n: Fake(n) for n in ratios}
    nfes, best, held_out, rule = report.gamma_transfer(results)
    assert nfes == [5] and rule == {5: 0.05}
    assert best["gaussian"][5] == (0.5, pytest.approx(0.5)) and best["empirical"][5] == (0.05, pytest.approx(0.98))
    assert held_out["empirical"][5] == pytest.approx(1.3)  # fitted on the others: γ = 0.5
    assert held_out["gaussian"][5] == pytest.approx(0.9)  # fitted on gmm + empirical: γ = 0.05
