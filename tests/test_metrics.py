"""FID, precision/recall, Inception Score and the scoring glue (pipeline.metrics)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from pipeline.errors import PipelineError
from pipeline.metrics import METRIC_KEYS, FeatureSet, load_reference, save_reference, score
from pipeline.metrics.fid import (
    GaussianStats,
    feature_stats,
    fid_from_stats,
    frechet_distance,
    load_stats,
    save_stats,
)
from pipeline.metrics.inception import inception_score, softmax
from pipeline.metrics.precision_recall import inside_manifold, knn_radii, precision_recall


def scipy_reference_fid(mu1, sigma1, mu2, sigma2) -> float:
    """The classic pytorch-fid formula: sqrtm of the (non-symmetric) product."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real))


def random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    """A well-conditioned covariance (eigenvalues in [0.5, 2])."""
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return (q * rng.uniform(0.5, 2.0, size=dim)) @ q.T


# --------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------


# One draw at 128 dimensions: scipy's sqrtm takes about a second there, against milliseconds at 32.
@pytest.mark.parametrize(("dim", "draws"), [(4, 3), (32, 3), (128, 1)])
def test_fid_matches_the_scipy_sqrtm_formula_on_well_conditioned_gaussians(dim, draws):
    rng = np.random.default_rng(dim)
    for _ in range(draws):
        mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
        sigma1, sigma2 = random_spd(rng, dim), random_spd(rng, dim)
        expected = scipy_reference_fid(mu1, sigma1, mu2, sigma2)
        assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-6)


def test_fid_closed_form_for_diagonal_covariances():
    # For diagonal covariances, FID = |mu1 - mu2|^2 + sum (s1 - s2)^2 with s the standard deviations.
    s1, s2 = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 0.5])
    mu1, mu2 = np.zeros(3), np.array([1.0, -1.0, 2.0])
    expected = 6.0 + float(((s1 - s2) ** 2).sum())
    assert frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(expected, rel=1e-12)


def test_fid_of_a_set_against_itself_is_zero():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(500, 64)) @ rng.normal(size=(64, 64))
    stats = feature_stats(features)
    value = frechet_distance(stats.mu, stats.sigma, stats.mu, stats.sigma)
    assert 0.0 <= value < 1e-8 * np.trace(stats.sigma)


def test_fid_is_finite_with_fewer_samples_than_dimensions():
    rng = np.random.default_rng(1)
    a, b = feature_stats(rng.normal(size=(20, 256))), feature_stats(rng.normal(size=(30, 256)) + 0.5)
    value = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    assert np.isfinite(value) and value > 0
    # the same singular covariance against itself is still ~0, not NaN
    assert frechet_distance(a.mu, a.sigma, a.mu, a.sigma) == pytest.approx(0.0, abs=1e-8)


def test_fid_grows_with_the_distribution_shift():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(2000, 16))
    ref = feature_stats(base)
    values = [frechet_distance(ref.mu, ref.sigma, *_mu_sigma(base + shift)) for shift in (0.1, 0.5, 1.0)]
    assert values == sorted(values)
    assert values[-1] == pytest.approx(16.0, rel=0.01)  # |shift|^2 summed over 16 dims


def _mu_sigma(x):
    stats = feature_stats(x)
    return stats.mu, stats.sigma


def test_feature_stats_are_float64_mean_and_unbiased_covariance():
    x = np.random.default_rng(3).normal(size=(50, 5)).astype(np.float32)
    stats = feature_stats(x)
    assert stats.mu.dtype == np.float64 and stats.count == 50
    np.testing.assert_allclose(stats.sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)
    with pytest.raises(ValueError):
        feature_stats(x[:1])


def test_stats_npz_round_trip_and_shape_checks(tmp_path):
    stats = feature_stats(np.random.default_rng(4).normal(size=(40, 8)))
    save_stats(tmp_path / "ref.npz", stats)
    loaded = load_stats(tmp_path / "ref.npz", expected_dim=8)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert loaded.count == 40
    with pytest.raises(PipelineError, match="expected 2048"):
        load_stats(tmp_path / "ref.npz", expected_dim=2048)
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3))
    with pytest.raises(PipelineError, match="sigma"):
        load_stats(tmp_path / "bad.npz")
    with pytest.raises(PipelineError, match="not found"):
        load_stats(tmp_path / "missing.npz")


# --------------------------------------------------------------------------------------------
# Precision / recall
# --------------------------------------------------------------------------------------------


def _line(points) -> np.ndarray:
    """1-D points embedded in 3-D (extra zero coordinates must not matter)."""
    x = np.zeros((len(points), 3))
    x[:, 0] = points
    return x


def test_knn_radii_on_a_grid():
    radii = knn_radii(_line(np.arange(10.0)), k=3)
    # interior points: neighbours at 1, 1, 2 -> radius 2; the ends: 1, 2, 3 -> radius 3
    assert radii[0] == pytest.approx(3.0) and radii[-1] == pytest.approx(3.0)
    np.testing.assert_allclose(radii[3:7], 2.0)
    assert knn_radii(_line(np.arange(10.0)), k=1)[5] == pytest.approx(1.0)


