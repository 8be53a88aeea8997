"""Image sources: Fashion-MNIST (the embedded default), an ImageNet-style folder, and synthetic data.

Every source is described by a *manifest* (``data/prepared/manifest.parquet``) with one row per
usable image: ``image_id`` int64, ``label`` int32, ``split`` ("train" | "val"), ``path`` (imagefolder
only) and ``source_index`` (the row in the source). Later stages read pixels through
:class:`ImageDataset` / :func:`load_split_images`, which return uint8 arrays (N, C, H, W).

Image ids are stable and readable: train images are ``source_index``, val images
``VAL_ID_OFFSET + source_index`` and horizontally flipped train copies ``FLIP_ID_OFFSET + id``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import struct
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from pipeline import layout
from pipeline.config import Config
from pipeline.errors import DataSourceError
from pipeline.progress import progress_bar

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
MANIFEST_PATH = layout.MANIFEST_PATH
VAL_ID_OFFSET = 1_000_000_000
FLIP_ID_OFFSET = 2_000_000_000

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("path", pa.string()),
        pa.field("source_index", pa.int64(), nullable=False),
    ]
)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Synthetic, class-conditional procedural images (fast tests)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Image folders (ImageNet layout): validation and ADM preprocessing
# --------------------------------------------------------------------------------------------


INT32_MAX = 2**31 - 1


def high_depth_to_uint8(image: Image.Image) -> np.ndarray:
    """A single-channel image of more than 8 bits (PIL modes ``I;16*``, ``I``, ``F``) on 0..255.

    Pillow's own ``convert("L")``/``convert("RGB")`` clips these at 255 instead of scaling them,
    which turns a typical 16-bit scan almost entirely white. The conventions here:

    * ``I;16``, ``I;16L``, ``I;16B``, ``I;16N`` (unsigned 16-bit): ``round(v * 255 / 65535)``,
      i.e. ``round(v / 257)``, so 0 -> 0, 65535 -> 255 and ``257 * k`` -> ``k`` exactly.
    * ``I`` (signed 32-bit): Pillow hands 16-bit data (PNG, PGM, 16-bit TIFF) over in this mode too,
      so an image whose values all lie in 0..65535 is read on the 16-bit scale, as above. One with
      a larger value is taken to use the whole positive int32 range: ``round(v * 255 / (2**31 - 1))``.
      Negative values are clipped to 0.
    * ``F`` (32-bit float): values all within [0, 1] are the usual float-image convention and are
      scaled by 255; otherwise they are taken to be on the 0..255 scale already (Pillow's own
      convention for ``F``) and clipped to it. NaN becomes 0.
    """
    values = np.asarray(image)
    if image.mode.startswith("I;16"):
        return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if image.mode == "I":
        wide = np.clip(values.astype(np.int64), 0, None)
        if wide.size == 0 or wide.max() <= 65535:
            return ((wide + 128) // 257).astype(np.uint8)
        return np.round(wide * (255.0 / INT32_MAX)).astype(np.uint8)
    if image.mode == "F":
        floats = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if floats.size and floats.min() >= 0.0 and floats.max() <= 1.0:
            floats = floats * 255.0
        return np.round(np.clip(floats, 0.0, 255.0)).astype(np.uint8)
    raise ValueError(f"not a high-bit-depth single-channel mode: {image.mode}")


def is_high_depth(mode: str) -> bool:
    return mode in ("I", "F") or mode.startswith("I;16")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited onto white, not dropped to black.

    16- and 32-bit single-channel images are scaled to 8 bits (:func:`high_depth_to_uint8`), not
    clipped; 8-bit modes convert exactly as PIL converts them.
    """
    if is_high_depth(image.mode):
        return Image.fromarray(high_depth_to_uint8(image)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def adm_center_crop(image: Image.Image, size: int) -> Image.Image:
    """ADM (guided-diffusion) preprocessing: box-halve while larger than 2x, bicubic, centre crop."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(dim // 2 for dim in image.size), resample=Image.Resampling.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(dim * scale) for dim in image.size), resample=Image.Resampling.BICUBIC)
    left = (image.size[0] - size) // 2
    top = (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def load_folder_image(path: str | Path, size: int) -> np.ndarray:
    """Decode, convert and crop one file to a uint8 (3, size, size) array."""
    with Image.open(path) as image:
        image.load()
        rgb = adm_center_crop(to_rgb(image), size)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy()


def check_image_file(path: str) -> str | None:
    """Why ``path`` is unusable (a short reason), or None when it decodes fully."""
    file = Path(path)
    try:
        if file.stat().st_size == 0:
            return "empty"
    except OSError:
        return "unreadable"
    # Truncated files must fail, not be padded with grey.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(file) as image:
            image.load()
            if image.size[0] < 1 or image.size[1] < 1:
                return "empty"
    except UnidentifiedImageError:
        return "not_an_image"
    except (OSError, SyntaxError, ValueError) as exc:
        return "truncated" if "truncated" in str(exc).lower() else "unreadable"
    except Image.DecompressionBombError:
        return "too_large"
    return None


def _list_class_folders(root: Path) -> list[str]:
    if not root.is_dir():
        raise DataSourceError(f"image folder {root} does not exist (data.root / data.val_root)")
    classes = sorted(
        entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )
    if not classes:
        raise DataSourceError(f"{root} has no class sub-folders; expected the layout root/<class>/<image>")
    return classes


def _list_files(root: Path, classes: list[str]) -> list[tuple[str, int]]:
    files = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                files.append((str(path), label))
    return files


def _held_out(path: str, root: Path, fraction: float) -> bool:
    # A hash of the relative path: deterministic, seed-free and stable when files are added.
    digest = hashlib.sha1(str(Path(path).relative_to(root)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


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


def _scan_folder(cfg: Config, report: PrepareReport) -> tuple[list[dict], list[str]]:
    root = Path(cfg.data.root)
    classes = _list_class_folders(root)
    listed: list[tuple[str, int, str]] = []
    train_files = _list_files(root, classes)
    if cfg.data.val_root:
        val_root = Path(cfg.data.val_root)
        unknown = sorted(set(_list_class_folders(val_root)) - set(classes))
        if unknown:
            raise DataSourceError(f"{val_root} has classes missing from {root}: {unknown[:10]}")
        listed += [(p, label, "train") for p, label in train_files]
        listed += [(p, label, "val") for p, label in _list_files(val_root, classes)]
    else:
        listed += [
            (p, label, "val" if _held_out(p, root, cfg.data.val_fraction) else "train")
            for p, label in train_files
        ]
    report.total_files = len(listed)
    paths = [p for p, _, _ in listed]
    workers = max(1, cfg.data.workers)
    chunk = max(1, len(paths) // (workers * 64) or 1)
    if workers > 1 and len(paths) > 64:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            reasons = list(progress_bar(pool.map(check_image_file, paths, chunksize=chunk), total=len(paths),
                                        desc="prepare: checking images", unit="img"))
    else:
        reasons = [check_image_file(p)
                   for p in progress_bar(paths, desc="prepare: checking images", unit="img")]
    rows, counters = [], Counter()
    for (path, label, split), reason in zip(listed, reasons):
        if reason is not None:
            report.skipped[reason] += 1
            report.skipped_files.append((path, reason))
            continue
        index = counters[split]
        counters[split] += 1
        rows.append({"split": split, "label": label, "path": path, "source_index": index})
    bad = sum(report.skipped.values())
    if report.total_files and bad / report.total_files > cfg.data.max_bad_fraction:
        examples = "; ".join(f"{p} ({r})" for p, r in report.skipped_files[:10])
        raise DataSourceError(
            f"{bad} of {report.total_files} files under {root} are unusable "
            f"({bad / report.total_files:.1%} > data.max_bad_fraction {cfg.data.max_bad_fraction:.1%}). "
            f"Examples: {examples}"
        )
    return rows, classes


def read_class_name_map(path: str | Path) -> dict[str, str]:
    """Folder name -> readable name, from JSON ({"n01440764": "tench"}) or lines "n01440764 tench"."""
    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"data.class_names file {path} not found")
    text = path.read_text()
    if path.suffix == ".json":
        mapping = json.loads(text)
        return {str(k): str(v[-1] if isinstance(v, list) else v) for k, v in mapping.items()}
    pairs = (line.split(maxsplit=1) for line in text.splitlines() if line.strip())
    return {pair[0]: pair[1].strip() if len(pair) > 1 else pair[0] for pair in pairs}


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


def _cap(rows: list[dict], limit: int | None) -> list[dict]:
    return rows if limit is None else rows[:limit]


def build_manifest(cfg: Config) -> tuple[pa.Table, PrepareReport, list[str]]:
    """Validate the configured source; return the manifest table, the report and the class names."""
    report = PrepareReport()
    limits = {"train": cfg.data.max_train, "val": cfg.data.max_val}
    rows: list[dict] = []
    source = cfg.data.source
    if source == "fashion-mnist":
        if cfg.data.image_size != 28:
            log.info("fashion-mnist images are resized from 28 to %d", cfg.data.image_size)
        names = list(FASHION_MNIST_CLASSES)
        for split in SPLITS:
            data = read_fashion_mnist(cfg.data.fashion_mnist_dir, split)
            split_rows = [
                {"split": split, "label": int(label), "path": None, "source_index": i}
                for i, label in enumerate(data.labels)
            ]
            rows += _cap(split_rows, limits[split])
            report.total_files += len(data.labels)
    elif source == "synthetic":
        num_classes = cfg.data.synthetic_classes
        names = [f"class {i}" for i in range(num_classes)]
        for split in SPLITS:
            rows += [
                {"split": split, "label": i % num_classes, "path": None, "source_index": i}
                for i in range(limits[split])
            ]
        report.total_files = len(rows)
    elif source == "imagefolder":
        folder_rows, names = _scan_folder(cfg, report)
        if cfg.data.class_names:
            readable = read_class_name_map(cfg.data.class_names)
            names = [readable.get(name, name) for name in names]
        for split in SPLITS:
            rows += _cap([r for r in folder_rows if r["split"] == split], limits[split])
    else:  # pragma: no cover - the config validator rejects other values
        raise DataSourceError(f"unknown data.source {source!r}")

    for split in SPLITS:
        report.counts[split] = sum(1 for r in rows if r["split"] == split)
        if report.counts[split] == 0:
            raise DataSourceError(f"data source {source!r} yields no {split} images")
    table = pa.Table.from_pylist(
        [
            {**r, "image_id": r["source_index"] + (VAL_ID_OFFSET if r["split"] == "val" else 0)}
            for r in rows
        ],
        schema=MANIFEST_SCHEMA,
    )
    return table, report, names


def read_manifest(path: str | Path = MANIFEST_PATH) -> pa.Table:
    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"{path} not found: run `dvc repro prepare` first")
    return pq.read_table(path)


def read_class_names(path: str | Path = MANIFEST_PATH) -> list[str]:
    """Class names stored beside the manifest by the prepare stage."""
    names_file = Path(path).with_name("classes.json")
    if not names_file.is_file():
        raise DataSourceError(f"{names_file} not found: run `dvc repro prepare` first")
    return json.loads(names_file.read_text())


def num_classes(path: str | Path = MANIFEST_PATH) -> int:
    return len(read_class_names(path))


def num_channels(cfg: Config) -> int:
    if cfg.data.source == "fashion-mnist":
        return 1
    if cfg.data.source == "synthetic":
        return cfg.data.synthetic_channels
    return 3


# --------------------------------------------------------------------------------------------
# Reading pixels
# --------------------------------------------------------------------------------------------


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
        self.image_ids = table.column("image_id").to_numpy()
        self.labels = table.column("label").to_numpy().astype(np.int64)
        self.source_index = table.column("source_index").to_numpy()
        self.paths = table.column("path").to_pylist()
        self.size = cfg.data.image_size

    @cached_property
    def _fashion(self) -> np.ndarray:
        images = read_fashion_mnist(self.cfg.data.fashion_mnist_dir, self.split).images
        return images[self.source_index]

    def __len__(self) -> int:
        return len(self.image_ids) * (2 if self.flip else 1)

    def _pixels(self, row: int) -> np.ndarray:
        source = self.cfg.data.source
        if source == "fashion-mnist":
            image = self._fashion[row][None]
            if self.size != image.shape[-1]:
                resized = Image.fromarray(image[0]).resize((self.size, self.size), Image.Resampling.BICUBIC)
                image = np.asarray(resized)[None]
            return image
        if source == "synthetic":
            image, _ = synthetic_image(int(self.source_index[row]), self.split, self.size,
                                       self.cfg.data.synthetic_channels, self.cfg.data.synthetic_classes)
            return image
        return load_folder_image(self.paths[row], self.size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        row, flipped = divmod(index, 2) if self.flip else (index, 0)
        image = self._pixels(row)
        image_id = int(self.image_ids[row])
        if flipped:
            image = image[..., ::-1]
            image_id += FLIP_ID_OFFSET
        return torch.from_numpy(np.ascontiguousarray(image)), int(self.labels[row]), image_id

    @property
    def in_memory(self) -> bool:
        """Sources cheap enough to decode in the main process (no DataLoader workers needed)."""
        return self.cfg.data.source != "imagefolder"


def load_split_images(
    cfg: Config, split: str, limit: int | None = None, manifest: str | Path = MANIFEST_PATH
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A whole split as arrays: (uint8 (N, C, H, W), labels int64, image_ids int64).

    Meant for small datasets (Fashion-MNIST is 47 MB); ImageNet should stream via ImageDataset.
    """
    dataset = ImageDataset(cfg, split, manifest)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if cfg.data.source == "fashion-mnist" and cfg.data.image_size == 28:
        images = dataset._fashion[:count][:, None]  # fast path: no per-image Python work
    else:
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, range(count)), batch_size=256,
            num_workers=0 if dataset.in_memory else cfg.data.workers,
        )
        images = np.concatenate([batch[0].numpy() for batch in loader]) if count else np.zeros((0,))
    return np.ascontiguousarray(images), dataset.labels[:count].copy(), dataset.image_ids[:count].copy()


def write_prepared(directory: Path, table: pa.Table, report: PrepareReport, class_names: list[str]) -> None:
    """Atomically write ``data/prepared/``: the manifest, the class names and the skipped files."""
    import csv

    from pipeline.files import atomic_dir

    with atomic_dir(directory) as tmp:
        pq.write_table(table, tmp / MANIFEST_PATH.name, compression="zstd")
        (tmp / "classes.json").write_text(json.dumps(class_names, indent=1) + "\n")
        with open(tmp / "skipped.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "reason"])
            writer.writerows(report.skipped_files)
