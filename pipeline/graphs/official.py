"""The official KA-MIG construction of the two positive graphs (``data/graphs_official/``).

A faithful re-implementation, in numpy, of the authors' notebooks (GuotaoLiang/KA-MIG,
``graph_construction/``), which the published graph layer (``fusion.adapter: official``) was
trained on. It differs from this pipeline's own graphs (:mod:`pipeline.graphs.cooccurrence`,
:mod:`pipeline.graphs.similarity`) on purpose: counts as weights, min-max + softmax position
profiles over *all* tokens, raw ``exp(-alpha * d)`` and explicit self-loops.

1. Co-occurrence: the 8-neighbour count matrix, diagonal zeroed; row i keeps its top
   ``max(1, int(nnz_i * ratio))`` entries with their counts as weights (none when ``nnz_i = 0``).
2. Similarity: per-token position counts, each row min-max normalised then softmaxed; each
   token keeps its ``k`` nearest others by Jensen-Shannon divergence, weight ``exp(-alpha * d)``.
3. Both: a self-loop of weight 1 on every node, then ``w_ij / sqrt(n_i * n_j)`` with ``n_i`` the
   number of edges in row i (self-loop included, unweighted).

Edges are (src = the token whose row it is, dst = the kept token). Ties always go to the lower
token id (stable sorts), so the result is deterministic; everything is float64 until stored.
"""

from __future__ import annotations

import numpy as np

# Float64 entries per (rows, V, positions) temporary of the blocked JS computation (32 MiB):
# ImageNet's dense V x V x positions (1024 x 1024 x 256) would be 2 GiB per temporary.
JS_BLOCK_ELEMENTS = 1 << 22


def _sorted_edges(src: np.ndarray, dst: np.ndarray,
                  weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.lexsort((dst, src))
    return src[order].astype(np.int64), dst[order].astype(np.int64), weight[order].astype(np.float64)


def official_cooccurrence(counts: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kept co-occurrence edges ``(src int64, dst int64, weight float64)``, sorted by (src, dst).

    ``counts`` is the symmetric (V, V) matrix ``C[center, neighbour]`` (``CorpusCounts.cooccurrence``).
    Row i keeps its ``max(1, int(nnz_i * ratio))`` largest off-diagonal counts, equal counts to the
    lower id, a row without any off-diagonal count nothing; the weight is the count itself.
    """
    block = np.array(counts, dtype=np.int64)  # a copy: the diagonal is zeroed in place
    vocab = block.shape[0]
    np.fill_diagonal(block, 0)
    nnz = np.count_nonzero(block, axis=1)
    # int() of the float64 product truncates, as the notebook's int(nnz * r) does.
    keep = np.where(nnz > 0, np.maximum(1, np.floor(nnz * float(ratio))), 0).astype(np.int64)
    # Stable sort of -count: largest first, equal counts in ascending id order.
    order = np.argsort(-block, axis=1, kind="stable")
    taken = np.arange(vocab)[None, :] < keep[:, None]
    src = np.repeat(np.arange(vocab), keep)
    dst = order[taken]
    return _sorted_edges(src, dst, block[src, dst].astype(np.float64))


def softmax_profiles(position_counts: np.ndarray) -> np.ndarray:
    """(V, positions) float64: each token's counts min-max normalised over positions, then softmaxed.

    ``position_counts`` is (positions, V) as ``CorpusCounts.positions``. A row with ``max == min``
    (a token that never occurs, or one seen equally often everywhere) is 0/0 in the notebook, NaN;
    here its normalised row is all zeros, so its profile is the uniform distribution.
    """
    x = np.asarray(position_counts, dtype=np.float64).T
    low = x.min(axis=1, keepdims=True)
    span = x.max(axis=1, keepdims=True) - low
    scaled = np.divide(x - low, span, out=np.zeros_like(x), where=span > 0)
    # Entries lie in [0, 1]: exp cannot overflow, so the plain formula is the stable one.
    e = np.exp(scaled)
    return e / e.sum(axis=1, keepdims=True)


def js_divergence_matrix(profiles: np.ndarray) -> np.ndarray:
    """(V, V) float64 Jensen-Shannon divergences (nats) between the rows of ``profiles``.

    ``JS(p, q) = (KL(p || m) + KL(q || m)) / 2``, ``m = (p + q) / 2``, exactly in float64, computed
    ``JS_BLOCK_ELEMENTS`` at a time. Softmax rows are strictly positive, so every log is finite;
    identical rows give exactly 0 (``m == p``), and rounding below 0 is clipped.
    """
    n, width = profiles.shape
    logs = np.log(profiles)
    out = np.empty((n, n), dtype=np.float64)
    rows = max(1, JS_BLOCK_ELEMENTS // max(1, n * width))
    for start in range(0, n, rows):
        p, log_p = profiles[start:start + rows, None, :], logs[start:start + rows, None, :]
        log_m = np.log((p + profiles[None]) / 2.0)
        out[start:start + rows] = ((p * (log_p - log_m)).sum(axis=2)
                                   + (profiles[None] * (logs[None] - log_m)).sum(axis=2)) / 2.0
    return np.maximum(out, 0.0, out=out)


def official_similarity(position_counts: np.ndarray, k: int,
                        alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kept similarity edges ``(src int64, dst int64, weight float64)``, sorted by (src, dst).

    ``position_counts`` is (positions, V). Every token (occurring or not, see
    :func:`softmax_profiles`) keeps its ``min(k, V - 1)`` nearest other tokens by JS divergence
    ``d`` of the profiles, ties to the lower id, with weight ``exp(-alpha * d)`` (1 at ``d = 0``).
    """
    distances = js_divergence_matrix(softmax_profiles(position_counts))
    vocab = len(distances)
    np.fill_diagonal(distances, np.inf)  # a token is not its own neighbour
    k = min(int(k), vocab - 1)
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]
    src = np.repeat(np.arange(vocab), k)
    dst = nearest.ravel()
    return _sorted_edges(src, dst, np.exp(-float(alpha) * distances[src, dst]))


def add_self_loops_and_normalise(src: np.ndarray, dst: np.ndarray, weight: np.ndarray,
                                 num_nodes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stored graph: kept edges plus a weight-1 self-loop on every node, ``w / sqrt(n_i * n_j)``.

    ``n_i`` counts the edges of row i (``src == i``), self-loop included, unweighted (>= 1), so a
    self-loop's weight is exactly ``1 / n_i``. Returns ``(src int64, dst int64, weight float64)``
    sorted by (src, dst). The kept edges must not include the diagonal.
    """
    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    if np.any(src == dst):
        raise ValueError("kept edges must be off-diagonal: the self-loops are added here")
    nodes = np.arange(num_nodes, dtype=np.int64)
    src, dst = np.concatenate([src, nodes]), np.concatenate([dst, nodes])
    weight = np.concatenate([np.asarray(weight, dtype=np.float64), np.ones(num_nodes)])
    per_row = np.bincount(src, minlength=num_nodes)
    # An integer product: sqrt(n * n) is exactly n, so the self-loops are exactly 1 / n_i.
    return _sorted_edges(src, dst, weight / np.sqrt((per_row[src] * per_row[dst]).astype(np.float64)))
