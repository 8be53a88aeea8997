"""Semantic-similarity graph: Jensen-Shannon divergence between the tokens' position histograms.

``p_v(pos)`` is the fraction of token v's occurrences at position ``pos``. The distance between two
occurring tokens is their Jensen-Shannon divergence in nats, ``jensenshannon(p, q) ** 2`` in
scipy's terms, computed here for many pairs at once with scipy's formula
``(sum rel_entr(p, m) + sum rel_entr(q, m)) / 2`` with ``m = (p + q) / 2``. Each occurring token
keeps its ``k`` nearest other occurring tokens, ties to the smaller id; tokens that never occur
have no histogram and get no edges.

Candidate search. FAISS searches the vectors ``sqrt(p_v)`` (Hellinger geometry): with
``D = ||sqrt(p) - sqrt(q)||^2`` one has ``(ln 2 / 2) * D <= JS <= D / 2`` (per coordinate, the
ratio of the JS term to the squared-Hellinger term lies in [ln 2, 1]). For each token we take the
``candidates`` nearest by ``D`` and re-rank them by exact JS. With the exact flat index this is
*certified* to equal brute force: every token outside the candidate list has ``D`` at least the
largest candidate ``D`` (less a float32 rounding margin), hence JS at least ``ln 2 / 2`` times
that; when the k-th re-ranked JS is strictly below this bound no outsider can enter the top k,
and otherwise (rare: near-uniform histograms) that token is re-ranked against all tokens. The
``ivf`` / ``hnsw`` options are approximate indexes for vocabularies of 16k and more: their
candidate lists may miss true neighbours, so no certificate is possible and their result is
approximate. A GPU index is used when faiss has GPU support and ``graphs.device`` is ``cuda``.

Weight. ``A[src, dst] = exp(-alpha * distance / unit)`` over the kept rows, where the unit is the
median of the kept distances as stored in float32 (``distance_unit: median``) or 1 (``none``: the
official code's ``exp(-5 d)`` with alpha 5, which on small JS divergences weighs every neighbour
almost like the self-loop), then ``A_hat = D^-1/2 (A + I) D^-1/2`` with
row degrees (:mod:`pipeline.graphs.normalisation`). The file keeps exactly the k rows per token,
no self-loops; the diagonal ``1 / d_src`` is implicit and :func:`pipeline.graphs.load_edges`
adds it back from the distances, ``alpha`` and the median stored in the file's metadata.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa
from scipy.special import rel_entr

from pipeline.graphs.normalisation import distance_scale, gcn_normalise, similarity_adjacency
from pipeline.graphs.storage import SIMILARITY_SCHEMA, table_from_columns

log = logging.getLogger(__name__)

# Largest number of float64 histogram entries gathered at once when computing pair distances.
PAIR_BLOCK_ELEMENTS = 1 << 21


def position_distributions(position_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From (positions, V) counts: the occurring token ids and their histograms (n_occurring, positions)."""
    totals = position_counts.sum(axis=0)
    occurring = np.flatnonzero(totals > 0)
    histograms = np.ascontiguousarray((position_counts[:, occurring] / totals[occurring]).T, dtype=np.float64)
    return occurring, histograms


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise Jensen-Shannon divergence (nats) between the rows of two (n, positions) arrays.

    Symmetric bit for bit, and each row's value depends only on that row's two histograms, so
    any batching of pairs gives identical numbers (which makes FAISS re-ranking equal brute force).
    """
    m = (p + q) / 2.0
    return (rel_entr(p, m).sum(axis=1) + rel_entr(q, m).sum(axis=1)) / 2.0


def pair_divergences(histograms: np.ndarray, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """JS between each query row and its candidates (-1 = none: +inf), shape (n_queries, n_candidates)."""
    n_queries, width = candidates.shape
    out = np.full((n_queries, width), np.inf)
    per_block = max(1, PAIR_BLOCK_ELEMENTS // max(1, width * histograms.shape[1]))
    for start in range(0, n_queries, per_block):
        cand = candidates[start:start + per_block]
        rows = np.repeat(queries[start:start + per_block], width)
        cols = cand.ravel()
        valid = cols >= 0
        values = np.full(len(cols), np.inf)
        values[valid] = js_divergence(histograms[rows[valid]], histograms[cols[valid]])
        out[start:start + per_block] = values.reshape(cand.shape)
    return out


def select_nearest(queries: np.ndarray, candidates: np.ndarray, divergences: np.ndarray,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the k candidates with the smallest divergence, ties to the smaller index.

    The query itself and missing candidates (-1) are excluded. Returns ``(neighbours, distances)``
    of shape (n_queries, k), padded with -1 / +inf where fewer than k candidates exist.
    """
    n_queries, width = candidates.shape
    excluded = (candidates < 0) | (candidates == queries[:, None])
    values = np.where(excluded, np.inf, divergences)
    ids = np.where(excluded, np.iinfo(np.int64).max, candidates)
    rows = np.repeat(np.arange(n_queries), width)
    order = np.lexsort((ids.ravel(), values.ravel(), rows)).reshape(n_queries, width)[:, :k] % width
    take = np.arange(n_queries)[:, None]
    neighbours = np.where(np.isfinite(values[take, order]), candidates[take, order], -1)
    distances = values[take, order]
    if order.shape[1] < k:
        pad = k - order.shape[1]
        neighbours = np.pad(neighbours, ((0, 0), (0, pad)), constant_values=-1)
        distances = np.pad(distances, ((0, 0), (0, pad)), constant_values=np.inf)
    return neighbours, distances


