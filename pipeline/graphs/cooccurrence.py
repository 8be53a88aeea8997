"""Co-occurrence graph: neighbour-pair counts on the token grid, top-ratio pruning, GCN weights.

Counting. ``count(a, b)`` is the number of (cell, neighbouring cell) pairs, over all images, whose
cell holds token ``a`` and whose neighbour holds ``b``; neighbours are the 8 (or 4) adjacent cells
inside the grid. Every unordered adjacent pair of cells contributes once in each order, so we
count only the "forward" half of the offsets (right, down, and for 8 the two downward diagonals)
and add the transpose: exactly the 8-direction count, for half the work. The pairs are counted by
a compiled loop on all cores (:mod:`pipeline.graphs.kernels`, numba) or, without numba, by one
vectorised ``np.bincount`` of the keys ``a * V + b`` per few thousand images; both replace the
official notebook's Python loop per cell and neighbour, and give the same counts.

Pruning. For each ``src``, among ``dst != src`` with a positive count, keep the top
``max(1, floor(n_nonzero * top_ratio))`` by count, ties to the smaller ``dst`` (a stable sort of
the row by descending count). ``n_nonzero * top_ratio`` is a float64 product, as in the issue's
formula. A row with no positive off-diagonal count keeps nothing. Every token also gets one
self-loop row with its true count (``count(v, v)``, possibly 0).

Weight. The adjacency we normalise is *unweighted*: ``A[src, dst] = 1`` for each kept pair, and
``A_hat = D^-1/2 (A + I) D^-1/2`` (see :mod:`pipeline.graphs.normalisation`). Why not the counts:
they are heavy-tailed (a background token co-occurs with itself and its neighbours orders of
magnitude more often than a rare texture token), so count weights would make the few most
frequent tokens dominate every aggregation, and the ``+ I`` self-loop would vanish next to counts
in the thousands, drowning each token's own features. The counts already decide *which*
neighbours are kept; once kept, each contributes equally, as in the paper's GCN. The stored
``count`` column keeps the information for anyone who wants a weighted variant.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa

from pipeline.graphs.kernels import compiled_pair_counter
from pipeline.graphs.normalisation import gcn_normalise
from pipeline.graphs.storage import COOCCURRENCE_SCHEMA, table_from_columns

# (dy, dx) offsets counted directly; their mirror images come from the transpose.
FORWARD_OFFSETS: dict[int, tuple[tuple[int, int], ...]] = {
    4: ((0, 1), (1, 0)),
    8: ((0, 1), (1, 0), (1, 1), (1, -1)),
}


def neighbour_offsets(neighbourhood: int) -> list[tuple[int, int]]:
    """All (dy, dx) neighbours of a cell: the forward offsets and their mirrors."""
    forward = FORWARD_OFFSETS[neighbourhood]
    return [*forward, *((-dy, -dx) for dy, dx in forward)]


def count_forward(grids: np.ndarray, vocab_size: int, neighbourhood: int,
                  backend: Literal["auto", "compiled", "numpy"] = "auto") -> np.ndarray:
    """Counts (V, V) int64 of the forward-offset pairs only; see :func:`symmetrise`.

    Streaming callers add these up over shards and symmetrise once at the end: the transposed
    add costs as much as counting a few thousand images, so it should not be paid per shard.
    ``backend`` "auto" takes the compiled kernel when numba is installed, else numpy.
    """
    if grids.ndim != 3:
        raise ValueError(f"grids must be (N, grid_h, grid_w), got shape {grids.shape}")
    offsets = FORWARD_OFFSETS[neighbourhood]
    counter = compiled_pair_counter() if backend != "numpy" else None
    if counter is not None:
        return counter(grids, np.array(offsets, dtype=np.int64), vocab_size)
    if backend == "compiled":
        raise RuntimeError("the compiled co-occurrence counter needs numba: pip install numba")
    return _count_forward_numpy(grids, vocab_size, offsets)


def _count_forward_numpy(grids: np.ndarray, vocab_size: int,
                         offsets: tuple[tuple[int, int], ...]) -> np.ndarray:
    images, height, width = grids.shape
    keys_per_image = sum(max(0, height * width - (dy * width + dx)) for dy, dx in offsets)
    chunk = max(1, KEYS_PER_BINCOUNT // max(1, keys_per_image))
    flat = grids.reshape(images, height * width)
    if images and (flat.min() < 0 or flat.max() >= vocab_size):
        raise ValueError(f"tokens must lie in [0, {vocab_size}), found {flat.min()}..{flat.max()}")
    forward = None
    for start in range(0, images, chunk):
        counts = _forward_counts(flat[start:start + chunk], width, vocab_size, offsets)
        forward = counts if forward is None else np.add(forward, counts, out=forward)
    if forward is None:
        forward = np.zeros(vocab_size * vocab_size, dtype=np.int64)
    return forward.reshape(vocab_size, vocab_size)


def symmetrise(forward: np.ndarray, block: int = 128) -> np.ndarray:
    """``F + F.T``: every forward pair (a, b) is also the backward pair (b, a).

    Added block by block: a plain ``F + F.T`` reads the transpose a column at a time, missing the
    cache on every element (7 ms at V = 1024, as long as counting a few thousand images; 2.7 ms
    in 128 x 128 blocks).
    """
    vocab = forward.shape[0]
    out = np.empty_like(forward)
    for i in range(0, vocab, block):
        for j in range(0, vocab, block):
            np.add(forward[i:i + block, j:j + block], forward[j:j + block, i:i + block].T,
                   out=out[i:i + block, j:j + block])
    return out


def count_cooccurrence(grids: np.ndarray, vocab_size: int, neighbourhood: int,
                       backend: Literal["auto", "compiled", "numpy"] = "auto") -> np.ndarray:
    """Co-occurrence counts (V, V) int64 of a batch of token grids (N, grid_h, grid_w); symmetric."""
    return symmetrise(count_forward(grids, vocab_size, neighbourhood, backend))


# Keys counted by one np.bincount call: bounds the key buffer (8 bytes each) for any shard size.
# 2**20 keys (8 MiB) measured faster than 2**22 at both 7x7/V=512 and 16x16/V=1024: the buffer
# stays closer to the caches between writing the keys and counting them.
KEYS_PER_BINCOUNT = 1 << 20


def _forward_counts(flat: np.ndarray, width: int, vocab_size: int,
                    offsets: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Flat (V*V,) counts of the forward-offset pairs of a chunk of row-major grids (N, H*W).

    Speed matters here (the benchmark compares this with the per-cell loop), hence three choices:

    * An offset (dy, dx) pairs flat index ``i`` with ``i + dy*W + dx``, so its keys are one
      operation on two long contiguous slices of each image instead of one short row at a time.
      Pairs that wrap around a row edge are invalid; their keys are set to a dump bin ``V*V``
      (one strided assignment) that is dropped afterwards.
    * Keys are intp: np.bincount converts anything else to intp first, an extra full pass (the
      tokens themselves stay int32; the add widens them on the fly).
    * All offsets share one key buffer and one bincount, so one V*V table serves them all.
    """
    images, cells = flat.shape
    dump = vocab_size * vocab_size
    scaled = np.multiply(flat, vocab_size, dtype=np.intp)
    spans = [(dy * width + dx, dx) for dy, dx in offsets if dy * width + dx < cells]
    keys = np.empty(images * sum(cells - shift for shift, _ in spans), dtype=np.intp)
    filled = 0
    for shift, dx in spans:
        length = cells - shift
        block = keys[filled:filled + images * length].reshape(images, length)
        np.add(scaled[:, :length], flat[:, shift:], out=block)  # the int32 tokens widen in the add
        # Cell x = W-1 has no right-hand neighbour (dx = 1); cell x = 0 none to the left (dx = -1).
        if dx == 1:
            block[:, width - 1::width] = dump
        elif dx == -1:
            block[:, ::width] = dump
        filled += images * length
    return np.bincount(keys, minlength=dump + 1)[:dump]


