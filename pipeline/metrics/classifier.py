"""The domain classifier: a small CNN trained on the real train images.

Its penultimate activations (``eval.classifier.feature_dim``-d) are the feature space of the domain
FID and of precision/recall when Inception is off: InceptionV3 features of upsampled 28 x 28 grey
images say little about clothing, and a classifier trained on the data itself is the standard
choice for MNIST-like sets. Its logits give the class accuracy of conditional samples.

Architecture: stride-2 3x3 conv blocks (BatchNorm, ReLU), doubling the width, while the map stays
at least 7 x 7 (two blocks at 28 px, five at 256 px), one stride-1 block at that resolution, an
adaptive pool to 7 x 7, a linear layer to the features and a linear classifier. Stride-2
convolutions instead of conv + max-pool keep training inside the CPU budget: the 28 px net costs
about 3.2 M multiply-adds per image, and 1500 steps of 128 images reach ~92% val accuracy on
Fashion-MNIST in under a minute on 2 cores.

On disk (``models/classifier/``): ``config.json`` (constructor arguments, val accuracy) and
``model.safetensors`` (the state dict, :mod:`pipeline.weights`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ClassifierConfig, Config
from pipeline.errors import PipelineError
from pipeline.files import atomic_dir
from pipeline.progress import progress_bar
from pipeline.weights import WEIGHTS_FILE, load_weights, save_weights

CONFIG_FILE = "config.json"
POOLED_SIDE = 7


@dataclass(frozen=True)
class ClassifierSpec:
    channels: int
    image_size: int
    num_classes: int
    feature_dim: int  # eval.classifier.feature_dim
    width: int  # eval.classifier.width
    max_width: int = 256
    # Stride-1 blocks at the final (about 7 x 7) resolution: depth where it is cheapest.
    refine_blocks: int = 1

    @property
    def downsamples(self) -> int:
        """Stride-2 blocks: as many as keep the map at least 7 x 7 (at least one)."""
        return max(1, math.floor(math.log2(self.image_size / POOLED_SIDE)))


def _conv_block(channels_in: int, channels_out: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
    ]


class DomainClassifier(nn.Module):
    """uint8-range images as floats in [0, 1], (B, C, H, W) -> features (B, F) and logits (B, K)."""

    def __init__(self, spec: ClassifierSpec):
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        channels_in, width = spec.channels, spec.width
        for _ in range(spec.downsamples):
            layers += _conv_block(channels_in, width, stride=2)
            channels_in, width = width, min(width * 2, spec.max_width)
        for _ in range(spec.refine_blocks):
            layers += _conv_block(channels_in, channels_in, stride=1)
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(POOLED_SIDE), nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(channels_in * POOLED_SIDE**2, spec.feature_dim), nn.ReLU())
        self.head = nn.Linear(spec.feature_dim, spec.num_classes)

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Centre the inputs; BatchNorm handles the rest of the scaling.
        features = self.embed(self.body(images - 0.5))
        return features, self.head(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(images)[1]


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 in [0, 1]."""
    if images.dtype != torch.uint8:
        raise TypeError(f"the classifier takes uint8 images (quantised like real data), got {images.dtype}")
    return images.float() / 255.0


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


WEIGHT_DECAY = 1e-4


