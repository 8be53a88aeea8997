"""Feature extraction shared by the reference, classifier and evaluation stages.

* :func:`reference_features`: the real reference split (``eval.reference_split``, optionally a
  deterministic subset of ``eval.reference_max``) through the domain classifier and, with
  ``eval.inception``, InceptionV3; written by the stage as ``data/reference/``.
* :func:`floor_features`: the held-out train images (:mod:`pipeline.metrics.holdout`), as they are
  (``evaluate_real``) or through ``decode(encode(x))`` (``evaluate_recon``, the tokenizer floor).

Several processes (``accelerate launch`` / ``torchrun``, :mod:`pipeline.launch`): each one
featurises a contiguous block of whole batches (:func:`extract_shared`); the main process gathers
the features in order, so the numbers are those of a single-process run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline import layout
from pipeline.config import Config
from pipeline.launch import batch_share, gather_parts
from pipeline.metrics import FeatureSet, extract_features
from pipeline.metrics.classifier import DomainClassifier, load_classifier
from pipeline.metrics.fid import GaussianStats, load_stats
from pipeline.metrics.inception import INCEPTION_DIM, InceptionExtractor

if TYPE_CHECKING:
    from accelerate import PartialState

    from pipeline.metrics.inception_pt import PtInceptionExtractor

log = logging.getLogger(__name__)

# Subset seeds are fixed constants: the real image sets never depend on `seed`.
REFERENCE_SALT = 0

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def deterministic_subset(total: int, count: int | None, salt: int) -> np.ndarray:
    """Sorted indices of ``count`` of ``total`` items (all of them when ``count`` is None or larger)."""
    if count is None or count >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(salt).permutation(total)[:count])


def dataset_batches(
    dataset: torch.utils.data.Dataset, indices: Sequence[int] | np.ndarray, batch_size: int, workers: int = 0
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


def extract_shared(
    batches_of: Callable[[range], Batches],
    count: int,
    batch_size: int,
    classifier: DomainClassifier,
    inception: InceptionExtractor | None,
    state: PartialState,
    desc: str,
    inception_classifier: PtInceptionExtractor | None = None,
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
                                total=len(items), desc=desc, inception_classifier=inception_classifier)
    parts = [p for p in gather_parts(part, state) if p is not None]
    return FeatureSet.concat(parts) if state.is_main_process else None


def extractors(cfg: Config, device: torch.device) -> tuple[DomainClassifier, InceptionExtractor | None]:
    classifier = load_classifier(layout.CLASSIFIER_DIR, device)
    inception = InceptionExtractor(device, cfg.eval.inception_resize) if cfg.eval.inception else None
    return classifier, inception


def inception_classifier(cfg: Config, device: torch.device) -> PtInceptionExtractor | None:
    """The pt_inception port for the Inception Score: with eval.inception and eval.inception_weights.

    Built (and its weights checked) before any long feature pass; None when IS is not computed.
    """
    from pipeline.metrics.inception_pt import PtInceptionExtractor

    if cfg.eval.inception_weights is None:
        return None
    if not cfg.eval.inception:
        log.warning("eval.inception_weights is set but eval.inception is false: no Inception Score")
        return None
    return PtInceptionExtractor(cfg.eval.inception_weights, device, cfg.eval.inception_resize)


# --------------------------------------------------------------------------------------------
# The reference
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceFeatures:
    features: FeatureSet
    info: dict[str, Any]  # data/reference/info.json
    inception_stats: GaussianStats | None  # from eval.reference_npz, replacing the features' own


def reference_features(cfg: Config, state: PartialState) -> ReferenceFeatures | None:
    """Extract the reference features across the processes (None on all but the main one)."""
    from pipeline.data import ImageDataset

    ecfg = cfg.eval
    inception_stats = None
    if ecfg.reference_npz:  # checked before the long feature pass
        if ecfg.inception:
            inception_stats = load_stats(ecfg.reference_npz, expected_dim=INCEPTION_DIM)
        else:
            log.warning("eval.reference_npz is set but eval.inception is false: the npz is not used")
    dataset = ImageDataset(cfg, ecfg.reference_split)
    indices = deterministic_subset(len(dataset), ecfg.reference_max, REFERENCE_SALT)
    classifier, inception = extractors(cfg, state.device)
    features = extract_shared(
        lambda items: dataset_batches(dataset, indices[items.start : items.stop], ecfg.batch_size,
                                      cfg.data.workers),
        len(indices), ecfg.batch_size, classifier, inception, state,
        desc=f"reference ({ecfg.reference_split})",
    )
    if features is None:  # not the main process
        return None
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
    return ReferenceFeatures(features, info, inception_stats)


def real_count(cfg: Config, num_classes: int) -> int:
    """Held-out images scored by the floors: as many as one variant samples, unless set."""
    return cfg.eval.real_samples or num_classes * cfg.sample.per_class


def reconstructed(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], tokenizer: torch.nn.Module,
                  device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``decode(encode(x))`` of uint8 image batches, quantised back to uint8 like the samples."""
    from pipeline.images import quantize

    for images, labels in batches:
        with torch.inference_mode():
            yield quantize(tokenizer.decode(tokenizer.encode(images.to(device).float() / 255.0))), labels


def floor_features(cfg: Config, classifier: DomainClassifier, inception: InceptionExtractor | None,
                   state: PartialState, tokenizer: torch.nn.Module | None = None,
                   inception_classifier: PtInceptionExtractor | None = None) -> FeatureSet | None:
    """Features of the held-out train images; through ``tokenizer`` when one is given (rFID)."""
    from pipeline.data import ImageDataset, num_classes
    from pipeline.metrics.holdout import holdout_indices

    dataset = ImageDataset(cfg, "train")
    indices = holdout_indices(len(dataset), cfg.eval.holdout, real_count(cfg, num_classes()))

    def batches_of(items: range) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        batches = dataset_batches(dataset, indices[items.start : items.stop], cfg.eval.batch_size,
                                  cfg.data.workers)
        return batches if tokenizer is None else reconstructed(batches, tokenizer, state.device)

    return extract_shared(batches_of, len(indices), cfg.eval.batch_size, classifier, inception, state,
                          desc="evaluate " + ("real" if tokenizer is None else "recon"),
                          inception_classifier=inception_classifier)
