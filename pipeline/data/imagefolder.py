"""Image folders in the ImageNet layout ``root/<class>/<image>``: validation of every file, and
ADM's preprocessing (any PIL mode to RGB, box-halving then bicubic, centre crop)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from pipeline.config import Config
from pipeline.data.source import ImageSource, PixelReader, PrepareReport
from pipeline.errors import DataSourceError
from pipeline.progress import progress_bar

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


class ImageFolder(ImageSource):
    name = "imagefolder"
    in_memory = False  # decoding JPEGs wants DataLoader workers

    def scan(self, cfg: Config, report: PrepareReport) -> tuple[list[dict], list[str]]:
        rows, names = _scan_folder(cfg, report)
        if cfg.data.class_names:
            readable = read_class_name_map(cfg.data.class_names)
            names = [readable.get(name, name) for name in names]
        return rows, names

    def channels(self, cfg: Config) -> int:
        return 3

    def reader(self, cfg: Config, split: str, source_index: np.ndarray,
               paths: Sequence[str | None]) -> PixelReader:
        size = cfg.data.image_size

        def read(row: int) -> np.ndarray:
            return load_folder_image(paths[row], size)

        return read
