"""The train token shards as the graphs stage reads them, and the ``graphs.max_images`` subsample.

Every shard is opened and checked against ``meta.json`` up front (schema, grid, codebook, classes;
cheap, metadata only), so a mismatched or unreadable shard fails before any work, with its path in
the message. Shards are then read one at a time (:func:`iter_batches`), which bounds memory by one
shard; ``pipeline.shards.read_shard`` checks every token and label range.

Subsample. With ``graphs.max_images = N`` smaller than the ``T`` train rows, the stage uses the
rows whose global index (position in shard order, shards sorted by name, rows in file order) is
``floor(i * T / N)`` for ``i = 0 .. N-1``: an evenly strided subset. A stride rather than a prefix,
because tokenize writes images in source order and an image-folder source is sorted by class: the
first 50k ImageNet images are its first 39 classes, while a stride covers every class in
proportion. All three graphs use the same subset.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.errors import ShardError
from pipeline.shards import TokenMeta, list_shards, open_shard, read_meta, read_shard

TRAIN_SPLIT = "train"


@dataclass(frozen=True)
class TokenSource:
    """The validated train shards of a token directory and the rows the stage uses."""

    split_dir: Path
    meta: TokenMeta
    shards: tuple[Path, ...]
    shard_rows: tuple[int, ...]
    max_images: int | None

    @property
    def total_rows(self) -> int:
        return sum(self.shard_rows)

    @property
    def used_rows(self) -> int:
        return self.total_rows if self.max_images is None else min(self.max_images, self.total_rows)

    @property
    def subsampled(self) -> bool:
        return self.used_rows < self.total_rows


def open_source(tokens_dir: str | Path, max_images: int | None = None) -> TokenSource:
    """Check ``tokens_dir/meta.json`` and every train shard's metadata; errors name the shard."""
    tokens_dir = Path(tokens_dir)
    meta = read_meta(tokens_dir)
    split_dir = tokens_dir / TRAIN_SPLIT
    shards = list_shards(split_dir)
    rows = []
    for path in shards:
        handle, _ = open_shard(path, meta)
        rows.append(handle.metadata.num_rows)
    if sum(rows) == 0:
        raise ShardError(f"token split {split_dir} holds no images: its shards "
                         f"({shards[0].name}, ...) are all empty (empty split)")
    return TokenSource(split_dir, meta, tuple(shards), tuple(rows), max_images)


def subsample_mask(start: int, count: int, total: int, n: int) -> np.ndarray:
    """Which of the global rows ``start .. start+count-1`` belong to the strided subset of ``n`` of ``total``.

    Row ``g`` is chosen when some ``i < n`` has ``floor(i * total / n) == g``. The smallest
    candidate is ``i = ceil(g * n / total)``, so the test is ``i < n and i * total < (g + 1) * n``.
    :func:`subsample_expr` is the same arithmetic for polars.
    """
    g = np.arange(start, start + count, dtype=np.int64)
    if n >= total:
        return np.ones(count, dtype=bool)
    i = (g * n + total - 1) // total
    return (i < n) & (i * total < (g + 1) * n)


def subsample_expr(row: pl.Expr, total: int, n: int) -> pl.Expr:
    """Polars version of :func:`subsample_mask` over a global row-index column."""
    g = row.cast(pl.Int64)
    i = (g * n + (total - 1)) // total
    return (i < n) & (i * total < (g + 1) * n)


@dataclass(frozen=True)
class ShardBatch:
    path: Path
    labels: np.ndarray  # int32 (rows,)
    tokens: np.ndarray  # int32 (rows, grid_h * grid_w), row-major


def iter_batches(source: TokenSource) -> Iterator[ShardBatch]:
    """Yield the used rows of each shard in order, one validated shard in memory at a time."""
    offset = 0
    for path, rows in zip(source.shards, source.shard_rows):
        _, labels, tokens = read_shard(path, source.meta)
        if len(labels) != rows:
            raise ShardError(f"token shard {path} changed while being read ({rows} rows, then {len(labels)})")
        if source.subsampled:
            keep = subsample_mask(offset, rows, source.total_rows, source.used_rows)
            labels, tokens = labels[keep], tokens[keep]
        offset += rows
        yield ShardBatch(path, labels, tokens)
