"""The one interface every imaging operator implements: ``A``, ``A_adjoint`` and their composition.

The interface of deepinv's ``LinearPhysics`` (Tachella et al., "DeepInverse", 2023: ``A``, ``A_adjoint``,
``A_adjoint_A``, ``adjointness_test``) but native torch, because deepinv hard-depends on torchvision, which this
project does not install. Solvers (conjugate gradient, proximal steps) live in :mod:`lml_sampler.math.cg`, not on the
operator.

Conventions:
* Tensors carry a leading batch dim; ``in_shape`` / ``out_shape`` are the per-sample shapes (without batch).
* ``dtype`` is ``"real"`` or ``"complex"``: the domain of ``A`` (``range_dtype`` is the codomain). Complex images
  are complex tensors here; conversion to the 2-channel real layout a diffusion model sees is done by the DDS
  scheduler (:func:`real_to_complex` / :func:`complex_to_real`).
* ``A_adjoint`` is the exact adjoint with respect to ``Re sum(conj(u) v)`` (the real inner product for real
  domains), which is what conjugate gradient on ``AᴴA`` needs.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "LinearOperator",
    "RealInput",
    "AffineInput",
    "real_to_complex",
    "complex_to_real",
]


def real_to_complex(x: torch.Tensor) -> torch.Tensor:
    """``(B, 2C, ...)`` real with channels interleaved as (Re, Im) per complex channel -> ``(B, C, ...)`` complex.

    For one complex channel this is ``x[:, 0] + 1j * x[:, 1]`` (the fastMRI / DDS ``real_to_nchw_comp`` layout).
    """
    if x.is_complex():
        raise TypeError("real_to_complex expects a real tensor with 2*C channels (Re, Im), got a complex tensor")
    if x.ndim < 2 or x.shape[1] % 2:
        raise ValueError(f"real_to_complex needs an even channel count (Re, Im pairs), got shape {tuple(x.shape)}")
    pairs = x.reshape(x.shape[0], x.shape[1] // 2, 2, *x.shape[2:])
    return torch.complex(pairs[:, :, 0], pairs[:, :, 1])


def complex_to_real(z: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`real_to_complex`: ``(B, C, ...)`` complex -> ``(B, 2C, ...)`` real (Re, Im) pairs."""
    if not z.is_complex():
        raise TypeError("complex_to_real expects a complex tensor")
    pairs = torch.stack([z.real, z.imag], dim=2)
    return pairs.reshape(z.shape[0], 2 * z.shape[1], *z.shape[2:])


#: Precisions operators compute in: FFTs and sparse products have no half-precision CPU kernels, and data
#: consistency needs more than half precision anyway (DDS upcasts a half-precision model's x̂0 before it).
_OPERATOR_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)


