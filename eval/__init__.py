"""Evaluation of diffusers samplers: FID (Inception or domain features), exact metrics for analytic models,
resumable / sharded model × sampler × NFE sweeps and their reports. CLI: ``lml-eval``."""

from .exact import (
    gaussian_frechet_distance,
    linear_sampler_distance,
    mixture_moments,
    monte_carlo_floor,
    sample_loop,
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
from .fid import (
    FeatureStatistics,
    Statistics,
    compute_statistics,
    fid_from_features,
    frechet_distance,
    load_statistics,
    quantize_uint8,
    resize_bilinear_tf1,
    save_statistics,
    torchmetrics_fid,
)
from .generate import ModelSampler, PipelineSampler, initial_noise, run_shards, sample_generators, sample_seed
from .samplers import SAMPLERS, make_scheduler

__all__ = [
    "DomainFeatures", "FeatureStatistics", "InceptionV3Features", "ModelSampler", "PipelineSampler",
    "RandomConvFeatures", "SAMPLERS", "Statistics", "compute_statistics", "extract_features", "fid_from_features",
    "fid_against_statistics", "find_inception_weights", "frechet_distance", "gaussian_frechet_distance",
    "initial_noise", "linear_sampler_distance", "load_feature_extractor", "load_statistics", "make_scheduler",
    "mixture_moments", "monte_carlo_floor", "quantize_uint8", "resize_bilinear_tf1", "run_shards",
    "sample_generators", "sample_loop", "sample_seed", "save_statistics", "torchmetrics_fid", "transfer_matrix",
]


def fid_against_statistics(images, reference, extractor, batch_size: int = 256) -> float:
    """FID of uint8 images ``(N, C, H, W)`` against reference statistics (``Statistics`` or ``.npz`` path)."""
    return fid_from_features(extract_features(extractor, images, batch_size), reference)
