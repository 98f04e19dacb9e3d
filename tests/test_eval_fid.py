"""FID core: TF1 resize and rounding quantisation vs independent references, statistics, Fréchet distance,
the Inception path (with a stand-in network: torch-fidelity is never installed in CI) and domain FID."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn as nn

import lml_sampler.eval as ev
from lml_sampler.eval.extractors import INCEPTION_WEIGHTS_FILE


# ---------------------------------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------------------------------


def tf1_resize_reference(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TensorFlow 1.x resize_bilinear(align_corners=False), written from its definition (image_resizer_state.h /
    resize_bilinear_op.cc): in = out · (in_size / out_size) with float32 scale, lo = floor(in),
    hi = min(lo + 1, in_size − 1), value = top + (bottom − top)·dy with top/bottom lerped in x. Plain loops."""
    in_h, in_w = img.shape
    sy, sx = np.float32(in_h / out_h), np.float32(in_w / out_w)
    out = np.zeros((out_h, out_w), dtype=np.float64)
    for y in range(out_h):
        fy = np.float32(y) * sy
        y0 = int(np.floor(fy))
        y1 = min(y0 + 1, in_h - 1)
        dy = float(fy) - y0
        for x in range(out_w):
            fx = np.float32(x) * sx
            x0 = int(np.floor(fx))
            x1 = min(x0 + 1, in_w - 1)
            dx = float(fx) - x0
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * dx
            bot = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * dx
            out[y, x] = top + (bot - top) * dy
    return out


@pytest.mark.parametrize("in_hw,out_hw", [((8, 8), (37, 37)), ((16, 12), (29, 41)), ((32, 32), (11, 7)),
                                          ((5, 9), (5, 9))])
def test_resize_matches_tf1_reference(in_hw, out_hw):
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (2, 3, *in_hw), generator=g).float()
    out = ev.resize_bilinear_tf1(img, out_hw)
    assert out.shape == (2, 3, *out_hw)
    ref = tf1_resize_reference(img[1, 2].double().numpy(), *out_hw)
    # float32 interpolation of values in [0, 255]: a few ulps of 255 (~3e-5); 1e-3 is far below 1 grey level
    # and far below the difference to torch's half-pixel bilinear (checked next).
    np.testing.assert_allclose(out[1, 2].double().numpy(), ref, atol=1e-3, rtol=0)


def test_resize_differs_from_half_pixel_bilinear():
    """TF1 has no half-pixel offset: it must not equal torch's align_corners=False bilinear when upsampling."""
    img = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8) * 3
    ours = ev.resize_bilinear_tf1(img, (29, 29))
    torch_bilinear = torch.nn.functional.interpolate(img, size=(29, 29), mode="bilinear", align_corners=False)
    assert (ours - torch_bilinear).abs().max() > 1.0
    # the top-left output pixel is the top-left input pixel exactly (no offset)
    assert ours[0, 0, 0, 0] == img[0, 0, 0, 0]


