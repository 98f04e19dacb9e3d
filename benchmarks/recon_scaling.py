"""Reconstruction at real size on one CPU core: time and peak memory per slice against image size, coils and slices.

Every cell runs in a fresh process (``torch.set_num_threads(1)``), so its peak memory is its own: the high-water
mark of resident memory minus the interpreter's after imports. Times are CPU seconds of that one thread
(``time.process_time``, medians of repeats): on a shared machine wall time measures the other jobs too, CPU time the
work. Cells are stored in a
:class:`~lml_sampler._io.CellStore` and a rerun skips finished ones::

    python -m benchmarks.recon_scaling --out runs/recon_scaling --readme      # ~25 min on a quiet core
    python -m benchmarks.recon_scaling --quick                                # smoke run, small sizes

Rows: multi-coil MRI (``A``, ``AᴴA`` with a column mask (1-D FFTs) and a 2-D mask, both against the bare batched
2-D FFT pair of the coils, one CG iteration of ``I + γAᴴA``, ESPIRiT, a 20-step DDS run with the exact Gaussian
prior); parallel-beam CT at 180 views (matrix build time and memory, ``A``, ``AᵀA``, CG, DDS); the bundled 32×32 UNet
where its size fits; ESPIRiT against the true maps at 320² × 15 coils; and ``lml-reconstruct`` end to end on
fastMRI-layout files of 1 to 8 slices at 320² × 15 coils (wall time, peak memory, PSNR against the zero-filled RSS).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

#: Image sides of the size sweep and the coil counts at 320².
SIZES = (32, 64, 128, 256, 320)
COILS = (1, 4, 8, 15)
CT_VIEWS = 180
NFE = 20


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _median_time(fn, repeats: int) -> float:
    """Median CPU seconds of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times)


def _dds_seconds(prior, op, y, operator_range) -> float:
    import torch

    from lml_sampler.pipelines.dds import DDSPipeline

    pipe = DDSPipeline(prior.unet, prior.scheduler)
    pipe.set_progress_bar_config(disable=True)
    t = time.process_time()
    pipe(op, y, num_inference_steps=NFE, noiseless=True, operator_range=operator_range,
         generator=torch.Generator().manual_seed(0))
    return time.process_time() - t


def _cg_iteration_seconds(op, x, repeats: int) -> float:
    from lml_sampler.math.cg import conjugate_gradient

    def apply(v):
        return v + 10.0 * op.A_adjoint_A(v)

    iters = 5
    return _median_time(lambda: conjugate_gradient(apply, x, max_iter=iters, tol=0.0), repeats) / iters


