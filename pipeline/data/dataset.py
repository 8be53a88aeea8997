"""Reading pixels: the images of one split in manifest order, as uint8 arrays (C, H, W)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch

from pipeline.config import Config
from pipeline.data.manifest import FLIP_ID_OFFSET, MANIFEST_PATH, SPLITS, read_manifest
from pipeline.data.registry import source_for


class ImageDataset(torch.utils.data.Dataset):
    """Images of one split, in manifest order: (uint8 tensor (C, H, W), label, image_id).

    With ``flip``, every image is followed by its horizontal mirror (id ``FLIP_ID_OFFSET + id``),
    the augmentation AutoNAT and KA-MIG tokenise ImageNet with.
    """

    def __init__(self, cfg: Config, split: str, manifest: str | Path = MANIFEST_PATH, flip: bool = False):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        table = read_manifest(manifest).filter(pc.field("split") == split)
        self.cfg = cfg
        self.split = split
        self.flip = flip
        self.source = source_for(cfg)
        self.image_ids = table.column("image_id").to_numpy()
        self.labels = table.column("label").to_numpy().astype(np.int64)
        self.source_index = table.column("source_index").to_numpy()
        self.paths = table.column("path").to_pylist()
        self._read = None  # the source's reader, opened on first use (in each worker process)

    def __getstate__(self) -> dict:
        # DataLoader workers get the dataset without the opened reader (a closure) and open their own.
        return {**self.__dict__, "_read": None}

    def __len__(self) -> int:
        return len(self.image_ids) * (2 if self.flip else 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        row, flipped = divmod(index, 2) if self.flip else (index, 0)
        if self._read is None:
            self._read = self.source.reader(self.cfg, self.split, self.source_index, self.paths)
        image = self._read(row)
        image_id = int(self.image_ids[row])
        if flipped:
            image = image[..., ::-1]
            image_id += FLIP_ID_OFFSET
        return torch.from_numpy(np.ascontiguousarray(image)), int(self.labels[row]), image_id

    @property
    def in_memory(self) -> bool:
        """Sources cheap enough to decode in the main process (no DataLoader workers needed)."""
        return self.source.in_memory


def load_split_images(
    cfg: Config, split: str, limit: int | None = None, manifest: str | Path = MANIFEST_PATH
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A whole split as arrays: (uint8 (N, C, H, W), labels int64, image_ids int64).

    Meant for small datasets (Fashion-MNIST is 47 MB); ImageNet should stream via ImageDataset.
    """
    dataset = ImageDataset(cfg, split, manifest)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    whole = dataset.source.whole_split(cfg, split, dataset.source_index[:count])
    if whole is not None:
        images = whole  # fast path: no per-image Python work
    else:
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, range(count)), batch_size=256,
            num_workers=0 if dataset.in_memory else cfg.data.workers,
        )
        images = np.concatenate([batch[0].numpy() for batch in loader]) if count else np.zeros((0,))
    return np.ascontiguousarray(images), dataset.labels[:count].copy(), dataset.image_ids[:count].copy()