def random_batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless uniformly random batches (with replacement) from in-memory uint8 images."""
    while True:
        index = torch.randint(0, len(labels), (batch_size,), generator=generator)
        yield images[index], labels[index]


def train_classifier(
    spec: ClassifierSpec,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    settings: ClassifierConfig,
    device: str | torch.device = "cpu",
) -> DomainClassifier:
    """Train from ``batches`` of (uint8 images, labels): AdamW with a one-cycle LR schedule.

    The weights depend only on ``settings.seed`` and the batches, never on the global seed.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = DomainClassifier(spec)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=WEIGHT_DECAY)
    # One-cycle (warm-up then cosine decay) reaches ~92% on Fashion-MNIST in about three epochs.
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=settings.steps, pct_start=0.15
    )
    progress = progress_bar(total=settings.steps, desc="classifier", unit="step")
    iterator = iter(batches)
    for _ in range(settings.steps):
        images, labels = next(iterator)
        logits = model(to_unit(images.to(device)))
        loss = F.cross_entropy(logits, labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        progress.update()
        progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    progress.close()
    return model.eval()


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------


@torch.inference_mode()
def classify(
    model: DomainClassifier,
    batches: Iterable[torch.Tensor],
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 image batches -> (features float32 (N, F), logits float32 (N, K))."""
    model.eval()
    features, logits = [], []
    for images in batches:
        f, z = model.features_and_logits(to_unit(images.to(device)))
        features.append(f.float().cpu().numpy())
        logits.append(z.float().cpu().numpy())
    if not features:
        raise ValueError("no images to classify")
    return np.concatenate(features), np.concatenate(logits)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(axis=1) == np.asarray(labels)).mean())


# --------------------------------------------------------------------------------------------
# Disk format
# --------------------------------------------------------------------------------------------


def save_classifier(
    model: DomainClassifier, directory: str | Path, extra: dict[str, Any] | None = None
) -> None:
    config = {"spec": asdict(model.spec), **(extra or {})}
    with atomic_dir(directory) as tmp:
        save_weights(model.state_dict(), tmp / WEIGHTS_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_classifier(directory: str | Path, device: str | torch.device = "cpu") -> DomainClassifier:
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise PipelineError(
            f"no classifier at {directory} ({CONFIG_FILE} missing): run `dvc repro classifier`"
        )
    try:
        spec = ClassifierSpec(**json.loads(config_path.read_text())["spec"])
        state = load_weights(directory / WEIGHTS_FILE)
        model = DomainClassifier(spec)
        model.load_state_dict(state, strict=True)
    except (OSError, KeyError, TypeError, RuntimeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"cannot load the classifier in {directory}: {exc}") from exc
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# The classifier stage's work
# --------------------------------------------------------------------------------------------


def train_batches(cfg: Config, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless random (uint8 images, labels) train batches, seeded by ``generator``."""
    from pipeline.data import ImageDataset, load_split_images

    from pipeline.metrics.holdout import classifier_train_indices

    ccfg = cfg.eval.classifier
    dataset = ImageDataset(cfg, "train")
    # The floors' held-out images (pipeline.metrics.holdout) are never trained on.
    keep = classifier_train_indices(len(dataset), cfg.eval.holdout)
    if dataset.in_memory:
        images, labels, _ = load_split_images(cfg, "train")
        return random_batches(torch.from_numpy(images[keep]), torch.from_numpy(labels[keep]),
                              ccfg.batch_size, generator)
    subset = torch.utils.data.Subset(dataset, [int(i) for i in keep])
    sampler = torch.utils.data.RandomSampler(
        subset, replacement=True, num_samples=ccfg.steps * ccfg.batch_size, generator=generator
    )
    loader = torch.utils.data.DataLoader(
        subset, batch_size=ccfg.batch_size, sampler=sampler, num_workers=cfg.data.workers, drop_last=True
    )
    return ((images, labels) for images, labels, _ in loader)


def fit_domain_classifier(cfg: Config, device: torch.device) -> tuple[DomainClassifier, dict[str, Any]]:
    """Train on the real train images but the held-out ones (``eval.classifier.*``), score on val."""
    import time

    from pipeline.data import ImageDataset, num_channels, num_classes
    from pipeline.metrics import extract_features
    from pipeline.metrics.extraction import dataset_batches
    from pipeline.metrics.holdout import classifier_train_indices

    ccfg = cfg.eval.classifier
    spec = ClassifierSpec(channels=num_channels(cfg), image_size=cfg.data.image_size,
                          num_classes=num_classes(), feature_dim=ccfg.feature_dim, width=ccfg.width)
    generator = torch.Generator().manual_seed(ccfg.seed)
    start = time.perf_counter()
    model = train_classifier(spec, train_batches(cfg, generator), ccfg, device)
    train_seconds = time.perf_counter() - start

    val = ImageDataset(cfg, "val")
    scored = extract_features(
        # eval.classifier.batch_size, not eval.batch_size: the stage reads eval.classifier.* only.
        dataset_batches(val, np.arange(len(val)), ccfg.batch_size, cfg.data.workers),
        model, device=device, total=len(val), desc="classifier val",
    )
    val_accuracy = accuracy(scored.logits, scored.labels)
    metrics = {
        "val_accuracy": val_accuracy,
        "train_seconds": train_seconds,
        "steps": ccfg.steps,
        "params": sum(p.numel() for p in model.parameters()),
        "train_images": len(classifier_train_indices(len(ImageDataset(cfg, "train")), cfg.eval.holdout)),
    }
    return model, metrics