def _cell_mri(spec: dict) -> dict:
    import torch

    from lml_sampler.operators import (MultiCoilMRI, SingleCoilMRI, fft2c, gaussian2d_mask, simulate_coil_sensitivities,
                                       uniform1d_mask)
    from lml_sampler.operators.coils import espirit_maps
    from lml_sampler.pipelines.reconstruct import gaussian_prior, load_prior

    n, coils, reps = spec["size"], spec["coils"], spec["repeats"]
    base = _maxrss_mb()
    g = torch.Generator().manual_seed(0)
    col, two_d = uniform1d_mask(n, 4, generator=g), gaussian2d_mask(n, 4, generator=g)
    maps = simulate_coil_sensitivities(coils, n, g) if coils > 1 else None
    ops = [MultiCoilMRI(m, maps) if maps is not None else SingleCoilMRI(m) for m in (col, two_d)]
    x = ops[0].random_input(1, torch.float32, g)
    y = ops[0].A(x)
    out = {"A_ms": 1e3 * _median_time(lambda: ops[0].A(x), reps),
           "AhA_ms": 1e3 * _median_time(lambda: ops[0].A_adjoint_A(x), reps),
           "AhA_2d_ms": 1e3 * _median_time(lambda: ops[1].A_adjoint_A(x), reps),
           "fft_pair_ms": 1e3 * _median_time(
               lambda: torch.fft.ifft2(torch.fft.fft2(x.expand(1, coils, n, n).contiguous())), reps),
           "cg_iter_ms": 1e3 * _cg_iteration_seconds(ops[0], x, reps)}
    if maps is not None:
        k = fft2c(maps * x[0, 0]) * col.mask
        out["espirit_s"] = _median_time(lambda: espirit_maps(k, col.mask), max(1, reps // 5))
    if spec["model"] == "unet":
        from lml_sampler.operators import RealInput

        op = RealInput(ops[0])
        prior = load_prior("phantoms")
        xr = torch.rand(1, 1, n, n, generator=g)
        out["dds_s"] = _dds_seconds(prior, op, op.A(xr), (0.0, 1.0))
    else:
        out["dds_s"] = _dds_seconds(gaussian_prior((n, n), 2), ops[0], y, (-1.0, 1.0))
    out["peak_mb"] = _maxrss_mb() - base
    return out


def _cell_ct(spec: dict) -> dict:
    import torch

    from lml_sampler.operators import ParallelBeamCT, sparse_view_angles
    from lml_sampler.pipelines.reconstruct import gaussian_prior, load_prior

    n, reps = spec["size"], spec["repeats"]
    base = _maxrss_mb()
    t = time.process_time()
    op = ParallelBeamCT(n, sparse_view_angles(spec["views"]))
    out = {"build_s": time.process_time() - t, "build_mb": _maxrss_mb() - base, "nnz": op.nnz}
    x = torch.rand(1, 1, n, n, generator=torch.Generator().manual_seed(0))
    y = op.A(x)
    out.update(A_ms=1e3 * _median_time(lambda: op.A(x), reps), AhA_ms=1e3 * _median_time(lambda: op.A_adjoint_A(x), reps),
               cg_iter_ms=1e3 * _cg_iteration_seconds(op, x, reps))
    prior = load_prior("phantoms") if spec["model"] == "unet" else gaussian_prior((n, n), 1)
    out["dds_s"] = _dds_seconds(prior, op, y, (0.0, 1.0))
    out["peak_mb"] = _maxrss_mb() - base
    return out


def _phantom_volume(slices: int, n: int, coils: int, noise: float, seed: int = 0):
    """Complex ellipse phantoms with smooth phase, simulated coil maps, fully sampled noisy k-space + RSS reference."""
    import torch

    from lml_sampler.data.phantoms import random_ellipse_phantoms, random_smooth_phase
    from lml_sampler.operators import simulate_coil_sensitivities
    from lml_sampler.pipelines.io import simulate_kspace

    g = torch.Generator().manual_seed(seed)
    x = random_ellipse_phantoms(slices, n, g)[:, 0] * torch.exp(1j * random_smooth_phase(slices, n, g)[:, 0])
    maps = simulate_coil_sensitivities(coils, n, g)
    k, ref = simulate_kspace(x, maps, noise=noise, generator=g)
    return x, maps, k, ref


def _cell_espirit(spec: dict) -> dict:
    """ESPIRiT at 320² × 15 coils from the ACS of a x4 mask against the true maps: map error on the object and the
    PSNR of CG-SENSE (15 iterations) and of DDS with each set of maps."""
    import torch

    from lml_sampler.operators import MultiCoilMRI, uniform1d_mask
    from lml_sampler.operators.coils import espirit_maps, map_error
    from lml_sampler.pipelines.baselines import cg_least_squares
    from lml_sampler.pipelines.common import psnr
    from lml_sampler.pipelines.dds import DDSPipeline
    from lml_sampler.pipelines.io import Problem
    from lml_sampler.pipelines.reconstruct import fitted_gaussian_prior

    n, coils = spec["size"], spec["coils"]
    x, maps, k, ref = _phantom_volume(1, n, coils, spec["noise"])
    mask = uniform1d_mask(n, 4, generator=torch.Generator().manual_seed(1)).mask
    y = (k * mask)[:1]
    t = time.process_time()
    est = espirit_maps(y[0], mask)
    out = {"espirit_s": time.process_time() - t, "map_error": map_error(est, maps, x[0].abs() > 0.05)}
    r = ref[:1, None]
    for name, s in (("true", maps), ("espirit", est)):
        op = MultiCoilMRI(mask, s)
        weight = s.abs().pow(2).sum(0).sqrt()
        rec = cg_least_squares(op, y, 15)[:, 0].abs() * weight
        out[f"cg_psnr_{name}"] = float(psnr(rec[:, None], r, float(ref.max())))
        problem = Problem(op, y, torch.ones(1), r[:, 0], r[:, 0], (n, n), [0], True, weight=weight[None])
        prior = fitted_gaussian_prior(problem, "mri")
        pipe = DDSPipeline(prior.unet, prior.scheduler)
        pipe.set_progress_bar_config(disable=True)
        z = pipe(op, y, num_inference_steps=NFE, noiseless=True, operator_range=(-1.0, 1.0),
                 generator=torch.Generator().manual_seed(0)).images
        z = torch.complex(z[:, 0], z[:, 1])[:, None]
        out[f"dds_psnr_{name}"] = float(psnr(problem.to_output(z)[:, None], r, float(ref.max())))
    return out


def _cell_file(spec: dict) -> dict:
    """``lml-reconstruct`` end to end on a fastMRI-layout file in a child process: wall time and peak memory."""
    from lml_sampler.pipelines.io import write_kspace_file

    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / f"slices{spec['slices']}.h5"
        _, _, k, ref = _phantom_volume(spec["slices"], spec["size"], spec["coils"], spec["noise"])
        write_kspace_file(f, k, ref)
        return run_cli(["--kspace", str(f), "--model", "gaussian", "--nfe", str(NFE), "--acc", "4", "--no-progress",
                        "--out", str(Path(tmp) / "out")])


def run_cli(args: list[str]) -> dict:
    """Run ``lml-reconstruct args`` in a child process on one thread: its wall and CPU seconds, peak memory (the
    child's resident high-water mark, interpreter included) and metrics. Call it once per process (the children's
    resource usage accumulates)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lml_sampler.pipelines.reconstruct", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = Path(args[args.index("--out") + 1])
    m = json.loads((out / "metrics.json").read_text())
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024,
            "psnr": m.get("psnr"), "baseline_psnr": m.get("baseline_psnr"), "ssim": m.get("ssim"),
            "baseline_ssim": m.get("baseline_ssim"), "seconds_per_slice": m["seconds_per_slice"]}


CELL_KINDS = {"mri": _cell_mri, "ct": _cell_ct, "espirit": _cell_espirit, "file": _cell_file}


def cells(quick: bool) -> list[dict]:
    """The measurement grid (``--quick``: small sizes only), headline cells first: a partial run still answers the
    real-size questions (the store resumes the rest)."""
    sizes = (32, 64) if quick else SIZES
    reps = 3
    n = 128 if quick else sizes[-1]  # ESPIRiT needs an ACS of ~10 columns (x4 masks keep 8 % of W)
    out = [dict(kind="file", size=n, coils=15, slices=s, noise=0.005) for s in (1, 2)]
    out += [dict(kind="mri", size=sizes[-1], coils=15, model="gaussian", repeats=reps)]
    out += [dict(kind="ct", size=m, views=CT_VIEWS, model="gaussian", repeats=reps) for m in sizes[::-1] if m <= 256]
    out.append(dict(kind="espirit", size=n, coils=15, noise=0.005))
    out += [dict(kind="mri", size=m, coils=15, model="gaussian", repeats=reps) for m in sizes[-2::-1]]
    out += [dict(kind="mri", size=sizes[-1], coils=c, model="gaussian", repeats=reps) for c in COILS if c != 15]
    out += [dict(kind="mri", size=32, coils=15, model="unet", repeats=reps),
            dict(kind="ct", size=32, views=CT_VIEWS, model="unet", repeats=reps)]
    if not quick:  # memory against the number of slices
        out.append(dict(kind="file", size=n, coils=15, slices=8, noise=0.005))
    return out


def cell_key(spec: dict) -> str:
    return "_".join(f"{k}={v}" for k, v in spec.items() if k != "repeats")


def _run_cell_process(spec: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "benchmarks.recon_scaling", "--cell", json.dumps(spec)], check=True,
                         env=env, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _fmt(v, digits=1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _targets(results: list[tuple[dict, dict]]) -> list[str]:
    """The issue's targets, each with its number and met / not met (only those whose cell has run)."""
    find = {(s["kind"], s["size"], s.get("coils"), s.get("model")): r for s, r in results}
    out = []
    r = find.get(("mri", 320, 15, "gaussian"))
    if r is not None:
        cols, two_d = r["AhA_ms"] / r["fft_pair_ms"], r["AhA_2d_ms"] / r["fft_pair_ms"]
        out.append(f"- `AᴴA` at 320² × 15 coils within 1.5× of the bare batched FFT pair: {cols:.2f}× with a column "
                   f"mask ({_verdict(cols <= 1.5)}), {two_d:.2f}× with a 2-D mask ({_verdict(two_d <= 1.5)}).")
        out.append(f"- A {NFE}-step DDS slice at 320² × 15 coils with the Gaussian prior under 30 s on one core: "
                   f"{r['dds_s']:.1f} s ({_verdict(r['dds_s'] < 30)}).")
    r = find.get(("ct", 256, None, "gaussian"))
    if r is not None:
        ok = r["build_s"] <= 10 and r["build_mb"] <= 1024
        out.append(f"- CT operator build at 256² / {CT_VIEWS} views within 10 s and 1 GB: {r['build_s']:.1f} s, "
                   f"{r['build_mb']:.0f} MB ({_verdict(ok)}).")
    return (["Targets:", "", *out, ""]) if out else []


def to_markdown(results: list[tuple[dict, dict]], plot: str | None) -> str:
    """The README section: four tables (MRI, CT, ESPIRiT, files) and the plot."""
    mri = [(s, r) for s, r in results if s["kind"] == "mri"]
    ct = [(s, r) for s, r in results if s["kind"] == "ct"]
    esp = [(s, r) for s, r in results if s["kind"] == "espirit"]
    files = [(s, r) for s, r in results if s["kind"] == "file"]
    lines = ["Generated by `python -m benchmarks.recon_scaling --readme`: one thread per cell, a fresh process per "
             "cell; times are CPU seconds of that thread (medians of repeats), memory is the cell's peak resident "
             "memory above the interpreter's. DDS: "
             f"{NFE} steps, noiseless CG data consistency (5 iterations per step), x4 masks.", ""]
    lines += _targets(results)
    if mri:
        lines += ["**Multi-coil MRI** (SENSE; `AᴴA` with a column mask uses 1-D FFTs; *bare FFT pair* = `fft2` + "
                  "`ifft2` of all coils, the cost a 2-D normal operator must pay):", "",
                  "| size | coils | prior | A ms | AᴴA ms (columns) | AᴴA ms (2-D mask) | bare FFT pair ms | AᴴA / FFT pair "
                  "(columns / 2-D) | CG iter ms | ESPIRiT s | DDS s | peak MB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for s, r in sorted(mri, key=lambda sr: (sr[0]["model"], sr[0]["size"], sr[0]["coils"])):
            ratio = f"{r['AhA_ms'] / r['fft_pair_ms']:.2f} / {r['AhA_2d_ms'] / r['fft_pair_ms']:.2f}"
            lines.append(f"| {s['size']}² | {s['coils']} | {s['model']} | {_fmt(r['A_ms'], 2)} | {_fmt(r['AhA_ms'], 2)} "
                         f"| {_fmt(r['AhA_2d_ms'], 2)} | {_fmt(r['fft_pair_ms'], 2)} | {ratio} | "
                         f"{_fmt(r['cg_iter_ms'], 2)} | {_fmt(r.get('espirit_s'), 2)} | {_fmt(r['dds_s'], 2)} | "
                         f"{_fmt(r['peak_mb'], 0)} |")
        lines.append("")
    if ct:
        lines += [f"**Parallel-beam CT**, {CT_VIEWS} views (Joseph's projector as CSR with its stored transpose):", "",
                  "| size | prior | build s | build MB | non-zeros | A ms | AᵀA ms | CG iter ms | DDS s | peak MB |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for s, r in sorted(ct, key=lambda sr: (sr[0]["model"], sr[0]["size"])):
            lines.append(f"| {s['size']}² | {s['model']} | {_fmt(r['build_s'], 2)} | {_fmt(r['build_mb'], 0)} | "
                         f"{r['nnz'] / 1e6:.1f} M | {_fmt(r['A_ms'], 2)} | {_fmt(r['AhA_ms'], 2)} | "
                         f"{_fmt(r['cg_iter_ms'], 2)} | {_fmt(r['dds_s'], 2)} | {_fmt(r['peak_mb'], 0)} |")
        lines.append("")
    for s, r in esp:
        lines += [f"**ESPIRiT** at {s['size']}² × {s['coils']} coils from the ACS of a x4 mask (k-space noise "
                  f"{s['noise']}): {r['espirit_s']:.1f} s, map error {100 * r['map_error']:.1f} % on the object "
                  f"(phase-aligned). PSNR with the true / estimated maps: CG-SENSE (15 iterations) "
                  f"{r['cg_psnr_true']:.2f} / {r['cg_psnr_espirit']:.2f} dB, DDS {r['dds_psnr_true']:.2f} / "
                  f"{r['dds_psnr_espirit']:.2f} dB (ESPIRiT crops its maps to the object, a support constraint the "
                  "everywhere-smooth true maps lack).", ""]
    if files:
        lines += ["**`lml-reconstruct` end to end** on fastMRI-layout files (phantoms with smooth phase, 15 simulated "
                  "coils, k-space noise 0.005, retrospective x4 `uniform1d`), `--model gaussian --nfe 20`: ESPIRiT, "
                  "DDS, HDF5, PNGs and metrics, one process on one thread (CPU s: the whole command, imports "
                  "included; peak MB: its resident high-water mark, interpreter included):", "",
                  "| slices | size | CPU s | wall s | peak MB | PSNR dB | zero-filled RSS PSNR dB | SSIM | "
                  "zero-filled RSS SSIM |", "|---|---|---|---|---|---|---|---|---|"]
        for s, r in sorted(files, key=lambda sr: sr[0]["slices"]):
            lines.append(f"| {s['slices']} | {s['size']}² × {s['coils']} | {r['cpu_s']:.1f} | {r['wall_s']:.1f} | "
                         f"{r['peak_mb']:.0f} | {_fmt(r['psnr'], 2)} | "
                         f"{_fmt(r['baseline_psnr'], 2)} | {_fmt(r['ssim'], 3)} | {_fmt(r['baseline_ssim'], 3)} |")
        lines.append("")
        if any(r["ssim"] is not None and r["ssim"] < r["baseline_ssim"] for _, r in files):
            lines += ["The Gaussian prior gains PSNR over the zero-filled RSS but loses SSIM: a posterior sample of a "
                      "stationary Gaussian carries a noise texture that SSIM penalises more than PSNR "
                      "(`docs/data.md §3`); a trained model of the anatomy is what improves both.", ""]
    if plot:
        lines += [f"![time per slice vs image size]({plot})", ""]
    return "\n".join(lines)


def make_plot(results: list[tuple[dict, dict]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lml_sampler._io import atomic_open

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, kind, title in ((axes[0], "mri", "MRI, 15 coils"), (axes[1], "ct", f"CT, {CT_VIEWS} views")):
        rows = sorted([(s["size"], r) for s, r in results if s["kind"] == kind and s["model"] == "gaussian"
                       and s.get("coils", 15) == 15], key=lambda t: t[0])
        if not rows:
            continue
        n = [s for s, _ in rows]
        series = [("A", "A_ms", 1e-3), ("AᴴA", "AhA_ms", 1e-3), ("CG iteration", "cg_iter_ms", 1e-3),
                  (f"DDS {NFE} steps", "dds_s", 1.0)]
        if kind == "mri":
            series.insert(2, ("bare FFT pair", "fft_pair_ms", 1e-3))
            series.append(("ESPIRiT", "espirit_s", 1.0))
        for label, key, scale in series:
            ax.loglog(n, [r[key] * scale for _, r in rows], "o-", label=label)
        ax.set_xlabel("image side (pixels)")
        ax.set_ylabel("CPU seconds per slice (1 thread)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(path) as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/recon_scaling")
    p.add_argument("--quick", action="store_true", help="small sizes only (smoke run)")
    p.add_argument("--readme", action="store_true", help="regenerate the README section 'recon-scaling'")
    p.add_argument("--kinds", default=",".join(CELL_KINDS), help="comma-separated cell kinds to run (default all)")
    p.add_argument("--jobs", type=int, default=1, help="cells measured at once, each in its own process on one thread")
    p.add_argument("--finished-only", action="store_true",
                   help="measure nothing: render the cells already in the store (while a run is going)")
    p.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell in this process, print its JSON
    args = p.parse_args(argv)
    if args.cell:
        import torch

        torch.set_num_threads(1)
        spec = json.loads(args.cell)
        print(json.dumps(CELL_KINDS[spec["kind"]](spec)))
        return 0
    from tqdm.auto import tqdm

    from lml_sampler._io import CellStore

    kinds = set(args.kinds.split(","))
    if not kinds <= set(CELL_KINDS) or args.jobs < 1:
        p.error(f"--kinds must be a subset of {','.join(CELL_KINDS)} and --jobs >= 1")
    store = CellStore(Path(args.out) / ("quick" if args.quick else "full"))
    specs = [s for s in cells(args.quick) if s["kind"] in kinds]
    if args.finished_only:
        specs = [s for s in specs if (store.root / cell_key(s) / "result.json").is_file()]
    with ThreadPoolExecutor(args.jobs) as pool:  # threads only wait: every cell is its own process
        done = pool.map(lambda s: store.ensure(cell_key(s), s, lambda: _run_cell_process(s)), specs)
        results = list(zip(specs, tqdm(done, total=len(specs), desc="recon scaling", unit="cell")))
    plot = make_plot(results, Path(args.out) / "recon_scaling.png")
    md = to_markdown(results, None)
    print(md)
    if args.readme:
        from .readme import publish_image, update_readme_section

        update_readme_section("recon-scaling", to_markdown(results, publish_image(plot, "recon_scaling.png")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
