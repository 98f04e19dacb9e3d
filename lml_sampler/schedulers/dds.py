"""DDS: Decomposed Diffusion Sampler (Chung, Lee, Ye, ICLR 2024) as a ``DDIMScheduler`` subclass.

Each ``step`` (docs/dds.md §1, §3, §4):

1. the parent ``DDIMScheduler.step`` computes Tweedie's ``x̂0`` (its ``pred_original_sample``) and the DDIM update
   ``x_prev = √ᾱ_prev·x̂0 + √(1−ᾱ_prev−σ_t²)·ε̂ + σ_t·z`` with the *pre*-DC noise estimate ``ε̂``; ``x̂0`` is clipped
   as the config says, or as ``clip_denoised`` of the measurement overrides it (an affine correction as well);
2. data consistency: ``M = cg_iters`` conjugate-gradient iterations started at ``x̂0`` on

   * proximal, constant weight (``gamma=``): ``(I + γAᴴA) x = x̂0 + γAᴴy``  (argmin γ/2‖y−Ax‖² + ½‖x−x̂0‖²),
   * noise-aware (``noise_std=σ > 0``, docs/dds.md §4): the same system with the step-dependent weight
     ``γ_t = r_t²/σ²`` (``2r_t²/σ²`` for complex measurements, whose circular noise has σ²/2 per real component),
     ``r_t² = v(1−ᾱ_t)/(vᾱ_t + 1−ᾱ_t)`` the posterior variance of x0 given x_t under an isotropic
     Gaussian prior of per-pixel variance ``v = prior_variance``,
   * noiseless (``noiseless=True`` or ``noise_std=0``): ``AᴴA x = Aᴴy`` (early stopping at M keeps x close to x̂0);

3. re-noising with DDIM: since the DDIM update is affine in ``x̂0`` and ``ε̂``, the corrected sample is the parent's
   output plus ``√ᾱ_prev·(x̂0' − x̂0)`` (the official DDS: the parent's ε̂ and noise draw unchanged), and in the
   noise-aware mode also ``− c_t·√ᾱ_t/√(1−ᾱ_t)·(x̂0' − x̂0)``, which re-derives the noise direction from the
   corrected ``x̂0'`` (``c_t = √(1−ᾱ_prev−σ_t²)``, the DDIM direction coefficient). The parent's step is reused, not
   copied, and ``cg_iters=0`` reproduces plain DDIM bit for bit. The last step (``prev_timestep < 0``) returns the
   data-consistent ``x̂0'`` itself.

η parametrisations (``eta_type``), docs/dds.md §2:

* ``"ddim"``: standard DDIM ``σ_t = η·β̃_t``, ``β̃_t = √((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev)``; ``η`` is passed to the
  parent unchanged (η=0 deterministic, η=1 DDPM-like).
* ``"ddnm"`` (official DDS code, default there η=0.85): fresh-noise share of the total noise,
  ``x_prev = √ᾱ_prev·x̂0' + √(1−ᾱ_prev)·(η·z + √(1−η²)·ε̂)``, η ∈ [0, 1]. It is converted per step to
  ``η_DDIM = η·√(1−ᾱ_prev)/β̃_t = η·√(1−ᾱ_t)/√(1−ᾱ_t/ᾱ_prev)``, so a constant DDNM η is a step-dependent DDIM η.

Complex data (MRI): the model sees real tensors with 2·C channels (Re, Im pairs); the operator gets complex
``(B, C, H, W)``. ``x̂0`` is converted to complex *before* forming the right-hand side ``x̂0 + γAᴴy`` (the official
multi-coil code adds complex ``γAᴴy`` to the real 2-channel ``x̂0``, i.e. ``x̂0 + γ(1+j)Aᴴy``; docs/dds.md §5).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, SchedulerMixin  # noqa: F401  (SchedulerMixin: needed by pipeline save/load)
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

from lml_sampler.math.cg import conjugate_gradient
from lml_sampler.math.reductions import batch_sq_norm
from lml_sampler.schedulers._ddim import ddim_alphas
from lml_sampler.schedulers._lm import requested_steps, same_signature_as
from lml_sampler.validation import check_num_inference_steps
from lml_sampler.operators.base import LinearOperator, from_operator_domain, to_operator_domain

__all__ = ["DDSScheduler", "DDSSchedulerOutput", "ddnm_to_ddim_eta", "posterior_variance", "check_noise_std"]

ETA_TYPES = ("ddim", "ddnm")
#: Default per-pixel prior variance ``v`` of the noise-aware weight (model space [-1, 1]; docs/dds.md §4).
DEFAULT_PRIOR_VARIANCE = 0.25
#: ``noise_std`` above this multiple of the RMS measurement warns: E‖y‖² >= m·σ² for y = Ax + n, so a σ well above
#: the RMS of y cannot be the noise level of these data (a unit mistake, e.g. σ given for 0..255 images).
NOISE_STD_WARN_RATIO = 2.0


@dataclass
class DDSSchedulerOutput(DDIMSchedulerOutput):
    """``prev_sample``; ``pred_original_sample`` = the data-consistent ``x̂0'``; ``denoised`` = Tweedie ``x̂0``
    before data consistency; ``cg_iterations`` = CG iterations used per sample ``(B,)``."""

    denoised: torch.Tensor | None = None
    cg_iterations: torch.Tensor | None = None


def ddnm_to_ddim_eta(eta: float, alpha_prod_t: float, alpha_prod_t_prev: float) -> float:
    """DDNM/official-DDS η (noise share, in [0, 1]) -> the standard DDIM η giving the same update at this step.

    ``η_DDIM = η·√(1−ᾱ_prev) / β̃_t`` with ``β̃_t = √((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev)``; 0 where β̃_t = 0
    (the final step to ᾱ_prev = 1, where no noise is added in either form).
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta_type='ddnm' needs 0 <= eta <= 1 (share of fresh noise), got {eta!r}")
    variance = (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
    if variance <= 0 or alpha_prod_t_prev >= 1:
        return 0.0
    ratio = math.sqrt((1 - alpha_prod_t_prev) / variance)
    # η=1 makes the DDIM direction coefficient √(1−ᾱ_prev−σ²) exactly 0; shave 1e-6 so float32 round-off in the
    # parent cannot take the square root of a tiny negative number.
    return min(eta * ratio, ratio * (1 - 1e-6))


def posterior_variance(alpha_prod_t: float, prior_variance: float) -> float:
    """``r_t² = v(1−ᾱ_t)/(vᾱ_t + 1−ᾱ_t)``: the variance of x0 given ``x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε`` when
    x0 ~ N(μ, v I) (docs/dds.md §4). Tends to ``v`` as ᾱ_t → 0 and to ``1−ᾱ_t`` as ᾱ_t → 1."""
    b2 = 1.0 - alpha_prod_t
    return prior_variance * b2 / (prior_variance * alpha_prod_t + b2)


def check_noise_std(noise_std, noiseless: bool = False) -> float | None:
    """Validate a measurement noise level: ``None`` (not given) or a finite float >= 0; not with ``noiseless=True``."""
    if noise_std is None:
        return None
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) or not math.isfinite(noise_std) \
            or noise_std < 0:
        raise ValueError(f"noise_std must be a finite number >= 0 (std of the measurement noise per entry; "
                         f"complex: E|n|² = σ²), got {noise_std!r}")
    if noiseless:
        raise ValueError(f"noise_std={noise_std!r} and noiseless=True contradict each other: pass noise_std=0 "
                         "(or noiseless=True alone) for noiseless data")
    return float(noise_std)


def _measurement_rms(operator: LinearOperator, y: torch.Tensor) -> torch.Tensor:
    """Per-sample RMS of the measured entries of ``y`` (float64, ``(B,)``)."""
    support = operator.measurement_support()
    m = float(y[0].numel()) if support is None else float(torch.as_tensor(support).sum())
    return (batch_sq_norm(y) / max(m, 1.0)).sqrt()


class DDSScheduler(DDIMScheduler):
    """DDIM with a Krylov (conjugate-gradient) data-consistency step after every Tweedie denoising.

    Use: ``set_timesteps(n)``; ``set_measurement(operator, y, noise_std=σ)`` (or ``gamma=``, or ``noiseless=True``);
    then the usual ``step(model_output, t, sample, eta=...)`` loop (1 NFE per step, no gradients). The measurement
    persists across runs until :meth:`clear_measurement`; per-run diagnostics (CG iterations, γ_t, CG time) are reset
    by :meth:`set_timesteps`. All ``DDIMScheduler`` config options apply (use ``clip_sample=False`` for priors that
    are not on [-1, 1], as in the official code, which never clips).
    """

    # No __init__ override: diffusers reads the accepted config keys from the signature of ``cls.__init__``, so a
    # ``*args, **kwargs`` wrapper would make ``from_config(..., clip_sample=False)`` silently drop overrides.
    # Per-instance state is created by set_measurement / set_timesteps; these class defaults mean "not set yet".
    _operator: LinearOperator | None = None
    _y: torch.Tensor | None = None
    _AHy: torch.Tensor | None = None
    cg_iteration_history: tuple | list = ()
    gamma_history: tuple | list = ()
    clip_denoised: bool | None = None
    noise_variance: float | None = None
    cg_seconds: float = 0.0
    num_steps_taken: int = 0

    # -- measurement --------------------------------------------------------------------------------------------
    def set_measurement(
        self,
        operator: LinearOperator,
        y: torch.Tensor,
        gamma: float | None = None,
        cg_iters: int = 5,
        noiseless: bool = False,
        cg_tol: float = 1e-6,
        eta_type: str = "ddnm",
        noise_std: float | None = None,
        prior_variance: float = DEFAULT_PRIOR_VARIANCE,
        clip_denoised: bool | None = None,
    ) -> None:
        """Attach the inverse problem ``y = A x + n``.

        The data-consistency form follows from the arguments (docs/dds.md §3, §4):

        * ``noiseless=True`` or ``noise_std=0``: hard data consistency, CG on ``AᴴA x = Aᴴy``;
        * ``gamma`` given: the proximal step with that constant weight (the official DDS);
        * ``noise_std=σ > 0`` without ``gamma``: noise-aware, ``γ_t = r_t²/σ²`` per step (:func:`posterior_variance`)
          and the noise direction re-derived from the corrected x̂0';
        * none of these: the proximal step with ``γ = 1``.

        Args:
            operator: a :class:`~lml_sampler.operators.LinearOperator` acting on model-space images (use
                :class:`~lml_sampler.operators.AffineInput` if measurements were taken of e.g. [0, 1] images).
                Complex-domain operators are fed the model's 2·C real channels as C complex channels.
            y: measurements ``(B, *operator.out_shape)``; B must equal the sample batch (no silent broadcast).
            gamma: constant proximal weight γ > 0 of ``(I + γAᴴA)x = x̂0 + γAᴴy``. Its meaning depends on the operator
                scale (here ``‖A‖ <= 1``; docs/dds.md §3).
            cg_iters: CG iterations M >= 0 per step (paper and code: 5). 0 = plain DDIM.
            noiseless: solve ``AᴴA x = Aᴴy`` from ``x̂0`` instead of the proximal problem.
            cg_tol: relative residual tolerance of CG (per sample); rarely reached within M iterations.
            eta_type: ``"ddnm"`` (official code, default) or ``"ddim"``: how ``eta`` passed to :meth:`step` is read.
            noise_std: std σ of the measurement noise per entry of ``y`` (complex: E|n|² = σ²), in the units of ``y``.
                A σ far above the RMS of ``y`` warns (it cannot be the noise level of these data).
            prior_variance: per-pixel variance ``v`` of the prior in model space, used by the noise-aware weight.
            clip_denoised: clamp Tweedie's x̂0 to ``±clip_sample_range`` before data consistency (``True``) or not
                (``False``) for this measurement, whatever the config says; ``None``: the config's ``clip_sample``.
        """
        if not isinstance(operator, LinearOperator):
            raise TypeError(f"operator must be a lml_sampler.operators.LinearOperator, got {type(operator).__name__}")
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
        if tuple(y.shape[1:]) != operator.out_shape or y.ndim != len(operator.out_shape) + 1:
            raise ValueError(
                f"y must have shape (B, {', '.join(map(str, operator.out_shape))}) for {operator.name}, "
                f"got {tuple(y.shape)}"
            )
        if (operator.range_dtype == "complex") != y.is_complex():
            raise TypeError(
                f"{operator.name} produces {operator.range_dtype} measurements but y is "
                f"{'complex' if y.is_complex() else 'real'}; pass y = operator.A(x) (+ noise) in its own dtype"
            )
        noise_std = check_noise_std(noise_std, noiseless)
        if gamma is not None:
            if noiseless or noise_std == 0:
                raise ValueError(f"gamma={gamma!r} has no effect with noiseless data consistency "
                                 f"({'noiseless=True' if noiseless else 'noise_std=0'}): drop one of them")
            if isinstance(gamma, bool) or not (isinstance(gamma, (int, float)) and gamma > 0 and math.isfinite(gamma)):
                raise ValueError(f"gamma must be a finite number > 0 (proximal weight), got {gamma!r}; "
                                 "for hard data consistency use noiseless=True")
        if isinstance(prior_variance, bool) or not isinstance(prior_variance, (int, float)) \
                or not (prior_variance > 0 and math.isfinite(prior_variance)):
            raise ValueError(f"prior_variance must be a finite number > 0 (per-pixel variance of the prior in "
                             f"model space), got {prior_variance!r}")
        if not isinstance(cg_iters, int) or cg_iters < 0:
            raise ValueError(f"cg_iters must be an int >= 0, got {cg_iters!r}")
        if clip_denoised is not None and not isinstance(clip_denoised, bool):
            raise TypeError(f"clip_denoised must be True, False or None, got {clip_denoised!r}")
        if not cg_tol >= 0:
            raise ValueError(f"cg_tol must be >= 0, got {cg_tol!r}")
        if eta_type not in ETA_TYPES:
            raise ValueError(f"eta_type must be one of {ETA_TYPES}, got {eta_type!r}")
        if noise_std:
            rms = float(_measurement_rms(operator, y).max())
            if noise_std > NOISE_STD_WARN_RATIO * rms:
                warnings.warn(
                    f"noise_std={noise_std:g} is {noise_std / max(rms, 1e-30):.3g}× the RMS of the measurements "
                    f"({rms:.3g}); data y = Ax + n have RMS >= σ, so σ is probably in the wrong units",
                    UserWarning, stacklevel=2,
                )
        if noiseless or noise_std == 0:
            mode = "noiseless"
        elif gamma is not None or noise_std is None:
            mode = "proximal"
        else:
            mode = "noise-aware"
        self._operator = operator
        self._y = y
        self._AHy = operator.A_adjoint(y)
        #: ``"noiseless"``, ``"proximal"`` (constant γ) or ``"noise-aware"`` (γ_t = r_t²/σ²).
        self.dc_mode = mode
        self.gamma = float(gamma) if gamma is not None else 1.0
        self.noise_std, self.prior_variance = noise_std, float(prior_variance)
        #: Noise variance per real component of y: σ² for real data, σ²/2 for circular complex noise (E|n|² = σ²).
        self.noise_variance = None if noise_std is None else (
            noise_std**2 / 2 if operator.range_dtype == "complex" else noise_std**2)
        self.cg_iters, self.noiseless = cg_iters, mode == "noiseless"
        self.cg_tol, self.eta_type = float(cg_tol), eta_type
        self.clip_denoised = clip_denoised

    def step_gamma(self, alpha_prod_t: float) -> float:
        """The proximal weight of the step at ``ᾱ_t``: ``γ`` (constant) or ``r_t²/σ_n²`` (noise-aware, σ_n² =
        :attr:`noise_variance`, the noise variance per real component: σ² for real, σ²/2 for complex data); ``inf``
        when noiseless."""
        if self.dc_mode == "noiseless":
            return math.inf
        if self.dc_mode == "noise-aware":
            return posterior_variance(alpha_prod_t, self.prior_variance) / self.noise_variance
        return self.gamma

    def clear_measurement(self) -> None:
        """Detach the operator and measurement (``step`` then raises until :meth:`set_measurement`)."""
        self._operator = None
        self._y = self._AHy = None

    @property
    def operator(self) -> LinearOperator | None:
        return self._operator

    # -- per-run state --------------------------------------------------------------------------------------------
    def _reset_run_state(self) -> None:
        #: CG iterations used per step, a list of ``(B,)`` int tensors (one entry per ``step`` call).
        self.cg_iteration_history: list[torch.Tensor] = []
        #: The proximal weight used per step (``inf`` for noiseless data consistency).
        self.gamma_history: list[float] = []
        #: Wall time spent inside data consistency (CG incl. operator applications) during this run, seconds.
        self.cg_seconds = 0.0
        self.num_steps_taken = 0

    @same_signature_as(DDIMScheduler.set_timesteps)
    def set_timesteps(self, *args, **kwargs):
        check_num_inference_steps(requested_steps(DDIMScheduler.set_timesteps, self, args, kwargs),
                                  self.config.num_train_timesteps)
        out = super().set_timesteps(*args, **kwargs)
        self._reset_run_state()
        return out

    # -- the step ---------------------------------------------------------------------------------------------------
    def _to_operator_domain(self, x0: torch.Tensor) -> torch.Tensor:
        op = self._operator
        z = to_operator_domain(x0, op)
        if tuple(z.shape[1:]) != op.in_shape:
            raise ValueError(
                f"model sample {tuple(x0.shape)} does not match {op.name} input (B, {', '.join(map(str, op.in_shape))})"
            )
        if z.shape[0] != self._y.shape[0]:
            raise ValueError(
                f"sample batch {z.shape[0]} != measurement batch {self._y.shape[0]}; repeat y explicitly "
                "(y.repeat_interleave(k, 0)) for k samples per measurement"
            )
        return z

    def data_consistency(self, x0: torch.Tensor, gamma: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The DC step on a model-space ``x̂0`` ``(B, C, H, W)``: returns ``(x̂0', cg_iterations (B,))``.

        ``gamma``: the proximal weight of this step (default: the constant ``γ``; ignored when noiseless).
        """
        if self._operator is None:
            raise RuntimeError("DDSScheduler: call set_measurement(operator, y, ...) before step()")
        # a half-precision model: CG in float32 (operators have no half kernels), the result cast back
        z = self._to_operator_domain(x0.float() if x0.dtype in (torch.float16, torch.bfloat16) else x0)
        if self.cg_iters == 0:
            return x0, torch.zeros(x0.shape[0], dtype=torch.int64, device=x0.device)
        apply, b = self.normal_equations(z, self.gamma if gamma is None else float(gamma))
        z_dc, iters = conjugate_gradient(apply, b, x0=z, max_iter=self.cg_iters, tol=self.cg_tol)
        x_dc = from_operator_domain(z_dc)
        return x_dc.to(x0.dtype), iters

    def normal_equations(self, z: torch.Tensor, gamma: float):
        """The linear system ``(N, b)`` of data consistency at the operator-domain ``x̂0`` ``z``: ``N = AᴴA``,
        ``b = Aᴴy`` (noiseless) or ``N = I + γAᴴA``, ``b = z + γAᴴy`` (proximal) (docs/dds.md §3)."""
        op = self._operator
        AHy = self._AHy.to(device=z.device, dtype=z.dtype)
        if self.noiseless:
            return op.A_adjoint_A, AHy

        def apply(v):
            return v + gamma * op.A_adjoint_A(v)

        return apply, z + gamma * AHy

    def _unclipped_x0(self, model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t: float) -> torch.Tensor:
        """Tweedie's x̂0 before clipping, as ``DDIMScheduler.step`` forms it (step 3)."""
        a, b = alpha_prod_t**0.5, (1 - alpha_prod_t) ** 0.5
        kind = self.config.prediction_type
        if kind == "epsilon":
            return (sample - b * model_output) / a
        if kind == "sample":
            return model_output
        return a * sample - b * model_output  # v_prediction (the parent rejects anything else)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DDSSchedulerOutput | tuple:
        """One DDS step (signature of ``DDIMScheduler.step``); ``eta`` is read according to ``eta_type``.

        Returns ``(prev_sample, x̂0')`` as a tuple, or a :class:`DDSSchedulerOutput` that also carries the
        pre-DC ``denoised`` x̂0 and the CG iterations.
        """
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' first")
        if self._operator is None:
            raise RuntimeError("DDSScheduler: call set_measurement(operator, y, ...) before step()")
        t = int(timestep)
        alpha_prod_t, alpha_prod_t_prev, prev_t = ddim_alphas(self, t)
        a_t, a_prev = float(alpha_prod_t), float(alpha_prod_t_prev)
        if self.eta_type == "ddnm":
            eta_ddim = ddnm_to_ddim_eta(float(eta), a_t, a_prev)
        else:
            eta_ddim = float(eta)
            var = float(self._get_variance(t, prev_t))
            if eta_ddim < 0 or eta_ddim**2 * var > (1 - a_prev) * (1 + 1e-6):
                raise ValueError(
                    f"eta={eta} (DDIM form) gives noise std above √(1−ᾱ_prev) at t={t}; use eta <= "
                    f"{math.sqrt((1 - a_prev) / var) if var > 0 else float('inf'):.3f} or eta_type='ddnm'"
                )
        out = super().step(
            model_output, timestep, sample, eta=eta_ddim, use_clipped_model_output=use_clipped_model_output,
            generator=generator, variance_noise=variance_noise, return_dict=True,
        )
        # Every change to x̂0 below (clipping against the config, data consistency) is an affine correction of the
        # parent's output: its update is √ᾱ_prev·x̂0 + c·ε̂ + σ_t·z with c = √(1−ᾱ_prev−σ_t²).
        x0_parent, prev = out.pred_original_sample, out.prev_sample
        parent_clips = bool(self.config.clip_sample or self.config.thresholding)
        clip = parent_clips if self.clip_denoised is None else self.clip_denoised
        x0 = x0_parent
        if clip != parent_clips:
            if use_clipped_model_output:
                raise ValueError("clip_denoised different from the config's clip_sample needs "
                                 "use_clipped_model_output=False")
            r = self.config.clip_sample_range
            x0 = x0_parent.clamp(-r, r) if clip else self._unclipped_x0(model_output, sample, a_t)
            prev = prev + math.sqrt(a_prev) * (x0 - x0_parent)
        gamma_t = self.step_gamma(a_t)
        start = time.perf_counter()
        with torch.no_grad():
            x0_dc, iters = self.data_consistency(x0, gamma_t)
        self.cg_seconds += time.perf_counter() - start
        if prev_t < 0:
            prev = x0_dc
        elif self.cg_iters > 0:
            prev = prev + math.sqrt(a_prev) * (x0_dc - x0)
            if self.dc_mode == "noise-aware":
                # Re-derive the noise direction from x̂0': ε̂' = (x_t − √ᾱ_t·x̂0')/√(1−ᾱ_t) = ε̂ + √ᾱ_t/√(1−ᾱ_t)·
                # (x̂0_ε − x̂0'), where x̂0_ε is the x̂0 the parent's ε̂ belongs to: the unclipped one, unless the
                # parent re-derived ε̂ from its clipped x̂0 (use_clipped_model_output).
                x0_eps = x0_parent if use_clipped_model_output or not (parent_clips or clip) else (
                    self._unclipped_x0(model_output, sample, a_t))
                std = eta_ddim * float(self._get_variance(t, prev_t)) ** 0.5
                direction = max(1.0 - a_prev - std**2, 0.0) ** 0.5
                prev = prev - direction * math.sqrt(a_t / (1.0 - a_t)) * (x0_dc - x0_eps)
        self.cg_iteration_history.append(iters)
        self.gamma_history.append(gamma_t)
        self.num_steps_taken += 1
        if not return_dict:
            return prev, x0_dc
        return DDSSchedulerOutput(prev_sample=prev, pred_original_sample=x0_dc, denoised=x0, cg_iterations=iters)
