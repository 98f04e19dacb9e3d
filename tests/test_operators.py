"""Tests of lml_sampler.operators: exact adjoints, normalisation, masks, noise and input checks."""

import math

import pytest
import torch

from lml_sampler.operators import (
    AffineInput,
    Blur,
    Inpainting,
    MultiCoilMRI,
    ParallelBeamCT,
    RealInput,
    SingleCoilMRI,
    add_noise,
    box_mask,
    complex_to_real,
    fft2c,
    gaussian1d_mask,
    gaussian2d_mask,
    gaussian_kernel,
    ifft2c,
    limited_angle_angles,
    make_mask,
    motion_kernel,
    poisson_disc_mask,
    random_mask,
    real_to_complex,
    simulate_coil_sensitivities,
    sparse_view_angles,
    uniform1d_mask,
)

N = 16


def _operators():
    g = torch.Generator().manual_seed(0)
    S = simulate_coil_sensitivities(4, N, g)
    return {
        "ct-sparse": ParallelBeamCT(N, sparse_view_angles(8)),
        "ct-limited": ParallelBeamCT(N, limited_angle_angles(30, 120.0)),
        "ct-unnormalised": ParallelBeamCT(N, sparse_view_angles(5), normalize=False),
        "mri-single": SingleCoilMRI(uniform1d_mask(N, 4, generator=g)),
        "mri-multi": MultiCoilMRI(gaussian2d_mask(N, 4, generator=g), S),
        "mri-multi-real": RealInput(MultiCoilMRI(uniform1d_mask(N, 4, generator=g), S)),
        "blur-gauss": Blur(gaussian_kernel(7, 1.5), (1, N, N)),
        "blur-motion": Blur(motion_kernel(7, 5.0, 30.0), (2, N, N)),
        "inpaint": Inpainting(random_mask(N, 0.7, g), (1, N, N)),
        "affine-ct": AffineInput(ParallelBeamCT(N, sparse_view_angles(4)), 0.5, 0.5),
    }


OPS = _operators()


@pytest.mark.parametrize("name", sorted(OPS))
def test_adjointness(name):
    # Exact adjoints give ~1e-16 in float64; an approximate back-projector (official DDS CT) gives ~1e-4.
    assert OPS[name].adjointness_test(batch=2, dtype=torch.float64) < 1e-5


@pytest.mark.parametrize("name", sorted(OPS))
def test_adjointness_float32_and_shapes(name):
    op = OPS[name]
    x = op.random_input(3, torch.float32)
    y = op.A(x)
    assert tuple(y.shape) == (3, *op.out_shape)
    assert tuple(op.A_adjoint(y).shape) == (3, *op.in_shape)
    assert op.A_adjoint_A(x).shape == x.shape
    # float32 round-off: ~1e-7 per op; 1e-4 bound still separates a wrong adjoint (O(1)).
    assert op.adjointness_test(batch=2, dtype=torch.float32) < 1e-4


@pytest.mark.parametrize("name", ["ct-sparse", "ct-limited", "mri-single", "mri-multi", "blur-gauss", "inpaint"])
def test_normalised_operators_have_norm_at_most_one(name):
    # Power iteration converges from below; 1e-3 slack for its finite iteration count / the Σ|S|²=1 bound.
    assert OPS[name].norm(n_iter=100) <= 1.0 + 1e-3


def test_ct_norm_is_one_and_unnormalised_scale():
    assert abs(OPS["ct-sparse"].norm(n_iter=200) - 1.0) < 1e-3
    assert OPS["ct-unnormalised"].norm(n_iter=50) > 3.0  # line integrals over ~N pixels


