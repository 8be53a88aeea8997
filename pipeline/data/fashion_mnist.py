"""Fashion-MNIST from its four gzipped IDX files (Debian's ``dataset-fashion-mnist``): train 60k,
test 10k used as val, 28 x 28 grey images (resized bicubically for another ``data.image_size``)."""

from __future__ import annotations

import gzip
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.config import Config
from pipeline.data.source import ImageSource, PixelReader, PrepareReport
from pipeline.errors import DataSourceError

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def fashion_mnist_help(directory: str | Path) -> str:
    names = ", ".join(name for pair in FASHION_MNIST_FILES.values() for name in pair)
    return (
        f"Fashion-MNIST is expected in {directory} ({names}). On Debian/Ubuntu as root: "
        "`apt-get install -y dataset-fashion-mnist`. Otherwise download the four .gz files from "
        "https://github.com/zalandoresearch/fashion-mnist (data/fashion) into that folder, "
        "or point data.fashion_mnist_dir at where they are."
    )


def read_idx(path: str | Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format) as a uint8 array; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"missing file {path}. {fashion_mnist_help(path.parent)}")
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise DataSourceError(f"{path} is corrupt or truncated ({exc}); reinstall or re-download it") from exc
    if len(raw) < 4:
        raise DataSourceError(f"{path} is truncated: {len(raw)} bytes, no IDX header")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataSourceError(f"{path} is not an IDX file of unsigned bytes (header {raw[:4].hex()})")
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise DataSourceError(f"{path} is truncated inside its IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header_end])
    expected = int(np.prod(shape))
    if len(raw) - header_end != expected:
        raise DataSourceError(
            f"{path} is truncated or corrupt: header promises shape {shape} ({expected} bytes), "
            f"found {len(raw) - header_end} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_end).reshape(shape)


@dataclass
class _FashionMnistSplit:
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) uint8


def read_fashion_mnist(directory: str | Path, split: str) -> _FashionMnistSplit:
    directory = Path(directory)
    image_name, label_name = FASHION_MNIST_FILES[split]
    images = read_idx(directory / image_name)
    labels = read_idx(directory / label_name)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataSourceError(
            f"{directory}: {image_name} {images.shape} and {label_name} {labels.shape} do not match"
        )
    return _FashionMnistSplit(images, labels)


class FashionMnist(ImageSource):
    name = "fashion-mnist"

    def scan(self, cfg: Config, report: PrepareReport) -> tuple[list[dict], list[str]]:
        if cfg.data.image_size != 28:
            log.info("fashion-mnist images are resized from 28 to %d", cfg.data.image_size)
        rows = []
        for split in SPLITS:
            labels = read_fashion_mnist(cfg.data.fashion_mnist_dir, split).labels
            rows += [{"split": split, "label": int(label), "path": None, "source_index": i}
                     for i, label in enumerate(labels)]
            report.total_files += len(labels)
        return rows, list(FASHION_MNIST_CLASSES)

    def channels(self, cfg: Config) -> int:
        return 1

    def reader(self, cfg: Config, split: str, source_index: np.ndarray,
               paths: Sequence[str | None]) -> PixelReader:
        images = read_fashion_mnist(cfg.data.fashion_mnist_dir, split).images[source_index]
        size = cfg.data.image_size

        def read(row: int) -> np.ndarray:
            image = images[row][None]
            if size != image.shape[-1]:
                resized = Image.fromarray(image[0]).resize((size, size), Image.Resampling.BICUBIC)
                image = np.asarray(resized)[None]
            return image

        return read

    def whole_split(self, cfg: Config, split: str, source_index: np.ndarray) -> np.ndarray | None:
        if cfg.data.image_size != 28:
            return None
        return read_fashion_mnist(cfg.data.fashion_mnist_dir, split).images[source_index][:, None]
