"""Synthetic, class-conditional procedural images: small and deterministic, for fast tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.config import Config
from pipeline.data.source import ImageSource, PixelReader, PrepareReport

SPLITS = ("train", "val")


def synthetic_image(
    index: int, split: str, size: int, channels: int, num_classes: int
) -> tuple[np.ndarray, int]:
    """A deterministic image for (split, index): the class picks a shape, the rng jitters it.

    Classes cycle through shapes (disc, square, ring, bars, cross, ...) with varying orientation, so
    the classes are visually distinct yet each has intra-class variety.
    """
    label = index % num_classes
    rng = np.random.default_rng([0 if split == "train" else 1, index])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) * 2 - 1
    cx, cy = rng.uniform(-0.25, 0.25, size=2)
    radius = rng.uniform(0.35, 0.6)
    x, y = xx - cx, yy - cy
    angle = np.pi * (label // 5) / 4 + rng.uniform(-0.2, 0.2)
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    kind = label % 5
    if kind == 0:  # disc
        mask = u**2 + v**2 < radius**2
    elif kind == 1:  # square
        mask = (np.abs(u) < radius * 0.8) & (np.abs(v) < radius * 0.8)
    elif kind == 2:  # ring
        dist = np.sqrt(u**2 + v**2)
        mask = (dist < radius) & (dist > radius * 0.6)
    elif kind == 3:  # bars
        mask = (np.sin(u * np.pi * 3) > 0.3) & (np.abs(v) < radius)
    else:  # cross
        arms = (np.abs(u) < radius * 0.25) | (np.abs(v) < radius * 0.25)
        mask = arms & (np.maximum(np.abs(u), np.abs(v)) < radius)
    intensity = rng.uniform(0.6, 1.0)
    image = mask.astype(np.float32) * intensity + rng.normal(0, 0.03, size=(size, size)).astype(np.float32)
    image = np.clip(image, 0, 1)
    if channels == 3:
        tint = np.array([1.0, 0.5 + 0.5 * ((label % 3) == 1), 0.5 + 0.5 * ((label % 3) == 2)], np.float32)
        planes = image[None] * tint[:, None, None]
    else:
        planes = image[None]
    return (planes * 255 + 0.5).astype(np.uint8), label


class Synthetic(ImageSource):
    name = "synthetic"

    def scan(self, cfg: Config, report: PrepareReport) -> tuple[list[dict], list[str]]:
        num_classes = cfg.data.synthetic_classes
        # No natural size: data.max_train and data.max_val (required by the config) are the sizes.
        sizes = {"train": cfg.data.max_train, "val": cfg.data.max_val}
        rows = [{"split": split, "label": i % num_classes, "path": None, "source_index": i}
                for split in SPLITS for i in range(sizes[split])]
        report.total_files = len(rows)
        return rows, [f"class {i}" for i in range(num_classes)]

    def channels(self, cfg: Config) -> int:
        return cfg.data.synthetic_channels

    def reader(self, cfg: Config, split: str, source_index: np.ndarray,
               paths: Sequence[str | None]) -> PixelReader:
        data = cfg.data

        def read(row: int) -> np.ndarray:
            image, _ = synthetic_image(int(source_index[row]), split, data.image_size,
                                       data.synthetic_channels, data.synthetic_classes)
            return image

        return read