class LinearOperator:
    """Base class of a batched linear operator ``A: in_shape -> out_shape``.

    Subclasses implement :meth:`_forward` and :meth:`_adjoint` on batched tensors; the public :meth:`A` and
    :meth:`A_adjoint` validate shapes and real/complex type and raise a ``ValueError``/``TypeError`` naming the
    fix. ``A_adjoint_A`` may be overridden by a cheaper normal operator.
    """

    #: ``"real"`` or ``"complex"`` domain / codomain.
    dtype: str = "real"
    range_dtype: str = "real"
    #: ``None``: any batch size; an int: the operator differs per sample (e.g. per-slice coil maps) and takes
    #: exactly this batch.
    fixed_batch: int | None = None

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]):
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = tuple(int(s) for s in out_shape)

    # -- to implement -------------------------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    #: Optional ``out_shape`` 0/1 mask of the measured entries (noise is only added there); ``None`` = everywhere.
    def measurement_support(self) -> torch.Tensor | None:
        return None

    # -- public API ---------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return type(self).__name__

    def _check(self, t: torch.Tensor, shape: tuple[int, ...], kind: str, arg: str, method: str) -> None:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{self.name}.{method}: {arg} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape[1:]) != shape or t.ndim != len(shape) + 1:
            raise ValueError(
                f"{self.name}.{method}: {arg} must have shape (B, {', '.join(map(str, shape))}), got {tuple(t.shape)}"
            )
        if self.fixed_batch is not None and t.shape[0] != self.fixed_batch:
            raise ValueError(
                f"{self.name}.{method}: this operator holds per-sample parameters for a batch of {self.fixed_batch}, "
                f"got a batch of {t.shape[0]}"
            )
        if kind == "complex" and not t.is_complex():
            raise TypeError(
                f"{self.name}.{method}: {arg} must be complex; a real image of a complex operator is converted with "
                "real_to_complex (2 channels Re, Im) or the operator wrapped in RealInput(op)"
            )
        if kind == "real" and t.is_complex():
            raise TypeError(f"{self.name}.{method}: {arg} must be real, got {t.dtype}")
        if t.dtype not in _OPERATOR_DTYPES:
            raise TypeError(f"{self.name}.{method}: {arg} must be float32/float64 (complex64/complex128 for complex "
                            f"data), got {t.dtype}; cast it, e.g. {arg}.float()")

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Forward operator ``y = A x`` on a batch ``(B, *in_shape)``."""
        self._check(x, self.in_shape, self.dtype, "x", "A")
        return self._forward(x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Exact adjoint ``Aᴴ y`` on a batch ``(B, *out_shape)``."""
        self._check(y, self.out_shape, self.range_dtype, "y", "A_adjoint")
        return self._adjoint(y)

    def A_adjoint_A(self, x: torch.Tensor) -> torch.Tensor:
        """Normal operator ``AᴴA x`` (Hermitian PSD; what conjugate gradient inverts)."""
        return self.A_adjoint(self.A(x))

    __call__ = A

    def random_input(self, batch: int = 2, dtype: torch.dtype = torch.float64, generator=None, device=None):
        """Standard-normal test input ``(batch, *in_shape)`` in this operator's domain (complex if needed)."""
        x = torch.randn(batch, *self.in_shape, dtype=dtype, generator=generator, device=device)
        if self.dtype == "complex":
            x = torch.complex(x, torch.randn(x.shape, dtype=dtype, generator=generator, device=device))
        return x

    def random_output(self, batch: int = 2, dtype: torch.dtype = torch.float64, generator=None, device=None):
        y = torch.randn(batch, *self.out_shape, dtype=dtype, generator=generator, device=device)
        if self.range_dtype == "complex":
            y = torch.complex(y, torch.randn(y.shape, dtype=dtype, generator=generator, device=device))
        return y

    def adjointness_test(self, batch: int | None = None, dtype: torch.dtype = torch.float64, seed: int = 0) -> float:
        """Relative error ``|<Ax, y> - <x, Aᴴy>| / (‖Ax‖‖y‖)`` for random ``x, y`` (0 for an exact adjoint).

        ``batch`` defaults to 2 (``fixed_batch`` for per-sample operators).

        Uses the real inner product ``Re sum(conj(u) v)`` over the whole batch; float64 by default so that round-off
        (~1e-15) is far below the 1e-5 acceptance threshold used in the tests.
        """
        g = torch.Generator().manual_seed(seed)
        batch = batch or self.fixed_batch or 2
        x, y = self.random_input(batch, dtype, g), self.random_output(batch, dtype, g)
        Ax, Ahy = self.A(x), self.A_adjoint(y)
        lhs = (Ax.conj() * y).real.sum() if Ax.is_complex() else (Ax * y).sum()
        rhs = (x.conj() * Ahy).real.sum() if x.is_complex() else (x * Ahy).sum()
        scale = Ax.abs().pow(2).sum().sqrt() * y.abs().pow(2).sum().sqrt()
        return float((lhs - rhs).abs() / scale.clamp_min(torch.finfo(dtype).tiny))

    def norm(self, n_iter: int = 50, dtype: torch.dtype = torch.float64, seed: int = 0,
             start: torch.Tensor | None = None, rtol: float = 0.0) -> float:
        """Spectral norm ``‖A‖`` by power iteration on ``AᴴA`` (a lower bound that converges from below).

        ``start``: the initial vector ``(B, *in_shape)`` (default: standard normal, seeded); ``rtol``: stop once the
        Rayleigh quotient changes by less than this fraction between iterations.
        """
        if start is None:
            x = self.random_input(self.fixed_batch or 1, dtype, torch.Generator().manual_seed(seed))
        else:
            x = start.to(dtype if not start.is_complex() else start.dtype)
        lam = 0.0
        for _ in range(n_iter):
            x = x / x.abs().pow(2).sum().sqrt()
            z = self.A_adjoint_A(x)
            new = float((x.conj() * z).real.sum()) if z.is_complex() else float((x * z).sum())
            converged = abs(new - lam) <= rtol * abs(new)
            lam, x = new, z
            if converged:
                break
        return math.sqrt(max(lam, 0.0))

    def __repr__(self) -> str:
        return f"{self.name}(in_shape={self.in_shape}, out_shape={self.out_shape}, dtype={self.dtype!r})"


