"""DDS: Decomposed Diffusion Sampler (Chung, Lee, Ye, ICLR 2024) as a ``DDIMScheduler`` subclass.

Each ``step`` (docs/dds.md §1, §3):

1. the parent ``DDIMScheduler.step`` computes Tweedie's ``x̂0`` (its ``pred_original_sample``) and the DDIM update
   ``x_prev = √ᾱ_prev·x̂0 + √(1−ᾱ_prev−σ_t²)·ε̂ + σ_t·z`` with the *pre*-DC noise estimate ``ε̂``;
2. data consistency: ``M = cg_iters`` conjugate-gradient iterations started at ``x̂0`` on

   * noisy / proximal (default): ``(I + γAᴴA) x = x̂0 + γAᴴy``  (argmin γ/2‖y−Ax‖² + ½‖x−x̂0‖²),
   * noiseless: ``AᴴA x = Aᴴy`` (early stopping at M keeps x close to ``x̂0``);

3. re-noising with DDIM: since the DDIM update is affine in ``x̂0``, the corrected sample is the parent's output plus
   ``√ᾱ_prev·(x̂0' − x̂0)``, which uses the parent's ε̂ and noise draw unchanged. The parent's step is reused, not
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
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, SchedulerMixin  # noqa: F401  (SchedulerMixin: needed by pipeline save/load)
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

from lml_sampler.math.cg import conjugate_gradient
from lml_sampler.schedulers._ddim import ddim_alphas
from lml_sampler.schedulers._lm import requested_steps, same_signature_as
from lml_sampler.validation import check_num_inference_steps
from lml_sampler.operators.base import LinearOperator, from_operator_domain, to_operator_domain

__all__ = ["DDSScheduler", "DDSSchedulerOutput", "ddnm_to_ddim_eta"]

ETA_TYPES = ("ddim", "ddnm")


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


class DDSScheduler(DDIMScheduler):
    """DDIM with a Krylov (conjugate-gradient) data-consistency step after every Tweedie denoising.

    Use: ``set_timesteps(n)``; ``set_measurement(operator, y, gamma=..., cg_iters=5)``; then the usual
    ``step(model_output, t, sample, eta=...)`` loop (1 NFE per step, no gradients). The measurement persists across
    runs until :meth:`clear_measurement`; per-run diagnostics (CG iterations, CG time) are reset by
    :meth:`set_timesteps`. All ``DDIMScheduler`` config options apply (use ``clip_sample=False`` for priors that
    are not on [-1, 1], as in the official code, which never clips).
    """

    # No __init__ override: diffusers reads the accepted config keys from the signature of ``cls.__init__``, so a
    # ``*args, **kwargs`` wrapper would make ``from_config(..., clip_sample=False)`` silently drop overrides.
    # Per-instance state is created by set_measurement / set_timesteps; these class defaults mean "not set yet".
    _operator: LinearOperator | None = None
    _y: torch.Tensor | None = None
    _AHy: torch.Tensor | None = None
    cg_iteration_history: tuple | list = ()
    cg_seconds: float = 0.0
    num_steps_taken: int = 0

    # -- measurement --------------------------------------------------------------------------------------------
    def set_measurement(
        self,
        operator: LinearOperator,
        y: torch.Tensor,
        gamma: float = 1.0,
        cg_iters: int = 5,
        noiseless: bool = False,
        cg_tol: float = 1e-6,
        eta_type: str = "ddnm",
    ) -> None:
        """Attach the inverse problem ``y = A x + n``.

        Args:
            operator: a :class:`~lml_sampler.operators.LinearOperator` acting on model-space images (use
                :class:`~lml_sampler.operators.AffineInput` if measurements were taken of e.g. [0, 1] images).
                Complex-domain operators are fed the model's 2·C real channels as C complex channels.
            y: measurements ``(B, *operator.out_shape)``; B must equal the sample batch (no silent broadcast).
            gamma: proximal weight γ > 0 of the noisy update ``(I + γAᴴA)x = x̂0 + γAᴴy`` (ignored if
                ``noiseless``). Its meaning depends on the operator scale (here ``‖A‖ <= 1``; docs/dds.md §8).
            cg_iters: CG iterations M >= 0 per step (paper and code: 5). 0 = plain DDIM.
            noiseless: solve ``AᴴA x = Aᴴy`` from ``x̂0`` instead of the proximal problem.
            cg_tol: relative residual tolerance of CG (per sample); rarely reached within M iterations.
            eta_type: ``"ddnm"`` (official code, default) or ``"ddim"``: how ``eta`` passed to :meth:`step` is read.
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
        if not noiseless and not (isinstance(gamma, (int, float)) and gamma > 0 and math.isfinite(gamma)):
            raise ValueError(f"gamma must be a finite number > 0 (proximal weight), got {gamma!r}; "
                             "for hard data consistency use noiseless=True")
        if not isinstance(cg_iters, int) or cg_iters < 0:
            raise ValueError(f"cg_iters must be an int >= 0, got {cg_iters!r}")
        if not cg_tol >= 0:
            raise ValueError(f"cg_tol must be >= 0, got {cg_tol!r}")
        if eta_type not in ETA_TYPES:
            raise ValueError(f"eta_type must be one of {ETA_TYPES}, got {eta_type!r}")
        self._operator = operator
        self._y = y
        self._AHy = operator.A_adjoint(y)
        self.gamma, self.cg_iters, self.noiseless = float(gamma), cg_iters, bool(noiseless)
        self.cg_tol, self.eta_type = float(cg_tol), eta_type

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

    def data_consistency(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The DC step on a model-space ``x̂0`` ``(B, C, H, W)``: returns ``(x̂0', cg_iterations (B,))``."""
        if self._operator is None:
            raise RuntimeError("DDSScheduler: call set_measurement(operator, y, ...) before step()")
        # a half-precision model: CG in float32 (operators have no half kernels), the result cast back
        z = self._to_operator_domain(x0.float() if x0.dtype in (torch.float16, torch.bfloat16) else x0)
        if self.cg_iters == 0:
            return x0, torch.zeros(x0.shape[0], dtype=torch.int64, device=x0.device)
        op, gamma = self._operator, self.gamma
        AHy = self._AHy.to(device=z.device, dtype=z.dtype)
        if self.noiseless:
            apply, b = op.A_adjoint_A, AHy
        else:
            def apply(v):
                return v + gamma * op.A_adjoint_A(v)

            b = z + gamma * AHy
        z_dc, iters = conjugate_gradient(apply, b, x0=z, max_iter=self.cg_iters, tol=self.cg_tol)
        x_dc = from_operator_domain(z_dc)
        return x_dc.to(x0.dtype), iters

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
        x0 = out.pred_original_sample
        start = time.perf_counter()
        with torch.no_grad():
            x0_dc, iters = self.data_consistency(x0)
        self.cg_seconds += time.perf_counter() - start
        if prev_t < 0:
            prev = x0_dc
        elif self.cg_iters == 0:
            prev = out.prev_sample
        else:
            prev = out.prev_sample + math.sqrt(a_prev) * (x0_dc - x0)
        self.cg_iteration_history.append(iters)
        self.num_steps_taken += 1
        if not return_dict:
            return prev, x0_dc
        return DDSSchedulerOutput(prev_sample=prev, pred_original_sample=x0_dc, denoised=x0, cg_iterations=iters)