def test_precision_recall_on_a_toy_line_with_a_known_answer():
    real = _line(np.arange(100.0))  # 0, 1, ..., 99: k=3 radii 2 (3 at the ends)
    near = np.arange(50) + 0.5  # 0.5 .. 49.5: inside the real manifold
    far = 1000.0 + 0.01 * np.arange(50)  # a tight clump far away: outside it
    generated = _line(np.concatenate([near, far]))
    result = precision_recall(real, generated, k=3)
    assert result.precision == pytest.approx(0.5)
    # generated balls: radius 2 around 1.5..48.5, radius 3 around the ends 0.5 and 49.5 (the far
    # clump's radii are 0.03). They cover the real points 0..52: recall 53/100.
    assert result.recall == pytest.approx(0.53)


def test_precision_recall_identical_and_disjoint_sets():
    rng = np.random.default_rng(5)
    real = rng.normal(size=(300, 8))
    same = precision_recall(real, real.copy(), k=3)
    assert same.precision == 1.0 and same.recall == 1.0
    apart = precision_recall(real, real + 100.0, k=3)
    assert apart.precision == 0.0 and apart.recall == 0.0


def test_precision_recall_detects_mode_dropping_and_low_fidelity():
    rng = np.random.default_rng(6)
    centres = np.eye(4) * 20
    real = np.concatenate([c + rng.normal(size=(200, 4)) for c in centres])
    faithful = np.concatenate([c + rng.normal(size=(200, 4)) for c in centres])
    full = precision_recall(real, faithful, k=3)
    assert full.precision > 0.9 and full.recall > 0.9
    dropped = np.concatenate([c + rng.normal(size=(400, 4)) for c in centres[:2]])  # two modes only
    result = precision_recall(real, dropped, k=3)
    assert result.precision > 0.9 and result.recall < 0.55
    blurry = real.mean(0) + rng.normal(size=(800, 4)) * 8  # wide noise: mostly off the manifold
    assert precision_recall(real, blurry, k=3).precision < 0.2


