"""Running the study: one resumable cell per (benchmark, sampler, NFE, seed set), tuning, and the typed results.

Protocol:

* Same initial noise for every sampler (``lml_sampler.eval.initial_noise``: sample i of seed set s has its own
  generator).
* Every sampler, with or without the Langevin corrector, runs through ``lml_sampler.sampling.sample``, which counts
  every model call; every cell is run at exactly its nominal NFE.
* Hyperparameters (γ, rank k, Langevin snr/rank/placement) are tuned on seed set 0 only; the report reads seed sets
  1 and 2. On the Gaussian benchmark each NFE is tuned separately; on the other benchmarks (more expensive) the grid
  is tuned at NFE 10 and the chosen setting is used at every NFE (``Benchmark.tune_nfes``, :func:`nearest`).

Cells live in a :class:`lml_sampler._io.CellStore` under the run folder, keyed
``<benchmark>/<spec>/nfe<NFE>_seed<s>`` (floors: ``<benchmark>/_floor/seed<s>``, Gaussian diagnostics:
``<benchmark>/_diag/<spec>_nfe<NFE>_seed<s>``); ``<benchmark>/meta.json`` records what the report should read.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lml_sampler._io import Cell, CellStore, atomic_write_json
from lml_sampler.eval import initial_noise, sample_seed
from lml_sampler.sampling import LangevinCorrector, sample
from lml_sampler.schedulers.registry import make_scheduler

from .benchmarks import BENCHMARKS, Benchmark, GaussianBenchmark
from .estimators import BandDiagnostic, band_diagnostic, relative_deviation
from .specs import (
    BASELINE_LABELS,
    FAMILY_LABELS,
    KAPPA_GAMMA,
    ODE_REFERENCE_NFE,
    REPORT_SEEDS,
    TUNE_SEED,
    Spec,
    baseline_specs,
    grid_specs,
    linear_spec,
    official_specs,
    spec_index,
)

#: Sample index of the corrector noise generator (apart from the initial noise's indices 0..N-1 and the floors').
CORRECTOR_STREAM = 2 * 10**6

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
        s = spec.settings
        return make_scheduler(f"lml-{spec.base}", bench.base_config, kappa=KAPPA_GAMMA, lm_gamma=s["gamma"],
                              lm_rank=s["rank"])
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


# ----------------------------------------------------------------------------------------------------------------------
# Cells
# ----------------------------------------------------------------------------------------------------------------------


def cell_key(bench_name: str, spec_id: str, nfe: int, seed: int) -> str:
    return f"{bench_name}/{spec_id}/nfe{nfe:03d}_seed{seed}"


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

    An official spec (the released float32 expression at κ = 0, the identity in exact arithmetic:
    docs/lml.md §2) is also compared with its stock parent from the same noise; on the Gaussian, for the first
    report seed set, in float64 as well.
    """
    noise = initial_noise_for(bench, seed)
    if spec.kind == "official":
        stock_spec = spec.stock_parent()
        cell: dict[str, Any] = {"lamb": spec.official_lambda(nfe, bench.dim)}
        out = run_sampler(bench, spec, nfe, noise.float(), seed)
        stock = run_sampler(bench, stock_spec, nfe, noise.float(), seed)
        cell["rel_dev_fp32_vs_stock_fp32"] = relative_deviation(out, stock)
        cell["stock_fp32"] = bench.evaluate(stock.double(), noise)["value"]
        cell["finite"] = bool(torch.isfinite(out).all())
        if isinstance(bench, GaussianBenchmark) and seed == REPORT_SEEDS[0]:
            out64 = run_sampler(bench, spec, nfe, noise.double(), seed)
            stock64 = run_sampler(bench, stock_spec, nfe, noise.double(), seed)
            cell["rel_dev_fp64_vs_stock_fp64"] = relative_deviation(out64, stock64)
            cell["rel_dev_stock_fp32_vs_fp64"] = relative_deviation(stock, stock64)
        cell.update(bench.evaluate(out.double(), noise) if cell["finite"] else {"value": float("inf")})
        return cell
    out = run_sampler(bench, spec, nfe, noise.to(bench.dtype), seed)
    cell = bench.evaluate(out.double(), noise)
    if spec.kind == "linear":
        exact = bench.exact_linear(build_scheduler(bench, spec, nfe), nfe)
        if exact is not None:
            # the transfer-matrix value is exact; the sample estimate stays as a check of the estimator
            cell["value_sampled"] = cell["value"]
            cell["value"] = exact
            cell["exact"] = True
    return cell


