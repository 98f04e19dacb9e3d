"""``lml-eval``: FID-vs-NFE sweeps (FID, KID, precision/recall, CLIP score, each with its standard error),
reference statistics and the metrics of folders, following pytorch-fid / clean-fid conventions.

    lml-eval sweep --out runs/sweep                     # the README's main job (defaults: a few minutes on 2 CPUs)
    lml-eval sweep --out runs/sweep --metrics fid,kid,pr
    lml-eval sweep --models PIPE --prompts p.txt --guidance-scale 1,3,5,7.5 --metrics fid,kid,clip \\
        --clip-model CLIP_FOLDER --ref-stats runs/ref.npz --out runs/t2i   # FID–CLIP trade-off per sampler and NFE
    lml-eval stats digits:test --out runs/ref.npz --extractor digits-features --features   # + .features.npz
    lml-eval stats path/to/images --out runs/ref.npz     # Inception (needs the [inception] extra + weights)
    lml-eval fid path/to/samples runs/ref.npz            # folder (or .npz statistics / features) vs statistics
    lml-eval kid path/to/samples runs/ref.features.npz   # KID: folders or features .npz
    lml-eval pr path/to/samples runs/ref.features.npz --k 3   # precision, recall, density, coverage
    accelerate launch --multi_gpu --num_processes 2 -m lml_sampler.eval.cli sweep --out runs/sweep   # sharded (GPUs or CPU)
    torchrun --nproc_per_node 2 -m lml_sampler.eval.cli sweep --out runs/sweep                      # the same with torchrun
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import NamedTuple, NoReturn

import numpy as np
import torch

from lml_sampler._io import check_output_file, check_output_folder
from lml_sampler._optional import MissingExtra
from lml_sampler.schedulers.registry import parse_sampler, sampler_names

from .extractors import extract_features, load_feature_extractor
from .features import check_same_dim, features_path, load_features, save_features
from .fid import (Statistics, compute_statistics, fid_jackknife, frechet_distance, load_statistics, quantize_uint8,
                  save_statistics)

#: Exceptions that mean "the input is wrong" (the message says what to change): one line on stderr, exit status 2.
#: MissingExtra: an optional dependency (torch-fidelity for Inception FID) is absent or broken; the message says how
#: to get a working one.
USER_ERRORS = (ValueError, FileNotFoundError, MissingExtra)


def user_error(message: str) -> NoReturn:
    """Print ``lml-eval: error: <message>`` as one line on stderr and exit with status 2 (argparse's convention)."""
    text = " ".join(str(message).split())
    print(f"lml-eval: error: {text}", file=sys.stderr)
    raise SystemExit(2)


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


class Source(NamedTuple):
    """One side of a comparison: statistics always, raw features when the source has them, and metadata."""

    stats: Statistics
    features: np.ndarray | None
    meta: dict


def load_source(source: str, args, need_features: bool = False) -> Source:
    """A folder / ``digits:<split>`` / ``.npy`` of images (featurised with ``--extractor``), a statistics ``.npz``
    (``mu``, ``sigma``; its ``.features.npz`` companion is used when features are needed) or a features ``.npz``."""
    path = Path(source)
    if path.suffix == ".npz" and path.is_file():
        with np.load(path) as data:
            keys = set(data.keys())
        if "features" in keys:
            feats, meta = load_features(path, with_metadata=True)
            return Source(compute_statistics(feats), feats, meta)
        if "mu" in keys:
            stats, meta = load_statistics(path, with_metadata=True)
            feats = None
            if need_features:
                feats, fmeta = load_features(features_path(path), with_metadata=True)
                meta = {**fmeta, **meta}
            return Source(stats, feats, meta)
    images = load_images(source)
    ext = load_feature_extractor(args.extractor, args.inception_weights, in_channels=images.shape[1])
    feats = extract_features(ext, images, args.batch_size).numpy()
    return Source(compute_statistics(feats), feats, {"extractor": args.extractor})


def _load_pair(args, need_features: bool) -> tuple[Source, Source]:
    a = load_source(args.source, args, need_features)
    b = load_source(args.reference, args, need_features)
    ea, eb = a.meta.get("extractor"), b.meta.get("extractor")
    if ea and eb and ea != eb:
        raise ValueError(f"{args.source} and {args.reference} use different extractors ({ea!r} vs {eb!r}): they are "
                         "not comparable; compute both with the same --extractor")
    check_same_dim(len(a.stats.mu), len(b.stats.mu), f"{args.source} and {args.reference}")
    return a, b


def _parse_list(text: str, cast=str) -> tuple:
    return tuple(cast(x) for x in text.split(",") if x.strip())


def cmd_sweep(args) -> int:
    from .metrics import MetricSettings, parse_metrics
    from .sweep import SweepConfig, run_sweep

    check_output_folder(args.out)
    for flag, path in (("--prompts", args.prompts), ("--ref-stats", args.ref_stats)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path} does not exist")
    for spec in args.samplers:
        parse_sampler(spec)
    metrics = parse_metrics(args.metrics) if args.metrics is not None else None
    models = list(args.models)
    if args.skip_missing:
        from lml_sampler.models.bundled import available_models

        have = available_models()["pipelines"]
        missing = [m for m in models if m in ("digits",) and m not in have]
        if missing:
            print(f"skipping models without bundled weights: {missing}", file=sys.stderr)
            models = [m for m in models if m not in missing]
    settings = MetricSettings(se_groups=args.se_groups, kid_subsets=args.kid_subsets,
                              kid_subset_size=args.kid_subset_size, pr_k=args.pr_k, seed=args.seed)
    cfg = SweepConfig(out=args.out, models=tuple(models), samplers=args.samplers, nfe=args.nfe, seed=args.seed,
                      num_samples=args.num_samples, batch_size=args.batch_size, shard_size=args.shard_size,
                      lamb=args.lamb, kappa=args.kappa, freeze=args.freeze, lm_formula=args.lm_formula,
                      extractor=args.extractor, inception_weights=args.inception_weights, ref_stats=args.ref_stats,
                      prompts=args.prompts, guidance_scale=args.guidance_scale, metrics=metrics,
                      metric_settings=settings, clip_model=args.clip_model, keep_images=args.keep_images,
                      device=args.device, progress=not args.no_progress, grid_samples=args.grid_samples)
    run_sweep(cfg)
    from .distributed import dist_info

    if dist_info(cpu=str(args.device) == "cpu").is_main:
        print((Path(args.out) / "results.md").read_text())
    return 0


def cmd_stats(args) -> int:
    out = check_output_file(args.out, suffix=".npz")
    if args.features:
        check_output_file(features_path(out), flag="--features")
    src = load_source(args.source, args)
    extractor = src.meta.get("extractor", args.extractor)
    path = save_statistics(out, src.stats, extractor=extractor, source=args.source)
    print(f"wrote {path}: n={src.stats.n}, d={len(src.stats.mu)}, extractor={extractor}")
    if args.features:
        if src.features is None:
            raise ValueError(f"{args.source} holds statistics only; --features needs images or a features .npz")
        fpath = save_features(features_path(out), src.features, extractor=extractor, source=args.source)
        print(f"wrote {fpath}: raw features for KID and precision/recall")
    return 0


def cmd_fid(args) -> int:
    a, b = _load_pair(args, need_features=False)
    value = frechet_distance(a.stats, b.stats)
    if a.features is not None and a.features.shape[0] >= 3:
        se, values = fid_jackknife(a.features, b.stats, args.se_groups)
        print(f"FID: {value:.6f} ± {se:.6f} (standard error: jackknife over {len(values)} groups of the source)")
    else:
        print(f"FID: {value:.6f}")
    return 0


def cmd_kid(args) -> int:
    from .kid import kernel_inception_distance

    a, b = _load_pair(args, need_features=True)
    res = kernel_inception_distance(a.features, b.features, subsets=args.subsets, subset_size=args.subset_size,
                                    degree=args.degree, seed=args.seed, groups=args.se_groups)
    print(f"KID: {res.mean:.6g} (std over {res.subsets} subsets of {res.subset_size}: {res.std:.3g}; "
          f"standard error: {res.se:.3g}; unbiased MMD² of all samples: {res.full:.6g})")
    return 0


def cmd_pr(args) -> int:
    from .precision_recall import precision_recall

    a, b = _load_pair(args, need_features=True)
    res = precision_recall(a.features, b.features, args.k)
    print(f"precision: {res.precision:.4f}  recall: {res.recall:.4f}  density: {res.density:.4f}  "
          f"coverage: {res.coverage:.4f}  (k = {res.k}; {res.num_generated} generated, {res.num_reference} reference)")
    return 0


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = _parse_list(text, float)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected a comma list of finite numbers, got {text!r}")
    return values


def int_arg(minimum: int):
    """argparse type: an int >= ``minimum``, refused while parsing (before any work)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"int >= {minimum}"
    return parse


def int_list_arg(minimum: int):
    """argparse type: a non-empty comma list of ints >= ``minimum`` (e.g. ``--nfe 5,10,20``)."""
    one = int_arg(minimum)

    def parse(text: str) -> tuple[int, ...]:
        values = tuple(one(x.strip()) for x in text.split(",") if x.strip())
        if not values:
            raise argparse.ArgumentTypeError(f"expected a comma list of ints >= {minimum}, got {text!r}")
        return values

    parse.__name__ = f"comma list of ints >= {minimum}"
    return parse


def float_arg(minimum: float | None = None, maximum: float | None = None, positive: bool = False):
    """argparse type: a finite float, optionally ``> 0`` or within ``[minimum, maximum]``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
        if positive and not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {value:g}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = f"[{minimum if minimum is not None else '-inf'}, {maximum if maximum is not None else 'inf'}]"
            raise argparse.ArgumentTypeError(f"must be in {bounds}, got {value:g}")
        return value

    parse.__name__ = "number"
    return parse


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr and exit status 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        user_error(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    from .models import BUILTIN_MODELS
    from .sweep import DEFAULT_MODELS, DEFAULT_NFE, DEFAULT_SAMPLERS

    p = OneLineParser(prog="lml-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def extractor_args(q, default):
        q.add_argument("--extractor", default=default,
                       help="feature extractor: inception (standard FID), digits-features, random-conv (stand-in)")
        q.add_argument("--inception-weights", default=None,
                       help="path of weights-inception-2015-12-05-6726825d.pth (else the torch-fidelity cache)")
        q.add_argument("--batch-size", type=int_arg(1), default=250)

    s = sub.add_parser("sweep", help="model × sampler × NFE grid → results.csv/.json/.md, fid_vs_nfe.png, grids/")
    s.add_argument("--out", required=True, help="output folder (re-running resumes)")
    s.add_argument("--models", type=_parse_list, default=DEFAULT_MODELS,
                   help=f"comma list from {', '.join(BUILTIN_MODELS)} (the *-flow models take the flow-* samplers), "
                        f"or pipeline folders / Hub ids (default: {','.join(DEFAULT_MODELS)})")
    s.add_argument("--samplers", type=_parse_list, default=DEFAULT_SAMPLERS,
                   help=f"comma list from {', '.join(sampler_names())}, each optionally with a discretisation "
                        "suffix (-karras, -lu, -exp, -beta, -trailing, ...) and settings, e.g. "
                        f"lml-dpm++2m-karras@kappa=1e-3:lm_gamma=0.3 (default: {','.join(DEFAULT_SAMPLERS)})")
    s.add_argument("--nfe", type=int_list_arg(1), default=DEFAULT_NFE,
                   help="comma list of model evaluations per sample, each >= 1 (default 5,10,20)")
    s.add_argument("--seed", type=int_arg(0), default=0, help="seed set: sample i uses the seed hash(seed, i)")
    s.add_argument("--num-samples", type=int_arg(2), default=None,
                   help="samples per cell (default: 500 domain FID, 2000 exact, 10000 Inception)")
    s.add_argument("--shard-size", type=int_arg(1), default=250, help="samples per shard file (the unit of resumption)")
    s.add_argument("--lamb", type=float_arg(positive=True), default=1.0, help="LML damping λ of all lml-* samplers (default 1.0)")
    s.add_argument("--kappa", type=float_arg(minimum=0.0), default=1e-3,
                   help="LML EMA weight κ (default 1e-3: γ = κ‖v‖²/λ ≈ 0.26 on 16×16 images; κ = 0 is the identity)")
    s.add_argument("--freeze", type=float_arg(0.0, 1.0), default=None, help="LML freeze fraction in [0, 1]")
    s.add_argument("--lm-formula", choices=("stable", "official"), default=None)
    s.add_argument("--ref-stats", default=None, help="reference .npz for pipeline folders / Hub ids")
    s.add_argument("--prompts", default=None, help="text file, one prompt per line (text-to-image pipelines)")
    s.add_argument("--guidance-scale", type=_floats, default=None,
                   help="comma list, e.g. 1,3,5,7.5: text-to-image cells are swept over it (FID–CLIP plot)")
    s.add_argument("--metrics", default=None,
                   help="comma list from fid, kid, pr, clip (default fid,kid; KID only where the reference has raw "
                        "features); adding one to a finished sweep computes only that one from the stored features")
    s.add_argument("--kid-subsets", type=int_arg(1), default=100, help="KID subsets (standard protocol: 100)")
    s.add_argument("--kid-subset-size", type=int_arg(2), default=None,
                   help="KID subset size (default: 1000, capped by the sample counts)")
    s.add_argument("--pr-k", type=int_arg(1), default=3, help="k of the k-NN manifolds of precision/recall (default 3)")
    s.add_argument("--se-groups", type=int_arg(2), default=20, help="jackknife groups of the standard errors (default 20)")
    s.add_argument("--clip-model", default=None,
                   help="CLIP folder (CLIPModel + CLIPProcessor) or cached Hub id, for --metrics ...,clip")
    s.add_argument("--keep-images", action="store_true",
                   help="store every sample's uint8 image in the shards (lets a later --metrics ...,clip embed them)")
    s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    s.add_argument("--grid-samples", type=int_arg(0), default=8, help="images per row of the per-sampler grids (0: none)")
    s.add_argument("--skip-missing", action="store_true", help="skip bundled models whose weights are absent")
    s.add_argument("--no-progress", action="store_true")
    extractor_args(s, None)
    s.set_defaults(func=cmd_sweep)

    t = sub.add_parser("stats", help="statistics (mu, sigma, n) of a folder / digits:<split> / .npy → .npz")
    t.add_argument("source")
    t.add_argument("--out", required=True)
    t.add_argument("--features", action="store_true",
                   help="also write OUT.features.npz (raw features: KID and precision/recall need them)")
    extractor_args(t, "inception")
    t.set_defaults(func=cmd_stats)

    def comparison(name: str, func, help: str, needs_features: bool):
        """A subcommand comparing SOURCE with REFERENCE (images, statistics or features)."""
        sources = "SOURCE and REFERENCE: image folders, digits:<split>, .npy images, or .npz statistics / features"
        q = sub.add_parser(name, help=help, description=sources + (" (statistics files need their .features.npz)"
                                                                    if needs_features else ""))
        q.add_argument("source")
        q.add_argument("reference")
        extractor_args(q, "inception")
        q.set_defaults(func=func)
        return q

    f = comparison("fid", cmd_fid, "FID of SOURCE against REFERENCE (± jackknife SE when SOURCE has features)", False)
    f.add_argument("--se-groups", type=int_arg(2), default=20, help="jackknife groups of the standard error")
    k = comparison("kid", cmd_kid, "KID of SOURCE against REFERENCE (subset mean, std, standard error)", True)
    k.add_argument("--subsets", type=int_arg(1), default=100)
    k.add_argument("--subset-size", type=int_arg(2), default=None, help="default 1000, capped by the sample counts")
    k.add_argument("--degree", type=int_arg(1), default=3, help="polynomial kernel degree")
    k.add_argument("--seed", type=int_arg(0), default=0, help="seed of the random subsets")
    k.add_argument("--se-groups", type=int_arg(2), default=20, help="jackknife groups of the standard error")
    r = comparison("pr", cmd_pr, "precision, recall, density, coverage of SOURCE against REFERENCE", True)
    r.add_argument("--k", type=int_arg(1), default=3, help="k of the k-NN manifolds (default 3)")
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # TF32 convolutions make GPU features depend on the batch size (docs/fid.md §3): reference-quality FID without them
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        user_error(str(exc))


if __name__ == "__main__":
    sys.exit(main())
