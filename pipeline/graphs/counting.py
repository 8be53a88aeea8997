"""The one streaming pass over the train shards: every count the numpy side of the stage needs.

Per shard (one in memory at a time) it adds the co-occurrence counts (V x V, see
:mod:`pipeline.graphs.cooccurrence`), the (position, token) counts that make the tokens' position
histograms for the similarity graph, and the images per class. Memory is one shard plus
``V*V + positions*V`` int64 counters, whatever the number of shards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.graphs.cooccurrence import count_forward, symmetrise
from pipeline.graphs.source import TokenSource, iter_batches
from pipeline.progress import progress_bar


@dataclass(frozen=True)
class CorpusCounts:
    cooccurrence: np.ndarray  # (V, V) int64, symmetric
    positions: np.ndarray  # (positions, V) int64: occurrences of token v at position p
    images_per_class: np.ndarray  # (num_classes,) int64

    @property
    def token_totals(self) -> np.ndarray:
        return self.positions.sum(axis=0)

    @property
    def images(self) -> int:
        return int(self.images_per_class.sum())


def position_counts(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """(positions, V) occurrence counts of a (rows, positions) token batch."""
    positions = tokens.shape[1]
    keys = tokens.astype(np.int64) + (np.arange(positions, dtype=np.int64) * vocab_size)[None, :]
    return np.bincount(keys.ravel(), minlength=positions * vocab_size).reshape(positions, vocab_size)


def count_corpus(source: TokenSource, neighbourhood: int) -> CorpusCounts:
    """Stream the used rows of every shard once and accumulate the counts."""
    meta = source.meta
    vocab = meta.codebook_size
    forward = np.zeros((vocab, vocab), dtype=np.int64)
    positions = np.zeros((meta.seq_len, vocab), dtype=np.int64)
    classes = np.zeros(meta.num_classes, dtype=np.int64)
    bar = progress_bar(total=source.used_rows, desc="co-occurrence counts", unit="img", unit_scale=True)
    with bar:
        for batch in iter_batches(source):
            grids = batch.tokens.reshape(-1, meta.grid_h, meta.grid_w)
            forward += count_forward(grids, vocab, neighbourhood)
            positions += position_counts(batch.tokens, vocab)
            classes += np.bincount(batch.labels, minlength=meta.num_classes)
            bar.update(len(batch.labels))
    return CorpusCounts(symmetrise(forward), positions, classes)
