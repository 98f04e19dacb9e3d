"""Exact-score ("analytic") denoisers with the calling convention of diffusers' ``UNet2DModel``.

They replace a trained network by the exact minimum-mean-square-error denoiser of a known data distribution, so
that a sampler's error can be measured in isolation from any network error. All arithmetic is float64; outputs come
back in the input's dtype.

* ``schedule.py``: ``NoiseSchedule``, the noise schedule (ᾱ_t, VP or flow matching) and prediction type.
* ``base.py``: ``AnalyticDenoiser``, the ``UNet2DModel`` calling convention and the conversion of the posterior mean
  x̂0 to the ε / x0 / v / flow outputs (``prediction_from_x0``).
* ``gaussian.py``: ``GaussianDenoiser``, N(μ, Σ) with Σ diagonal, diagonal-plus-low-rank, or stationary (diagonal in
  the unitary 2-D DFT basis); ``GaussianDenoiser.stationary()`` is the stationary benchmark of
  ``docs/exact-score-benchmark.md §1``.
* ``gmm.py``: ``GMMDenoiser``, a mixture of Gaussians with isotropic or diagonal covariances.
* ``guidance.py``: ``GuidedMixtureDenoiser``, exact classifier-free guidance on a class-conditional ``GMMDenoiser``.
* ``empirical.py``: ``EmpiricalDenoiser``, the empirical distribution of a finite image set;
  ``EmpiricalDenoiser.digits()`` uses ``digits_dataset()`` (sklearn's bundled 8×8 digits, upsampled; re-exported from
  ``lml_sampler.data.digits``), the preprocessing shared with the bundled models and the domain FID.
"""

from ...data.digits import digits_dataset
from .base import AnalyticDenoiser, prediction_from_x0
from .empirical import EmpiricalDenoiser
from .gaussian import GaussianDenoiser, stationary_spectrum
from .gmm import GMMDenoiser
from .guidance import GuidedMixtureDenoiser
from .schedule import NoiseSchedule, interpolate_alphas_cumprod

__all__ = [
    "AnalyticDenoiser",
    "GaussianDenoiser",
    "GMMDenoiser",
    "GuidedMixtureDenoiser",
    "EmpiricalDenoiser",
    "NoiseSchedule",
    "digits_dataset",
    "interpolate_alphas_cumprod",
    "prediction_from_x0",
    "stationary_spectrum",
]