def test_ct_projection_of_constant_disc_and_fbp():
    """A line integral of a centred disc equals its chord length; FBP of many views recovers a smooth image."""
    n = 32
    op = ParallelBeamCT(n, sparse_view_angles(90), normalize=False)
    c = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2)
    rr = (c[:, None] ** 2 + c[None, :] ** 2).sqrt()
    img = torch.exp(-(rr / 7.0) ** 2)[None, None]
    sino = op.A(img)
    # ∫ exp(-(s²+t²)/49) dt = √π·7·exp(-s²/49): the central detector bin of every view (bilinear: ~1 %).
    centre = sino[0, 0, :, op.n_det // 2 - 1 : op.n_det // 2 + 1].mean(-1)
    expected = math.sqrt(math.pi) * 7.0 * math.exp(-(0.5**2) / 49)
    assert torch.allclose(centre, torch.full_like(centre, expected), rtol=0.03)
    rec = op.fbp(sino)
    # Smooth image, 90 views: FBP error is the bilinear-interpolation blur, a few percent.
    assert ((rec - img).norm() / img.norm()) < 0.08


def test_limited_and_sparse_angles():
    assert torch.allclose(sparse_view_angles(4), torch.tensor([0.0, 45.0, 90.0, 135.0], dtype=torch.float64))
    a = limited_angle_angles(120, 120.0)
    assert a[0] == 0 and abs(float(a[-1]) - 119.0) < 1e-9
    with pytest.raises(ValueError):
        sparse_view_angles(0)


def test_fft2c_is_unitary_and_centred():
    x = torch.randn(2, 1, 8, 8, dtype=torch.complex128)
    assert torch.allclose(ifft2c(fft2c(x)), x, atol=1e-12)
    assert torch.allclose(fft2c(x).norm(), x.norm())
    ones = torch.ones(1, 1, 8, 8, dtype=torch.complex128)
    k = fft2c(ones)
    assert abs(k[0, 0, 4, 4] - 8.0) < 1e-12 and k.abs().sum() - 8.0 < 1e-9  # DC at the centre


def test_fft2c_equals_the_fftshift_composition_bitwise():
    # fft2c shifts with torch.roll (faster on CPU); the permutation must be fftshift/ifftshift exactly, odd sizes too.
    shift = dict(dim=(-2, -1))
    for shape in [(2, 3, 8, 8), (1, 1, 7, 9), (2, 1, 6, 5)]:
        x = torch.randn(*shape, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
        ref = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, **shift), norm="ortho"), **shift)
        ref_inv = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(x, **shift), norm="ortho"), **shift)
        assert torch.equal(fft2c(x), ref) and torch.equal(ifft2c(x), ref_inv)


def test_coil_maps_normalised_and_single_coil_projection():
    S = simulate_coil_sensitivities(6, 12)
    assert torch.allclose(S.abs().pow(2).sum(0), torch.ones(12, 12), atol=1e-5)
    op = OPS["mri-single"]
    x = op.random_input(2)
    p = op.A_adjoint_A(x)
    assert torch.allclose(op.A_adjoint_A(p), p, atol=1e-12)  # AᴴA is an orthogonal projection


def test_masks_report_effective_acceleration():
    g = torch.Generator().manual_seed(0)
    m = uniform1d_mask(32, 4, 0.08, generator=g)
    assert m.effective_acceleration == pytest.approx(4.0, rel=0.05)
    assert m.mask[:, 16].all()  # ACS centre column sampled
    m8 = uniform1d_mask(32, 8, generator=g)
    assert m8.effective_acceleration == pytest.approx(8.0, rel=0.1)
    gm = gaussian1d_mask(32, 4, generator=g)
    assert gm.effective_acceleration >= 32 / (int(0.08 * 32) + int(1.2 * 32 / 4))  # duplicates only raise it
    g2 = gaussian2d_mask(32, 8, generator=g)
    assert g2.effective_acceleration == pytest.approx(8.0, rel=0.01)
    pd = poisson_disc_mask(24, 6, generator=g)
    assert pd.effective_acceleration == pytest.approx(6.0, rel=0.3)  # bisection on the disc radius
    assert pd.mask[12, 12] == 1  # calibration centre
    assert make_mask("gaussian2d", 16, 4).kind == "gaussian2d"
    with pytest.raises(ValueError, match="mask kind"):
        make_mask("radial", 16, 4)
    with pytest.raises(ValueError, match="acceleration"):
        uniform1d_mask(16, 0.5)


def test_blur_and_inpainting_behaviour():
    k = gaussian_kernel(7, 1.2)
    assert abs(float(k.sum()) - 1) < 1e-12
    assert abs(float(motion_kernel(9, 7, 45).sum()) - 1) < 1e-12
    op = Blur(k, (1, N, N))
    c = torch.full((1, 1, N, N), 0.3, dtype=torch.float64)
    assert torch.allclose(op.A(c), c, atol=1e-12)  # blur preserves constants
    mk = box_mask(N, 0.25)
    ip = Inpainting(mk, (1, N, N))
    x = torch.randn(2, 1, N, N)
    assert torch.equal(ip.A_adjoint_A(x), mk * x)
    assert float(random_mask(20, 0.7).mean()) == pytest.approx(0.3, abs=0.01)


