"""KID, precision/recall, CLIP score and the jackknife standard errors, each against an independent reference on
synthetic features, with a negative control showing that the comparison would catch the nearest wrong answer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

import lml_sampler.eval as ev
from lml_sampler.eval.clip_score import CLIPEmbedder, clip_score
from lml_sampler.eval.kid import draw_subsets
from lml_sampler.eval.report import fmt_pm


def gaussian_sets(n=160, r=180, d=5, shift=0.4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(r, d))
    y = rng.normal(size=(n, d)) * 1.1
    y[:, 0] += shift
    return y, x


# ---------------------------------------------------------------------------------------------------------------------
# KID
# ---------------------------------------------------------------------------------------------------------------------


def mmd_unbiased_feature_map(a: np.ndarray, b: np.ndarray, gamma: float, coef: float = 1.0) -> float:
    """Unbiased MMD² for k(x, y) = (γxᵀy + c)³ without the kernel trick: with z = (√γ·x, √c), k = ⟨z⊗z⊗z, z'⊗z'⊗z'⟩,
    so Σ_{i≠j} k = ‖Σφ‖² − Σ‖φ‖² and the cross term is ⟨mean φ(a), mean φ(b)⟩ (explicit (d+1)³ features)."""
    def phi(x):
        z = np.concatenate([np.sqrt(gamma) * x, np.full((len(x), 1), np.sqrt(coef))], axis=1)
        return np.einsum("ni,nj,nk->nijk", z, z, z).reshape(len(x), -1)

    pa, pb = phi(a), phi(b)
    m, n = len(a), len(b)
    within_a = (pa.sum(0) @ pa.sum(0) - (pa * pa).sum()) / (m * (m - 1))
    within_b = (pb.sum(0) @ pb.sum(0) - (pb * pb).sum()) / (n * (n - 1))
    return float(within_a + within_b - 2.0 * pa.mean(0) @ pb.mean(0))


def test_kid_subsets_full_statistic_and_jackknife_match_an_explicit_feature_map():
    y, x = gaussian_sets()
    d = x.shape[1]
    res = ev.kernel_inception_distance(y, x, subsets=6, subset_size=70, seed=5, groups=8)
    real = draw_subsets(len(x), 70, 6, 5, side=0)
    fake = draw_subsets(len(y), 70, 6, 5, side=1)
    ref = np.array([mmd_unbiased_feature_map(x[a], y[b], 1.0 / d) for a, b in zip(real, fake)])
    # two float64 evaluations of sums of ~10⁴ terms of size O(1): agreement to ~1e-14; 1e-11 leaves room and is
    # 10⁶× below the values (~1e-2), so a wrong normalisation or a missed diagonal term fails by orders of magnitude
    np.testing.assert_allclose(res.values, ref, rtol=0, atol=1e-11)
    assert res.mean == pytest.approx(ref.mean(), abs=1e-11) and res.std == pytest.approx(ref.std(), abs=1e-11)
    assert res.full == pytest.approx(mmd_unbiased_feature_map(x, y, 1.0 / d), abs=1e-11)
    blocks = ev.jackknife_groups(len(y), 8)
    leave = [mmd_unbiased_feature_map(x, np.delete(y, np.arange(b.start, b.stop), 0), 1.0 / d) for b in blocks]
    np.testing.assert_allclose(res.leave_out, leave, rtol=0, atol=1e-11)
    # negative control: the biased V-statistic (diagonal kept) is off by far more than the tolerance
    k = lambda p, q: (p @ q.T / d + 1.0) ** 3  # noqa: E731
    biased = k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()
    assert abs(biased - res.full) > 1e3 * 1e-11


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_kid_matches_torchmetrics_kernel_inception_distance():
    from torchmetrics.image.kid import KernelInceptionDistance

    class Identity(torch.nn.Module):
        def forward(self, f):
            return f

    y, x = gaussian_sets(n=90, r=90)
    # with subset_size = N every subset is the whole set, so torchmetrics' unseeded subsets are irrelevant
    metric = KernelInceptionDistance(feature=Identity(), subsets=2, subset_size=90)
    metric.update(torch.from_numpy(x), real=True)
    metric.update(torch.from_numpy(y), real=False)
    mean, std = metric.compute()
    ours = ev.kernel_inception_distance(y, x, subsets=2, subset_size=90)
    # torchmetrics computes in the features' dtype (float64 here): same sums in another order, ~1e-16 relative
    assert ours.mean == pytest.approx(float(mean), rel=1e-12) and float(std) == pytest.approx(0.0, abs=1e-12)
    assert ours.mean == pytest.approx(ours.full, rel=1e-12)
    assert ours.mean != pytest.approx(float(mean) * 1.001, rel=1e-12)  # the tolerance resolves a 0.1 % error
    from torchmetrics.image.kid import poly_kernel

    a, b = torch.from_numpy(x[:7]), torch.from_numpy(y[:9])
    # the in-place kernel is torchmetrics' formula: same operations, same rounding
    assert torch.equal(ev.kid.poly_kernel(a, b, 3, 1 / 5, 1.0), poly_kernel(a, b, 3, 1 / 5, 1.0))


def test_kid_is_chunk_invariant_paired_across_cells_and_detects_a_shift():
    y, x = gaussian_sets(n=120, r=100, shift=1.0)
    a = ev.kernel_inception_distance(y, x, subsets=10, subset_size=50)
    b = ev.kernel_inception_distance(y, x, subsets=10, subset_size=50, max_chunk_bytes=8 * 220 * 7)  # 7-row blocks
    np.testing.assert_allclose(a.values, b.values, rtol=0, atol=1e-13)
    assert a.se == pytest.approx(b.se, rel=1e-10)
    # a cached reference gives the same numbers, and the generated subsets depend only on (seed, N, m, S)
    ref = ev.KIDReference(x, subsets=10, subset_size=50)
    c = ev.kernel_inception_distance(y, ref)
    np.testing.assert_allclose(c.values, a.values, rtol=0, atol=1e-13)
    same = ev.kernel_inception_distance(np.random.default_rng(9).normal(size=(120, 5)), ref)  # the reference's law
    assert a.mean > same.mean + 3 * np.hypot(a.se, same.se) and abs(same.mean) < 3 * same.se


def test_standard_errors_match_the_spread_over_fresh_draws():
    """The jackknife SEs of KID and FID predict the actual standard deviation over independent generated sets."""
    rng = np.random.default_rng(0)
    d, n = 6, 200
    x = rng.normal(size=(n, d))
    ref = ev.compute_statistics(x)
    kid_ref = ev.KIDReference(x, subsets=20, subset_size=100)
    kids, kid_ses, naive, fids, fid_ses = [], [], [], [], []
    for _ in range(150):
        y = rng.normal(size=(n, d))
        y[:, 0] += 0.3
        r = ev.kernel_inception_distance(y, kid_ref)
        kids.append(r.mean)
        kid_ses.append(r.se)
        naive.append(r.std / np.sqrt(r.subsets))
        fids.append(ev.frechet_distance(ev.compute_statistics(y), ref))
        fid_ses.append(ev.fid_jackknife(y, ref)[0])
    # 150 draws estimate an SD to ±6 % (1σ); the jackknife is consistent and slightly conservative: [0.8, 1.3]
    for values, ses in ((kids, kid_ses), (fids, fid_ses)):
        ratio = np.sqrt(np.mean(np.square(ses))) / np.std(values, ddof=1)
        assert 0.8 < ratio < 1.3, ratio
    # negative control: the subsets' own spread (std/√S) is not a standard error of KID; the check rejects it
    assert np.sqrt(np.mean(np.square(naive))) / np.std(kids, ddof=1) < 0.6


def test_kid_refuses_too_few_samples_and_mismatched_features():
    y, x = gaussian_sets(n=40, r=60)
    with pytest.raises(ValueError, match=r"subset size 50 .* 40 generated .* <= 40 \(--kid-subset-size\)"):
        ev.kernel_inception_distance(y, x, subset_size=50)
    assert ev.kernel_inception_distance(y, x, subsets=3).subset_size == 40  # default: 1000 capped by the sets
    with pytest.raises(ValueError, match="different feature dimensions .* same --extractor"):
        ev.kernel_inception_distance(y[:, :3], x)


# ---------------------------------------------------------------------------------------------------------------------
# FID standard error
# ---------------------------------------------------------------------------------------------------------------------


def test_fid_jackknife_replicates_equal_recomputed_fids():
    y, x = gaussian_sets(n=150, r=200, d=7)
    ref = ev.compute_statistics(x)
    assert ev.FrechetReference(ref)(torch.from_numpy(ev.compute_statistics(y).mu),
                                    torch.from_numpy(ev.compute_statistics(y).sigma)) == pytest.approx(
        ev.frechet_distance(ev.compute_statistics(y), ref), rel=1e-10)
    se, values = ev.fid_jackknife(y, ref, groups=10)
    blocks = ev.jackknife_groups(len(y), 10)
    recomputed = [ev.fid_from_features(np.delete(y, np.arange(b.start, b.stop), 0), ref) for b in blocks]
    # one-pass sums minus the group vs a two-pass covariance, symmetric vs general eigenvalues: ~1e-13 relative
    np.testing.assert_allclose(values, recomputed, rtol=1e-9)
    assert se == pytest.approx(np.sqrt(9 / 10 * np.sum((values - values.mean()) ** 2)), rel=1e-12)


def test_delete_one_jackknife_of_a_mean_is_the_textbook_standard_error():
    v = np.random.default_rng(3).normal(size=37)
    leave_one_out = (v.sum() - v) / (len(v) - 1)
    assert ev.jackknife_se(leave_one_out) == pytest.approx(v.std(ddof=1) / np.sqrt(len(v)), rel=1e-12)
    blocks = ev.jackknife_groups(103, 20)
    assert sorted(b.stop - b.start for b in blocks) == [5] * 17 + [6] * 3
    assert blocks[0].start == 0 and blocks[-1].stop == 103 and all(a.stop == b.start for a, b in zip(blocks, blocks[1:]))
    with pytest.raises(ValueError, match="groups"):
        ev.jackknife_groups(10, 1)


def test_formatting_of_value_and_standard_error():
    assert fmt_pm(12.4414, 0.3512) == "12.44 ± 0.35"
    assert fmt_pm(7.401, 1.53) == "7.4 ± 1.5"
    assert fmt_pm(123.4, 15.3) == "123 ± 15"
    assert fmt_pm(0.0051234, 0.00041, 1e3) == "5.12 ± 0.41"
    assert fmt_pm(1.352, 0.0) == "1.352" and fmt_pm(None, 1.0) == "–"


# ---------------------------------------------------------------------------------------------------------------------
# Precision / recall
# ---------------------------------------------------------------------------------------------------------------------


def prdc_reference(y: np.ndarray, x: np.ndarray, k: int) -> tuple[float, float, float, float]:
    """Brute force from the definitions: scipy's direct Euclidean distances, np.partition for the k-th neighbour
    (index k counts the sample itself at distance 0)."""
    rx = np.partition(cdist(x, x), k, axis=1)[:, k]
    ry = np.partition(cdist(y, y), k, axis=1)[:, k]
    d = cdist(y, x)
    return ((d <= rx[None]).any(1).mean(), (d <= ry[:, None]).any(0).mean(), (d <= rx[None]).sum() / (k * len(y)),
            (d.min(0) <= rx).mean())


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_density_coverage_match_brute_force(k):
    y, x = gaussian_sets(n=210, r=170, d=6, shift=0.5)
    res = ev.precision_recall(y, x, k, max_chunk_bytes=10 * 210 * 9)  # 9-row blocks: the chunking is exercised
    ref = prdc_reference(y, x, k)
    # counts of a continuous sample: no distance sits within rounding of a radius, so the fractions are exact
    assert (res.precision, res.recall, res.density, res.coverage) == pytest.approx(ref, abs=1e-15)
    other = prdc_reference(y, x, k + 1)
    assert (res.precision, res.recall) != pytest.approx(other[:2], abs=1e-15)  # k matters: a k-off bug would fail


def test_precision_and_recall_separate_fidelity_from_diversity():
    rng = np.random.default_rng(1)
    centres = np.eye(4) * 6.0
    x = np.concatenate([c + rng.normal(size=(100, 4)) for c in centres])
    dropped = np.concatenate([c + rng.normal(size=(200, 4)) for c in centres[:2]])  # half the modes: low recall
    noisy = np.concatenate([c + rng.normal(size=(80, 4)) for c in centres] + [rng.normal(size=(80, 4)) * 8])
    full = ev.precision_recall(np.concatenate([c + rng.normal(size=(100, 4)) for c in centres]), x)
    a, b = ev.precision_recall(dropped, x), ev.precision_recall(noisy, x)
    assert full.precision > 0.8 and full.recall > 0.8
    assert a.precision > 0.8 and a.recall < 0.55 and a.coverage < 0.55
    assert b.precision < full.precision - 0.1 and b.recall > 0.8


def test_precision_recall_refuses_a_k_too_large():
    y, x = gaussian_sets(n=4, r=50)
    with pytest.raises(ValueError, match=r"k = 5 needs more than 5 samples .* 4 generated .* k <= 3 \(--pr-k\)"):
        ev.precision_recall(y, x, 5)
    with pytest.raises(ValueError, match="k must be an int"):
        ev.precision_recall(y, x, 0)


# ---------------------------------------------------------------------------------------------------------------------
# CLIP score
# ---------------------------------------------------------------------------------------------------------------------


def save_tiny_clip(folder, with_processor: bool = True, max_positions: int = 16, seed: int = 3):
    """A random 1-layer CLIP with a byte-level BPE tokenizer (no merges) and a 32×32 image processor, saved locally.
    Seed 3 gives cosines of both signs on the test's images and prompts."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    folder.mkdir(parents=True, exist_ok=True)
    tok = tiny_clip_tokenizer(folder, max_positions)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                      num_attention_heads=2, num_hidden_layers=1, max_position_embeddings=max_positions,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id),
                     vision_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                        num_hidden_layers=1, image_size=32, patch_size=8), projection_dim=8)
    torch.manual_seed(seed)
    CLIPModel(cfg).save_pretrained(folder)
    if with_processor:
        ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(folder)
    else:
        for f in ("vocab.json", "merges.txt"):
            (folder / f).unlink()
    return folder


