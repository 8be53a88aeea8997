"""The official KA-MIG graph construction: hand-computed examples and direct reference formulas."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.spatial.distance import jensenshannon

from pipeline.errors import PipelineError
from pipeline.graphs import official
from pipeline.graphs.official import (
    add_self_loops_and_normalise,
    js_divergence_matrix,
    official_cooccurrence,
    official_similarity,
    softmax_profiles,
)
from pipeline.graphs.stats import official_graph_metrics
from pipeline.graphs.storage import OFFICIAL_EDGES_SCHEMA, load_official_edges, write_official_edges

# ------------------------------------------------------------------------------------------
# Co-occurrence
# ------------------------------------------------------------------------------------------

# Symmetric counts C[center, neighbour]; the diagonal is ignored.
COUNTS = np.array([
    [9, 3, 3, 1, 0, 0],  # nnz 3: int(1.5) = 1 kept; 1 and 2 tie at 3, the lower id (1) wins
    [3, 0, 4, 0, 0, 0],  # nnz 2: int(1.0) = 1 kept, token 2
    [3, 4, 7, 0, 0, 0],  # nnz 2: token 1 (4 beats 3)
    [1, 0, 0, 0, 0, 0],  # nnz 1: int(0.5) = 0, max(1, .) keeps token 0
    [0, 0, 0, 0, 4, 0],  # only ever next to itself: nnz 0 after zeroing the diagonal, nothing
    [0, 0, 0, 0, 0, 0],  # never seen: nothing
])


def edges_list(src: np.ndarray, dst: np.ndarray, weight: np.ndarray) -> list[tuple[int, int, float]]:
    return list(zip(src.tolist(), dst.tolist(), weight.tolist()))


def test_cooccurrence_by_hand():
    src, dst, weight = official_cooccurrence(COUNTS, 0.5)
    assert edges_list(src, dst, weight) == [(0, 1, 3.0), (1, 2, 4.0), (2, 1, 4.0), (3, 0, 1.0)]
    assert src.dtype == dst.dtype == np.int64 and weight.dtype == np.float64
    # Ratio 1: every non-zero off-diagonal entry, counts as weights, sorted by (src, dst).
    src, dst, weight = official_cooccurrence(COUNTS, 1.0)
    assert edges_list(src, dst, weight) == [(0, 1, 3.0), (0, 2, 3.0), (0, 3, 1.0), (1, 0, 3.0),
                                            (1, 2, 4.0), (2, 0, 3.0), (2, 1, 4.0), (3, 0, 1.0)]
    assert COUNTS[4, 4] == 4  # the input is not modified (the diagonal is zeroed on a copy)


def reference_cooccurrence(counts: np.ndarray, ratio: float) -> list[tuple[int, int, float]]:
    """The rule as written: per row, sort (-count, id), keep max(1, int(nnz * r)) if nnz > 0."""
    edges = []
    for i, row in enumerate(counts.tolist()):
        candidates = sorted((-c, j) for j, c in enumerate(row) if j != i and c != 0)
        if candidates:
            edges += [(i, j, float(-c)) for c, j in sorted(candidates[:max(1, int(len(candidates) * ratio))],
                                                           key=lambda e: e[1])]
    return edges


@pytest.mark.parametrize("ratio", [0.05, 0.2, 0.5, 1.0])
def test_cooccurrence_equals_the_rule_on_random_counts(ratio):
    rng = np.random.default_rng(1)
    upper = np.triu(rng.integers(0, 4, size=(30, 30)) * (rng.random((30, 30)) < 0.5), 1)  # many ties
    counts = upper + upper.T + np.diag(rng.integers(0, 9, 30))
    counts[7] = counts[:, 7] = 0
    assert edges_list(*official_cooccurrence(counts, ratio)) == reference_cooccurrence(counts, ratio)


# ------------------------------------------------------------------------------------------
# Similarity
# ------------------------------------------------------------------------------------------

# (positions, V) counts, as CorpusCounts.positions. Token 3 never occurs (max == min: uniform
# profile), token 4 is seen equally often everywhere (also max == min: uniform, identical to 3).
POSITION_COUNTS = np.array([
    [4, 3, 0, 0, 2, 1],
    [0, 1, 1, 0, 2, 1],
    [0, 0, 4, 0, 2, 0],
])


def reference_profile(counts: list[int]) -> list[float]:
    low, high = min(counts), max(counts)
    scaled = [(c - low) / (high - low) if high > low else 0.0 for c in counts]
    total = sum(math.exp(x) for x in scaled)
    return [math.exp(x) / total for x in scaled]


def reference_js(p: list[float], q: list[float]) -> float:
    m = [(a + b) / 2 for a, b in zip(p, q)]

    def kl(x: list[float]) -> float:
        return sum(a * math.log(a / c) for a, c in zip(x, m))

    return 0.5 * kl(p) + 0.5 * kl(q)


def reference_similarity(position_counts: np.ndarray, k: int, alpha: float) -> list[tuple[int, int, float]]:
    profiles = [reference_profile(column) for column in position_counts.T.tolist()]
    edges = []
    for i, p in enumerate(profiles):
        distances = sorted((reference_js(p, q), j) for j, q in enumerate(profiles) if j != i)
        edges += sorted((i, j, math.exp(-alpha * d)) for d, j in distances[:k])
    return edges


def test_profiles_by_hand():
    profiles = softmax_profiles(POSITION_COUNTS)
    e = math.e
    assert np.allclose(profiles[0], [e / (e + 2), 1 / (e + 2), 1 / (e + 2)], rtol=1e-15)  # [1, 0, 0]
    assert np.allclose(profiles[1], np.exp([1, 1 / 3, 0]) / np.exp([1, 1 / 3, 0]).sum(), rtol=1e-15)
    # Never occurring and uniformly occurring tokens: a uniform profile (the notebook's 0/0 is NaN).
    assert np.array_equal(profiles[3], np.full(3, 1 / 3)) and np.array_equal(profiles[4], profiles[3])
    assert np.isfinite(profiles).all() and np.allclose(profiles.sum(axis=1), 1.0)


def test_js_matrix_against_direct_formulas():
    profiles = softmax_profiles(POSITION_COUNTS)
    distances = js_divergence_matrix(profiles)
    rows = profiles.tolist()
    expected = np.array([[reference_js(p, q) for q in rows] for p in rows])
    assert np.allclose(distances, expected, rtol=1e-12, atol=1e-17)
    scipy_js = np.array([[jensenshannon(p, q) ** 2 for q in profiles] for p in profiles])
    assert np.allclose(distances, scipy_js, rtol=1e-10, atol=1e-15)
    assert np.array_equal(distances, distances.T) and np.all(np.diag(distances) == 0)
    assert distances[3, 4] == 0.0  # identical profiles: exactly 0, hence weight exactly 1


def test_js_blocks_do_not_change_the_numbers(monkeypatch):
    profiles = softmax_profiles(np.random.default_rng(2).integers(0, 9, size=(16, 23)))
    whole = js_divergence_matrix(profiles)
    monkeypatch.setattr(official, "JS_BLOCK_ELEMENTS", 1)  # one row per block
    assert np.array_equal(js_divergence_matrix(profiles), whole)


def test_similarity_by_hand():
    src, dst, weight = official_similarity(POSITION_COUNTS, 2, 5.0)
    got = edges_list(src, dst, weight)
    expected = reference_similarity(POSITION_COUNTS, 2, 5.0)
    assert [(s, d) for s, d, _ in got] == [(s, d) for s, d, _ in expected] == [
        (0, 1), (0, 5), (1, 0), (1, 5), (2, 3), (2, 4), (3, 4), (3, 5), (4, 3), (4, 5), (5, 1), (5, 3)]
    assert np.allclose(weight, [w for _, _, w in expected], rtol=1e-12)
    # Tokens 3 and 4 have the same profile: d = 0 is kept, with weight exp(0) = 1.
    assert weight[(src == 3) & (dst == 4)][0] == 1.0 and weight[(src == 4) & (dst == 3)][0] == 1.0
    # Token 5: token 1 first, then 3 and 4 tie exactly; the lower id (3) is kept.
    src, dst, _ = official_similarity(POSITION_COUNTS, 1, 5.0)
    assert dict(zip(src.tolist(), dst.tolist())) == {0: 1, 1: 0, 2: 3, 3: 4, 4: 3, 5: 1}


def test_similarity_on_random_counts_and_large_k():
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 5, size=(9, 12)) * (rng.random((9, 12)) < 0.4)
    counts[:, 4] = 0
    for k, alpha in ((3, 5.0), (50, 1.0)):  # k beyond V - 1 keeps every other token
        src, dst, weight = official_similarity(counts, k, alpha)
        expected = reference_similarity(counts, min(k, 11), alpha)
        assert [(s, d) for s, d, _ in edges_list(src, dst, weight)] == [(s, d) for s, d, _ in expected]
        assert np.allclose(weight, [w for _, _, w in expected], rtol=1e-12)


# ------------------------------------------------------------------------------------------
# Self-loops, normalisation, storage
# ------------------------------------------------------------------------------------------


def test_self_loops_and_normalisation_by_hand():
    # Row 0 keeps 1 and 2, row 1 keeps 0, rows 2 and 3 nothing: n = [3, 2, 1, 1].
    src, dst, weight = add_self_loops_and_normalise(
        np.array([1, 0, 0]), np.array([0, 2, 1]), np.array([5.0, 3.0, 2.0]), 4)
    assert list(zip(src.tolist(), dst.tolist())) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 2), (3, 3)]
    expected = [1 / 3, 2 / math.sqrt(6), 3 / math.sqrt(3), 5 / math.sqrt(6), 1 / 2, 1.0, 1.0]
    assert np.allclose(weight, expected, rtol=1e-15)
    with pytest.raises(ValueError, match="off-diagonal"):
        add_self_loops_and_normalise(np.array([1]), np.array([1]), np.array([1.0]), 2)


@pytest.mark.parametrize("graph", ["cooccurrence", "similarity"])
def test_every_self_loop_is_exactly_one_over_its_row_size(graph):
    rng = np.random.default_rng(4)
    if graph == "cooccurrence":
        upper = np.triu(rng.integers(0, 50, size=(40, 40)), 1)
        edges = official_cooccurrence(upper + upper.T, 0.3)
    else:
        edges = official_similarity(rng.integers(0, 6, size=(7, 40)), 3, 5.0)
    src, dst, weight = add_self_loops_and_normalise(*edges, 40)
    per_row = np.bincount(src, minlength=40)
    loops = src == dst
    assert np.array_equal(src[loops], np.arange(40))
    assert np.array_equal(weight[loops], 1.0 / per_row)  # exact, not approximately
    # The kept edges come back in the same (src, dst) order, each divided by sqrt(n_src * n_dst).
    off = ~loops
    assert np.array_equal(src[off], edges[0]) and np.array_equal(dst[off], edges[1])
    assert np.allclose(weight[off] * np.sqrt(per_row[src[off]] * per_row[dst[off]]), edges[2], rtol=1e-14)


def test_storage_round_trip_and_metrics(tmp_path):
    src, dst, weight = add_self_loops_and_normalise(*official_cooccurrence(COUNTS, 0.5), 6)
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    order = np.arange(len(src))[::-1]  # given unsorted: written sorted by (src, dst)
    write_official_edges(first, src[order], dst[order], weight[order].astype(np.float32), {"num_tokens": "6"})
    write_official_edges(second, src, dst, weight.astype(np.float32), {"num_tokens": "6"})
    assert first.read_bytes() == second.read_bytes()
    assert pq.read_schema(first).remove_metadata().equals(OFFICIAL_EDGES_SCHEMA)
    got_src, got_dst, got_weight = load_official_edges(first)
    assert got_src.dtype == got_dst.dtype == np.int64 and got_weight.dtype == np.float32
    assert np.array_equal(got_src, src) and np.array_equal(got_dst, dst)
    assert np.array_equal(got_weight, weight.astype(np.float32))
    metrics = official_graph_metrics(got_src, got_dst, got_weight, 6)
    # Rows: 0 -> {0, 1}, 1 -> {1, 2}, 2 -> {1, 2}, 3 -> {0, 3}, 4 -> {4}, 5 -> {5}.
    assert metrics == {
        "nodes": 6, "edges": 10, "self_loops": 6, "edges_per_row_min": 1, "edges_per_row_max": 2,
        "in_degree_min": 1, "in_degree_max": 3,
        "weight_min": float(got_weight.min()), "weight_max": float(got_weight.max()),
    }
    assert metrics["weight_min"] == np.float32(0.5) and metrics["weight_max"] == np.float32(4 / 2)
    with pytest.raises(PipelineError, match="not found"):
        load_official_edges(tmp_path / "missing.parquet")
    pq.write_table(pq.read_table(first).drop(["weight"]), tmp_path / "bad.parquet")
    with pytest.raises(PipelineError, match="schema"):
        load_official_edges(tmp_path / "bad.parquet")
