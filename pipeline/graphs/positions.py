"""Position-token statistics: ``position_token_counts.parquet``, computed lazily with polars.

For every observed (label, position, token) the file holds its count. One lazy query over all train
shards does the work in polars' streaming engine: each row's token array plus a constant
array of position offsets plus ``label * positions * V`` gives one integer key per token
(``(label * positions + position) * V + token``), which is exploded and grouped. The scan streams
morsels of rows, so what stays in memory is the group-by table: at most one entry per distinct
(label, position, token), a bound that does not grow with the number of shards.

At ImageNet scale that bound is large (1000 classes x 256 positions x 1024 tokens = 262M
possible groups, about 65 bytes each in polars), so the labels are split into ranges of at most
``graphs.positions_groups_per_pass`` possible groups and each range is one pass over the shards
(the label filter is applied before the explode, so the repeated work per pass is only the Parquet
decoding). Each pass's sorted result is appended to the file in fixed-size row groups, so the bytes
do not depend on the number of passes.

The incompatibility graph is defined from this file: (c, p, t) is incompatible when its count is
below ``fusion.min_count`` (absent triples have count 0).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.graphs.source import TokenSource, subsample_expr
from pipeline.graphs.storage import POSITION_TOKEN_COUNTS_SCHEMA, TableWriter, table_from_columns
from pipeline.progress import progress_bar

log = logging.getLogger(__name__)

ROW_INDEX = "__row"


@dataclass(frozen=True)
class PositionTokenSummary:
    """What the rest of the stage needs from the position-token pass."""

    observed_triples: int  # rows of the file (count >= 1)
    compatible_triples: int  # rows with count >= min_count
    total_triples: int  # num_classes x positions x V
    position_totals: np.ndarray  # (positions, V) int64: counts summed over labels
    passes: int

    @property
    def incompatibility_density(self) -> float:
        return 1.0 - self.compatible_triples / self.total_triples


def label_ranges(num_classes: int, positions: int, vocab_size: int,
                 groups_per_pass: int) -> list[tuple[int, int]]:
    """Half-open label ranges with at most ``groups_per_pass`` possible groups each (one label at least)."""
    per_pass = max(1, groups_per_pass // (positions * vocab_size))
    return [(lo, min(lo + per_pass, num_classes)) for lo in range(0, num_classes, per_pass)]


def position_keys_query(source: TokenSource, labels: tuple[int, int] | None) -> pl.LazyFrame:
    """Lazy frame of (key, count) sorted by key, for the labels in the half-open range ``labels``."""
    meta = source.meta
    positions, vocab = meta.seq_len, meta.codebook_size
    wide = meta.num_classes * positions * vocab > np.iinfo(np.int32).max
    key_type = pl.Int64 if wide else pl.Int32
    frame = pl.scan_parquet([str(p) for p in source.shards], row_index_name=ROW_INDEX,
                            glob=False, hive_partitioning=False)
    if source.subsampled:
        frame = frame.filter(subsample_expr(pl.col(ROW_INDEX), source.total_rows, source.used_rows))
    if labels is not None:
        frame = frame.filter(pl.col("label").is_between(labels[0], labels[1] - 1))
    offsets = pl.lit(pl.Series("offsets", [np.arange(positions, dtype=np.int64) * vocab],
                               dtype=pl.Array(key_type, positions)))
    key = pl.col("tokens").cast(pl.Array(key_type, positions)) + offsets
    key = key + pl.col("label").cast(key_type) * (positions * vocab)
    return (frame.select(key.alias("key")).explode("key")
            .group_by("key").agg(pl.len().alias("count"))
            .sort("key"))


def count_position_tokens(source: TokenSource, path: Path, groups_per_pass: int,
                          min_count: int) -> PositionTokenSummary:
    """Write ``position_token_counts.parquet`` to ``path`` and summarise it."""
    meta = source.meta
    positions, vocab = meta.seq_len, meta.codebook_size
    ranges = label_ranges(meta.num_classes, positions, vocab, groups_per_pass)
    totals = np.zeros(positions * vocab, dtype=np.int64)
    observed = compatible = 0
    writer = TableWriter(path, POSITION_TOKEN_COUNTS_SCHEMA)
    try:
        for labels in progress_bar(ranges, desc="position-token counts (label ranges)", unit="pass",
                                   disable=len(ranges) == 1):
            query = position_keys_query(source, None if len(ranges) == 1 else labels)
            frame = query.collect(engine="streaming")
            key = frame.get_column("key").to_numpy().astype(np.int64)
            count = frame.get_column("count").to_numpy().astype(np.int64)
            del frame
            writer.write(table_from_columns(POSITION_TOKEN_COUNTS_SCHEMA, {
                "label": key // (positions * vocab),
                "position": (key // vocab) % positions,
                "token": key % vocab,
                "count": count,
            }))
            cell = key % (positions * vocab)
            # bincount with float weights is exact here: every partial sum is far below 2**53.
            totals += np.bincount(cell, weights=count, minlength=positions * vocab).astype(np.int64)
            observed += len(key)
            compatible += int(np.count_nonzero(count >= min_count))
    except BaseException:
        writer.abort()
        raise
    writer.close()
    log.info("position-token counts: %d observed triples in %d pass(es)", observed, len(ranges))
    return PositionTokenSummary(
        observed_triples=observed,
        compatible_triples=compatible,
        total_triples=meta.num_classes * positions * vocab,
        position_totals=totals.reshape(positions, vocab),
        passes=len(ranges),
    )
