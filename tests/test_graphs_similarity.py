"""Similarity graph: JS against scipy, FAISS candidates against brute force, weights and loader."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from pipeline.graphs.normalisation import distance_scale
from pipeline.graphs.similarity import (
    js_divergence,
    nearest_bruteforce,
    nearest_faiss,
    position_distributions,
    similarity_graph,
)
from pipeline.graphs.storage import load_edges, write_table


def random_histograms(rng: np.random.Generator, n: int, positions: int, concentration: float) -> np.ndarray:
    h = rng.dirichlet(np.full(positions, concentration), size=n)
    h[rng.random(h.shape) < 0.2] = 0.0  # exact zeros, as unseen positions give
    h[h.sum(axis=1) == 0, 0] = 1.0
    return h / h.sum(axis=1, keepdims=True)


def test_js_matches_scipy_squared():
    rng = np.random.default_rng(0)
    p, q = random_histograms(rng, 200, 17, 0.5), random_histograms(rng, 200, 17, 0.5)
    ours = js_divergence(p, q)
    theirs = np.array([jensenshannon(a, b) ** 2 for a, b in zip(p, q)])
    assert np.allclose(ours, theirs, rtol=1e-10, atol=1e-15)
    assert np.array_equal(ours, js_divergence(q, p))  # symmetric bit for bit
    assert np.all(js_divergence(p, p) == 0.0)
    # Disjoint supports: ln 2 nats, the maximum.
    assert js_divergence(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]))[0] == pytest.approx(math.log(2))


def test_hand_computed_neighbours_and_ties():
    # Two positions. Token 0 always at position 0, token 1 always at 1, token 2 half and half,
    # token 3 never occurs.
    counts = np.array([[4, 0, 3, 0], [0, 5, 3, 0]])
    occurring, _ = position_distributions(counts)
    assert occurring.tolist() == [0, 1, 2]
    graph = similarity_graph(counts, k=1, candidates=32, alpha=5.0)
    rows = {(s, d): dist for s, d, dist in zip(*(graph.table.column(c).to_pylist()
                                                   for c in ("src", "dst", "distance")))}
    # JS((1,0), (.5,.5)) = (ln(4/3) + .5 ln(2/3) + .5 ln 2) / 2; token 2 is equally far from 0 and 1:
    # the tie goes to the smaller id.
    half = (math.log(4 / 3) + 0.5 * math.log(2 / 3) + 0.5 * math.log(2)) / 2
    assert sorted(rows) == [(0, 2), (1, 2), (2, 0)]
    assert all(v == pytest.approx(half, rel=1e-6) for v in rows.values())
    assert graph.occurring == 3


@pytest.mark.parametrize("concentration,candidates,k",
                         [(0.05, 8, 2), (0.3, 4, 3), (50.0, 8, 2), (1.0, 40, 5)])
def test_faiss_candidates_equal_bruteforce(concentration, candidates, k):
    rng = np.random.default_rng(int(concentration * 100) + k)
    hist = random_histograms(rng, 300, 24, concentration)
    hist[10] = hist[20]  # identical histograms: distance 0 and ties
    hist[30] = hist[20]
    fast = nearest_faiss(hist, k, candidates)
    slow_n, slow_d = nearest_bruteforce(hist, k)
    assert fast.exact
    assert np.array_equal(fast.neighbours, slow_n)
    assert np.array_equal(fast.distances, slow_d)
    assert fast.neighbours[20, :2].tolist() == [10, 30]
    if concentration < 1:
        assert fast.fallbacks < len(hist)  # the certified candidate path did the work


def test_bruteforce_is_the_definition():
    rng = np.random.default_rng(5)
    hist = random_histograms(rng, 40, 6, 0.7)
    neighbours, distances = nearest_bruteforce(hist, 3)
    for i in range(len(hist)):
        scored = sorted((jensenshannon(hist[i], hist[j]) ** 2, j) for j in range(len(hist)) if j != i)
        assert neighbours[i].tolist() == [j for _, j in scored[:3]]
        assert np.allclose(distances[i], [d for d, _ in scored[:3]], rtol=1e-9, atol=1e-15)


def test_fewer_tokens_than_k():
    hist = np.array([[1.0, 0.0], [0.5, 0.5]])
    result = nearest_faiss(hist, 3, 32)
    assert result.neighbours.tolist() == [[1, -1, -1], [0, -1, -1]]


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_indexes_run(index):
    hist = random_histograms(np.random.default_rng(7), 500, 16, 0.2)
    result = nearest_faiss(hist, 2, 16, index_kind=index)
    exact, _ = nearest_bruteforce(hist, 2)
    assert not result.exact
    assert np.mean(result.neighbours == exact) > 0.8


def dense_similarity_operator(src, dst, distance, alpha, vocab):
    adjacency = np.zeros((vocab, vocab))
    distance = distance.astype(np.float64)
    adjacency[src, dst] = np.exp(-alpha * distance / np.median(distance))
    a = adjacency + np.eye(vocab)
    d = a.sum(axis=1)
    return a / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]


def test_similarity_graph_rows_weights_and_loader(tmp_path):
    rng = np.random.default_rng(11)
    vocab, positions = 60, 9
    counts = rng.poisson(rng.gamma(0.5, 4.0, size=(positions, vocab)))
    counts[:, [3, 17, 42]] = 0  # never seen
    graph = similarity_graph(counts, k=2, candidates=8, alpha=5.0)
    table = graph.table
    src, dst = table.column("src").to_numpy(), table.column("dst").to_numpy()
    distance, weight = table.column("distance").to_numpy(), table.column("weight").to_numpy()
    occurring = np.flatnonzero(counts.sum(axis=0) > 0)
    assert np.array_equal(np.unique(src), occurring)
    assert np.all(np.bincount(src, minlength=vocab)[occurring] == 2)
    assert not np.isin([3, 17, 42], np.concatenate([src, dst])).any()
    assert not np.any(src == dst)
    assert np.array_equal(np.lexsort((dst, src)), np.arange(len(src)))
    _, hist = position_distributions(counts)
    exact_n, exact_d = nearest_bruteforce(hist, 2)
    by_dst = np.argsort(occurring[exact_n], axis=1, kind="stable")  # the file is sorted by (src, dst)
    assert np.array_equal(dst, np.take_along_axis(occurring[exact_n], by_dst, 1).ravel())
    assert np.array_equal(distance, np.take_along_axis(exact_d, by_dst, 1).ravel().astype(np.float32))
    assert graph.distance_scale == pytest.approx(np.median(distance))
    # Weights carry information (not all about equal) and follow the dense GCN formula.
    reference = dense_similarity_operator(src, dst, distance, 5.0, vocab)
    assert np.allclose(weight, reference[src, dst], rtol=1e-6, atol=0)
    assert weight.max() / weight.min() > 2
    # The loader returns the complete operator, implicit diagonal included.
    path = tmp_path / "similarity.parquet"
    write_table(path, table)
    l_src, l_dst, l_weight = load_edges(path)
    assert l_src.dtype == np.int64 and l_weight.dtype == np.float32
    dense = np.zeros((vocab, vocab))
    dense[l_src, l_dst] = l_weight
    assert np.allclose(dense, reference, rtol=1e-6, atol=1e-12)
    assert np.count_nonzero(dense) == len(src) + vocab


def test_unit_none_is_the_official_kernel_on_the_raw_divergence():
    rng = np.random.default_rng(3)
    counts = rng.poisson(rng.gamma(0.5, 4.0, size=(9, 40)))
    median = similarity_graph(counts, k=2, candidates=8, alpha=1.0)
    raw = similarity_graph(counts, k=2, candidates=8, alpha=5.0, distance_unit="none")
    assert raw.distance_scale == 1.0 and median.distance_scale > 0
    table = raw.table
    src, dst = table.column("src").to_numpy(), table.column("dst").to_numpy()
    distance = table.column("distance").to_numpy().astype(np.float64)
    adjacency = np.zeros((40, 40))
    adjacency[src, dst] = np.exp(-5.0 * distance)  # exp(-5 d), not divided by the median
    a = adjacency + np.eye(40)
    d = a.sum(axis=1)
    expected = (a / np.sqrt(d)[:, None] / np.sqrt(d)[None, :])[src, dst]
    assert np.allclose(table.column("weight").to_numpy(), expected, rtol=1e-6)
    # With alpha 1 in median units a median neighbour weighs e^-1 before normalisation.
    kept = median.table.column("distance").to_numpy().astype(np.float64)
    assert np.exp(-np.median(kept) / median.distance_scale) == pytest.approx(np.exp(-1.0))


def test_distance_scale_degenerate_cases():
    assert distance_scale(np.array([0.0, 0.0, 0.2], np.float32)) == pytest.approx(0.2)
    assert distance_scale(np.zeros(3, np.float32)) == 1.0
    assert distance_scale(np.array([], np.float32)) == 1.0
    assert distance_scale(np.array([0.1, 0.3, 0.2], np.float32)) == pytest.approx(0.2)