def test_real_input_and_affine_input():
    op = OPS["mri-multi-real"]
    x = torch.randn(2, 1, N, N, dtype=torch.float64)
    assert op.A_adjoint_A(x).dtype == torch.float64
    ct = ParallelBeamCT(N, sparse_view_angles(4))
    aff = AffineInput(ct, 0.5, 0.5)
    x01 = torch.rand(2, 1, N, N, dtype=torch.float64)
    y = ct.A(x01)
    assert torch.allclose(aff.A(aff.to_model(x01)), aff.shift_measurement(y), atol=1e-12)
    assert torch.allclose(aff.from_model(aff.to_model(x01)), x01)
    with pytest.raises(TypeError, match="complex-domain"):
        RealInput(ct)


def test_complex_real_conversion_roundtrip():
    x = torch.randn(3, 4, 5, 5)
    z = real_to_complex(x)
    assert z.shape == (3, 2, 5, 5) and torch.equal(z[:, 0].real, x[:, 0]) and torch.equal(z[:, 0].imag, x[:, 1])
    assert torch.equal(complex_to_real(z), x)
    with pytest.raises(ValueError, match="even"):
        real_to_complex(torch.randn(1, 3, 2, 2))


def test_noise_levels_and_support():
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(4, 2, 64, 64, dtype=torch.complex128)
    support = torch.zeros(2, 64, 64)
    support[:, :, ::2] = 1
    n = add_noise(y, 0.1, g, support=support)
    measured = n[..., ::2]
    # E|n|² = σ² per measured entry; 16k samples -> ~1 % standard error, 5 % bound.
    assert float(measured.abs().pow(2).mean()) == pytest.approx(0.01, rel=0.05)
    assert float(measured.real.var()) == pytest.approx(0.005, rel=0.05)
    assert torch.all(n[..., 1::2] == 0)
    r = add_noise(torch.zeros(8, 1000, dtype=torch.float64), 0.2, g)
    assert float(r.std()) == pytest.approx(0.2, rel=0.05)
    with pytest.raises(ValueError):
        add_noise(y, -1.0)


def test_input_checks_name_the_fix():
    mri = OPS["mri-multi"]
    with pytest.raises(TypeError, match="RealInput"):
        mri.A(torch.randn(1, 1, N, N))
    with pytest.raises(ValueError, match="shape"):
        OPS["ct-sparse"].A(torch.randn(1, 1, N + 1, N))
    with pytest.raises(TypeError, match="real"):
        OPS["ct-sparse"].A(torch.randn(1, 1, N, N, dtype=torch.complex64))
    with pytest.raises(ValueError, match="disagree"):
        MultiCoilMRI(uniform1d_mask(N, 4), simulate_coil_sensitivities(2, N + 2))


_MASK = uniform1d_mask(N, 4).mask
_HOLE = box_mask(N)
_MAPS = simulate_coil_sensitivities(2, N)
_NAN = torch.ones(N, N).index_put_((torch.tensor([0]), torch.tensor([0])), torch.tensor(float("nan")))


