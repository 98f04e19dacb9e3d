"""Running the study: one resumable cell per (benchmark, sampler, NFE, seed set), tuning, and the typed results.

Protocol:

* Same initial noise for every sampler (``lml_sampler.eval.initial_noise``: sample i of seed set s has its own
  generator).
* Every sampler, with or without the Langevin corrector, runs through ``lml_sampler.sampling.sample``, which counts
  every model call; every cell is run at exactly its nominal NFE.
* Every stock solver runs with every discretisation of the benchmark's stock list, on the report seed sets at every
  NFE and on seed set 0 at the tuned NFEs. Those seed-0 values choose the discretisations the LML families run on
  (the solver's default plus its best others by mean rank over the tuned NFEs: :func:`~.specs.rank_discretisations`;
  every discretisation where ``Benchmark.lml_top`` is None).
* Hyperparameters (γ, rank k, Langevin snr/rank/placement) are tuned on seed set 0 only, per family (one method on
  one stock solver and discretisation); the report reads seed sets 1 and 2. Each NFE of ``Benchmark.tune_nfes`` is
  tuned separately, and the other NFEs use the nearest tuned NFE's setting (:func:`nearest`).

Cells live in a :class:`lml_sampler._io.CellStore` under the run folder, keyed
``<store>/<spec>/nfe<NFE>_seed<s>`` (floors: ``<store>/_floor/seed<s>``, Gaussian diagnostics:
``<store>/_diag/<spec>_nfe<NFE>_seed<s>``), where ``<store>`` is the benchmark's name or, for the trained model,
``bundled-<weights digest>``; ``<store>/meta.json`` records what the report should read.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from lml_sampler._io import Cell, CellStore, atomic_write_json
from lml_sampler.eval import initial_noise, sample_seed
from lml_sampler.sampling import LangevinCorrector, sample
from lml_sampler.schedulers.registry import make_scheduler

from .benchmarks import BENCHMARKS, Benchmark, GaussianBenchmark, store_name
from .estimators import BandDiagnostic, band_diagnostic, relative_deviation
from .specs import (
    LANGEVIN_PREDICTOR,
    LML_PARENTS,
    ODE_REFERENCE_NFE,
    RANK_PARENTS,
    REPORT_SEEDS,
    TUNE_SEED,
    Spec,
    chosen_bases,
    default_stock,
    family_base,
    family_label,
    family_method,
    finite_or_inf,
    gamma_specs,
    is_default,
    is_deterministic_lml,
    is_lml,
    langevin_specs,
    linear_spec,
    official_specs,
    rank_discretisations,
    rank_specs,
    split_stock,
)

#: Sample index of the corrector noise generator (apart from the initial noise's indices 0..N-1 and the floors').
CORRECTOR_STREAM = 2 * 10**6
#: Outputs beyond this magnitude count as diverged: every model's data lie within a few units of 0, so such a
#: sample's error is > 10⁸ whatever the metric, and the Fréchet distances' matrix square roots would only overflow.
DIVERGED_ABS = 1e4
#: How ``lml_sampler.math.lowrank`` refuses a non-finite λ (the γ form's λ of a blown-up increment).
NONFINITE_LAMBDA = "lamb must be > 0 and finite"
#: The converged ODE solution of the diagnostics.
ODE_REFERENCE = "dpm-linspace"

# ----------------------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------------------

# One benchmark and seed set at a time: the hundreds of cells of a seed set reuse the same noise.
_noise_cache: dict = {}
# The 200-step ODE solution per (benchmark, seed set, N), shared by every diagnostic of that seed set.
_ode_reference_cache: dict = {}


def initial_noise_for(bench: Benchmark, seed: int) -> torch.Tensor:
    """The float64 initial noise (N, *shape) of seed set ``seed``, the same for every sampler."""
    key = (bench.name, seed, bench.n, bench.shape)
    if key not in _noise_cache:
        _noise_cache.clear()
        _noise_cache[key] = initial_noise(seed, range(bench.n), bench.shape, dtype=torch.float64)
    return _noise_cache[key]


def build_scheduler(bench: Benchmark, spec: Spec, nfe: int):
    if spec.kind in ("linear", "langevin"):
        return make_scheduler(spec.base, bench.base_config)
    if spec.kind == "lml":
        return make_scheduler(f"lml-{spec.base}", bench.base_config, **spec.lml_settings())
    if spec.kind == "official":
        return make_scheduler(f"lml-{spec.base}", bench.base_config, lamb=spec.official_lambda(nfe, bench.dim),
                              kappa=0.0, lm_formula="official")
    raise ValueError(f"unknown spec kind {spec.kind!r}")


def run_sampler(bench: Benchmark, spec: Spec, nfe: int, x_T: torch.Tensor, seed: int) -> torch.Tensor:
    """Outputs of ``spec`` at exactly ``nfe`` model calls from the initial noise ``x_T``."""
    scheduler = build_scheduler(bench, spec, nfe)
    corrector, generator, steps = None, None, nfe
    if spec.kind == "langevin":
        s = spec.settings
        plan = spec.corrector_plan(nfe)
        corrector = LangevinCorrector(steps=plan.steps, snr=s["snr"], rank=s["rank"], extra_nfe=plan.extra_nfe)
        generator = torch.Generator().manual_seed(sample_seed(seed, CORRECTOR_STREAM))
        steps = plan.predictor_steps
    out, used = sample(bench.model, scheduler, x_T, steps, corrector=corrector, generator=generator)
    if used != nfe:
        raise RuntimeError(f"{spec.id} used {used} model calls, expected NFE {nfe}")
    return out


def diverged(out: torch.Tensor) -> bool:
    """Non-finite or beyond :data:`DIVERGED_ABS` anywhere."""
    return not bool(torch.isfinite(out).all()) or float(out.abs().max()) > DIVERGED_ABS


def evaluate(bench: Benchmark, out: torch.Tensor, noise: torch.Tensor) -> dict[str, Any]:
    """The benchmark's metrics of ``out``, or ``value = inf`` for diverged outputs."""
    if diverged(out):
        return {"value": float("inf"), "finite": False}
    return bench.evaluate(out.double(), noise)