class RealInput(LinearOperator):
    """Restrict a complex-domain operator to real images: ``A_r x = A(x + 0j)``, ``A_rᴴ y = Re(Aᴴ y)``.

    ``Re(Aᴴ ·)`` is the exact adjoint for the real inner product on the domain and ``Re <·,·>`` on the codomain,
    so ``A_rᴴ A_r = Re(AᴴA)`` is symmetric PSD and CG is valid. Used for MRI of real-valued (magnitude) phantoms
    with a 1-channel real diffusion prior.
    """

    dtype = "real"

    def __init__(self, op: LinearOperator):
        if op.dtype != "complex":
            raise TypeError(f"RealInput wraps a complex-domain operator; {op.name} is already real")
        super().__init__(op.in_shape, op.out_shape)
        self.op = op
        self.range_dtype, self.fixed_batch = op.range_dtype, op.fixed_batch

    @property
    def name(self) -> str:
        return f"RealInput({self.op.name})"

    def measurement_support(self):
        return self.op.measurement_support()

    def _forward(self, x):
        cdt = torch.complex128 if x.dtype == torch.float64 else torch.complex64
        return self.op.A(x.to(cdt))

    def _adjoint(self, y):
        return self.op.A_adjoint(y).real

    def A_adjoint_A(self, x):
        self._check(x, self.in_shape, self.dtype, "x", "A_adjoint_A")
        return self.op.A_adjoint_A(x.to(torch.complex128 if x.dtype == torch.float64 else torch.complex64)).real

    def __getattr__(self, item):  # expose e.g. .mask, .sensitivities of the wrapped operator
        if item == "op":
            raise AttributeError(item)
        return getattr(self.op, item)


class AffineInput(LinearOperator):
    """Operator on a rescaled image: ``A'(x) = A(scale * x)`` so that ``A(scale * x + offset) = y`` iff
    ``A'(x) = y - A(offset)``.

    Diffusion models work on ``[-1, 1]`` while physical measurements are taken of ``[0, 1]`` images
    (``scale = offset = 0.5``). :meth:`shift_measurement` gives the matching ``y' = y - A(offset * 1)``.
    """

    def __init__(self, op: LinearOperator, scale: float, offset: float):
        if scale == 0:
            raise ValueError("AffineInput: scale must be non-zero")
        super().__init__(op.in_shape, op.out_shape)
        self.op, self.scale, self.offset = op, float(scale), float(offset)
        self.dtype, self.range_dtype, self.fixed_batch = op.dtype, op.range_dtype, op.fixed_batch

    @property
    def name(self) -> str:
        return f"AffineInput({self.op.name})"

    def measurement_support(self):
        return self.op.measurement_support()

    def _forward(self, x):
        return self.op.A(self.scale * x)

    def _adjoint(self, y):
        return self.scale * self.op.A_adjoint(y)

    def A_adjoint_A(self, x):
        return self.scale**2 * self.op.A_adjoint_A(x)

    def shift_measurement(self, y: torch.Tensor) -> torch.Tensor:
        """``y - A(offset)``: the measurement of the model-space image."""
        if self.offset == 0:
            return y
        real = y.real.dtype if y.is_complex() else y.dtype
        ones = torch.full((y.shape[0], *self.in_shape), self.offset, dtype=real, device=y.device)
        if self.op.dtype == "complex":
            ones = ones.to(torch.complex128 if real == torch.float64 else torch.complex64)
        return y - self.op.A(ones)

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """Physical image -> model space: ``(x - offset) / scale``."""
        return (x - self.offset) / self.scale

    def from_model(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space image -> physical: ``scale * x + offset``."""
        return self.scale * x + self.offset


def to_operator_domain(x: torch.Tensor, operator: "LinearOperator") -> torch.Tensor:
    """Model-space real ``(B, C, H, W)`` -> the operator's domain: complex with C/2 channels (Re, Im pairs) for a
    complex operator, unchanged for a real one."""
    if operator.dtype == "complex":
        if x.shape[1] != 2 * operator.in_shape[0]:
            raise TypeError(
                f"{operator.name} takes {operator.in_shape[0]} complex channel(s): the model needs "
                f"{2 * operator.in_shape[0]} real channels (Re, Im), got {x.shape[1]}; wrap a real prior's operator "
                "in RealInput(op)"
            )
        return real_to_complex(x)
    return x


def from_operator_domain(z: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`to_operator_domain`: complex -> 2-channel real (Re, Im pairs); real unchanged."""
    return complex_to_real(z) if z.is_complex() else z
