"""Reports of a sweep: CSV / JSON rows, a Markdown table, the FID-vs-NFE plot, image grids, and the Markdown of
the README section (which ``benchmarks/fid_sweep.py`` writes into the README)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from lml_sampler._io import atomic_write

__all__ = ["ROW_FIELDS", "write_csv", "write_json", "markdown_table", "plot_fid_vs_nfe", "save_image_grid",
           "write_grids", "write_reports", "readme_markdown"]

ROW_FIELDS = ("model", "sampler", "sampler_name", "nfe", "nfe_measured", "seed", "num_samples", "metric", "fid",
              "floor", "seconds_per_sample", "feature_seconds_per_sample", "lamb", "kappa", "freeze", "lm_formula",
              "lm_rank", "lm_gamma", "extractor", "reference", "method", "dtype")
_METRIC_NAME = {"domain-fid": "domain FID", "inception-fid": "Inception FID", "exact-fd": "exact Fréchet distance"}


def write_csv(rows: list[dict], path: str | os.PathLike) -> None:
    """One CSV row per (model, sampler, NFE, seed set), columns :data:`ROW_FIELDS`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=ROW_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k) for k in ROW_FIELDS})
    atomic_write(Path(path), buf.getvalue())


def write_json(rows: list[dict], path: str | os.PathLike) -> None:
    atomic_write(Path(path), json.dumps(rows, indent=1, default=float))


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def markdown_table(rows: list[dict]) -> str:
    """Table per model: one line per sampler, one column per NFE (the metric), plus seconds/sample at the top NFE."""
    by_model: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_model[r["model"]].append(r)
    out = []
    for model, mrows in by_model.items():
        nfes = sorted({r["nfe"] for r in mrows})
        samplers = list(dict.fromkeys(r["sampler"] for r in mrows))
        cell = {(r["sampler"], r["nfe"]): r for r in mrows}
        r0 = mrows[0]
        n = max(r.get("num_samples") or 0 for r in mrows)
        floors = {r.get("floor") for r in mrows if r.get("floor")}
        head = f"**{model}** — {_METRIC_NAME.get(r0['metric'], r0['metric'])} vs {r0.get('reference', '')}"
        head += f", extractor `{r0.get('extractor')}`" if r0["metric"] != "exact-fd" else ""
        head += f", N = {n} samples per cell" if n else ""
        if floors:
            what = "N exact samples" if r0["metric"] == "exact-fd" else "N real training images"
            head += f"; floor ({what}) = {_fmt(max(floors))}"
        out += [head, "", "| sampler | " + " | ".join(f"NFE {k}" for k in nfes) + f" | s/sample (NFE {nfes[-1]}) |",
                "|---|" + "---|" * (len(nfes) + 1)]
        for s in samplers:
            vals = []
            for k in nfes:
                r = cell.get((s, k))
                v = _fmt(r["fid"]) if r else "–"
                if r and r.get("method", "").startswith("transfer"):
                    v += "*"
                vals.append(v)
            last = cell.get((s, nfes[-1]))
            sps = _fmt(last.get("seconds_per_sample")) if last else "–"
            out.append(f"| {s} | " + " | ".join(vals) + f" | {sps} |")
        if any(r.get("method", "").startswith("transfer") for r in mrows):
            out.append("")
            out.append("\\* exact, from the sampler's transfer matrix (no Monte-Carlo error).")
        out.append("")
    return "\n".join(out).strip() + "\n"


def plot_fid_vs_nfe(rows: list[dict], path: str | os.PathLike) -> None:
    """One panel per model, FID (log) vs NFE (log), one line per sampler; LML samplers dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    by_model: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_model[r["model"]].append(r)
    fig, axes = plt.subplots(1, len(by_model), figsize=(5.2 * len(by_model), 4.0), squeeze=False)
    for ax, (model, mrows) in zip(axes[0], by_model.items()):
        for s in dict.fromkeys(r["sampler"] for r in mrows):
            pts = sorted((r["nfe"], r["fid"]) for r in mrows if r["sampler"] == s and r["fid"] is not None)
            if pts:
                x, y = zip(*pts)
                ax.plot(x, np.maximum(y, 1e-12), marker="o", ls="--" if s.startswith("lml-") else "-", label=s)
        floors = [r.get("floor") for r in mrows if r.get("floor")]
        if floors:
            ax.axhline(max(floors), color="grey", lw=0.8, ls=":", label="floor (real/exact data)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        fmt = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(fmt)
        ax.yaxis.set_minor_formatter(fmt)
        nfes = sorted({r["nfe"] for r in mrows})
        ax.set_xticks(nfes, [str(k) for k in nfes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("NFE")
        ax.set_ylabel(_METRIC_NAME.get(mrows[0]["metric"], "FID"))
        ax.set_title(model)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(Path(path), buf.getvalue())


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
    """One grid per (model, sampler): a row per NFE, the same ``count`` sample indices in every row."""
    written = []
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["sampler"])].append(r)
    for (model, sampler), grows in groups.items():
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


def write_reports(rows: list[dict], out: str | os.PathLike, grid_samples: int = 8) -> None:
    """``results.csv``, ``results.json``, ``results.md``, ``fid_vs_nfe.png`` and ``grids/`` under ``out``."""
    out = Path(out)
    write_csv(rows, out / "results.csv")
    write_json(rows, out / "results.json")
    atomic_write(out / "results.md", markdown_table(rows))
    plot_fid_vs_nfe(rows, out / "fid_vs_nfe.png")
    if grid_samples > 0:
        write_grids(rows, out, grid_samples)


def readme_markdown(rows: list[dict], image: str = "docs/images/fid_vs_nfe.png", command: str | None = None) -> str:
    """The README "sweep" section: how it was produced, the table and the plot."""
    cmd = command or "python -m benchmarks.fid_sweep"
    lml = sorted({(r.get("lamb"), r.get("kappa")) for r in rows if r.get("lamb") is not None})
    lml_txt = (" LML rows use the stable operator with " + ", ".join(f"λ = {a:g}, κ = {b:g}" for a, b in lml)
               + " (κ = 0 would make them identical to their base sampler).") if lml else ""
    lines = [f"Generated by `{cmd}`. Lower is better. Sample i has the same initial noise under every sampler "
             "(per-index seeds), so rows differ only by the sampler. Domain FID: Fréchet distance of classifier "
             "features of the generated uint8 images to those of real images; exact Fréchet distance: of the "
             "samples (pixel space) to the model's known mean and covariance. The floor is the same statistic for "
             "as many real (or exact) samples, i.e. what a perfect sampler would score at this N. s/sample: wall-clock "
             "generation time per sample on one process of a shared 2-core CPU." + lml_txt, "",
             markdown_table(rows), f"![FID vs NFE]({image})"]
    return "\n".join(lines)