def ensure_cell(store: CellStore, bench: Benchmark, spec: Spec, nfe: int, seed: int, log: bool = True) -> dict:
    """The stored result of a cell, computing and storing it first if needed."""
    manifest = {"benchmark": bench.name, "spec": spec.id, "family": spec.family, "kind": spec.kind,
                "params": spec.settings, "nfe": nfe, "seed": seed, "n": bench.n}

    def compute() -> dict:
        result = {**manifest, **_timed(lambda: compute_cell(bench, spec, nfe, seed))}
        if log:
            print(f"[{bench.name}] {spec.id:28s} nfe={nfe:2d} seed={seed} value={result['value']:.4g} "
                  f"({result['wall_s']:.1f}s)", flush=True)
        return result

    return store.ensure(cell_key(bench.name, spec.id, nfe, seed), manifest, compute)


def ensure_floor(store: CellStore, bench: Benchmark, seed: int) -> dict:
    manifest = {"benchmark": bench.name, "seed": seed, "n": bench.n}
    return store.ensure(f"{bench.name}/_floor/seed{seed}", manifest,
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
            _ode_reference_cache[key] = run_sampler(bench, linear_spec("dpm"), ODE_REFERENCE_NFE, noise,
                                                    seed).double()
        ode = _ode_reference_cache[key]
        return {**manifest, "ode_error": float((out - ode).norm() / ode.norm()),
                **asdict(band_diagnostic(out, noise, bench.spectrum))}

    return store.ensure(f"{bench.name}/_diag/{spec.id}_nfe{nfe:03d}_seed{seed}", manifest, compute)


# ----------------------------------------------------------------------------------------------------------------------
# Tuning and the study
# ----------------------------------------------------------------------------------------------------------------------


def nearest(nfe: int, tuned: tuple[int, ...]) -> int:
    """The tuned NFE whose setting is used at ``nfe`` (ties: the smaller)."""
    return min(tuned, key=lambda t: (abs(t - nfe), t))


def select(store: CellStore, bench_name: str, tune_nfes: tuple[int, ...],
           specs: list[Spec]) -> dict[tuple[str, int], Spec]:
    """Best spec per (family, tuned NFE) on seed set ``TUNE_SEED`` (smallest metric; ties: first in the grid)."""
    best: dict[tuple[str, int], tuple[float, Spec]] = {}
    for spec in specs:
        for nfe in tune_nfes:
            cell = stored_result(store, cell_key(bench_name, spec.id, nfe, TUNE_SEED))
            if cell is None:
                continue
            v = cell["value"] if math.isfinite(cell["value"]) else float("inf")
            key = (spec.family, nfe)
            if key not in best or v < best[key][0]:
                best[key] = (v, spec)
    return {k: s for k, (_, s) in best.items()}


@dataclass(frozen=True)
class RunMeta:
    """What a benchmark's run holds (``<benchmark>/meta.json``): enough to rebuild its report from the cells."""

    title: str
    metric: str
    n: int
    nfes: tuple[int, ...]
    tune_nfes: tuple[int, ...]
    grid_level: str
    families: tuple[str, ...]
    report_seeds: tuple[int, ...]
    grid: tuple[str, ...]  # ids of the tuned specs

    @classmethod
    def from_json(cls, data: dict) -> RunMeta:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def run_benchmark(out_dir: Path, bench: Benchmark, seeds: tuple[int, ...]) -> None:
    """Every cell of ``bench`` (resuming finished ones), then its ``meta.json``."""
    store = CellStore(out_dir)
    report = tuple(s for s in seeds if s != TUNE_SEED)
    fixed = baseline_specs() + official_specs(bench.families)
    grid = [s for s in grid_specs(bench.grid_level) if s.family in bench.families]
    families = sorted({s.family for s in grid})
    for seed in seeds:
        ensure_floor(store, bench, seed)
    # 1. the fixed samplers on every seed set
    for seed in seeds:
        for nfe in bench.nfes:
            for spec in fixed:
                ensure_cell(store, bench, spec, nfe, seed)
    # 2. the tuning grid on seed set 0
    for nfe in bench.tune_nfes:
        for spec in grid:
            if spec.feasible(nfe):
                ensure_cell(store, bench, spec, nfe, TUNE_SEED)
    # 3. the selected setting of each family on the report seed sets
    chosen = select(store, bench.name, bench.tune_nfes, grid)
    for seed in report:
        for nfe in bench.nfes:
            for fam in families:
                spec = chosen.get((fam, nearest(nfe, bench.tune_nfes)))
                if spec is not None:
                    ensure_cell(store, bench, spec, nfe, seed)
    if isinstance(bench, GaussianBenchmark):
        diag_specs = [s for s in fixed if s.kind == "linear" and s.base in ("dpm++2m", "dpm")]
        diag_specs += [chosen[(fam, 10)] for fam in families if (fam, 10) in chosen]
        for spec in diag_specs:
            ensure_band_diagnostic(store, bench, spec, 10, REPORT_SEEDS[0])
    meta = RunMeta(title=bench.title, metric=bench.metric_label, n=bench.n, nfes=tuple(bench.nfes),
                   tune_nfes=tuple(bench.tune_nfes), grid_level=bench.grid_level, families=tuple(bench.families),
                   report_seeds=report, grid=tuple(s.id for s in grid))
    atomic_write_json(out_dir / bench.name / "meta.json", asdict(meta))


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
    """One table row: a stock solver, an official spec or a tuned family, over the report seed sets."""

    label: str
    values: dict[int, list[float]]  # NFE -> metric per report seed set
    settings: dict[int, str] = field(default_factory=dict)  # NFE -> the tuned setting used there
    spec_ids: dict[int, str] = field(default_factory=dict)  # NFE -> the spec behind the values
    stock_values: dict[int, list[float]] = field(default_factory=dict)  # official: the fp32 stock parent

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
    spec: str
    family: str
    nfe: int
    seed: int
    ode_error: float  # ‖x − x_ODE‖/‖x_ODE‖ against the converged ODE solution from the same noise
    bands: BandDiagnostic


@dataclass
class BenchmarkResults:
    """Everything the report reads about one benchmark."""

    name: str
    meta: RunMeta
    rows: dict[str, Row]  # label -> row: the stock solvers first, then the families in the run's order
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
        cells = [stored_result(self.store, cell_key(self.name, spec_id, nfe, s)) for s in self.meta.report_seeds]
        return [c[key] for c in cells if c is not None and key in c]


def collect(out_dir: Path, bench_name: str) -> BenchmarkResults | None:
    """The results of one benchmark's run under ``out_dir``, or None if it has not run."""
    meta_path = out_dir / bench_name / "meta.json"
    if not meta_path.is_file():
        return None
    meta = RunMeta.from_json(json.loads(meta_path.read_text()))
    store = CellStore(out_dir)
    index = spec_index(meta.grid_level)
    chosen = select(store, bench_name, meta.tune_nfes, [index[i] for i in meta.grid])
    res = BenchmarkResults(name=bench_name, meta=meta, rows={}, floors=[], official={}, diagnostics=[], cpu_s=0.0,
                           wall_s=0.0, se_nfe10=[], store=store)
    for base, label in BASELINE_LABELS.items():
        res.rows[label] = Row(label, {nfe: res.values(base, nfe) for nfe in meta.nfes})
    official = {s.family: s for s in official_specs(meta.families)}
    first_report = meta.report_seeds[0] if meta.report_seeds else None
    for fam in meta.families:
        label = FAMILY_LABELS[fam]
        if fam in official:
            sid = official[fam].id
            res.rows[label] = Row(label, {nfe: res.values(sid, nfe) for nfe in meta.nfes},
                                  spec_ids={nfe: sid for nfe in meta.nfes},
                                  stock_values={nfe: res.values(sid, nfe, "stock_fp32") for nfe in meta.nfes})
            checks = {}
            for nfe in meta.nfes:
                c = stored_result(store, cell_key(bench_name, sid, nfe, first_report)) if first_report else None
                if c:
                    checks[nfe] = OfficialCheck(c["lamb"], c["rel_dev_fp32_vs_stock_fp32"],
                                                c.get("rel_dev_fp64_vs_stock_fp64", float("nan")),
                                                c.get("rel_dev_stock_fp32_vs_fp64", float("nan")))
            res.official[fam] = checks
            continue
        row = res.rows[label] = Row(label, {})
        for nfe in meta.nfes:
            spec = chosen.get((fam, nearest(nfe, meta.tune_nfes)))
            if spec is None:
                continue
            row.values[nfe] = res.values(spec.id, nfe)
            row.settings[nfe] = spec.describe()
            row.spec_ids[nfe] = spec.id
    for s in meta.report_seeds:
        f = stored_result(store, f"{bench_name}/_floor/seed{s}")
        if f:
            res.floors.append(Floor(s, f["value"], f.get("fd_full", float("nan"))))
    band_fields = BandDiagnostic.__dataclass_fields__
    for key_path in sorted((out_dir / bench_name / "_diag").glob("*/result.json")):
        d = json.loads(key_path.read_text())
        res.diagnostics.append(Diagnostic(d["spec"], d["family"], d["nfe"], d["seed"], d["ode_error"],
                                          BandDiagnostic(**{k: d[k] for k in band_fields})))
    for c in store.results(f"{bench_name}/**/result.json"):
        res.cpu_s += c.get("cpu_s", 0.0)
        res.wall_s += c.get("wall_s", 0.0)
        if c.get("nfe") == 10 and c.get("seed") in meta.report_seeds and "se" in c and c.get("kind") != "linear":
            res.se_nfe10.append(c["se"])
    return res


def collect_all(out_dir: Path) -> dict[str, BenchmarkResults]:
    """The results of every benchmark that has run under ``out_dir``, in :data:`BENCHMARKS` order."""
    found = {name: collect(out_dir, name) for name in BENCHMARKS}
    return {name: res for name, res in found.items() if res is not None}