# ----------------------------------------------------------------------------------------------------------------------
# Cells
# ----------------------------------------------------------------------------------------------------------------------


def cell_key(store_key: str, spec_id: str, nfe: int, seed: int) -> str:
    return f"{store_key}/{spec_id}/nfe{nfe:03d}_seed{seed}"


def stored_result(store: CellStore, key: str) -> dict | None:
    """A finished cell's result, or None; unlike ``store.cell`` this creates no folder for a missing cell."""
    return Cell(store.root / key).result()


def _timed(compute: Callable[[], dict]) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    result = compute()
    result["wall_s"], result["cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    return result


def compute_cell(bench: Benchmark, spec: Spec, nfe: int, seed: int) -> dict[str, Any]:
    """The metrics of one (sampler, NFE, seed set) on ``bench``.

    A linear sampler on a benchmark with an exact metric gets that value; its sample estimate is kept as a check of
    the estimator for the solvers' default discretisations only. An official spec (the released float32 expression
    at κ = 0, the identity in exact arithmetic: docs/lml.md §2) is also compared with its stock parent from the same
    noise; on the Gaussian, for the first report seed set, in float64 as well.
    """
    noise = initial_noise_for(bench, seed)
    if spec.kind == "official":
        stock_spec = spec.stock_parent()
        cell: dict[str, Any] = {"lamb": spec.official_lambda(nfe, bench.dim)}
        out = run_sampler(bench, spec, nfe, noise.float(), seed)
        stock = run_sampler(bench, stock_spec, nfe, noise.float(), seed)
        cell["rel_dev_fp32_vs_stock_fp32"] = relative_deviation(out, stock)
        cell["stock_fp32"] = evaluate(bench, stock, noise)["value"]
        cell["finite"] = not diverged(out)
        if isinstance(bench, GaussianBenchmark) and seed == REPORT_SEEDS[0]:
            out64 = run_sampler(bench, spec, nfe, noise.double(), seed)
            stock64 = run_sampler(bench, stock_spec, nfe, noise.double(), seed)
            cell["rel_dev_fp64_vs_stock_fp64"] = relative_deviation(out64, stock64)
            cell["rel_dev_stock_fp32_vs_fp64"] = relative_deviation(stock, stock64)
        cell.update(evaluate(bench, out, noise))
        return cell
    if spec.kind == "linear":
        exact = bench.exact_linear(build_scheduler(bench, spec, nfe), nfe)
        if exact is not None:
            cell = {"value": exact, "exact": True}
            if is_default(spec.base) and math.isfinite(exact):
                sampled = evaluate(bench, run_sampler(bench, spec, nfe, noise.to(bench.dtype), seed), noise)
                cell = {**sampled, "value_sampled": sampled["value"], **cell}
            return cell
    if spec.kind in ("lml", "langevin") and parent_diverges(bench, spec, nfe):
        # LML and the corrector change the parent's update, which is then NaN: they diverge with it
        return {"value": float("inf"), "finite": False, "parent_diverged": True}
    try:
        out = run_sampler(bench, spec, nfe, noise.to(bench.dtype), seed)
    except ValueError as exc:
        # the γ form refuses λ = κ‖v‖²/γ once the increment v has blown up to inf/NaN: this run diverged; any
        # other error is a bug and propagates
        if spec.kind != "lml" or not str(exc).startswith(NONFINITE_LAMBDA):
            raise
        return {"value": float("inf"), "finite": False}
    return evaluate(bench, out, noise)


_parent_diverges_cache: dict = {}


def parent_diverges(bench: Benchmark, spec: Spec, nfe: int) -> bool:
    """Whether ``spec``'s stock parent diverges at ``nfe`` on one probe sample (a NaN step coefficient, as in
    DPM-Solver 3 on σ grids from NFE 15: docs/exact-score-benchmark.md §2, hits every input alike)."""
    key = (bench.name, spec.base, nfe)
    if key not in _parent_diverges_cache:
        probe = initial_noise_for(bench, TUNE_SEED)[:1].to(bench.dtype)
        _parent_diverges_cache[key] = diverged(run_sampler(bench, spec.stock_parent(), nfe, probe, TUNE_SEED))
    return _parent_diverges_cache[key]


def ensure_cell(store: CellStore, bench: Benchmark, spec: Spec, nfe: int, seed: int, log: bool = True) -> dict:
    """The stored result of a cell, computing and storing it first if needed."""
    manifest = {"benchmark": bench.name, "spec": spec.id, "family": spec.family, "kind": spec.kind,
                "params": spec.settings, "nfe": nfe, "seed": seed, "n": bench.n}

    def compute() -> dict:
        result = {**manifest, **_timed(lambda: compute_cell(bench, spec, nfe, seed))}
        if log:
            _log(f"[{bench.name}] {spec.id:34s} nfe={nfe:2d} seed={seed} value={result['value']:.4g} "
                 f"({result['wall_s']:.1f}s)")
        return result

    return store.ensure(cell_key(bench.store_name, spec.id, nfe, seed), manifest, compute)


def _log(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line)


def shard_order(jobs: list, shard: tuple[int, int]) -> list:
    """Shard ``i`` of ``n`` runs every ``n``-th job from the ``i``-th, then the others in reverse order: every
    shard ensures every job, so a phase is complete when any shard leaves it, and shards that finish early help the
    others from the far end instead of racing them for the same cells."""
    i, n = shard
    own = jobs[i::n]
    return own + [j for k, j in reversed(list(enumerate(jobs))) if k % n != i]


def run_cells(store: CellStore, bench: Benchmark, jobs: Iterable[tuple[Spec, int, int]], desc: str,
              log: bool = True, shard: tuple[int, int] = (0, 1)) -> None:
    """``ensure_cell`` for every feasible (spec, NFE, seed set) of ``jobs``, with a progress bar; ``shard`` (i, n)
    orders them for the i-th of n processes sharing the cell store (:func:`shard_order`)."""
    from tqdm.auto import tqdm

    todo = shard_order([(spec, nfe, seed) for spec, nfe, seed in jobs if spec.feasible(nfe)], shard)
    for spec, nfe, seed in tqdm(todo, desc=f"{bench.name}: {desc}", unit="cell", disable=not log):
        ensure_cell(store, bench, spec, nfe, seed, log=log)


def ensure_floor(store: CellStore, bench: Benchmark, seed: int) -> dict:
    manifest = {"benchmark": bench.name, "seed": seed, "n": bench.n}
    return store.ensure(f"{bench.store_name}/_floor/seed{seed}", manifest,
                        lambda: {**manifest, **_timed(lambda: bench.floor(seed))})


def ensure_band_diagnostic(store: CellStore, bench: GaussianBenchmark, spec: Spec, nfe: int, seed: int) -> dict:
    """Band split of ``spec``'s error and its distance to the converged ODE solution from the same noise."""
    manifest = {"benchmark": bench.name, "spec": spec.id, "family": spec.family, "nfe": nfe, "seed": seed,
                "n": bench.n}

    def compute() -> dict:
        noise = initial_noise_for(bench, seed)
        out = run_sampler(bench, spec, nfe, noise.to(bench.dtype), seed).double()
        key = (bench.name, seed, bench.n)
        if key not in _ode_reference_cache:
            _ode_reference_cache[key] = run_sampler(bench, linear_spec(ODE_REFERENCE), ODE_REFERENCE_NFE, noise,
                                                    seed).double()
        ode = _ode_reference_cache[key]
        return {**manifest, "ode_error": float((out - ode).norm() / ode.norm()),
                **asdict(band_diagnostic(out, noise, bench.spectrum))}

    return store.ensure(f"{bench.store_name}/_diag/{spec.id}_nfe{nfe:03d}_seed{seed}", manifest, compute)


# ----------------------------------------------------------------------------------------------------------------------
# Tuning and the study
# ----------------------------------------------------------------------------------------------------------------------

def nearest(nfe: int, tuned: tuple[int, ...]) -> int:
    """The tuned NFE whose setting is used at ``nfe`` (ties: the smaller)."""
    return min(tuned, key=lambda t: (abs(t - nfe), t))


def select(store: CellStore, store_key: str, tune_nfes: tuple[int, ...],
           specs: list[Spec]) -> dict[tuple[str, int], Spec]:
    """Best spec per (family, tuned NFE) on seed set ``TUNE_SEED`` (smallest metric; ties: first in the grid)."""
    best: dict[tuple[str, int], tuple[float, Spec]] = {}
    for spec in specs:
        for nfe in tune_nfes:
            cell = stored_result(store, cell_key(store_key, spec.id, nfe, TUNE_SEED))
            if cell is None:
                continue
            v = cell["value"] if math.isfinite(cell["value"]) else float("inf")
            key = (spec.family, nfe)
            if key not in best or v < best[key][0]:
                best[key] = (v, spec)
    return {k: s for k, (_, s) in best.items()}


def tuning_values(store: CellStore, store_key: str, names: Iterable[str],
                  nfes: tuple[int, ...]) -> dict[str, dict[int, float]]:
    """{stock name: {NFE: seed-0 value}} of the finished stock cells."""
    out: dict[str, dict[int, float]] = {}
    for name in names:
        for nfe in nfes:
            cell = stored_result(store, cell_key(store_key, name, nfe, TUNE_SEED))
            if cell is not None:
                out.setdefault(name, {})[nfe] = cell["value"]
    return out


def lml_grid(bench: Benchmark, seed0: dict[str, dict[int, float]]) -> list[Spec]:
    """The tuned specs of ``bench``: per LML parent, the γ family on the default and the ``lml_top`` best other
    discretisations (all for None), the rank-k family on the default and the 2 best, the Langevin corrector on the
    default and the best one; "best" by the stock solver's seed-0 values ``seed0`` at ``bench.rank_nfes``."""
    if bench.rank_nfes is not None:
        seed0 = {n: {k: v for k, v in vals.items() if k in bench.rank_nfes} for n, vals in seed0.items()}
    specs: list[Spec] = []
    for parent in LML_PARENTS:
        if default_stock(parent) not in bench.stock:
            continue
        ranked = rank_discretisations({n: v for n, v in seed0.items() if split_stock(n)[0] == parent}, parent)
        specs += gamma_specs(bench.grid_level, chosen_bases(ranked, parent, bench.lml_top))
        if parent in RANK_PARENTS:
            specs += rank_specs(bench.grid_level, chosen_bases(ranked, parent, 2))
        if parent == LANGEVIN_PREDICTOR:
            specs += langevin_specs(bench.grid_level, chosen_bases(ranked, parent, 1))
    return specs


@dataclass(frozen=True)
class RunMeta:
    """What a benchmark's run holds (``<store>/meta.json``): enough to rebuild its report from the cells."""

    title: str
    metric: str
    n: int
    nfes: tuple[int, ...]
    tune_nfes: tuple[int, ...]
    grid_level: str
    report_seeds: tuple[int, ...]
    stock: tuple[str, ...]  # stock names
    official: tuple[str, ...]  # official spec ids
    lml_top: int | None
    grid: tuple[dict, ...]  # the tuned specs, as Spec.to_json()
    report_top: int | None = None  # report seed sets: only the families of report_families (None: all)

    @classmethod
    def from_json(cls, data: dict) -> RunMeta:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def grid_specs(self) -> list[Spec]:
        return [Spec.from_json(d) for d in self.grid]


def report_families(store: CellStore, store_key: str, chosen: dict[tuple[str, int], Spec], tuned: int,
                    top: int | None) -> list[str]:
    """The families whose tuned setting at the tuned NFE ``tuned`` runs on the report seed sets: every family for
    ``top`` None, else, ranked by their seed-0 value there, the ``top`` best LML families, the ``top`` best
    deterministic ones, the best on a default discretisation, the best LM-preconditioned Langevin corrector and every
    non-LML control (the isotropic corrector). Choosing on seed set 0 keeps the reported best LML free of selection
    on the report seed sets; the best stock sampler is still the best of all of them on the report seed sets."""
    families = [fam for fam, nfe in chosen if nfe == tuned]
    if top is None:
        return families

    def seed0(fam: str) -> float:
        cell = stored_result(store, cell_key(store_key, chosen[(fam, tuned)].id, tuned, TUNE_SEED))
        return cell["value"] if cell is not None and math.isfinite(cell["value"]) else float("inf")

    ranked = sorted(families, key=seed0)
    keep = [f for f in ranked if not is_lml(f)]
    for want, k in ((is_lml, top), (is_deterministic_lml, top), (lambda f: is_lml(f) and is_default(family_base(f)), 1),
                    (lambda f: family_method(f) == "langevin-lm", 1)):
        keep += [f for f in ranked if want(f)][:k]
    return [f for f in families if f in set(keep)]


def report_stock(seed0: dict[str, dict[int, float]], stock: list[Spec], tuned: int, top: int | None) -> list[Spec]:
    """The stock specs that run on the report seed sets at an NFE tuned at ``tuned``: all for ``top`` None, else the
    ``2·top`` best by their seed-0 value there and every solver's default steps (the "default steps" column)."""
    if top is None:
        return stock
    ranked = sorted(stock, key=lambda s: finite_or_inf(seed0.get(s.id, {}).get(tuned)))
    keep = {s.id for s in ranked[:2 * top]} | {s.id for s in stock if is_default(s.id)}
    return [s for s in stock if s.id in keep]


def run_benchmark(out_dir: Path, bench: Benchmark, seeds: tuple[int, ...], log: bool = True,
                  nfes: tuple[int, ...] | None = None, report_top: int | None = None,
                  shard: tuple[int, int] = (0, 1)) -> None:
    """Every cell of ``bench`` (resuming finished ones), then its ``meta.json``.

    ``nfes`` restricts this run to those of ``bench.nfes`` (and tunes at their nearest tuned NFEs); successive
    runs add up, and ``meta.json`` records the union. ``report_top`` limits the report seed sets to the families of
    :func:`report_families`. ``shard`` lets several processes share the cells (:func:`run_cells`).
    """
    store = CellStore(out_dir)
    key = bench.store_name
    run_nfes = tuple(n for n in bench.nfes if nfes is None or n in nfes)
    run_tuned = tuple(sorted({nearest(n, bench.tune_nfes) for n in run_nfes}))
    previous = _previous_meta(out_dir / key / "meta.json", bench, report_top)
    all_nfes = tuple(sorted(set(run_nfes) | set(previous.nfes if previous else ())))
    all_tuned = tuple(sorted(set(run_tuned) | set(previous.tune_nfes if previous else ())))
    report = tuple(s for s in seeds if s != TUNE_SEED)
    stock = [linear_spec(n) for n in bench.stock]
    official = official_specs(bench.official)
    for seed in seeds:
        ensure_floor(store, bench, seed)
    # 1. the stock solvers: seed set 0 at every tuned NFE (it chooses the discretisations of the LML families),
    #    the report seed sets at the run's NFEs; the untuned official specs on the report seed sets
    run_cells(store, bench, [(s, nfe, TUNE_SEED) for nfe in bench.tune_nfes for s in stock], "stock, seed 0", log, shard)
    seed0 = tuning_values(store, key, bench.stock, bench.tune_nfes)
    run_cells(store, bench, [(s, nfe, seed) for seed in report for nfe in run_nfes
                             for s in report_stock(seed0, stock, nearest(nfe, bench.tune_nfes), report_top) + official],
              "stock, report seeds", log, shard)
    # 2. the tuning grid on seed set 0
    grid = lml_grid(bench, seed0)
    run_cells(store, bench, [(s, nfe, TUNE_SEED) for nfe in run_tuned for s in grid], "tuning, seed 0", log, shard)
    # 3. the selected setting of each family on the report seed sets
    chosen = select(store, key, all_tuned, grid)
    jobs = []
    for nfe in run_nfes:
        tuned = nearest(nfe, all_tuned)
        for fam in report_families(store, key, chosen, tuned, report_top):
            jobs += [(chosen[(fam, tuned)], nfe, seed) for seed in report]
    run_cells(store, bench, sorted(jobs, key=lambda j: j[2]), "tuned families, report seeds", log, shard)
    if isinstance(bench, GaussianBenchmark) and 10 in run_nfes:
        for spec in diagnostic_specs(store, bench, grid, chosen):
            ensure_band_diagnostic(store, bench, spec, 10, REPORT_SEEDS[0])
    meta = RunMeta(title=bench.title, metric=bench.metric_label, n=bench.n, nfes=all_nfes, tune_nfes=all_tuned,
                   grid_level=bench.grid_level, report_seeds=report, stock=tuple(bench.stock),
                   official=tuple(bench.official), lml_top=bench.lml_top, grid=tuple(s.to_json() for s in grid),
                   report_top=report_top)
    atomic_write_json(out_dir / key / "meta.json", asdict(meta))


def _previous_meta(path: Path, bench: Benchmark, report_top: int | None) -> RunMeta | None:
    """The meta of an earlier run of the same protocol (whose NFEs this run adds to), else None."""
    if not path.is_file():
        return None
    prev = RunMeta.from_json(json.loads(path.read_text()))
    same = (prev.n, prev.grid_level, prev.stock, prev.lml_top, prev.report_top) == (
        bench.n, bench.grid_level, tuple(bench.stock), bench.lml_top, report_top)
    return prev if same else None


def diagnostic_specs(store: CellStore, bench: Benchmark, grid: list[Spec],
                     chosen: dict[tuple[str, int], Spec]) -> list[Spec]:
    """What the Gaussian's band diagnostic looks at (NFE 10): DPM-Solver++ 2M on its default and its best
    discretisation with every tuned family on those two, DPM-Solver 3 on its default, and the best stock sampler."""
    if 10 not in bench.tune_nfes:
        return []
    seed0 = tuning_values(store, bench.store_name, bench.stock, (10,))
    finite = {n: v[10] for n, v in seed0.items() if math.isfinite(v[10])}
    ranked = rank_discretisations({n: v for n, v in seed0.items() if split_stock(n)[0] == "dpm++2m"}, "dpm++2m")
    bases = list(dict.fromkeys([default_stock("dpm++2m"), *ranked[:1]]))
    stock = list(dict.fromkeys([*bases, default_stock("dpm"), min(finite, key=finite.get)]))
    tuned = [chosen[(fam, 10)] for fam in dict.fromkeys(s.family for s in grid)
             if (fam, 10) in chosen and chosen[(fam, 10)].base in bases]
    return [linear_spec(n) for n in stock if n in bench.stock] + tuned


# ----------------------------------------------------------------------------------------------------------------------
# Results, as the report reads them
# ----------------------------------------------------------------------------------------------------------------------


def mean_half_range(values: list[float]) -> tuple[float, float]:
    """(mean, half-range) over seed sets; (nan, nan) for no values."""
    if not values:
        return float("nan"), float("nan")
    v = np.asarray(values, dtype=float)
    with np.errstate(invalid="ignore"):  # inf - inf for diverged cells: the spread is undefined (nan)
        return float(v.mean()), float((v.max() - v.min()) / 2)


@dataclass
class Row:
    """One table row: a stock solver on one discretisation, an official spec or a tuned family, over the report
    seed sets."""

    family: str
    values: dict[int, list[float]]  # NFE -> metric per report seed set
    settings: dict[int, str] = field(default_factory=dict)  # NFE -> the tuned setting used there
    specs: dict[int, Spec] = field(default_factory=dict)  # NFE -> the spec behind the values
    stock_values: dict[int, list[float]] = field(default_factory=dict)  # official: the fp32 stock parent

    @property
    def label(self) -> str:
        return family_label(self.family)

    def has(self, nfe: int) -> bool:
        return bool(self.values.get(nfe))

    def mean(self, nfe: int) -> float:
        return mean_half_range(self.values.get(nfe, []))[0]

    def half_range(self, nfe: int) -> float:
        return mean_half_range(self.values.get(nfe, []))[1]

    def stock_mean(self, nfe: int) -> float:
        return mean_half_range(self.stock_values.get(nfe, []))[0]


@dataclass(frozen=True)
class Floor:
    seed: int
    value: float
    fd_full: float = float("nan")  # Gaussian: the floor of the plain full-covariance FD


@dataclass(frozen=True)
class OfficialCheck:
    """The rounding check of an official cell: relative deviations ‖x − y‖/‖y‖ of the final samples, same noise
    (fp64 columns: the Gaussian only, else nan)."""

    lamb: float
    fp32_vs_stock_fp32: float
    fp64_vs_stock_fp64: float = float("nan")
    stock_fp32_vs_fp64: float = float("nan")


@dataclass(frozen=True)
class Diagnostic:
    spec: Spec
    nfe: int
    seed: int
    ode_error: float  # ‖x − x_ODE‖/‖x_ODE‖ against the converged ODE solution from the same noise
    bands: BandDiagnostic


@dataclass(frozen=True)
class Best:
    """The best row at one NFE among some families: its family, mean value and the spec behind it."""

    family: str | None
    value: float
    spec: Spec | None = None

    @property
    def found(self) -> bool:
        return self.family is not None


@dataclass
class BenchmarkResults:
    """Everything the report reads about one benchmark."""

    name: str
    store_key: str
    meta: RunMeta
    rows: dict[str, Row]  # family -> row: the stock samplers first, then the official specs, then the families
    floors: list[Floor]
    official: dict[str, dict[int, OfficialCheck]]  # family -> NFE -> check on the first report seed set
    diagnostics: list[Diagnostic]
    cpu_s: float  # summed over all cells
    wall_s: float
    se_nfe10: list[float]  # jackknife SEs of the estimated (non-linear) cells at NFE 10
    store: CellStore

    @property
    def nfes(self) -> tuple[int, ...]:
        return self.meta.nfes

    @property
    def floor(self) -> float:
        return float(np.mean([f.value for f in self.floors])) if self.floors else float("nan")

    def values(self, spec_id: str, nfe: int, key: str = "value") -> list[float]:
        """``key`` of the cell (spec, NFE) on each report seed set that has it."""
        cells = [stored_result(self.store, cell_key(self.store_key, spec_id, nfe, s)) for s in self.meta.report_seeds]
        return [c[key] for c in cells if c is not None and key in c]

    def tuning_value(self, spec_id: str, nfe: int) -> float | None:
        """The seed-set-0 value of the cell (spec, NFE) (inf: diverged), or None where it has not run."""
        c = stored_result(self.store, cell_key(self.store_key, spec_id, nfe, TUNE_SEED))
        return None if c is None else (c["value"] if math.isfinite(c["value"]) else float("inf"))

    def tuning_ratio(self, spec_id: str, parent_id: str, nfe: int) -> float | None:
        """Seed-set-0 value of ``spec_id`` over that of ``parent_id`` at ``nfe`` (inf: the spec diverged), or None
        where either has not run or the parent's value is not finite and positive."""
        v, p = self.tuning_value(spec_id, nfe), self.tuning_value(parent_id, nfe)
        return None if v is None or p is None or not (math.isfinite(p) and p > 0) else v / p

    def best(self, nfe: int, keep: Callable[[str], bool]) -> Best:
        """The smallest finite mean at ``nfe`` among the rows whose family passes ``keep``."""
        best = Best(None, float("inf"))
        for fam, row in self.rows.items():
            m = row.mean(nfe)
            if keep(fam) and math.isfinite(m) and m < best.value:
                best = Best(fam, m, row.specs.get(nfe))
        return best

    def best_stock(self, nfe: int, default_only: bool = False) -> Best:
        return self.best(nfe, lambda f: f.startswith("stock:") and (not default_only or is_default(f[6:])))

    def best_lml(self, nfe: int, deterministic: bool = False, default_only: bool = False) -> Best:
        def keep(fam: str) -> bool:
            base = fam.partition(":")[2]
            return ((is_deterministic_lml(fam) if deterministic else is_lml(fam))
                    and (not default_only or is_default(base)))

        return self.best(nfe, keep)


def collect(out_dir: Path, bench_name: str) -> BenchmarkResults | None:
    """The results of one benchmark's run under ``out_dir``, or None if it has not run (for the trained model: not
    with the weights that are installed now)."""
    try:
        key = store_name(bench_name)
    except FileNotFoundError:
        return None
    meta_path = out_dir / key / "meta.json"
    if not meta_path.is_file():
        return None
    meta = RunMeta.from_json(json.loads(meta_path.read_text()))
    store = CellStore(out_dir)
    grid = meta.grid_specs()
    chosen = select(store, key, meta.tune_nfes, grid)
    res = BenchmarkResults(name=bench_name, store_key=key, meta=meta, rows={}, floors=[], official={},
                           diagnostics=[], cpu_s=0.0, wall_s=0.0, se_nfe10=[], store=store)
    for name in meta.stock:
        spec = linear_spec(name)
        res.rows[spec.family] = Row(spec.family, {nfe: res.values(name, nfe) for nfe in meta.nfes},
                                    specs={nfe: spec for nfe in meta.nfes})
    first_report = meta.report_seeds[0] if meta.report_seeds else None
    for spec in official_specs(meta.official):
        res.rows[spec.family] = Row(spec.family, {nfe: res.values(spec.id, nfe) for nfe in meta.nfes},
                                    specs={nfe: spec for nfe in meta.nfes},
                                    stock_values={nfe: res.values(spec.id, nfe, "stock_fp32") for nfe in meta.nfes})
        checks = {}
        for nfe in meta.nfes:
            c = stored_result(store, cell_key(key, spec.id, nfe, first_report)) if first_report is not None else None
            if c:
                checks[nfe] = OfficialCheck(c["lamb"], c["rel_dev_fp32_vs_stock_fp32"],
                                            c.get("rel_dev_fp64_vs_stock_fp64", float("nan")),
                                            c.get("rel_dev_stock_fp32_vs_fp64", float("nan")))
        res.official[spec.family] = checks
    for fam in dict.fromkeys(s.family for s in grid):
        row = res.rows[fam] = Row(fam, {})
        for nfe in meta.nfes:
            spec = chosen.get((fam, nearest(nfe, meta.tune_nfes)))
            if spec is None:
                continue
            row.values[nfe] = res.values(spec.id, nfe)
            row.settings[nfe] = spec.describe()
            row.specs[nfe] = spec
    for s in meta.report_seeds:
        f = stored_result(store, f"{key}/_floor/seed{s}")
        if f:
            res.floors.append(Floor(s, f["value"], f.get("fd_full", float("nan"))))
    index = {s.id: s for s in grid} | {n: linear_spec(n) for n in meta.stock}
    band_fields = BandDiagnostic.__dataclass_fields__
    for path in sorted((out_dir / key / "_diag").glob("*/result.json")):
        d = json.loads(path.read_text())
        if d["spec"] in index:
            res.diagnostics.append(Diagnostic(index[d["spec"]], d["nfe"], d["seed"], d["ode_error"],
                                              BandDiagnostic(**{k: d[k] for k in band_fields})))
    for c in store.results(f"{key}/**/result.json"):
        res.cpu_s += c.get("cpu_s", 0.0)
        res.wall_s += c.get("wall_s", 0.0)
        if c.get("nfe") == 10 and c.get("seed") in meta.report_seeds and "se" in c and c.get("kind") != "linear":
            res.se_nfe10.append(c["se"])
    return res


def collect_all(out_dir: Path) -> dict[str, BenchmarkResults]:
    """The results of every benchmark that has run under ``out_dir``, in :data:`BENCHMARKS` order."""
    found = {name: collect(out_dir, name) for name in BENCHMARKS}
    return {name: res for name, res in found.items() if res is not None}
