"""Stage ``reference``: features and statistics of the real reference images, computed once.

The reference split (``eval.reference_split``, val by default, optionally capped to a
deterministic subset of ``eval.reference_max`` images) goes through the domain classifier and,
with ``eval.inception``, through InceptionV3. Output ``data/reference/``:

- ``domain.npz``: ``features`` (N, feature_dim) float32, ``labels``, ``mu``/``sigma`` (float64);
- ``inception.npz`` (with ``eval.inception``): ``features`` (N, 2048), ``mu``/``sigma``; when
  ``eval.reference_npz`` names an ADM / pytorch-fid npz, its ``mu``/``sigma`` are stored instead
  (the FID reference), while the features still serve precision/recall;
- ``info.json``: split, image count, which extractors ran.

Every ``evaluate@...`` stage reads this directory instead of re-extracting the reference.

Usage: ``python -m pipeline.stages.reference``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from pipeline.config import Config
from pipeline.metrics import extract_features, save_reference
from pipeline.metrics.classifier import load_classifier
from pipeline.metrics.fid import load_stats
from pipeline.metrics.inception import INCEPTION_DIM, InceptionExtractor

log = logging.getLogger(__name__)

REFERENCE_DIR = Path("data/reference")
CLASSIFIER_DIR = Path("models/classifier")
REFERENCE_SALT = 0  # subset seeds are fixed constants: the real sets never depend on `seed`


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def deterministic_subset(total: int, count: int | None, salt: int) -> np.ndarray:
    """Sorted indices of ``count`` of ``total`` items (all of them when ``count`` is None or larger)."""
    if count is None or count >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(salt).permutation(total)[:count])


def dataset_batches(
    dataset: torch.utils.data.Dataset,
    indices: Sequence[int] | np.ndarray,
    batch_size: int,
    workers: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images, labels) batches of ``dataset[indices]`` in order (any ImageDataset source)."""
    in_memory = getattr(dataset, "in_memory", True)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, [int(i) for i in indices]),
        batch_size=batch_size,
        shuffle=False,
        num_workers=0 if in_memory else workers,
    )
    for images, labels, _ in loader:
        yield images, labels


def body(cfg: Config) -> None:
    from pipeline.data import ImageDataset

    device = pick_device()
    ecfg = cfg.eval
    dataset = ImageDataset(cfg, ecfg.reference_split)
    indices = deterministic_subset(len(dataset), ecfg.reference_max, REFERENCE_SALT)
    classifier = load_classifier(CLASSIFIER_DIR, device)
    inception = InceptionExtractor(device, ecfg.inception_resize) if ecfg.inception else None
    features = extract_features(
        dataset_batches(dataset, indices, ecfg.batch_size, cfg.data.workers),
        classifier, inception, device, total=len(indices), desc=f"reference ({ecfg.reference_split})",
    )
    inception_stats = None
    if ecfg.reference_npz:
        if ecfg.inception:
            inception_stats = load_stats(ecfg.reference_npz, expected_dim=INCEPTION_DIM)
            log.info("Inception FID reference statistics from %s", ecfg.reference_npz)
        else:
            log.warning("eval.reference_npz is set but eval.inception is false: the npz is not used")
    info = {
        "split": ecfg.reference_split,
        "images": len(features),
        "domain_dim": int(features.domain.shape[1]),
        "inception": ecfg.inception,
        "inception_resize": ecfg.inception_resize if ecfg.inception else None,
        "inception_stats_from": (ecfg.reference_npz if inception_stats is not None
                                 else ("features" if ecfg.inception else None)),
    }
    save_reference(REFERENCE_DIR, features, info, inception_stats)
    log.info("reference: %d %s images -> %s", len(features), ecfg.reference_split, REFERENCE_DIR)


def main() -> None:
    from pipeline.stages.common import run_stage

    run_stage("reference", body, outputs=[REFERENCE_DIR])


if __name__ == "__main__":
    main()
