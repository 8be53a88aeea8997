"""Small helpers for turning image batches into PNG grids (plots DVC can show)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.files import atomic_path


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Float images in [0, 1] (or uint8 already) -> uint8 array (N, C, H, W)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if images.dtype == np.uint8:
        return images
    return (np.clip(images, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def image_grid(images: np.ndarray, columns: int, pad: int = 2, scale: int = 1) -> Image.Image:
    """Tile uint8 images (N, C, H, W) row by row into one PIL image on a white background."""
    images = to_uint8(images)
    count, channels, height, width = images.shape
    rows = max(1, -(-count // columns))
    canvas = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, channels), 255, np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top, left = pad + row * (height + pad), pad + column * (width + pad)
        canvas[top : top + height, left : left + width] = image.transpose(1, 2, 0)
    picture = Image.fromarray(canvas[..., 0] if channels == 1 else canvas)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    return picture


def save_png(path: str | Path, picture: Image.Image) -> None:
    """Atomically write a PNG (deterministic bytes: no timestamps in PIL's PNG writer)."""
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG", optimize=False)
