"""Reports of a sweep: CSV / JSON rows, Markdown tables (FID, KID, precision/recall, CLIP score, each ± its
standard error), metric-vs-NFE plots with error bars, the FID–CLIP plot of guidance sweeps, image grids, and the
Markdown of the README section (which ``benchmarks/fid_sweep.py`` writes into the README)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from lml_sampler._io import atomic_write

__all__ = ["ROW_FIELDS", "kid_scale", "write_csv", "write_json", "fmt_pm", "markdown_table", "plot_metric_vs_nfe",
           "plot_fid_vs_nfe", "plot_fid_vs_clip", "save_image_grid", "write_grids", "write_reports",
           "readme_markdown"]

ROW_FIELDS = ("model", "sampler", "sampler_name", "nfe", "nfe_measured", "guidance_scale", "seed", "num_samples",
              "metric", "fid", "fid_se", "floor", "kid", "kid_std", "kid_se", "kid_full", "kid_subsets",
              "kid_subset_size", "kid_floor", "kid_floor_se", "precision", "recall", "density", "coverage", "pr_k",
              "precision_floor", "recall_floor", "density_floor", "coverage_floor", "clip", "clip_se", "clip_model",
              "seconds_per_sample", "feature_seconds_per_sample", "lamb", "kappa", "freeze", "lm_formula", "lm_rank",
              "lm_gamma", "extractor", "reference", "method", "dtype")
_METRIC_NAME = {"domain-fid": "domain FID", "inception-fid": "Inception FID", "exact-fd": "exact Fréchet distance"}
def kid_scale(rows: list[dict]) -> tuple[float, str]:
    """``(factor, label)`` for KID values: ×10³ as papers print Inception KIDs (values ~1e-3), or ×1, ×10⁶, so that
    the largest value shown is at least 1 (domain features have other scales)."""
    top = max((abs(r["kid"]) for r in rows if _finite(r.get("kid"))), default=1.0)
    for factor, label in ((1.0, "KID"), (1e3, "KID ×10³")):
        if top * factor >= 1.0:
            return factor, label
    return 1e6, "KID ×10⁶"


def write_csv(rows: list[dict], path: str | os.PathLike) -> None:
    """One CSV row per (model, sampler, NFE, guidance, seed set), columns :data:`ROW_FIELDS`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=ROW_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k) for k in ROW_FIELDS})
    atomic_write(Path(path), buf.getvalue())


def write_json(rows: list[dict], path: str | os.PathLike) -> None:
    atomic_write(Path(path), json.dumps(rows, indent=1, default=float))


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and np.isfinite(x)


def _fmt(x) -> str:
    if not _finite(x):
        return "–"
    return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def fmt_pm(value, se, scale: float = 1.0) -> str:
    """``value ± se`` with the SE to two significant digits and the value to the same decimal place
    (``12.44 ± 0.35``, ``7.4 ± 1.5``); without a positive SE just the value."""
    if not _finite(value):
        return "–"
    if not _finite(se) or se <= 0:
        return _fmt(value * scale)
    v, e = value * scale, se * scale
    decimals = max(0, 1 - int(np.floor(np.log10(e))))
    return f"{v:.{decimals}f} ± {e:.{decimals}f}"


def _row_label(r: dict) -> str:
    g = r.get("guidance_scale")
    return r["sampler"] if g is None else f"{r['sampler']}, cfg {g:g}"


def _by_model(rows: list[dict]) -> dict[str, list[dict]]:
    by_model: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_model[r["model"]].append(r)
    return by_model


def _grid(mrows: list[dict], cell_text, extra=None) -> list[str]:
    """A Markdown table: one line per (sampler, guidance), one column per NFE, optional trailing column."""
    nfes = sorted({r["nfe"] for r in mrows})
    labels = list(dict.fromkeys(_row_label(r) for r in mrows))
    cell = {(_row_label(r), r["nfe"]): r for r in mrows}
    head = "| sampler | " + " | ".join(f"NFE {k}" for k in nfes) + (f" | {extra[0]} |" if extra else " |")
    out = [head, "|---|" + "---|" * (len(nfes) + (1 if extra else 0))]
    for s in labels:
        vals = [cell_text(cell[(s, k)]) if (s, k) in cell else "–" for k in nfes]
        tail = f" | {extra[1](cell.get((s, nfes[-1])))}" if extra else ""
        out.append(f"| {s} | " + " | ".join(vals) + tail + " |")
    return out


