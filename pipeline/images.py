"""Images as the pipeline shows and scores them: uint8 quantisation and the one PNG grid renderer.

Decoded images (floats in [0, 1]) become uint8 exactly like the real images are stored
(:func:`quantize`), so generated and real images go through the same feature extractors. Every
picture of images in ``metrics/plots/`` (tokenizer reconstructions, sample grids) is drawn by
:func:`render_grid`: tiles upscaled (nearest) to at least ``min_tile`` pixels on a white
background, with an optional name left of each row.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from pipeline.files import atomic_path

MIN_TILE = 56  # grid tiles are upscaled (nearest) to at least this many pixels
PAD = 2


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Floats in [0, 1] (decoded samples) -> uint8, the same representation as the real images."""
    return (images.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def grid_classes(num_classes: int, max_rows: int) -> list[int]:
    """All classes when they fit, else ``max_rows`` evenly spaced class ids."""
    if num_classes <= max_rows:
        return list(range(num_classes))
    return sorted({round(x) for x in np.linspace(0, num_classes - 1, max_rows)})


def grid_selection(labels: np.ndarray, classes: Sequence[int], columns: int) -> np.ndarray:
    """Indices of the first ``columns`` samples of each shown class, row by row."""
    rows = []
    for c in classes:
        hits = np.flatnonzero(labels == c)[:columns]
        if len(hits) < columns:
            raise ValueError(f"class {c} has {len(hits)} samples, the grid needs {columns}")
        rows.append(hits)
    return np.concatenate(rows)


def render_grid(
    images: np.ndarray, row_names: Sequence[str] | None = None, min_tile: int = MIN_TILE
) -> Image.Image:
    """uint8 (rows, cols, C, H, W) -> an RGB picture, with ``row_names[r]`` left of row r."""
    if images.dtype != np.uint8:
        raise TypeError(f"render_grid takes uint8 images (see quantize), got {images.dtype}")
    rows, cols, channels, height, width = images.shape
    scale = max(1, -(-min_tile // max(height, width)))
    tile_h, tile_w = height * scale, width * scale
    font = ImageFont.load_default()
    label_w = 0 if row_names is None else 8 + max((int(font.getlength(n)) for n in row_names), default=0)
    canvas = Image.new("RGB", (label_w + cols * (tile_w + PAD) + PAD, rows * (tile_h + PAD) + PAD), "white")
    draw = ImageDraw.Draw(canvas)
    for r in range(rows):
        top = PAD + r * (tile_h + PAD)
        if row_names is not None:
            draw.text((4, top + tile_h // 2 - 5), row_names[r], fill="black", font=font)
        for c in range(cols):
            pixels = images[r, c].transpose(1, 2, 0)
            tile = Image.fromarray(pixels[..., 0] if channels == 1 else pixels).convert("RGB")
            tile = tile.resize((tile_w, tile_h), Image.Resampling.NEAREST)
            canvas.paste(tile, (label_w + PAD + c * (tile_w + PAD), top))
    return canvas


def save_png(path: str | Path, picture: Image.Image) -> None:
    """Atomically write a PNG (deterministic bytes: no timestamps in PIL's PNG writer)."""
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG", optimize=False)