def nearest_bruteforce(histograms: np.ndarray, k: int,
                       queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest by JS against every occurring token (the reference and the fallback)."""
    n = len(histograms)
    queries = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    everyone = np.arange(n, dtype=np.int64)
    per_block = max(1, PAIR_BLOCK_ELEMENTS // max(1, n * histograms.shape[1]))
    parts = []
    for start in range(0, len(queries), per_block):
        block = queries[start:start + per_block]
        candidates = np.broadcast_to(everyone, (len(block), n))
        parts.append(select_nearest(block, candidates, pair_divergences(histograms, block, candidates), k))
    if not parts:
        return np.empty((0, k), np.int64), np.empty((0, k))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _build_index(kind: str, vectors: np.ndarray, use_gpu: bool) -> faiss.Index:
    n, dim = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatL2(dim)
    elif kind == "ivf":
        nlist = max(1, min(n // 39, int(4 * math.sqrt(n))))  # faiss wants ~39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
        index.train(vectors)
        index.nprobe = min(nlist, max(8, nlist // 4))
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32)
        index.hnsw.efSearch = 128
    else:
        raise ValueError(f"unknown faiss index kind {kind!r}")
    if use_gpu and kind != "hnsw":  # faiss has no GPU HNSW; it stays on the CPU
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(vectors)
    return index


def faiss_gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@dataclass(frozen=True)
class NearestResult:
    neighbours: np.ndarray  # (n, k) indices into the histogram rows, -1 padded
    distances: np.ndarray  # (n, k) JS in nats, +inf padded
    fallbacks: int  # queries re-ranked against everyone because the certificate failed
    exact: bool  # certified equal to brute force


def nearest_faiss(histograms: np.ndarray, k: int, candidates: int, index_kind: str = "flat",
                  use_gpu: bool = False) -> NearestResult:
    """k nearest by JS via FAISS candidates on sqrt(p) and exact re-ranking (see module docstring)."""
    n, dim = histograms.shape
    if n == 0:
        return NearestResult(np.empty((0, k), np.int64), np.empty((0, k)), 0, True)
    vectors = np.ascontiguousarray(np.sqrt(histograms), dtype=np.float32)
    # +1: the query finds itself (or an identical histogram) among its own results.
    search = min(n, max(candidates, k) + 1)
    index = _build_index(index_kind, vectors, use_gpu)
    found_d, found = index.search(vectors, search)
    found = found.astype(np.int64)
    queries = np.arange(n, dtype=np.int64)
    neighbours, distances = select_nearest(queries, found, pair_divergences(histograms, queries, found), k)
    if index_kind != "flat":
        return NearestResult(neighbours, distances, 0, False)
    if search == n:
        return NearestResult(neighbours, distances, 0, True)
    # Float32 rounding of FAISS's squared distances: |error| <= ~(dim + 2) * eps for unit vectors.
    margin = 4.0 * (dim + 2) * float(np.finfo(np.float32).eps)
    outside_bound = (math.log(2.0) / 2.0) * (found_d.max(axis=1).astype(np.float64) - margin)
    certified = distances[:, k - 1] < outside_bound
    failed = np.flatnonzero(~certified)
    if len(failed):
        exact_n, exact_d = nearest_bruteforce(histograms, k, failed)
        neighbours[failed], distances[failed] = exact_n, exact_d
        log.info("similarity: %d of %d tokens re-ranked against all tokens (candidate bound not met)",
                 len(failed), n)
    return NearestResult(neighbours, distances, len(failed), True)


@dataclass(frozen=True)
class SimilarityGraph:
    table: pa.Table
    occurring: int
    fallbacks: int
    exact: bool
    distance_scale: float


def similarity_graph(position_counts: np.ndarray, k: int, candidates: int, alpha: float,
                     index_kind: str = "flat", use_gpu: bool = False,
                     distance_unit: str = "median") -> SimilarityGraph:
    """The ``similarity.parquet`` table from (positions, V) counts, sorted by (src, dst)."""
    vocab_size = position_counts.shape[1]
    occurring, histograms = position_distributions(position_counts)
    result = nearest_faiss(histograms, k, candidates, index_kind, use_gpu)
    valid = result.neighbours >= 0
    src = np.repeat(occurring, valid.sum(axis=1)).astype(np.int64)
    dst = occurring[result.neighbours[valid]].astype(np.int64)
    distance = result.distances[valid].astype(np.float32)
    order = np.lexsort((dst, src))
    src, dst, distance = src[order], dst[order], distance[order]
    # The kernel is computed from the stored float32 distances so that a loader recomputes it exactly.
    scale = distance_scale(distance) if distance_unit == "median" else 1.0
    weight, _ = gcn_normalise(src, dst, similarity_adjacency(distance, alpha, scale), vocab_size)
    table = table_from_columns(
        SIMILARITY_SCHEMA,
        {"src": src, "dst": dst, "distance": distance, "weight": weight.astype(np.float32)},
        metadata={"num_tokens": str(vocab_size), "alpha": repr(float(alpha)), "distance_scale": repr(scale)},
    )
    return SimilarityGraph(table, len(occurring), result.fallbacks, result.exact, scale)
