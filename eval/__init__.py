"""Evaluation of diffusers samplers (``lml_sampler.eval``): FID, KID, precision/recall and CLIP score with their
standard errors, on Inception or domain features; exact metrics for analytic models; resumable sharded
model × sampler × NFE (× guidance) sweeps and their reports. CLI: ``lml-eval``."""

from lml_sampler.schedulers.registry import make_scheduler, parse_sampler, sampler_names

from .distributed import DistInfo, dist_info
from .exact import (
    gaussian_frechet_distance,
    linear_sampler_distance,
    mixture_moments,
    monte_carlo_floor,
    transfer_matrix,
)
from .extractors import (
    DomainFeatures,
    InceptionV3Features,
    RandomConvFeatures,
    extract_features,
    find_inception_weights,
    load_feature_extractor,
)
from .features import features_path, load_features, save_features
from .fid import (
    FeatureStatistics,
    FrechetReference,
    Statistics,
    compute_statistics,
    fid_from_features,
    fid_jackknife,
    frechet_distance,
    load_statistics,
    quantize_uint8,
    resize_bilinear_tf1,
    save_statistics,
    torchmetrics_fid,
)
from .generate import ModelSampler, PipelineSampler
from .kid import KIDReference, KIDResult, kernel_inception_distance
from .precision_recall import PrecisionRecall, knn_radii, precision_recall
from .uncertainty import jackknife_groups, jackknife_se
from .seeding import initial_noise, sample_generators, sample_seed
from .shards import run_shards

__all__ = [
    "DistInfo", "DomainFeatures", "FeatureStatistics", "FrechetReference", "InceptionV3Features", "KIDReference",
    "KIDResult", "ModelSampler", "PipelineSampler", "PrecisionRecall", "RandomConvFeatures", "Statistics",
    "compute_statistics", "dist_info", "extract_features", "features_path", "fid_from_features",
    "fid_against_statistics", "fid_jackknife", "find_inception_weights", "frechet_distance",
    "gaussian_frechet_distance", "initial_noise", "jackknife_groups", "jackknife_se", "kernel_inception_distance",
    "knn_radii", "linear_sampler_distance", "load_feature_extractor", "load_features", "load_statistics",
    "make_scheduler", "mixture_moments", "monte_carlo_floor", "parse_sampler", "precision_recall", "quantize_uint8",
    "resize_bilinear_tf1", "run_shards", "sample_generators", "sample_seed", "sampler_names", "save_features",
    "save_statistics", "torchmetrics_fid", "transfer_matrix",
]


def fid_against_statistics(images, reference, extractor, batch_size: int = 256) -> float:
    """FID of uint8 images ``(N, C, H, W)`` against reference statistics (``Statistics`` or ``.npz`` path)."""
    return fid_from_features(extract_features(extractor, images, batch_size), reference)
