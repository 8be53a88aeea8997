"""Fréchet distance between Gaussians fitted to feature sets (FID), computed stably in float64.

    FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr( (S1 S2)^(1/2) )

The usual implementation takes ``scipy.linalg.sqrtm(S1 @ S2)``. That product is not symmetric, so
sqrtm can return complex values or blow up when a covariance is singular (fewer samples than
feature dimensions, which is routine: 1000 samples of 2048-d Inception features). We use the
identity tr((S1 S2)^(1/2)) = tr((A S2 A)^(1/2)) with A = S1^(1/2): the matrix ``A S2 A`` is
symmetric positive semi-definite, so its square root's trace is the sum of the square roots of its
(real, clipped at zero) eigenvalues. Both square roots come from ``numpy.linalg.eigh``, which is
exact to float64 rounding and never produces complex numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.files import atomic_path


@dataclass(frozen=True)
class GaussianStats:
    """Mean and covariance of a feature set (float64), plus how many samples they summarise."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])


def feature_stats(features: np.ndarray) -> GaussianStats:
    """Mean and unbiased covariance (rows are samples) in float64."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need a (samples >= 2, dims) feature matrix, got shape {feats.shape}")
    mu = feats.mean(axis=0)
    centred = feats - mu
    sigma = centred.T @ centred / (feats.shape[0] - 1)
    return GaussianStats(mu=mu, sigma=sigma, count=int(feats.shape[0]))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a (numerically) positive semi-definite matrix."""
    sym = (matrix + matrix.T) / 2
    values, vectors = np.linalg.eigh(sym)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), symmetric float64 formulation."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    # Rounding can push an exact 0 (a set against itself) a hair below zero.
    return max(value, 0.0)


def fid_from_stats(a: GaussianStats, b: GaussianStats) -> float:
    if a.dim != b.dim:
        raise PipelineError(f"FID between {a.dim}-d and {b.dim}-d statistics: the feature extractors differ")
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def save_stats(path: str | Path, stats: GaussianStats) -> None:
    """Write ``mu``/``sigma``/``count`` as an .npz (the pytorch-fid / ADM key names), atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, mu=stats.mu, sigma=stats.sigma, count=np.int64(stats.count))


def load_stats(path: str | Path, expected_dim: int | None = None) -> GaussianStats:
    """Read statistics from an npz holding ``mu`` and ``sigma`` (ours, ADM's or pytorch-fid's)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"reference statistics {path} not found")
    try:
        with np.load(path) as data:
            mu = np.asarray(data["mu"], np.float64)
            sigma = np.asarray(data["sigma"], np.float64)
            count = int(data["count"]) if "count" in data else 0
    except KeyError as exc:
        raise PipelineError(f"{path} has no {exc} array; a reference npz needs 'mu' and 'sigma'") from exc
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{path} is not a readable npz file: {exc}") from exc
    dim = mu.shape[0] if mu.ndim == 1 else -1
    if mu.ndim != 1 or sigma.shape != (dim, dim):
        raise PipelineError(f"{path}: mu must be (d,) and sigma (d, d), got {mu.shape} and {sigma.shape}")
    if expected_dim is not None and dim != expected_dim:
        raise PipelineError(f"{path}: statistics are {dim}-d, expected {expected_dim}-d features")
    return GaussianStats(mu=mu, sigma=sigma, count=count)