def prune_top_ratio(counts: np.ndarray, top_ratio: float,
                    block_rows: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The kept (src, dst) pairs of the pruning rule, int64, sorted by (src, dst).

    Rows are processed in blocks so that the argsort's index array stays small for large V.
    """
    vocab_size = counts.shape[0]
    src_parts, dst_parts = [], []
    for start in range(0, vocab_size, block_rows):
        block = counts[start:start + block_rows].copy()
        rows = np.arange(start, start + len(block))
        block[np.arange(len(block)), rows] = 0  # self-loops are not candidates
        nonzero = (block > 0).sum(axis=1)
        keep = np.where(nonzero > 0, np.maximum(1, np.floor(nonzero * float(top_ratio))), 0).astype(np.int64)
        # Stable sort of -count: descending counts, equal counts in ascending dst order.
        order = np.argsort(-block, axis=1, kind="stable")
        taken = np.arange(vocab_size)[None, :] < keep[:, None]
        src_parts.append(np.repeat(rows, keep))
        dst_parts.append(order[taken])
    src = np.concatenate(src_parts).astype(np.int64)
    dst = np.concatenate(dst_parts).astype(np.int64)
    order = np.lexsort((dst, src))
    return src[order], dst[order]


def cooccurrence_table(counts: np.ndarray, top_ratio: float) -> pa.Table:
    """The ``cooccurrence.parquet`` table: kept pairs plus one self-loop per token, sorted by (src, dst)."""
    vocab_size = counts.shape[0]
    src, dst = prune_top_ratio(counts, top_ratio)
    edge_weight, diagonal = gcn_normalise(src, dst, np.ones(len(src)), vocab_size)
    nodes = np.arange(vocab_size, dtype=np.int64)
    all_src = np.concatenate([src, nodes])
    all_dst = np.concatenate([dst, nodes])
    weight = np.concatenate([edge_weight, diagonal])
    order = np.lexsort((all_dst, all_src))
    all_src, all_dst = all_src[order], all_dst[order]
    return table_from_columns(COOCCURRENCE_SCHEMA, {
        "src": all_src,
        "dst": all_dst,
        "count": counts[all_src, all_dst],
        "weight": weight[order].astype(np.float32),
    })