def tiny_clip_tokenizer(folder, max_positions: int = 16):
    """CLIP's byte-level BPE with every byte a token and no merges: a working tokenizer built offline."""
    from transformers import CLIPTokenizer

    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, extra = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    chars = [chr(c) for c in cs]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_positions)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def test_clip_score_matches_clip_model_forward(tiny_clip):
    from transformers import CLIPModel, CLIPProcessor

    emb = CLIPEmbedder(tiny_clip, batch_size=3)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (7, 3, 20, 24), dtype=torch.uint8, generator=g).numpy()
    prompts = ["a red square", "two dogs", "x", "a photograph of digits", "blue", "the end", "zz"]
    mean, se, scores = clip_score(emb.images(images), emb.texts(prompts))
    # independent path: CLIPModel.forward normalises and returns logit_scale·cos for every image-text pair
    model, proc = CLIPModel.from_pretrained(tiny_clip).eval(), CLIPProcessor.from_pretrained(tiny_clip)
    inputs = proc(text=prompts, images=list(images.transpose(0, 2, 3, 1)), return_tensors="pt", padding=True,
                  truncation=True, max_length=16)  # long prompts are cut to the context length, as torchmetrics does
    with torch.no_grad():
        out = model(**inputs)
    cos = (out.logits_per_image / model.logit_scale.exp()).diagonal().double().detach().numpy()
    ref = 100 * np.maximum(cos, 0)
    assert (cos < 0).any() and (cos > 0).any()  # the clamp at 0 is exercised
    # float32 embeddings: cosines agree to ~1e-7; ×100 → 1e-5, far below the spread of the scores (~10)
    np.testing.assert_allclose(scores, ref, atol=1e-4, rtol=0)
    assert mean == pytest.approx(ref.mean(), abs=1e-4) and se == pytest.approx(ref.std(ddof=1) / np.sqrt(7), rel=1e-3)
    assert not np.allclose(scores, 100 * np.abs(cos), atol=1e-4)  # negative control: |cos| would be caught
    # grey images are repeated to RGB
    grey = images[:, :1]
    np.testing.assert_allclose(emb.images(grey), emb.images(np.repeat(grey, 3, axis=1)), atol=1e-6)


def test_clip_folder_without_processor_is_refused(tmp_path):
    folder = save_tiny_clip(tmp_path / "weights-only", with_processor=False)
    with pytest.raises(ValueError, match="no usable CLIP processor .* CLIPProcessor.*save_pretrained"):
        CLIPEmbedder(folder)
