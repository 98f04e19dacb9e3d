"""``lml-eval``: FID-vs-NFE sweeps, reference statistics and FID, following pytorch-fid / clean-fid conventions.

    lml-eval sweep --out runs/sweep                     # the README's main job (defaults: a few minutes on 2 CPUs)
    lml-eval stats digits:test --out ref.npz --extractor digits-features
    lml-eval stats path/to/images --out ref.npz          # Inception (needs the [inception] extra + weights)
    lml-eval fid path/to/samples ref.npz                 # folder (or .npz statistics) vs statistics
    accelerate launch --multi_gpu --num_processes 2 -m lml_sampler.eval.cli sweep --out runs/sweep   # sharded (GPUs or CPU)
    torchrun --nproc_per_node 2 -m lml_sampler.eval.cli sweep --out runs/sweep                      # the same with torchrun
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

from .extractors import extract_features, load_feature_extractor
from .fid import compute_statistics, frechet_distance, load_statistics, quantize_uint8, save_statistics
from lml_sampler.schedulers.registry import parse_sampler, sampler_names

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def load_images(source: str) -> torch.Tensor:
    """uint8 images ``(N, C, H, W)`` from a folder of image files, ``digits:<split>`` (the bundled digits at 16×16),
    or a ``.npy``/``.npz`` array (key ``images``) of uint8 NCHW images."""
    if source.startswith("digits:"):
        from lml_sampler.data.digits import digits_dataset

        return quantize_uint8(digits_dataset(16, source.split(":", 1)[1]))
    path = Path(source)
    if path.suffix in (".npy", ".npz") and path.is_file():
        arr = np.load(path)
        arr = arr["images"] if isinstance(arr, np.lib.npyio.NpzFile) else arr
        t = torch.as_tensor(np.asarray(arr))
        if t.dtype != torch.uint8 or t.ndim != 4:
            raise ValueError(f"{path}: expected uint8 (N, C, H, W) images, got {t.dtype} {tuple(t.shape)}")
        return t
    if not path.is_dir():
        raise FileNotFoundError(f"{source!r} is neither a folder of images, digits:<split>, nor a .npy/.npz file")
    from PIL import Image

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {path}")
    arrays = []
    for f in files:
        with Image.open(f) as im:
            a = np.asarray(im.convert("L") if im.mode in ("L", "I", "I;16", "1", "P") and im.mode != "P" else
                           im.convert("RGB"))
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images under {path} have different shapes {sorted(shapes)[:4]}; resize them first")
    return torch.from_numpy(np.stack(arrays)).contiguous()


def _source_stats(source: str, args) -> tuple:
    if source.endswith(".npz") and Path(source).is_file():
        with np.load(source) as data:
            if "mu" in data:
                return load_statistics(source, with_metadata=True)
    images = load_images(source)
    ext = load_feature_extractor(args.extractor, args.inception_weights, in_channels=images.shape[1])
    feats = extract_features(ext, images, args.batch_size)
    return compute_statistics(feats), {"extractor": args.extractor}


def _parse_list(text: str, cast=str) -> tuple:
    return tuple(cast(x) for x in text.split(",") if x.strip())


def cmd_sweep(args) -> int:
    from .sweep import SweepConfig, run_sweep

    for spec in args.samplers:
        try:
            parse_sampler(spec)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
    models = list(args.models)
    if args.skip_missing:
        from lml_sampler.models.bundled import available_models

        have = available_models()["pipelines"]
        missing = [m for m in models if m in ("digits",) and m not in have]
        if missing:
            print(f"skipping models without bundled weights: {missing}", file=sys.stderr)
            models = [m for m in models if m not in missing]
    cfg = SweepConfig(out=args.out, models=tuple(models), samplers=args.samplers, nfe=args.nfe, seed=args.seed,
                      num_samples=args.num_samples, batch_size=args.batch_size, shard_size=args.shard_size,
                      lamb=args.lamb, kappa=args.kappa, freeze=args.freeze, lm_formula=args.lm_formula,
                      extractor=args.extractor, inception_weights=args.inception_weights, ref_stats=args.ref_stats,
                      prompts=args.prompts, guidance_scale=args.guidance_scale, device=args.device,
                      progress=not args.no_progress, grid_samples=args.grid_samples)
    run_sweep(cfg)
    from .distributed import dist_info

    if dist_info(cpu=str(args.device) == "cpu").is_main:
        print((Path(args.out) / "results.md").read_text())
    return 0


def cmd_stats(args) -> int:
    stats, meta = _source_stats(args.source, args)
    path = save_statistics(args.out, stats, extractor=meta.get("extractor", args.extractor), source=args.source)
    print(f"wrote {path}: n={stats.n}, d={len(stats.mu)}, extractor={args.extractor}")
    return 0


def cmd_fid(args) -> int:
    (a, meta_a), (b, meta_b) = _source_stats(args.source, args), _source_stats(args.reference, args)
    ea, eb = meta_a.get("extractor"), meta_b.get("extractor")
    if ea and eb and ea != eb:
        raise SystemExit(f"statistics use different extractors ({ea!r} vs {eb!r}): they are not comparable")
    print(f"FID: {frechet_distance(a, b):.6f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .sweep import DEFAULT_MODELS, DEFAULT_NFE, DEFAULT_SAMPLERS

    p = argparse.ArgumentParser(prog="lml-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def extractor_args(q, default):
        q.add_argument("--extractor", default=default,
                       help="feature extractor: inception (standard FID), digits-features, random-conv (stand-in)")
        q.add_argument("--inception-weights", default=None,
                       help="path of weights-inception-2015-12-05-6726825d.pth (else the torch-fidelity cache)")
        q.add_argument("--batch-size", type=int, default=250)

    s = sub.add_parser("sweep", help="model × sampler × NFE grid → results.csv/.json/.md, fid_vs_nfe.png, grids/")
    s.add_argument("--out", required=True, help="output folder (re-running resumes)")
    s.add_argument("--models", type=_parse_list, default=DEFAULT_MODELS,
                   help="comma list: digits, gmm, gaussian, or pipeline folders / Hub ids (default: digits,gmm)")
    s.add_argument("--samplers", type=_parse_list, default=DEFAULT_SAMPLERS,
                   help=f"comma list from {', '.join(sampler_names())}, each optionally with a discretisation "
                        "suffix (-karras, -lu, -exp, -beta, -trailing, ...) and settings, e.g. "
                        f"lml-dpm++2m-karras@kappa=1e-3:lm_gamma=0.3 (default: {','.join(DEFAULT_SAMPLERS)})")
    s.add_argument("--nfe", type=lambda t: _parse_list(t, int), default=DEFAULT_NFE, help="comma list (default 5,10,20)")
    s.add_argument("--seed", type=int, default=0, help="seed set: sample i uses the seed hash(seed, i)")
    s.add_argument("--num-samples", type=int, default=None,
                   help="samples per cell (default: 500 domain FID, 2000 exact, 10000 Inception)")
    s.add_argument("--shard-size", type=int, default=250, help="samples per shard file (the unit of resumption)")
    s.add_argument("--lamb", type=float, default=1.0, help="LML damping λ of all lml-* samplers (default 1.0)")
    s.add_argument("--kappa", type=float, default=1e-3,
                   help="LML EMA weight κ (default 1e-3: γ = κ‖v‖²/λ ≈ 0.26 on 16×16 images; κ = 0 is the identity)")
    s.add_argument("--freeze", type=float, default=None, help="LML freeze fraction")
    s.add_argument("--lm-formula", choices=("stable", "official"), default=None)
    s.add_argument("--ref-stats", default=None, help="reference .npz for pipeline folders / Hub ids")
    s.add_argument("--prompts", default=None, help="text file, one prompt per line (text-to-image pipelines)")
    s.add_argument("--guidance-scale", type=float, default=None)
    s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    s.add_argument("--grid-samples", type=int, default=8, help="images per row of the per-sampler grids (0: none)")
    s.add_argument("--skip-missing", action="store_true", help="skip bundled models whose weights are absent")
    s.add_argument("--no-progress", action="store_true")
    extractor_args(s, None)
    s.set_defaults(func=cmd_sweep)

    t = sub.add_parser("stats", help="statistics (mu, sigma, n) of a folder / digits:<split> / .npy → .npz")
    t.add_argument("source")
    t.add_argument("--out", required=True)
    extractor_args(t, "inception")
    t.set_defaults(func=cmd_stats)

    f = sub.add_parser("fid", help="FID of SOURCE (folder or .npz stats) against REFERENCE (.npz stats or folder)")
    f.add_argument("source")
    f.add_argument("reference")
    extractor_args(f, "inception")
    f.set_defaults(func=cmd_fid)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # TF32 convolutions make GPU features depend on the batch size (docs/fid.md §3): reference-quality FID without them
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