def _has(rows: list[dict], key: str) -> bool:
    return any(_finite(r.get(key)) for r in rows)


def markdown_table(rows: list[dict]) -> str:
    """Tables per model: FID ± SE (with seconds/sample at the top NFE), then KID ± SE, precision / recall and
    CLIP score ± SE where the rows have them; one line per sampler (and guidance scale), one column per NFE."""
    out = []
    for model, mrows in _by_model(rows).items():
        r0 = mrows[0]
        n = max(r.get("num_samples") or 0 for r in mrows)
        floors = {r.get("floor") for r in mrows if r.get("floor")}
        head = f"**{model}** — {_METRIC_NAME.get(r0['metric'], r0['metric'])} vs {r0.get('reference', '')}"
        head += f", extractor `{r0.get('extractor')}`" if r0["metric"] != "exact-fd" else ""
        head += f", N = {n} samples per cell" if n else ""
        what = "N exact samples" if r0["metric"] == "exact-fd" else "N real training images"
        if floors:
            head += f"; floor ({what}) = {_fmt(max(floors))}"
        last = max(r["nfe"] for r in mrows)

        def fid_text(r: dict) -> str:
            return fmt_pm(r.get("fid"), r.get("fid_se")) + ("*" if r.get("method", "").startswith("transfer") else "")

        out += [head, ""] + _grid(mrows, fid_text, (f"s/sample (NFE {last})",
                                                   lambda r: _fmt(r.get("seconds_per_sample")) if r else "–"))
        if any(r.get("method", "").startswith("transfer") for r in mrows):
            out += ["", "\\* exact, from the sampler's transfer matrix (no Monte-Carlo error)."]
        out.append("")
        if _has(mrows, "kid"):
            k0 = next(r for r in mrows if _finite(r.get("kid")))
            scale, label = kid_scale(mrows)
            head = (f"**{model}** — {label} (unbiased polynomial-kernel MMD², mean of {k0['kid_subsets']} subsets of "
                    f"{k0['kid_subset_size']}), same features and reference")
            if _finite(k0.get("kid_floor")):
                head += f"; floor ({what}) = {fmt_pm(k0['kid_floor'], k0.get('kid_floor_se'), scale)}"
            out += [head, ""] + _grid(mrows, lambda r, c=scale: fmt_pm(r.get("kid"), r.get("kid_se"), c)) + [""]
        if _has(mrows, "precision"):
            p0 = next(r for r in mrows if _finite(r.get("precision")))
            head = f"**{model}** — precision / recall (k-NN manifolds, k = {p0['pr_k']}; higher is better)"
            if _finite(p0.get("precision_floor")):
                head += f"; floor ({what}) = {p0['precision_floor']:.3f} / {p0['recall_floor']:.3f}"
            out += [head, ""] + _grid(mrows, lambda r: f"{r['precision']:.3f} / {r['recall']:.3f}"
                                      if _finite(r.get("precision")) else "–") + [""]
        if _has(mrows, "clip"):
            out += [f"**{model}** — CLIP score (100 · cos, `{mrows[0].get('clip_model')}`; higher is better)", ""]
            out += _grid(mrows, lambda r: fmt_pm(r.get("clip"), r.get("clip_se"))) + [""]
    return "\n".join(out).strip() + "\n"


def _setup_matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return matplotlib, plt


def _save(fig, path) -> None:
    _, plt = _setup_matplotlib()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(Path(path), buf.getvalue())


def _fid_axis(mrows: list[dict]) -> tuple[float, str]:
    return 1.0, _METRIC_NAME.get(mrows[0]["metric"], "FID")


