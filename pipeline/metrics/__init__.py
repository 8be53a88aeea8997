"""Evaluation metrics shared by the ``reference`` and ``evaluate`` stages.

- :mod:`pipeline.metrics.fid`: Gaussian statistics and the Fréchet distance (float64, symmetric);
- :mod:`pipeline.metrics.precision_recall`: Kynkäänniemi et al. k-NN manifolds (FAISS radii);
- :mod:`pipeline.metrics.classifier`: the domain CNN (features for the domain FID, logits for
  class accuracy);
- :mod:`pipeline.metrics.inception`: the offline TF-ported InceptionV3 (standard FID) and ADM's
  Inception Score formula;
- :mod:`pipeline.metrics.inception_pt`: the project's port of the same network in the
  ``pt_inception-2015-12-05`` state-dict layout, whose 1008-way logits give the Inception Score
  (``eval.inception_weights``).

This module ties them together: one pass over image batches extracts every feature set
(:func:`extract_features`), the reference features are saved and loaded as npz files
(:func:`save_reference` / :func:`load_reference`), and :func:`score` turns generated features plus
the reference into the fixed metric keys of ``metrics/eval_<variant>.json``.

Feature spaces: the domain FID always uses the classifier features. Precision/recall use the
Inception features when ``eval.inception`` is on (as ADM / MaskGIT report them on ImageNet) and
the classifier features otherwise. The Inception Score is computed on generated (and
``evaluate_real``) images only, from the pt_inception port's logits; the FID features stay those
of the TorchScript extractor, so setting ``eval.inception_weights`` never changes the FIDs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.files import atomic_dir
from pipeline.metrics.classifier import DomainClassifier, accuracy, to_unit
from pipeline.metrics.fid import GaussianStats, feature_stats, fid_from_stats, load_stats
from pipeline.metrics.inception import INCEPTION_DIM, InceptionExtractor, inception_score
from pipeline.metrics.precision_recall import precision_recall
from pipeline.progress import progress_bar

if TYPE_CHECKING:
    from pipeline.metrics.inception_pt import PtInceptionExtractor

log = logging.getLogger(__name__)

METRIC_KEYS = (
    "fid",
    "fid_se",
    "fid_inception",
    "inception_score",
    "precision",
    "recall",
    "class_accuracy",
    "n_samples",
    "fid_small_sample",
    "fid_subsets",
    "sampling_images_per_s",
)
# The sample size of the report's experiments. FID is biased upward at fewer images, by an amount
# that differs between models (at 1,000 images two models 0.3 apart at 10,000 looked 2.3 apart), so
# a score below it is flagged as a small-sample estimate, comparable only at equal n.
FULL_SAMPLE = 10_000
# FID of nested uniform subsets of the scored images: the bias at these n, from the same images.
SUBSET_SIZES = (1_000, 2_000, 5_000)
SUBSET_SEED = 0
DOMAIN_FILE = "domain.npz"
INCEPTION_FILE = "inception.npz"
INFO_FILE = "info.json"


@dataclass(frozen=True)
class FeatureSet:
    """Everything measured on one image set (rows aligned)."""

    domain: np.ndarray  # (N, F) classifier penultimate features
    logits: np.ndarray  # (N, K) classifier logits
    labels: np.ndarray  # (N,) true (real) or requested (generated) class
    inception: np.ndarray | None = None  # (N, 2048) pool3 features, when enabled
    inception_logits: np.ndarray | None = None  # (N, 1008) unbiased pt_inception logits (for IS)

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def concat(cls, parts: Sequence[FeatureSet]) -> FeatureSet:
        """One FeatureSet from consecutive parts (rows in the order given)."""
        return cls(
            domain=np.concatenate([p.domain for p in parts]),
            logits=np.concatenate([p.logits for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            inception=None if parts[0].inception is None else np.concatenate([p.inception for p in parts]),
            inception_logits=(None if parts[0].inception_logits is None
                              else np.concatenate([p.inception_logits for p in parts])),
        )


@torch.inference_mode()
def extract_features(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    classifier: DomainClassifier,
    inception: InceptionExtractor | None = None,
    device: str | torch.device = "cpu",
    total: int | None = None,
    desc: str = "features",
    inception_classifier: PtInceptionExtractor | None = None,
) -> FeatureSet:
    """One pass over (uint8 images (B, C, H, W), labels (B,)) batches through every extractor.

    ``inception`` gives the pool3 features (FID, precision/recall); ``inception_classifier`` the
    1008-way logits of the pt_inception port (Inception Score).
    """
    classifier.eval()
    domain, logits, labels, pool3, class_logits = [], [], [], [], []
    with progress_bar(total=total, desc=desc, unit="img") as progress:
        for images, batch_labels in batches:
            features, z = classifier.features_and_logits(to_unit(images.to(device)))
            domain.append(features.float().cpu().numpy())
            logits.append(z.float().cpu().numpy())
            labels.append(np.asarray(batch_labels, dtype=np.int64))
            if inception is not None:
                pool3.append(inception(images))
            if inception_classifier is not None:
                class_logits.append(inception_classifier(images))
            progress.update(len(images))
    if not labels:
        raise PipelineError("no images to evaluate")
    return FeatureSet(
        domain=np.concatenate(domain),
        logits=np.concatenate(logits),
        labels=np.concatenate(labels),
        inception=np.concatenate(pool3) if inception is not None else None,
        inception_logits=np.concatenate(class_logits) if inception_classifier is not None else None,
    )


# --------------------------------------------------------------------------------------------
# The cached reference (data/reference/)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    domain: np.ndarray
    domain_stats: GaussianStats
    inception: np.ndarray | None = None
    inception_stats: GaussianStats | None = None


def _save_npz(path: Path, features: np.ndarray, stats: GaussianStats, **extra: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, features=features.astype(np.float32), mu=stats.mu, sigma=stats.sigma,
                 count=np.int64(stats.count), **extra)


def save_reference(
    directory: str | Path,
    features: FeatureSet,
    info: dict[str, Any],
    inception_stats: GaussianStats | None = None,
) -> Reference:
    """Write ``domain.npz`` (+ ``inception.npz``) and ``info.json`` atomically as one directory.

    ``inception_stats`` overrides the statistics computed from the reference Inception features
    (``eval.reference_npz``: ADM's ImageNet reference batch); the features are kept for recall.
    """
    domain_stats = feature_stats(features.domain)
    if features.inception is not None and inception_stats is None:
        inception_stats = feature_stats(features.inception)
    with atomic_dir(directory) as tmp:
        _save_npz(tmp / DOMAIN_FILE, features.domain, domain_stats, labels=features.labels)
        if features.inception is not None and inception_stats is not None:
            _save_npz(tmp / INCEPTION_FILE, features.inception, inception_stats)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return Reference(features.domain, domain_stats, features.inception, inception_stats)


def _load_features(path: Path) -> tuple[np.ndarray, GaussianStats]:
    stats = load_stats(path)
    with np.load(path) as data:
        features = np.asarray(data["features"], np.float32)
    return features, stats


def load_reference(directory: str | Path, need_inception: bool) -> Reference:
    directory = Path(directory)
    domain_path = directory / DOMAIN_FILE
    if not domain_path.is_file():
        raise PipelineError(f"{domain_path} not found: run `dvc repro reference`")
    domain, domain_stats = _load_features(domain_path)
    inception = inception_stats = None
    if need_inception:
        path = directory / INCEPTION_FILE
        if not path.is_file():
            raise PipelineError(
                f"{path} not found although eval.inception is true: run `dvc repro reference`"
            )
        inception, inception_stats = _load_features(path)
        if inception_stats.dim != INCEPTION_DIM:
            raise PipelineError(f"{path}: {inception_stats.dim}-d statistics, expected {INCEPTION_DIM}")
    return Reference(domain, domain_stats, inception, inception_stats)


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def score(
    generated: FeatureSet,
    reference: Reference,
    pr_k: int,
    device: str | torch.device = "cpu",
    sampling_images_per_s: float | None = None,
    bootstrap: int = 0,
) -> dict[str, float | int | None]:
    """The fixed metric keys of ``metrics/eval_*.json`` (Inception keys null when it is off).

    ``fid_se`` is the bootstrap standard error of ``fid`` over ``bootstrap`` resamples of the
    generated features (null when 0): the sampling noise of this number, not of the model.
    ``fid_small_sample`` flags fewer than FULL_SAMPLE images; ``fid_subsets`` scores nested
    subsets of them (:func:`fid_subsets`), which shows how far the score still moves with n.

    ``inception_score`` is ADM's IS (:func:`pipeline.metrics.inception.inception_score`) of
    ``generated.inception_logits``, null when those were not extracted.
    """
    use_inception = generated.inception is not None
    if use_inception and reference.inception is None:
        raise PipelineError("Inception features were extracted but the reference has none: re-run reference")
    fid = fid_from_stats(feature_stats(generated.domain), reference.domain_stats)
    fid_inception = None
    if use_inception:
        assert reference.inception_stats is not None
        fid_inception = fid_from_stats(feature_stats(generated.inception), reference.inception_stats)
    if use_inception:
        pr = precision_recall(reference.inception, generated.inception, k=pr_k, device=device)
    else:
        pr = precision_recall(reference.domain, generated.domain, k=pr_k, device=device)
    score_is = None if generated.inception_logits is None else inception_score(generated.inception_logits)
    result: dict[str, float | int | None] = {
        "fid": fid,
        "fid_se": bootstrap_fid_se(generated.domain, reference.domain_stats, bootstrap) if bootstrap else None,
        "fid_inception": fid_inception,
        # Needs the pt_inception port's classifier (eval.inception_weights); null otherwise, the key
        # stays so every eval file has the same shape.
        "inception_score": score_is,
        "precision": pr.precision,
        "recall": pr.recall,
        "class_accuracy": accuracy(generated.logits, generated.labels),
        "n_samples": len(generated),
        "fid_small_sample": len(generated) < FULL_SAMPLE,
        "fid_subsets": fid_subsets(generated.domain, reference.domain_stats),
        "sampling_images_per_s": sampling_images_per_s,
    }
    assert tuple(result) == METRIC_KEYS
    return result


def fid_subsets(features: np.ndarray, reference: GaussianStats) -> dict[str, float]:
    """FID of the first n of one fixed permutation of ``features``, for each of SUBSET_SIZES below len.

    Nested subsets of the same images: the difference to the full score is the small-sample bias
    at n (plus the noise of which images were kept), measured without sampling anything again.
    """
    order = np.random.default_rng(SUBSET_SEED).permutation(len(features))
    return {str(n): fid_from_stats(feature_stats(features[order[:n]]), reference)
            for n in SUBSET_SIZES if n < len(features)}


def bootstrap_fid_se(features: np.ndarray, reference: GaussianStats, draws: int, seed: int = 0) -> float:
    """Standard deviation of the FID over ``draws`` resamples (with replacement) of ``features``.

    The reference statistics stay fixed: this measures how much the score moves with the
    particular generated images drawn, at this sample size. Deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    n = len(features)
    fids = [fid_from_stats(feature_stats(features[rng.integers(0, n, n)]), reference) for _ in range(draws)]
    return float(np.std(fids, ddof=1)) if draws > 1 else float("nan")


__all__ = [
    "METRIC_KEYS",
    "bootstrap_fid_se",
    "FeatureSet",
    "Reference",
    "extract_features",
    "load_reference",
    "save_reference",
    "score",
]