@pytest.mark.parametrize("build, error, match", [
    # k-space sampling masks: binary, finite, not all zero
    (lambda: SingleCoilMRI(torch.zeros(N, N)), ValueError, "mask is all zero"),
    (lambda: SingleCoilMRI(0.5 * _MASK), ValueError, "mask must hold only 0 and 1"),
    (lambda: SingleCoilMRI(2 * _MASK), ValueError, "mask must hold only 0 and 1"),
    (lambda: SingleCoilMRI(_NAN), ValueError, "mask must be finite"),
    (lambda: MultiCoilMRI(torch.zeros(N, N), _MAPS), ValueError, "mask is all zero"),
    # inpainting masks: finite, in [0, 1], not all zero
    (lambda: Inpainting(torch.zeros(N, N), (1, N, N)), ValueError, "mask is all zero"),
    (lambda: Inpainting(-_HOLE, (1, N, N)), ValueError, r"mask values must lie in \[0, 1\]"),
    (lambda: Inpainting(3 * _HOLE, (1, N, N)), ValueError, r"mask values must lie in \[0, 1\]"),
    (lambda: Inpainting(_NAN, (1, N, N)), ValueError, "mask must be finite"),
    (lambda: Inpainting(_HOLE, (N, N)), ValueError, "image_shape must have 3 entries"),
    # CT construction
    (lambda: ParallelBeamCT(N, [0.0, float("nan")]), ValueError, "angles .* must be finite"),
    (lambda: ParallelBeamCT(N, [0.0, float("inf")]), ValueError, "angles .* must be finite"),
    (lambda: ParallelBeamCT(N, []), ValueError, "angles .* is empty"),
    (lambda: ParallelBeamCT(N, [0.0], n_detectors=0), ValueError, "n_detectors must be >= 1"),
    (lambda: ParallelBeamCT(N, [0.0], n_detectors=2.5), TypeError, "n_detectors must be an int"),
    (lambda: ParallelBeamCT(N, [0.0], det_spacing=0.0), ValueError, "det_spacing .* must be > 0"),
    (lambda: ParallelBeamCT(N, [0.0], det_spacing=-0.5), ValueError, "det_spacing .* must be > 0"),
    (lambda: ParallelBeamCT(N, [0.0], det_spacing=float("nan")), ValueError, "det_spacing .* must be finite"),
    # blur kernels
    (lambda: Blur(torch.zeros(3, 3), (1, N, N)), ValueError, "kernel sums to 0"),
    (lambda: Blur(-gaussian_kernel(3, 1.0), (1, N, N)), ValueError, "kernel must be non-negative"),
    (lambda: Blur(torch.full((3, 3), float("nan")), (1, N, N)), ValueError, "kernel must be finite"),
    (lambda: Blur(gaussian_kernel(3, 1.0), "1x16x16"), TypeError, "image_shape must be a tuple"),
    # coil sensitivities
    (lambda: MultiCoilMRI(_MASK, torch.zeros(2, N, N, dtype=torch.complex64)), ValueError, "sensitivities is all zero"),
    (lambda: MultiCoilMRI(_MASK, _MAPS * float("nan")), ValueError, "sensitivities must be finite"),
    (lambda: MultiCoilMRI(_MASK, 3 * _MAPS), ValueError, "root-sum-of-squares"),
])
def test_constructors_refuse_what_they_cannot_be_built_from(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_blur_normalises_its_kernel_to_sum_one():
    k = 5 * gaussian_kernel(5, 1.0)
    op = Blur(k, (1, N, N))
    assert float(op.kernel.sum()) == pytest.approx(1.0, abs=1e-12)  # float64 normalisation: round-off only
    x = torch.randn(2, 1, N, N, dtype=torch.float64)
    assert torch.allclose(op.A(x), Blur(gaussian_kernel(5, 1.0), (1, N, N)).A(x), atol=1e-12)


def test_soft_inpainting_masks_are_weights_and_noise_goes_where_they_are_positive():
    m = _HOLE.clone()
    m[0, 0] = 0.25
    op = Inpainting(m, (1, N, N))
    x = torch.ones(1, 1, N, N)
    assert float(op.A(x)[0, 0, 0, 0]) == 0.25
    assert torch.equal(op.measurement_support(), (m > 0).float().expand(1, N, N))


def _norm_cases():
    g = torch.Generator().manual_seed(3)
    raw = torch.randn(3, N, N, dtype=torch.complex64, generator=g)
    unit = raw / raw.abs().pow(2).sum(0, keepdim=True).sqrt()
    half = torch.full((N, N), 0.5)
    return {
        # operators the constructors accept, built from awkward but valid input: ‖A‖ is 1 ...
        "blur-unnormalised-kernel": (Blur(torch.rand(5, 5, generator=g) * 7, (1, N, N)), 1.0),
        "mri-single-one-point": (SingleCoilMRI(torch.zeros(N, N).index_put_((torch.tensor([3]),) * 2,
                                                                            torch.tensor(1.0))), 1.0),
        "mri-multi-random-unit-maps": (MultiCoilMRI(torch.ones(N, N), unit), 1.0),
        "inpaint-one-pixel": (Inpainting(torch.zeros(N, N).index_put_((torch.tensor([5]),) * 2, torch.tensor(1.0)),
                                         (1, N, N)), 1.0),
        "ct-one-view": (ParallelBeamCT(N, [33.0], n_detectors=3, det_spacing=0.9), 1.0),
        # ... or at most 1, with the value stated by the constructor's contract
        "inpaint-soft": (Inpainting(half, (1, N, N)), 0.5),
        "mri-multi-half-maps": (MultiCoilMRI(torch.ones(N, N), 0.5 * unit), 0.5),
    }


@pytest.mark.parametrize("name", sorted(_norm_cases()))
def test_the_norm_dds_gamma_relies_on_holds_for_accepted_operators(name):
    op, expected = _norm_cases()[name]
    # power iteration converges from below; 300 float64 iterations reach these small operators' top eigenvalue to
    # 1e-6, and a wrong scale (an unnormalised kernel of sum 7, maps of RSS 3) is off by O(1)
    assert op.norm(n_iter=300) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("size", [(16, 16), (15, 17)])
@pytest.mark.parametrize("kind", ["uniform1d", "gaussian2d"])
def test_mri_normal_operator_equals_the_composition(size, kind):
    """The shift-folded, coil-chunked AᴴA (1-D FFTs for column masks) is AᴴA to float64 round-off."""
    g = torch.Generator().manual_seed(1)
    m = make_mask(kind, size, 2, generator=g)
    S = simulate_coil_sensitivities(3, size, g).to(torch.complex128)
    ops = [SingleCoilMRI(m), MultiCoilMRI(m, S), MultiCoilMRI(m, torch.stack([S, S.flip(0)])),
           RealInput(MultiCoilMRI(m, S)), AffineInput(MultiCoilMRI(m, S), 0.5, 0.25)]
    assert ops[0]._dims == ((-1,) if kind == "uniform1d" else (-2, -1))
    for op in ops:
        x = op.random_input(generator=g)
        ref = op.A_adjoint(op.A(x))
        # Exact algebraic identity; only FFT round-off (~1e-16 relative) separates the two evaluations.
        assert float((op.A_adjoint_A(x) - ref).abs().max() / ref.abs().max()) < 1e-12


def test_multicoil_per_sample_maps_hold_a_fixed_batch():
    g = torch.Generator().manual_seed(2)
    m = uniform1d_mask(N, 4, generator=g)
    S = torch.stack([simulate_coil_sensitivities(3, N, g) for _ in range(3)])
    op = MultiCoilMRI(m, S)
    assert op.fixed_batch == 3 and op.n_coils == 3 and RealInput(op).fixed_batch == 3
    assert op.adjointness_test() < 1e-12  # batch defaults to fixed_batch
    x = op.random_input(3)
    y = op.A(x)
    for b in range(3):  # sample b sees maps b only
        single = MultiCoilMRI(m, S[b])
        assert torch.allclose(y[b : b + 1], single.A(x[b : b + 1]), atol=1e-6)
    with pytest.raises(ValueError, match="batch of 3"):
        op.A(op.random_input(2))


def test_ct_joseph_geometry_spacing_angles_and_gradients():
    n = 24
    # Any angles (unsorted, beyond 180°) and detector spacing keep the exact transpose.
    op = ParallelBeamCT(n, torch.tensor([200.0, 10.0, 95.0, 44.9, 45.0, 300.0]), det_spacing=0.5)
    assert op.n_det == math.ceil(math.sqrt(2) * n / 0.5)
    assert op.adjointness_test() < 1e-12
    # Joseph: two weights per ray and pixel row crossed, so nnz ≈ 2·V·N²·mean(max|cos|,|sin|)/spacing.
    full = ParallelBeamCT(n, sparse_view_angles(12), normalize=False)
    th = sparse_view_angles(12) * math.pi / 180
    expected = 2 * 12 * n * n * float(torch.maximum(th.cos().abs(), th.sin().abs()).mean())
    # Crossings next to the image edge have one weight inside and one outside: ~1/N of rows, 9 % at N = 24.
    assert full.nnz == pytest.approx(expected, rel=0.12)
    # A constant disc of radius r integrates to the chord 2√(r² − s²) on the central detector of every view.
    c = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
    disc = ((c[:, None] ** 2 + c[None, :] ** 2) <= 8.0**2).to(torch.float64)[None, None]
    sino = full.A(disc)
    mid = sino[0, 0, :, full.n_det // 2 - 1 : full.n_det // 2 + 1].mean(-1)
    assert torch.allclose(mid, torch.full_like(mid, 2 * math.sqrt(64 - 0.25)), rtol=0.06)  # pixelated disc edge
    # DPS differentiates A: autograd through the sparse product is the stored transpose.
    x = torch.randn(2, 1, n, n, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, *op.out_shape, dtype=torch.float64)
    (op.A(x) * y).sum().backward()
    assert torch.allclose(x.grad, op.A_adjoint(y), atol=1e-12)


def test_power_iteration_start_and_early_stop():
    op = ParallelBeamCT(16, sparse_view_angles(10), normalize=False)
    ones = torch.ones(1, *op.in_shape, dtype=torch.float64)
    ref = op.norm(n_iter=300)
    # The top eigenvector of RᵀR is positive (non-negative matrix): a constant start converges in a few steps.
    assert op.norm(n_iter=15, start=ones) == pytest.approx(ref, rel=1e-6)
    assert op.norm(n_iter=300, start=ones, rtol=1e-9) == pytest.approx(ref, rel=1e-8)
