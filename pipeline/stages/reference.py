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

Several processes (``accelerate launch`` / ``torchrun``, see :mod:`pipeline.launch`): feature
extraction is split by whole batches (:func:`extract_shared`, also used by ``evaluate``); the main
process gathers the features in order and writes the outputs, identical to a single-process run.

Usage: ``python -m pipeline.stages.reference``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.config import Config
from pipeline.launch import batch_share, gather_parts, shared_stage
from pipeline.metrics import FeatureSet, extract_features, save_reference
from pipeline.metrics.classifier import DomainClassifier, load_classifier
from pipeline.metrics.fid import load_stats
from pipeline.metrics.inception import INCEPTION_DIM, InceptionExtractor

if TYPE_CHECKING:
    from accelerate import PartialState

log = logging.getLogger(__name__)

REFERENCE_DIR = Path("data/reference")
CLASSIFIER_DIR = Path("models/classifier")
REFERENCE_SALT = 0  # subset seeds are fixed constants: the real sets never depend on `seed`


def pick_device() -> torch.device:
    """The device of a single-process stage (the classifier); shared stages use the process state's."""
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


Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def extract_shared(
    batches_of: Callable[[range], Batches],
    count: int,
    batch_size: int,
    classifier: DomainClassifier,
    inception: InceptionExtractor | None,
    state: PartialState,
    desc: str,
) -> FeatureSet | None:
    """Features of items ``[0, count)``, split over the processes by whole batches.

    ``batches_of(items)`` yields the (uint8 images, labels) batches of ``batch_size`` of those item
    indices. The main process returns every item's features in item order, the others None.
    """
    _, items = batch_share(count, batch_size, state)
    part = None
    if len(items):
        if state.num_processes > 1:
            desc = f"{desc} [{state.process_index}]"
        part = extract_features(batches_of(items), classifier, inception, state.device,
                                total=len(items), desc=desc)
    parts = [p for p in gather_parts(part, state) if p is not None]
    return FeatureSet.concat(parts) if state.is_main_process else None


def body(cfg: Config) -> None:
    with shared_stage() as state:
        reference_features(cfg, state)


def reference_features(cfg: Config, state: PartialState) -> None:
    """Extract the reference features across the processes; the main process writes them."""
    from pipeline.data import ImageDataset

    device = state.device
    ecfg = cfg.eval
    inception_stats = None
    if ecfg.reference_npz:  # checked before the long feature pass
        if ecfg.inception:
            inception_stats = load_stats(ecfg.reference_npz, expected_dim=INCEPTION_DIM)
        else:
            log.warning("eval.reference_npz is set but eval.inception is false: the npz is not used")
    dataset = ImageDataset(cfg, ecfg.reference_split)
    indices = deterministic_subset(len(dataset), ecfg.reference_max, REFERENCE_SALT)
    classifier = load_classifier(CLASSIFIER_DIR, device)
    inception = InceptionExtractor(device, ecfg.inception_resize) if ecfg.inception else None
    features = extract_shared(
        lambda items: dataset_batches(dataset, indices[items.start : items.stop], ecfg.batch_size,
                                      cfg.data.workers),
        len(indices), ecfg.batch_size, classifier, inception, state,
        desc=f"reference ({ecfg.reference_split})",
    )
    if features is None:  # not the main process
        return
    if inception_stats is not None:
        log.info("Inception FID reference statistics from %s", ecfg.reference_npz)
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
