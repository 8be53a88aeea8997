"""The interface every image source implements, so that a new source (CIFAR, LSUN) is one class
here plus one line in :data:`pipeline.data.registry.SOURCES` (and its name in ``data.source``).

A source lists its images for the manifest (:meth:`ImageSource.scan`) and decodes them
(:meth:`ImageSource.reader`) as uint8 arrays (C, H, W) at ``data.image_size``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from pipeline.config import Config

# One image of a split, by its row in the manifest's split (source_index and path are the manifest's).
PixelReader = Callable[[int], np.ndarray]


@dataclass
class PrepareReport:
    counts: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    total_files: int = 0

    def to_metrics(self, source: str, num_classes: int) -> dict:
        skipped_total = sum(self.skipped.values())
        return {
            "source": source,
            "num_classes": num_classes,
            "images": dict(self.counts),
            "files_seen": self.total_files,
            "skipped": {reason: int(self.skipped.get(reason, 0)) for reason in
                        ("empty", "truncated", "unreadable", "not_an_image", "too_large")},
            "skipped_total": skipped_total,
            "bad_fraction": skipped_total / self.total_files if self.total_files else 0.0,
        }


class ImageSource(ABC):
    """One kind of image collection, named by ``data.source``."""

    name: ClassVar[str]
    # Cheap enough to decode in the main process (no DataLoader worker processes needed).
    in_memory: ClassVar[bool] = True

    @abstractmethod
    def scan(self, cfg: Config, report: PrepareReport) -> tuple[list[dict], list[str]]:
        """Every usable image as a manifest row (``split``, ``label``, ``path``, ``source_index``),
        train rows first, and the class names; counts what it saw (and skipped) into ``report``."""

    @abstractmethod
    def channels(self, cfg: Config) -> int: ...

    @abstractmethod
    def reader(self, cfg: Config, split: str, source_index: np.ndarray,
               paths: Sequence[str | None]) -> PixelReader:
        """Decode row ``i`` of a split whose manifest rows have these ``source_index`` and ``paths``."""

    def whole_split(self, cfg: Config, split: str, source_index: np.ndarray) -> np.ndarray | None:
        """All of the split's images at once (N, C, H, W) when that is much faster than row by row;
        None otherwise."""
        return None
