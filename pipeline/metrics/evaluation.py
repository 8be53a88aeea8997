"""The ``evaluate@*``, ``evaluate_real`` and ``evaluate_recon`` stages' work: score images.

A variant's samples are decoded by the tokenizer and quantised to uint8 like the real images.
The floors take held-out train images the classifier never trained on
(:mod:`pipeline.metrics.holdout`): ``real`` as they are, ``recon`` through ``decode(encode(x))``.
All go through the extractors of :mod:`pipeline.metrics.extraction` and are scored against
``data/reference`` into the keys of :data:`pipeline.metrics.METRIC_KEYS`, with the same numbers on
one process or several.
With ``eval.inception`` and ``eval.inception_weights``, the images also go through the
pt_inception port (:mod:`pipeline.metrics.inception_pt`) for the Inception Score.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline import layout
from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.files import read_json
from pipeline.images import quantize
from pipeline.metrics import FeatureSet, load_reference, score
from pipeline.metrics.classifier import DomainClassifier
from pipeline.metrics.extraction import extract_shared, extractors, floor_features, inception_classifier
from pipeline.metrics.inception import InceptionExtractor
from pipeline.shards import load_split

if TYPE_CHECKING:
    from accelerate import PartialState

    from pipeline.metrics.inception_pt import PtInceptionExtractor

log = logging.getLogger(__name__)


def decoded_batches(
    tokenizer: torch.nn.Module, tokens: np.ndarray, labels: np.ndarray, batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Decode token rows to uint8 images batch by batch (never all images in memory at once)."""
    for first in range(0, len(tokens), batch_size):
        batch = torch.from_numpy(tokens[first : first + batch_size]).long().to(device)
        with torch.inference_mode():
            images = quantize(tokenizer.decode(batch))
        yield images, torch.from_numpy(labels[first : first + batch_size].astype(np.int64))


def _sample_features(cfg: Config, variant: str, classifier: DomainClassifier,
                     inception: InceptionExtractor | None, state: PartialState,
                     is_net: PtInceptionExtractor | None = None) -> FeatureSet | None:
    from pipeline.tokenizer.registry import load_tokenizer

    samples_dir = layout.samples_dir(variant)
    split = load_split(samples_dir / layout.SAMPLES_SPLIT)
    tokenizer = load_tokenizer(layout.TOKENIZER_DIR, state.device,
                               expected_fingerprint=split.meta.tokenizer_fingerprint,
                               hint=f"{samples_dir} was sampled with another one: re-run `dvc repro`")
    return extract_shared(
        lambda items: decoded_batches(tokenizer, split.tokens[items.start : items.stop],
                                      split.labels[items.start : items.stop], cfg.eval.batch_size,
                                      state.device),
        len(split), cfg.eval.batch_size, classifier, inception, state, desc=f"evaluate {variant}",
        inception_classifier=is_net,
    )


def evaluate(cfg: Config, name: str, state: PartialState) -> dict[str, Any] | None:
    """The metrics of a variant's samples (or of a floor: ``real``, ``recon``); None off the main process."""
    names = [*layout.GENERATOR_VARIANTS, *layout.FLOORS]
    if name not in names:
        raise PipelineError(f"unknown evaluation {name!r}; choose one of {names}")
    # Inputs are checked before the long feature pass; only the main process scores.
    reference = None
    if state.is_main_process:
        reference = load_reference(layout.REFERENCE_DIR, need_inception=cfg.eval.inception)
    sample_metrics = None
    if name not in layout.FLOORS:
        sample_metrics = layout.sample_metrics(name)
        if not sample_metrics.is_file():
            raise PipelineError(f"{sample_metrics} not found: run `dvc repro sample@{name}`")
    classifier, inception = extractors(cfg, state.device)
    is_net = inception_classifier(cfg, state.device)  # the Inception Score's classifier, or None
    if name == layout.REAL:
        features = floor_features(cfg, classifier, inception, state, inception_classifier=is_net)
    elif name == layout.RECON:
        from pipeline.tokenizer.registry import load_tokenizer

        tokenizer = load_tokenizer(layout.TOKENIZER_DIR, state.device)
        features = floor_features(cfg, classifier, inception, state, tokenizer, inception_classifier=is_net)
    else:
        features = _sample_features(cfg, name, classifier, inception, state, is_net)
    if not state.is_main_process:
        return None
    assert features is not None and reference is not None
    throughput = None if sample_metrics is None else float(read_json(sample_metrics)["images_per_s"])
    metrics = score(features, reference, cfg.eval.pr_k, state.device, sampling_images_per_s=throughput,
                    bootstrap=cfg.eval.bootstrap)
    log.info("evaluate %s: %s", name, ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                 for k, v in metrics.items()))
    return metrics
