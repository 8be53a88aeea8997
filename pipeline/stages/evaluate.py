"""Stages ``evaluate@{base,control,kamig}`` and ``evaluate_real``: ``metrics/eval_<name>.json``.

A variant's samples (``data/samples/<variant>``) are decoded by the tokenizer, quantised to uint8
like the real images, and scored against the cached reference (``data/reference``):

    fid                    Fréchet distance of the domain-classifier features, samples vs reference
    fid_inception          the same on InceptionV3 pool3 features (null unless eval.inception)
    inception_score        null: the offline Inception port has no classification layer
    precision, recall      Kynkäänniemi et al., k = eval.pr_k (Inception features when on)
    class_accuracy         the classifier's accuracy at predicting the requested class
    n_samples              images scored
    sampling_images_per_s  token generation throughput, from metrics/sample_<variant>.json

``real`` scores real train images instead (the floor): as many as one variant samples
(``num_classes * sample.per_class``, or ``eval.real_samples``), a fixed deterministic subset; its
``sampling_images_per_s`` is null.

Several processes (``accelerate launch`` / ``torchrun``, see :mod:`pipeline.launch`): each decodes
and featurises a contiguous block of whole batches; the main process gathers the features in
order, scores them and writes the json, with the same numbers as a single-process run.

Usage: ``python -m pipeline.stages.evaluate base|control|kamig|real``.
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.files import read_json, write_json
from pipeline.launch import shared_stage
from pipeline.metrics import FeatureSet, load_reference, score
from pipeline.metrics.classifier import DomainClassifier, load_classifier, quantize
from pipeline.metrics.inception import InceptionExtractor
from pipeline.shards import load_split
from pipeline.stages.reference import (
    CLASSIFIER_DIR,
    REFERENCE_DIR,
    dataset_batches,
    deterministic_subset,
    extract_shared,
)
from pipeline.stages.sample import SAMPLES_SPLIT, TOKENIZER_DIR, VARIANTS, sample_paths

if TYPE_CHECKING:
    from accelerate import PartialState

log = logging.getLogger(__name__)

REAL = "real"
REAL_SALT = 1


def eval_path(name: str) -> Path:
    return Path("metrics") / f"eval_{name}.json"


def decoded_batches(
    tokenizer: torch.nn.Module, tokens: np.ndarray, labels: np.ndarray, batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Decode token rows to uint8 images batch by batch (never all images in memory at once)."""
    for first in range(0, len(tokens), batch_size):
        batch = torch.from_numpy(tokens[first : first + batch_size]).long().to(device)
        with torch.inference_mode():
            images = quantize(tokenizer.decode(batch))
        yield images, torch.from_numpy(labels[first : first + batch_size].astype(np.int64))


def sample_features(
    cfg: Config, variant: str, classifier: DomainClassifier, inception: InceptionExtractor | None,
    state: PartialState,
) -> FeatureSet | None:
    """Features of a variant's decoded samples (on the main process; None on the others)."""
    from pipeline.tokenizer.base import load_tokenizer, tokenizer_fingerprint

    samples_dir, _, _ = sample_paths(variant)
    split = load_split(samples_dir / SAMPLES_SPLIT)
    if tokenizer_fingerprint(TOKENIZER_DIR) != split.meta.tokenizer_fingerprint:
        raise PipelineError(
            f"{samples_dir} was sampled with another tokenizer than {TOKENIZER_DIR}: re-run dvc repro"
        )
    tokenizer = load_tokenizer(TOKENIZER_DIR, state.device)
    return extract_shared(
        lambda items: decoded_batches(tokenizer, split.tokens[items.start : items.stop],
                                      split.labels[items.start : items.stop], cfg.eval.batch_size,
                                      state.device),
        len(split), cfg.eval.batch_size, classifier, inception, state, desc=f"evaluate {variant}",
    )


def real_count(cfg: Config, num_classes: int) -> int:
    return cfg.eval.real_samples or num_classes * cfg.sample.per_class


def real_features(
    cfg: Config, classifier: DomainClassifier, inception: InceptionExtractor | None, state: PartialState
) -> FeatureSet | None:
    """Features of the fixed subset of real train images (on the main process; None elsewhere)."""
    from pipeline.data import ImageDataset, num_classes

    dataset = ImageDataset(cfg, "train")
    indices = deterministic_subset(len(dataset), real_count(cfg, num_classes()), REAL_SALT)
    return extract_shared(
        lambda items: dataset_batches(dataset, indices[items.start : items.stop], cfg.eval.batch_size,
                                      cfg.data.workers),
        len(indices), cfg.eval.batch_size, classifier, inception, state, desc="evaluate real",
    )


def body(cfg: Config, name: str) -> None:
    if name not in (*VARIANTS, REAL):
        raise PipelineError(f"unknown evaluation {name!r}; choose one of {[*VARIANTS, REAL]}")
    with shared_stage() as state:
        evaluate(cfg, name, state)


def evaluate(cfg: Config, name: str, state: PartialState) -> None:
    """Features across the processes; the main process scores them and writes the json."""
    device = state.device
    # Inputs are checked before the long feature pass; only the main process scores.
    reference = None
    if state.is_main_process:
        reference = load_reference(REFERENCE_DIR, need_inception=cfg.eval.inception)
    sample_metrics = None
    if name != REAL:
        _, _, sample_metrics = sample_paths(name)
        if not sample_metrics.is_file():
            raise PipelineError(f"{sample_metrics} not found: run `dvc repro sample@{name}`")
    classifier = load_classifier(CLASSIFIER_DIR, device)
    inception = InceptionExtractor(device, cfg.eval.inception_resize) if cfg.eval.inception else None
    if name == REAL:
        features = real_features(cfg, classifier, inception, state)
    else:
        features = sample_features(cfg, name, classifier, inception, state)
    if not state.is_main_process:
        return
    assert features is not None and reference is not None
    throughput = None if sample_metrics is None else float(read_json(sample_metrics)["images_per_s"])
    metrics = score(features, reference, cfg.eval.pr_k, device, sampling_images_per_s=throughput)
    write_json(eval_path(name), metrics)
    log.info("evaluate %s: %s", name, ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                 for k, v in metrics.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.stages.evaluate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("name", choices=[*VARIANTS, REAL])
    args = parser.parse_args(argv)
    from pipeline.stages.common import run_stage

    stage = "evaluate_real" if args.name == REAL else f"evaluate@{args.name}"
    run_stage(stage, functools.partial(body, name=args.name), outputs=[eval_path(args.name)])


if __name__ == "__main__":
    main()
