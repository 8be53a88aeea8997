"""GCN normalisation ``A_hat = D^-1/2 (A + I) D^-1/2`` of a directed token graph.

The model computes ``H' = A_hat @ H`` with a sparse matrix whose rows are ``src`` and columns
``dst``, so row ``src`` aggregates the features of the ``dst`` it keeps. Both graphs are
directed: a token keeps its own top neighbours, and ``b`` in ``a``'s list does not put ``a`` in
``b``'s. We do not symmetrise (the issue defines exactly which rows each token keeps). ``D`` is the
row sum of ``A + I``, the total weight a row aggregates, used on both sides:

    A_hat[i, j] = (A + I)[i, j] / sqrt(d_i * d_j),   d_i = 1 + sum_j A[i, j].

For a symmetric ``A`` this is Kipf & Welling's GCN operator. For our directed ``A`` the row
degree is the one that keeps every row's scale bounded (a row with many kept neighbours gets small
entries), which is what stops frequent tokens from blowing up the aggregated features; the column
factor ``1/sqrt(d_j)`` damps messages from tokens that themselves aggregate from many.
"""

from __future__ import annotations

import numpy as np


def row_degree(src: np.ndarray, adjacency: np.ndarray, num_nodes: int) -> np.ndarray:
    """``d = 1 + row sums of A``: the degree of ``A + I`` (float64)."""
    return 1.0 + np.bincount(src, weights=np.asarray(adjacency, dtype=np.float64), minlength=num_nodes)


def gcn_normalise(src: np.ndarray, dst: np.ndarray, adjacency: np.ndarray,
                  num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalise off-diagonal entries ``A[src, dst] = adjacency`` (``src != dst``).

    Returns ``(edge_weights, diagonal)`` in float64: the entries of ``A_hat`` at the given
    (src, dst), and ``A_hat``'s diagonal ``1 / d`` for every node (the ``+ I`` self-loops).
    """
    if np.any(src == dst):
        raise ValueError("gcn_normalise takes off-diagonal entries only; self-loops come from + I")
    adjacency = np.asarray(adjacency, dtype=np.float64)
    degree = row_degree(src, adjacency, num_nodes)
    inv_sqrt = 1.0 / np.sqrt(degree)
    return adjacency * inv_sqrt[src] * inv_sqrt[dst], 1.0 / degree


def distance_scale(distance: np.ndarray) -> float:
    """The median kept JS distance, the unit of the similarity kernel.

    Degenerate corpora (e.g. every occurring token seen at a single, shared position) can have a
    zero median; then the mean of the positive distances is used, and 1.0 when there is none.
    """
    values = np.asarray(distance, dtype=np.float64)
    if values.size == 0:
        return 1.0
    median = float(np.median(values))
    if median > 0:
        return median
    positive = values[values > 0]
    return float(positive.mean()) if positive.size else 1.0


def similarity_adjacency(distance: np.ndarray, alpha: float, scale: float) -> np.ndarray:
    """The kernel ``exp(-alpha * distance / scale)`` in float64.

    Callers pass the distances as stored (float32), so that a loader reading the file recomputes
    exactly the same adjacency, degrees and implicit diagonal.
    """
    return np.exp(-alpha * np.asarray(distance, dtype=np.float64) / scale)


def similarity_self_loops(src: np.ndarray, distance: np.ndarray, alpha: float, scale: float,
                          num_nodes: int) -> np.ndarray:
    """The implicit diagonal ``1 / d_v`` (float32) of the similarity operator, for every token."""
    degree = row_degree(np.asarray(src, dtype=np.int64), similarity_adjacency(distance, alpha, scale),
                        num_nodes)
    return (1.0 / degree).astype(np.float32)
