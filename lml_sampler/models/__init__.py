"""Reference models: exact-score analytic denoisers and the bundled trained models."""

from .analytic import AnalyticDenoiser, EmpiricalDenoiser, GaussianDenoiser, GMMDenoiser
from .bundled import available_models, load_classifier, load_pipeline

__all__ = [
    "AnalyticDenoiser",
    "EmpiricalDenoiser",
    "GMMDenoiser",
    "GaussianDenoiser",
    "available_models",
    "load_classifier",
    "load_pipeline",
]