def plot_metric_vs_nfe(rows: list[dict], path: str | os.PathLike, key: str = "fid", se_key: str | None = "fid_se",
                       floor_key: str | None = "floor", log_y: bool = True, axis=_fid_axis) -> None:
    """One panel per model, ``key`` vs NFE (log) with ± SE error bars, one line per sampler (and guidance scale);
    LML samplers dashed, the floor dotted. ``axis(model_rows) -> (scale, label)`` sets the y axis of a panel."""
    matplotlib, plt = _setup_matplotlib()
    import matplotlib.ticker

    by_model = {m: [r for r in mrows if _finite(r.get(key))] for m, mrows in _by_model(rows).items()}
    by_model = {m: mrows for m, mrows in by_model.items() if mrows}
    fig, axes = plt.subplots(1, max(1, len(by_model)), figsize=(5.2 * max(1, len(by_model)), 4.0), squeeze=False)
    for ax, (model, mrows) in zip(axes[0], by_model.items()):
        scale, ylabel = axis(mrows)
        for label in dict.fromkeys(_row_label(r) for r in mrows):
            pts = sorted((r["nfe"], r[key] * scale, (r.get(se_key) or 0.0) * scale if se_key else 0.0)
                         for r in mrows if _row_label(r) == label)
            x, y, e = (np.asarray(v, dtype=float) for v in zip(*pts))
            if log_y:  # bars that would cross zero are cut just above it
                y = np.maximum(y, 1e-12)
                e = np.stack([np.minimum(e, 0.999 * y), e])
            ax.errorbar(x, y, yerr=e if se_key else None, marker="o", ms=4, capsize=2,
                        ls="--" if label.startswith("lml-") else "-", label=label)
        floors = [r[floor_key] * scale for r in mrows if floor_key and _finite(r.get(floor_key))]
        if floors and (max(floors) > 0 or not log_y):
            ax.axhline(max(floors), color="grey", lw=0.8, ls=":", label="floor (real/exact data)")
        if not log_y:
            ax.axhline(0.0, color="black", lw=0.5)
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
            fmt = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
            ax.yaxis.set_major_formatter(fmt)
            ax.yaxis.set_minor_formatter(fmt)
        nfes = sorted({r["nfe"] for r in mrows})
        ax.set_xticks(nfes, [str(k) for k in nfes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("NFE")
        ax.set_ylabel(ylabel)
        ax.set_title(model + ("  (bars: ± 1 SE)" if se_key else ""))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_fid_vs_nfe(rows: list[dict], path: str | os.PathLike) -> None:
    """FID ± SE vs NFE (:func:`plot_metric_vs_nfe`)."""
    plot_metric_vs_nfe(rows, path)


def plot_fid_vs_clip(rows: list[dict], path: str | os.PathLike) -> None:
    """The FID–CLIP trade-off of guidance sweeps: one panel per model, one curve per (sampler, NFE) through the
    guidance scales (annotated), ± SE bars on both axes. Lower right is better (high CLIP, low FID)."""
    _, plt = _setup_matplotlib()
    by_model = {m: [r for r in mrows if _finite(r.get("clip")) and _finite(r.get("fid"))]
                for m, mrows in _by_model(rows).items()}
    by_model = {m: mrows for m, mrows in by_model.items() if mrows}
    fig, axes = plt.subplots(1, max(1, len(by_model)), figsize=(5.6 * max(1, len(by_model)), 4.4), squeeze=False)
    for ax, (model, mrows) in zip(axes[0], by_model.items()):
        for sampler, nfe in dict.fromkeys((r["sampler"], r["nfe"]) for r in mrows):
            pts = sorted((r.get("guidance_scale") or 0.0, r["clip"], r.get("clip_se") or 0.0, r["fid"],
                          r.get("fid_se") or 0.0) for r in mrows if (r["sampler"], r["nfe"]) == (sampler, nfe))
            g, c, ce, f, fe = zip(*pts)
            ax.errorbar(c, f, xerr=ce, yerr=fe, marker="o", ms=4, capsize=2,
                        ls="--" if sampler.startswith("lml-") else "-", label=f"{sampler}, NFE {nfe}")
            for gi, ci, fi in zip(g, c, f):
                ax.annotate(f"{gi:g}", (ci, fi), textcoords="offset points", xytext=(3, 3), fontsize=6)
        ax.set_xlabel("CLIP score (higher is better)")
        ax.set_ylabel(_METRIC_NAME.get(mrows[0]["metric"], "FID") + " (lower is better)")
        ax.set_title(f"{model}: FID vs CLIP over guidance scales")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)


def save_image_grid(images: np.ndarray, path: str | os.PathLike, nrow: int, scale: int = 1) -> None:
    """Save uint8 images ``(N, C, H, W)`` (C = 1 or 3) as a PNG grid with ``nrow`` images per row, 1-px gaps."""
    from PIL import Image

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be uint8 (N, 1|3, H, W), got {images.dtype} {images.shape}")
    n, c, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    grid = np.full((rows * (h + 1) + 1, nrow * (w + 1) + 1, c), 255, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + k * (w + 1): 1 + k * (w + 1) + w] = images[i].transpose(1, 2, 0)
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write(Path(path), buf.getvalue())


def write_grids(rows: list[dict], out: Path, count: int = 8) -> list[Path]:
    """One grid per (model, sampler, guidance scale): a row per NFE, the same ``count`` sample indices in every row."""
    written = []
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["sampler"], r.get("guidance_scale"))].append(r)
    for grows in groups.values():
        imgs = []
        for r in sorted(grows, key=lambda r: r["nfe"]):
            shard = out / r.get("cell", "") / "shard_000000.npz"
            if not shard.is_file():
                continue
            with np.load(shard) as data:
                if "images" in data:
                    imgs.append(data["images"][:count])
        if imgs and all(len(i) == len(imgs[0]) for i in imgs):
            path = out / "grids" / (Path(grows[0]["cell"]).parent.relative_to("cells").as_posix().replace("/", "__")
                                    + ".png")
            h = imgs[0].shape[-1]
            save_image_grid(np.concatenate(imgs), path, nrow=len(imgs[0]), scale=max(1, 64 // h))
            written.append(path)
    return written


def write_reports(rows: list[dict], out: str | os.PathLike, grid_samples: int = 8,
                  metrics: tuple[str, ...] = ("fid", "kid")) -> None:
    """``results.csv``, ``results.json``, ``results.md``, ``fid_vs_nfe.png`` (and ``kid_vs_nfe.png``,
    ``fid_vs_clip.png`` when those metrics ran) and ``grids/`` under ``out``."""
    out = Path(out)
    write_csv(rows, out / "results.csv")
    write_json(rows, out / "results.json")
    atomic_write(out / "results.md", markdown_table(rows))
    plot_fid_vs_nfe(rows, out / "fid_vs_nfe.png")
    if "kid" in metrics and _has(rows, "kid"):
        plot_metric_vs_nfe(rows, out / "kid_vs_nfe.png", "kid", "kid_se", "kid_floor", log_y=False, axis=kid_scale)
    if "clip" in metrics and _has(rows, "clip"):
        plot_fid_vs_clip(rows, out / "fid_vs_clip.png")
    if grid_samples > 0:
        write_grids(rows, out, grid_samples)


def readme_markdown(rows: list[dict], image: str = "docs/images/fid_vs_nfe.png", command: str | None = None,
                    kid_image: str | None = None) -> str:
    """The README "sweep" section: how it was produced, the tables and the plots."""
    cmd = command or "python -m benchmarks.fid_sweep"
    lml = sorted({(r.get("lamb"), r.get("kappa")) for r in rows if r.get("lamb") is not None})
    lml_txt = (" LML rows use the stable operator with " + ", ".join(f"λ = {a:g}, κ = {b:g}" for a, b in lml)
               + " (κ = 0 would make them identical to their base sampler).") if lml else ""
    groups = {r.get("kid_subsets") for r in rows if r.get("kid_subsets")}
    kid_txt = (" KID: the unbiased polynomial-kernel MMD² on the same features and reference, the mean over "
               "random subsets (the standard protocol; their std is in `results.csv`); unbiased, so a perfect sampler "
               "scores 0 on average and small negative values are noise." if groups else "")
    lines = [f"Generated by `{cmd}`. Lower is better. Sample i has the same initial noise under every sampler "
             "(per-index seeds), so rows differ only by the sampler. Domain FID: Fréchet distance of classifier "
             "features of the generated uint8 images to those of real images; exact Fréchet distance: of the "
             "samples (pixel space) to the model's known mean and covariance." + kid_txt + " ± is one standard "
             "error over fresh draws of a cell's samples, the reference held fixed (delete-a-group jackknife, 20 "
             "groups; docs/metrics.md §4); because every sampler sees the same noise, differences between rows are "
             "known more precisely than the two SEs suggest. The floor is the same statistic for as many real (or "
             "exact) samples, i.e. what a perfect sampler would score at this N. s/sample: wall-clock generation time "
             "per sample on one process of a shared 2-core CPU." + lml_txt, "",
             markdown_table(rows), f"![FID vs NFE]({image})"]
    if kid_image:
        lines.append(f"![KID vs NFE]({kid_image})")
    return "\n".join(lines)
