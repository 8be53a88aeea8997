"""Stage ``classifier``: the domain CNN (:mod:`pipeline.metrics.classifier`) on the real train images.

It depends only on the prepared data and ``eval.classifier.*`` (including its own
``eval.classifier.seed``), never on the top-level ``seed`` or any model param, so experiments on the
generator never retrain it. Outputs ``models/classifier/`` and ``metrics/classifier.json``
(val accuracy, training time).

Usage: ``python -m pipeline.stages.classifier``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pipeline.config import Config
from pipeline.files import write_json
from pipeline.metrics import extract_features
from pipeline.metrics.classifier import (
    ClassifierSpec,
    TrainSettings,
    accuracy,
    random_batches,
    save_classifier,
    train_classifier,
)
from pipeline.stages.reference import CLASSIFIER_DIR, dataset_batches, pick_device

log = logging.getLogger(__name__)

METRICS_PATH = Path("metrics/classifier.json")


def train_batches(cfg: Config, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless random (uint8 images, labels) train batches, seeded by ``generator``."""
    from pipeline.data import ImageDataset, load_split_images

    ccfg = cfg.eval.classifier
    dataset = ImageDataset(cfg, "train")
    if dataset.in_memory:
        images, labels, _ = load_split_images(cfg, "train")
        return random_batches(torch.from_numpy(images), torch.from_numpy(labels), ccfg.batch_size, generator)
    sampler = torch.utils.data.RandomSampler(
        dataset, replacement=True, num_samples=ccfg.steps * ccfg.batch_size, generator=generator
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=ccfg.batch_size, sampler=sampler, num_workers=cfg.data.workers, drop_last=True
    )
    return ((images, labels) for images, labels, _ in loader)


def body(cfg: Config) -> None:
    from pipeline.data import ImageDataset, num_channels, num_classes

    ccfg = cfg.eval.classifier
    device = pick_device()
    spec = ClassifierSpec(
        channels=num_channels(cfg), image_size=cfg.data.image_size, num_classes=num_classes(),
        feature_dim=ccfg.feature_dim, width=ccfg.width,
    )
    settings = TrainSettings(steps=ccfg.steps, batch_size=ccfg.batch_size, lr=ccfg.lr, seed=ccfg.seed)
    generator = torch.Generator().manual_seed(ccfg.seed)
    start = time.perf_counter()
    model = train_classifier(spec, train_batches(cfg, generator), settings, device)
    train_seconds = time.perf_counter() - start

    val = ImageDataset(cfg, "val")
    scored = extract_features(
        # eval.classifier.batch_size, not eval.batch_size: the stage reads eval.classifier.* only.
        dataset_batches(val, np.arange(len(val)), ccfg.batch_size, cfg.data.workers),
        model, device=device, total=len(val), desc="classifier val",
    )
    val_accuracy = accuracy(scored.logits, scored.labels)

    save_classifier(model, CLASSIFIER_DIR, extra={"val_accuracy": val_accuracy, "seed": ccfg.seed})
    write_json(METRICS_PATH, {
        "val_accuracy": val_accuracy,
        "train_seconds": train_seconds,
        "steps": ccfg.steps,
        "params": sum(p.numel() for p in model.parameters()),
    })
    log.info("classifier: val accuracy %.4f after %d steps (%.1f s)", val_accuracy, ccfg.steps, train_seconds)


def main() -> None:
    from pipeline.stages.common import run_stage

    run_stage("classifier", body, outputs=[CLASSIFIER_DIR, METRICS_PATH])


if __name__ == "__main__":
    main()