def test_quantize_rounds_not_truncates():
    values = np.array([-1.0, -0.999, 0.0, 0.5, 0.99, 1.0, 1.5, -3.0])
    x = torch.tensor(values).reshape(1, 1, 2, 4)
    q = ev.quantize_uint8(x)
    # independent reference: numpy rounding (half to even) of the clipped [0, 255] value, as diffusers numpy_to_pil
    ref = np.round(np.clip((values + 1) / 2, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(q.flatten().numpy(), ref)
    # 0.99 in [-1, 1] -> 253.725: rounds to 254 where torchmetrics' normalize=True truncation gives 253
    assert q.flatten()[4] == 254 and int(((x.flatten()[4] + 1) / 2 * 255).to(torch.uint8)) == 253
    assert ev.quantize_uint8(q) is q
    with pytest.raises(TypeError):
        ev.quantize_uint8(torch.zeros(2, dtype=torch.int32))


def test_quantize_random_matches_numpy():
    x = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    q = ev.quantize_uint8(x, value_range=(0.0, 1.0))
    np.testing.assert_array_equal(q.numpy(), np.round(x.numpy() * 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------------------------------
# Statistics and Fréchet distance
# ---------------------------------------------------------------------------------------------------------------------


def _features(n, d, shift, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ a + shift


def test_frechet_matches_scipy_sqrtm():
    a, b = ev.compute_statistics(_features(300, 12, 0.0, 0)), ev.compute_statistics(_features(200, 12, 0.3, 1))
    covmean = scipy.linalg.sqrtm(a.sigma @ b.sigma).real
    ref = np.sum((a.mu - b.mu) ** 2) + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.trace(covmean)
    # both float64; sqrtm vs eigvals differ by rounding only (1e-10 relative on an O(1) value)
    assert ev.frechet_distance(a, b) == pytest.approx(ref, rel=1e-9, abs=1e-10)
    assert ev.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-10)


def test_stats_file_roundtrip_and_fid_against_saved_stats(tmp_path):
    fa, fb = _features(400, 16, 0.0, 2), _features(350, 16, 0.2, 3)
    direct = ev.frechet_distance(ev.compute_statistics(fa), ev.compute_statistics(fb))
    path = ev.save_statistics(tmp_path / "a.npz", ev.compute_statistics(fa), extractor="x")
    loaded, meta = ev.load_statistics(path, with_metadata=True)
    assert loaded.n == 400 and meta == {"extractor": "x"}
    with np.load(path) as data:  # pytorch-fid / clean-fid keys
        assert set(data.keys()) >= {"mu", "sigma"}
    # FID of set B against stats saved from set A equals FID(A, B) computed directly (same float64 numbers)
    assert ev.fid_from_features(fb, path) == pytest.approx(direct, rel=1e-12)
    # a pytorch-fid file (mu, sigma only) loads with n=None
    np.savez(tmp_path / "pf.npz", mu=loaded.mu, sigma=loaded.sigma)
    assert ev.load_statistics(tmp_path / "pf.npz").n is None
    with pytest.raises(ValueError, match="npz"):
        ev.save_statistics(tmp_path / "a.txt", loaded)
    with pytest.raises(FileNotFoundError):
        ev.load_statistics(tmp_path / "missing.npz")


def test_streaming_statistics_equal_two_pass():
    f = _features(257, 8, 5.0, 4)  # a large mean makes the one-pass formula lose digits in float32, not float64
    m = ev.FeatureStatistics(8)
    for chunk in f.split(50):
        m.update(chunk.float())
    s = m.compute()
    ref = ev.compute_statistics(f.float().double())
    assert s.n == 257
    np.testing.assert_allclose(s.mu, ref.mu, rtol=0, atol=1e-12)
    # one-pass float64 covariance: cancellation ~ eps·|μ|² = 2e-16·25 ≈ 5e-15, far below 1e-10
    np.testing.assert_allclose(s.sigma, ref.sigma, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="shape"):
        m.update(torch.zeros(3, 7))


# ---------------------------------------------------------------------------------------------------------------------
# Inception path with a stand-in network
# ---------------------------------------------------------------------------------------------------------------------

_LAYERS = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
           "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
           "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool")


class _Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = None

    def forward(self, x):
        self.seen = x.clone()
        return x


@pytest.fixture
def fake_torch_fidelity(monkeypatch):
    """A stand-in ``torch_fidelity.feature_extractor_inceptionv3`` whose net records its input and pools to 3-d."""
    created = {}

    class FakeInception(nn.Module):
        def __init__(self, name, features_list, feature_extractor_weights_path=None):
            super().__init__()
            created.update(name=name, features=features_list, weights=feature_extractor_weights_path)
            for layer in _LAYERS:
                setattr(self, layer, nn.Identity())
            self.Conv2d_1a_3x3 = _Recorder()
            self.AvgPool = nn.AdaptiveAvgPool2d(1)
            created["net"] = self

    pkg = types.ModuleType("torch_fidelity")
    mod = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    mod.FeatureExtractorInceptionV3 = FakeInception
    monkeypatch.setitem(sys.modules, "torch_fidelity", pkg)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", mod)
    return created


def test_inception_path_with_stand_in(tmp_path, fake_torch_fidelity, monkeypatch):
    weights = tmp_path / INCEPTION_WEIGHTS_FILE
    weights.write_bytes(b"stand-in")
    monkeypatch.delenv("LML_INCEPTION_WEIGHTS", raising=False)
    ext = ev.load_feature_extractor("inception", inception_weights=weights)
    assert fake_torch_fidelity["weights"] == str(weights) and fake_torch_fidelity["features"] == ["2048"]
    imgs = torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    feats = ext(imgs)
    seen = fake_torch_fidelity["net"].Conv2d_1a_3x3.seen
    # grey -> RGB, TF1 resize to 299 in float (no re-quantisation), then (x - 128) / 128
    expected = (ev.resize_bilinear_tf1(imgs.float().expand(-1, 3, -1, -1), (299, 299)) - 128) / 128
    assert seen.shape == (3, 3, 299, 299)
    torch.testing.assert_close(seen, expected, rtol=0, atol=0)
    assert feats.shape == (3, 3)
    with pytest.raises(TypeError, match="uint8"):
        ext(imgs.float())
    # full FID path against saved statistics
    ref = ev.save_statistics(tmp_path / "ref.npz", ev.compute_statistics(ev.extract_features(ext, imgs)))
    assert ev.fid_against_statistics(imgs, ref, ext) == pytest.approx(0.0, abs=1e-9)


def test_inception_weights_missing_message(tmp_path, fake_torch_fidelity, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("LML_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match="--inception-weights") as info:
        ev.load_feature_extractor("inception")
    assert INCEPTION_WEIGHTS_FILE in str(info.value) and "checkpoints" in str(info.value)
    # the torch-fidelity cache location is found
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / INCEPTION_WEIGHTS_FILE).write_bytes(b"x")
    assert ev.find_inception_weights() == cache / INCEPTION_WEIGHTS_FILE


def test_inception_without_torch_fidelity_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    with pytest.raises(ImportError, match=r"lml-sampler\[inception\]"):
        ev.InceptionV3Features()


# ---------------------------------------------------------------------------------------------------------------------
# Domain FID
# ---------------------------------------------------------------------------------------------------------------------


def test_domain_fid_ranks_noise_below_real():
    from lml_sampler.data.digits import digits_dataset

    try:
        ext = ev.load_feature_extractor("digits-features")
    except FileNotFoundError:
        ext = ev.load_feature_extractor("random-conv")
    train = ev.quantize_uint8(digits_dataset(16, "train")[:600])
    test = ev.quantize_uint8(digits_dataset(16, "test"))
    noisy = ev.quantize_uint8(digits_dataset(16, "test") + 0.5 * torch.randn(359, 1, 16, 16,
                                                                             generator=torch.Generator().manual_seed(0)))
    ref = ev.compute_statistics(ev.extract_features(ext, test))
    fid_real = ev.fid_from_features(ev.extract_features(ext, train), ref)
    fid_noisy = ev.fid_from_features(ev.extract_features(ext, noisy), ref)
    assert 0 < fid_real < fid_noisy


def test_torchmetrics_fid_with_preloaded_reference():
    ext = ev.load_feature_extractor("random-conv")
    g = torch.Generator().manual_seed(7)
    real = torch.randint(0, 256, (120, 1, 16, 16), dtype=torch.uint8, generator=g)
    fake = (real.float() * 0.8 + 20).round().to(torch.uint8)
    ref = ev.compute_statistics(ev.extract_features(ext, real))
    metric = ev.torchmetrics_fid(ext, ref, num_features=64)
    metric.update(fake, real=False)
    ours = ev.fid_from_features(ev.extract_features(ext, fake), ref)
    # torchmetrics computes in float64 but returns float32 (relative 6e-8) and its features pass through float32
    assert float(metric.compute()) == pytest.approx(ours, rel=1e-4)
    metric.reset()  # keeps the reference side
    metric.update(real, real=False)
    assert float(metric.compute()) == pytest.approx(0.0, abs=1e-3)
