"""The model × sampler × NFE grid: one resumable, shardable *cell* per (model, sampler, NFE, seed set)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lml_sampler._io import CellStore
from lml_sampler.schedulers.registry import SamplerSpec, make_scheduler, parse_sampler

from .distributed import DistInfo, dist_info
from .exact import linear_sampler_distance
from .fid import frechet_distance, save_statistics
from .generate import ModelSampler, PipelineSampler
from .metrics import DEFAULT_METRICS, MetricSettings, cell_metrics, check_metric_inputs, parse_metrics
from .models import MODEL_SPECS, EvalModel, load_eval_model
from .shards import run_shards, shard_statistics

__all__ = ["SweepConfig", "run_cell", "run_sweep", "sampler_label", "DEFAULT_SAMPLERS", "DEFAULT_NFE", "DEFAULT_MODELS"]

DEFAULT_MODELS = ("digits", "gmm")
#: The stock solvers on their default steps and, since a good time discretisation is the first thing to fix at low
#: NFE, DPM-Solver++ 2M on Karras σ and on uniform-λ steps (the best uniform-λ solver of the verdict benchmark),
#: next to the LML rows on the same parents.
DEFAULT_SAMPLERS = ("ddim", "dpm++2m", "dpm++2m-karras", "dpm++2m-lu", "unipc", "lml-ddim", "lml-dpm++2m")
DEFAULT_NFE = (5, 10, 20)


@dataclass
class SweepConfig:
    """Everything that defines a sweep. ``num_samples`` of ``None`` takes the per-metric default
    (``default_samples``)."""

    out: str
    models: tuple[str, ...] = DEFAULT_MODELS
    samplers: tuple[str, ...] = DEFAULT_SAMPLERS
    nfe: tuple[int, ...] = DEFAULT_NFE
    seed: int = 0
    num_samples: int | None = None
    # sized so that the default sweep takes a few minutes on 2 CPU cores; floors are reported at the same N
    default_samples: dict[str, int] = field(default_factory=lambda: {"domain-fid": 500, "inception-fid": 10000,
                                                                      "exact-fd": 2000})
    batch_size: int = 250
    shard_size: int = 250
    # LML defaults: κ > 0 is needed for any effect (the stable operator is the identity at κ = 0); with λ = 1 and
    # ‖v‖² ≈ d = 256 (16×16 images) γ = κ‖v‖²/λ ≈ 0.26, inside the useful range (docs/lml.md §4)
    lamb: float | None = 1.0
    kappa: float | None = 1e-3
    freeze: float | None = None
    lm_formula: str | None = None
    extractor: str | None = None
    inception_weights: str | None = None
    ref_stats: str | None = None
    prompts: str | None = None
    # one value or a list: text-to-image cells are swept over it (the FID–CLIP trade-off)
    guidance_scale: float | tuple[float, ...] | None = None
    # None: fid,kid (KID only where the reference has raw features); explicit names are required of every model
    metrics: tuple[str, ...] | None = None
    metric_settings: MetricSettings = field(default_factory=MetricSettings)
    clip_model: str | None = None
    keep_images: bool = False
    device: str = "cpu"
    progress: bool = True
    grid_samples: int = 8

    def guidance_scales(self) -> tuple[float | None, ...]:
        g = self.guidance_scale
        if g is None:
            return (None,)
        return tuple(float(v) for v in g) if isinstance(g, (tuple, list)) else (float(g),)

    def lml_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in dict(lamb=self.lamb, kappa=self.kappa, freeze=self.freeze,
                                      lm_formula=self.lm_formula).items() if v is not None}


def _safe(name: str) -> str:
    """A file-name-safe version of a model name (Hub ids contain '/')."""
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)


#: LM settings a row reports, and the values that are left out of labels and folder names (the defaults).
_LM_REPORTED = {"lamb": None, "kappa": None, "freeze": 0.0, "lm_formula": "stable", "lm_rank": 1, "lm_gamma": None}
_LM_SYMBOL = {"lamb": "λ", "kappa": "κ", "lm_gamma": "γ"}


def sampler_label(name: str, settings: dict[str, Any]) -> str:
    """Row label: the name, plus the settings that differ from the defaults (e.g. ``lml-ddim(λ=1,κ=0.001)``)."""
    parts = [f"{_LM_SYMBOL.get(k, k)}={v:g}" if isinstance(v, float) else f"{_LM_SYMBOL.get(k, k)}={v}"
             for k, v in settings.items() if v is not None]
    return f"{name}({','.join(parts)})" if parts else name


def _row_settings(sampler: SamplerSpec, scheduler) -> dict[str, Any]:
    """The settings a row reports: LML samplers their actual LM config (defaults included, so a row says what
    ran), stock samplers the settings given in their name."""
    if not sampler.lml:
        return dict(sampler.settings)
    return {k: scheduler.config[k] for k in _LM_REPORTED}


def run_cell(model: EvalModel, sampler: str, nfe: int, cfg: SweepConfig, dist: DistInfo | None = None,
             guidance: float | None = None, clip=None, metrics: tuple[str, ...] | None = None) -> dict:
    """Generate (resumably, sharded) and score one cell; returns its result row (all ranks get the same row).

    Generation and FID are stored in ``result.json`` and never recomputed; the other metrics of ``cfg.metrics`` are
    computed from the stored features and kept in ``metrics/`` (:func:`~lml_sampler.eval.metrics.cell_metrics`).
    Cells of linear samplers on a linear-Gaussian model are scored exactly from the transfer matrix (no samples, no
    Monte-Carlo error). ``guidance`` is the pipeline's ``guidance_scale``; ``clip`` a
    :class:`~lml_sampler.eval.clip_score.CLIPEmbedder` when the CLIP score is requested. ``metrics`` overrides
    ``cfg.metrics`` (as resolved for this model by :func:`run_sweep`).
    """
    dist = dist or dist_info()
    metrics = parse_metrics(metrics or cfg.metrics or DEFAULT_METRICS)
    spec = parse_sampler(sampler)
    if model.is_flow != spec.flow:
        raise ValueError(f"sampler {spec.name!r} does not fit model {model.name!r} "
                         f"({'flow-matching' if model.is_flow else 'diffusion'} model)")
    lm_settings = {**cfg.lml_kwargs(), **spec.settings} if spec.lml else {}
    scheduler = make_scheduler(spec, model.scheduler_config, **lm_settings)
    settings = _row_settings(spec, scheduler)
    shown = {k: v for k, v in settings.items() if k in ("lamb", "kappa") or v != _LM_REPORTED.get(k, object())}
    label = sampler_label(spec.name, shown)
    slug = spec.name + "".join(f"_{k}{v:g}" if isinstance(v, float) else f"_{k}-{v}" for k, v in shown.items()
                               if v is not None)
    slug += f"_cfg{guidance:g}" if guidance is not None else ""
    n = cfg.num_samples or cfg.default_samples[model.metric]
    key = Path("cells") / _safe(model.name) / slug / f"nfe{nfe:03d}_seed{cfg.seed}"
    manifest = {"model": model.name, "sampler": label, "nfe": nfe, "seed": cfg.seed, "num_samples": n,
                "shard_size": cfg.shard_size, "metric": model.metric, "extractor": model.extractor_name}
    if guidance is not None:
        manifest["guidance_scale"] = guidance
    store = CellStore(cfg.out)
    # The main process writes the manifest; the others check it after the barrier (never mix two runs' shards).
    cell = store.cell(key, manifest, check_only=not dist.is_main)
    row = cell.result()
    clip = clip if "clip" in metrics and model.prompts is not None else None
    if row is None or (clip is not None and row.get("method") == "samples"):
        dist.barrier()
        store.cell(key, manifest, check_only=True)
        base = {"model": model.name, "sampler": label, "sampler_name": spec.name, "nfe": nfe, "cell": key.as_posix(),
                "seed": cfg.seed, "metric": model.metric, "reference": model.reference_desc,
                "extractor": model.extractor_name or "pixels", "guidance_scale": guidance,
                **{k: settings.get(k) for k in _LM_REPORTED}}
        row = _generate_cell(model, spec, scheduler, nfe, n, cfg, dist, cell, base, guidance, clip, done=row)
    if dist.is_main:
        extra = cell_metrics(metrics, cell.dir, model, row, cfg.metric_settings, clip)
    dist.barrier()
    if not dist.is_main:
        extra = cell_metrics(metrics, cell.dir, model, row, cfg.metric_settings, clip)  # reads what main stored
    return {**row, **extra}


def _generate_cell(model: EvalModel, spec: SamplerSpec, scheduler, nfe: int, n: int, cfg: SweepConfig,
                   dist: DistInfo, cell, row: dict, guidance: float | None, clip, done: dict | None) -> dict:
    """The shards and ``result.json`` (generation record + FID) of a cell; with ``done``, only the feature sets a
    finished cell lacks (CLIP embeddings) are added."""
    if done is None and model.linear and not (spec.lml and scheduler.lm_engaged):
        if dist.is_main:
            row.update(_exact_linear_row(model, scheduler, nfe))
            cell.save(row)
        dist.barrier()
        return cell.result()

    if model.kind == "analytic":
        dtype = torch.float32  # what a trained network would run in; the analytic model computes in float64 inside
        sample_fn: Any = ModelSampler(model.denoiser, scheduler, nfe, cfg.seed, tuple(model.denoiser.data_shape),
                                      dtype=dtype)
    else:
        kwargs = {**model.pipe_kwargs, **({"guidance_scale": guidance} if guidance is not None else {})}
        sample_fn = PipelineSampler(model.pipe, scheduler, nfe, cfg.seed, prompts=model.prompts, **kwargs)
        dtype = sample_fn.denoiser.dtype
    keep = ("features", "raw") if model.metric == "exact-fd" else ()
    keep += ("images",) if cfg.keep_images else ()
    feature_fns: dict[str, Any] = {"features": model.features}
    tags = {}
    if clip is not None:
        feature_fns["clip"], tags["clip"] = (lambda out: clip.images(out["images"])), clip.name
    mine = run_shards(sample_fn, cell.dir, n, cfg.shard_size, cfg.batch_size, feature_fns=feature_fns,
                      feature_tags=tags, dist=dist, keep=keep, progress=cfg.progress,
                      desc=f"{model.name} {row['sampler']} nfe={nfe}")
    dist.barrier()
    if done is not None:
        return done
    reference = model.reference()
    stats, totals = shard_statistics(cell.dir, mine, num_features=len(reference.mu))
    gen_stats = stats.compute()  # all-reduced float64 sums across processes
    if dist.is_main:
        if totals["count"] != n or gen_stats.n != n:
            raise RuntimeError(f"{cell.dir}: expected {n} samples, statistics hold {gen_stats.n} ({totals['count']})")
        save_statistics(cell.dir / "statistics.npz", gen_stats, extractor=model.extractor_name or "pixels")
        row.update(fid=frechet_distance(gen_stats, reference), num_samples=n,
                   floor=model.floor(n) if model.floor is not None else None,
                   nfe_measured=totals["nfe"], seconds_per_sample=totals["seconds"] / n,
                   feature_seconds_per_sample=totals["feature_seconds"] / n,
                   dtype=str(dtype).removeprefix("torch."),
                   method="samples")
        cell.save(row)
    dist.barrier()
    return cell.result()


def _exact_linear_row(model: EvalModel, scheduler, nfe: int) -> dict[str, Any]:
    """The exact Fréchet distance of a linear sampler on a linear-Gaussian model, from its transfer matrix."""
    t0 = time.perf_counter()
    dtype = torch.float64
    try:
        value = linear_sampler_distance(model.denoiser, scheduler, nfe, dtype=dtype)
    except RuntimeError as exc:  # UniPC in diffusers 0.42 mixes float32/float64 in a solve in float64 runs
        if "dtype" not in str(exc):
            raise
        dtype = torch.float32
        value = linear_sampler_distance(model.denoiser, scheduler, nfe, dtype=dtype)
    return dict(fid=value, floor=0.0, num_samples=0, nfe_measured=nfe, dtype=str(dtype).removeprefix("torch."),
                seconds_per_sample=(time.perf_counter() - t0) / model.denoiser.dim, method="transfer-matrix (exact)")


def run_sweep(cfg: SweepConfig, write_reports: bool = True) -> list[dict]:
    """Run every cell of the grid (skipping finished ones) and write ``results.{csv,json,md}``, the metric-vs-NFE
    plots (and the FID–CLIP plot of guidance sweeps) and one image grid per (model, sampler).

    Every input the metrics need (sample counts for the KID subsets and k, the CLIP model, guidance support) is
    checked before the first sample is generated.
    """
    from tqdm.auto import tqdm

    from . import report

    dist = dist_info(cpu=str(cfg.device) == "cpu")
    metrics = parse_metrics(cfg.metrics or DEFAULT_METRICS)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = Path(cfg.prompts).read_text().splitlines() if cfg.prompts else None
    prompts = [p for p in prompts if p.strip()] if prompts else None
    if cfg.prompts and not prompts:
        raise ValueError(f"--prompts {cfg.prompts} holds no prompt (one per line)")
    models: list[EvalModel] = []
    for spec in cfg.models:
        takes_extractor = MODEL_SPECS[spec].takes_extractor if spec in MODEL_SPECS else True
        models.append(load_eval_model(spec, extractor=cfg.extractor if takes_extractor else None,
                                      inception_weights=cfg.inception_weights, ref_stats=cfg.ref_stats,
                                      prompts=prompts, cache_dir=out / "reference", device=cfg.device))
    guidance = cfg.guidance_scales()
    if guidance != (None,):
        unguided = [m.name for m in models if not m.accepts_guidance]
        if unguided:
            raise ValueError(f"--guidance-scale applies to pipelines that take guidance_scale; {unguided} do not: "
                             "run them in a separate sweep without --guidance-scale")
    clip = None
    if "clip" in metrics:
        if not any(m.prompts for m in models):
            raise ValueError("the clip metric scores text-to-image samples against their prompts: pass --prompts FILE")
        if cfg.clip_model is None:
            raise ValueError("the clip metric needs a CLIP model: pass --clip-model FOLDER_OR_HUB_ID")
        from .clip_score import CLIPEmbedder

        clip = CLIPEmbedder(cfg.clip_model, device=cfg.device)
    model_metrics = {}
    for m in models:
        n = cfg.num_samples or cfg.default_samples[m.metric]
        try:
            check_metric_inputs(metrics, m, n, cfg.metric_settings)
            model_metrics[m.name] = metrics
        except FileNotFoundError as exc:
            if cfg.metrics is not None:
                raise
            model_metrics[m.name] = tuple(x for x in metrics if x not in ("kid", "pr"))
            if dist.is_main:
                print(f"{m.name}: FID only ({exc})", file=sys.stderr)
    fits = {s: parse_sampler(s).flow for s in cfg.samplers}
    cells = [(m, s, k, g) for m in models for s in cfg.samplers for g in (guidance if m.accepts_guidance else (None,))
             for k in cfg.nfe if m.is_flow == fits[s]]
    skipped = [(m.name, s) for m in models for s in cfg.samplers if m.is_flow != fits[s]]
    bar = tqdm(cells, desc="sweep", unit="cell", disable=not (cfg.progress and dist.is_main))
    rows: list[dict] = []
    for model, sampler, nfe, g in bar:
        bar.set_postfix_str(f"{model.name} {sampler} {nfe}" + (f" cfg {g:g}" if g is not None else ""))
        rows.append(run_cell(model, sampler, nfe, cfg, dist, guidance=g, clip=clip, metrics=model_metrics[model.name]))
    if write_reports and dist.is_main:
        report.write_reports(rows, out, cfg.grid_samples, metrics)
        if skipped:
            print(f"skipped (sampler does not fit the model type): {sorted(set(skipped))}")
    dist.barrier()
    return rows