def test_manifold_membership_matches_brute_force():
    rng = np.random.default_rng(7)
    support, queries = rng.normal(size=(120, 6)), rng.normal(size=(90, 6)) * 1.3
    radii = knn_radii(support, k=3)
    distances = np.linalg.norm(queries[:, None] - support[None], axis=-1)
    expected = (distances <= radii[None]).any(axis=1)
    np.testing.assert_array_equal(inside_manifold(queries, support, radii, chunk=17), expected)
    brute_radii = np.sort(np.linalg.norm(support[:, None] - support[None], axis=-1), axis=1)[:, 3]
    np.testing.assert_allclose(radii, brute_radii, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Inception Score
# --------------------------------------------------------------------------------------------


def test_inception_score_known_values():
    # ADM's IS of logits (details in tests/test_metrics_inception.py).
    assert inception_score(np.zeros((100, 10))) == pytest.approx(1.0)  # uniform predictions
    confident = 50.0 * np.eye(10)[np.arange(100) % 10]  # one-hot, every class equally often
    assert inception_score(confident) == pytest.approx(10.0, rel=1e-6)
    logits = np.random.default_rng(8).normal(size=(50, 7))
    np.testing.assert_allclose(softmax(logits).sum(1), 1.0)
    assert 1.0 <= inception_score(logits, split_size=10) <= 7.0


# --------------------------------------------------------------------------------------------
# Scoring glue
# --------------------------------------------------------------------------------------------


def _feature_set(rng, n, shift=0.0, classes=4, with_inception=False) -> FeatureSet:
    labels = np.arange(n) % classes
    logits = np.eye(classes)[labels] * 5 + rng.normal(size=(n, classes))
    return FeatureSet(
        domain=(rng.normal(size=(n, 8)) + shift).astype(np.float32),
        logits=logits.astype(np.float32),
        labels=labels,
        inception=rng.normal(size=(n, 16)).astype(np.float32) if with_inception else None,
    )


def test_score_has_the_fixed_keys_and_null_inception_when_off(tmp_path):
    rng = np.random.default_rng(9)
    reference = save_reference(tmp_path / "ref", _feature_set(rng, 200), {"split": "val"})
    loaded = load_reference(tmp_path / "ref", need_inception=False)
    np.testing.assert_array_equal(loaded.domain, reference.domain)
    np.testing.assert_allclose(loaded.domain_stats.sigma, reference.domain_stats.sigma)

    result = score(_feature_set(rng, 120, shift=0.3), loaded, pr_k=3, sampling_images_per_s=12.5)
    assert tuple(result) == METRIC_KEYS
    assert result["fid_inception"] is None and result["inception_score"] is None
    assert result["n_samples"] == 120 and result["sampling_images_per_s"] == 12.5
    assert result["class_accuracy"] > 0.9
    assert result["fid"] > 0 and 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1

    with pytest.raises(PipelineError, match="eval.inception is true"):
        load_reference(tmp_path / "ref", need_inception=True)


def test_score_uses_inception_features_and_npz_statistics_when_on(tmp_path, monkeypatch):
    # 16-d stand-ins for the 2048-d pool3 features keep the eigendecompositions fast.
    monkeypatch.setattr("pipeline.metrics.INCEPTION_DIM", 16)
    rng = np.random.default_rng(10)
    ref_features = _feature_set(rng, 60, with_inception=True)
    override = GaussianStats(mu=np.full(16, 5.0), sigma=np.eye(16), count=50000)
    save_reference(tmp_path / "ref", ref_features, {}, inception_stats=override)
    reference = load_reference(tmp_path / "ref", need_inception=True)
    np.testing.assert_array_equal(reference.inception_stats.mu, override.mu)  # FID against the npz
    np.testing.assert_array_equal(reference.inception, ref_features.inception)  # features for P/R
    result = score(_feature_set(rng, 40, with_inception=True), reference, pr_k=3)
    assert result["fid_inception"] > 16 * 20  # mean 0 vs 5 in 16 dims dominates
    assert result["inception_score"] is None


def test_bootstrap_standard_error_of_the_fid_shrinks_with_the_sample_size():
    from pipeline.metrics import bootstrap_fid_se

    rng = np.random.default_rng(0)
    reference = feature_stats(rng.normal(size=(4000, 8)))
    small, large = rng.normal(0.2, 1.0, size=(250, 8)), rng.normal(0.2, 1.0, size=(4000, 8))
    se_small, se_large = bootstrap_fid_se(small, reference, 100), bootstrap_fid_se(large, reference, 100)
    assert se_small == bootstrap_fid_se(small, reference, 100)  # deterministic for a seed
    assert se_small != bootstrap_fid_se(small, reference, 100, seed=1)
    # Sixteen times the samples: about a quarter of the noise (1 / sqrt(16)), well below half.
    assert 0 < se_large < 0.5 * se_small


def test_fid_subsets_are_nested_prefixes_and_show_the_small_sample_bias():
    from pipeline.metrics import fid_subsets

    rng = np.random.default_rng(1)
    reference = feature_stats(rng.normal(size=(20_000, 32)))
    features = rng.normal(size=(6_000, 32))  # the same distribution: only finite-n bias remains
    subsets = fid_subsets(features, reference)
    assert list(subsets) == ["1000", "2000", "5000"]  # sizes below the 6,000 scored
    full = fid_from_stats(feature_stats(features), reference)
    # FID's bias falls roughly like 1/n: each subset scores worse than the larger ones.
    assert subsets["1000"] > subsets["2000"] > subsets["5000"] > full
    assert fid_subsets(features[:1500], reference).keys() == {"1000"}


def test_score_equals_library_recomputations() -> None:
    """Every number of an eval file recomputed independently on the same features: FID with
    scipy's ``sqrtm`` and ``np.cov`` (pytorch-fid's formula), the subsets as nested prefixes of
    one permutation, precision and recall by brute force, accuracy from the logits."""
    from pipeline.metrics import SUBSET_SEED, Reference
    from pipeline.metrics.fid import feature_stats

    rng = np.random.default_rng(3)
    real = rng.normal(size=(600, 6))
    generated = rng.normal(loc=0.3, scale=1.2, size=(2400, 6))
    logits = rng.normal(size=(2400, 4))
    labels = rng.integers(0, 4, 2400)
    reference = Reference(real.astype(np.float32), feature_stats(real.astype(np.float32)))
    result = score(FeatureSet(generated.astype(np.float32), logits, labels), reference, pr_k=3)

    def fid(a: np.ndarray, b: np.ndarray) -> float:
        mu1, mu2 = a.mean(0), b.mean(0)
        s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        root = scipy.linalg.sqrtm(s1 @ s2).real
        return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))

    gen32, real32 = (x.astype(np.float32).astype(np.float64) for x in (generated, real))  # as scored
    assert result["fid"] == pytest.approx(fid(gen32, real32), rel=1e-6)
    order = np.random.default_rng(SUBSET_SEED).permutation(2400)
    assert set(result["fid_subsets"]) == {"1000", "2000"}  # below n only
    for n in (1000, 2000):
        assert result["fid_subsets"][str(n)] == pytest.approx(fid(gen32[order[:n]], real32), rel=1e-6)

    def radii(points: np.ndarray) -> np.ndarray:
        distances = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
        return np.sort(distances, axis=1)[:, 3]  # index 0 is the point itself: the 3rd neighbour

    def covered(queries: np.ndarray, support: np.ndarray) -> float:
        distances = np.sqrt(((queries[:, None] - support[None]) ** 2).sum(-1))
        return float((distances <= radii(support)[None]).any(1).mean())

    assert result["precision"] == pytest.approx(covered(gen32, real32), abs=1e-9)
    assert result["recall"] == pytest.approx(covered(real32, gen32), abs=1e-9)
    assert result["class_accuracy"] == pytest.approx(float((logits.argmax(1) == labels).mean()))
    assert result["n_samples"] == 2400 and result["fid_small_sample"] is True
