"""Co-occurrence counting, pruning and GCN normalisation against hand-computed expectations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.graphs import kernels
from pipeline.graphs.cooccurrence import (
    cooccurrence_table,
    count_cooccurrence,
    neighbour_offsets,
    prune_top_ratio,
    symmetrise,
)
from pipeline.graphs.normalisation import gcn_normalise
from pipeline.graphs.source import subsample_mask


def loop_count(grids: np.ndarray, vocab: int, neighbourhood: int) -> np.ndarray:
    """The official notebook's algorithm: a Python loop over cells and their neighbours."""
    counts = np.zeros((vocab, vocab), dtype=np.int64)
    steps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    if neighbourhood == 4:
        steps = [(dy, dx) for dy, dx in steps if dy == 0 or dx == 0]
    for grid in grids:
        height, width = grid.shape
        for y in range(height):
            for x in range(width):
                for dy, dx in steps:
                    if 0 <= y + dy < height and 0 <= x + dx < width:
                        counts[grid[y, x], grid[y + dy, x + dx]] += 1
    return counts


def from_pairs(vocab: int, pairs: dict[tuple[int, int], int]) -> np.ndarray:
    out = np.zeros((vocab, vocab), dtype=np.int64)
    for (a, b), n in pairs.items():
        out[a, b] = n
    return out


def test_offsets_are_the_8_and_4_neighbourhoods():
    assert sorted(neighbour_offsets(8)) == sorted(
        (dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))
    assert sorted(neighbour_offsets(4)) == [(-1, 0), (0, -1), (0, 1), (1, 0)]


# Both counting paths (the compiled kernel and the numpy bincount) face every hand-computed case.
BACKENDS = pytest.mark.parametrize("backend", ["compiled", "numpy"])


@BACKENDS
def test_2x2_distinct_tokens(backend):
    grid = np.array([[[0, 1], [2, 3]]])
    # In a 2x2 grid every cell touches every other one (diagonals included).
    all_pairs = {(a, b): 1 for a in range(4) for b in range(4) if a != b}
    assert np.array_equal(count_cooccurrence(grid, 4, 8, backend), from_pairs(4, all_pairs))
    # Without diagonals, 0-3 and 1-2 are not neighbours.
    four = {(0, 1): 1, (1, 0): 1, (0, 2): 1, (2, 0): 1, (1, 3): 1, (3, 1): 1, (2, 3): 1, (3, 2): 1}
    assert np.array_equal(count_cooccurrence(grid, 4, 4, backend), from_pairs(4, four))


@BACKENDS
def test_2x2_repeated_tokens(backend):
    grid = np.array([[[0, 0], [1, 0]]])
    # 8: each of the three 0-cells sees two 0s and the 1; the 1-cell sees three 0s.
    assert np.array_equal(count_cooccurrence(grid, 2, 8, backend),
                          from_pairs(2, {(0, 0): 6, (0, 1): 3, (1, 0): 3}))
    # 4: (0,0) sees 0 and 1; (0,1) sees two 0s; (1,0) sees two 0s; (1,1) sees 0 and 1.
    assert np.array_equal(count_cooccurrence(grid, 2, 4, backend),
                          from_pairs(2, {(0, 0): 4, (0, 1): 2, (1, 0): 2}))


NEIGHBOURS_3X3 = {
    8: {0: {1, 3, 4}, 1: {0, 2, 3, 4, 5}, 2: {1, 4, 5}, 3: {0, 1, 4, 6, 7}, 4: {0, 1, 2, 3, 5, 6, 7, 8},
        5: {1, 2, 4, 7, 8}, 6: {3, 4, 7}, 7: {3, 4, 5, 6, 8}, 8: {4, 5, 7}},
    4: {0: {1, 3}, 1: {0, 2, 4}, 2: {1, 5}, 3: {0, 4, 6}, 4: {1, 3, 5, 7}, 5: {2, 4, 8}, 6: {3, 7},
        7: {4, 6, 8}, 8: {5, 7}},
}


@BACKENDS
@pytest.mark.parametrize("neighbourhood", [8, 4])
def test_3x3_distinct_tokens(neighbourhood, backend):
    grid = np.arange(9).reshape(1, 3, 3)
    expected = from_pairs(9, {(a, b): 1 for a, nbrs in NEIGHBOURS_3X3[neighbourhood].items() for b in nbrs})
    counts = count_cooccurrence(grid, 9, neighbourhood, backend)
    assert np.array_equal(counts, expected)
    assert counts.sum() == {8: 40, 4: 24}[neighbourhood]  # 2 x (12 edges + 8 diagonal pairs) / 2 x 12


def symmetric(vocab: int, upper: dict[tuple[int, int], int]) -> np.ndarray:
    out = from_pairs(vocab, upper)
    return out + np.triu(out, 1).T


@BACKENDS
def test_3x3_repeated_tokens_two_images(backend):
    grids = np.array([[[0, 0, 1], [0, 2, 1], [1, 1, 1]], [[2, 2, 2], [2, 2, 2], [2, 2, 2]]])
    # Image 1, 4-neighbourhood, unordered adjacent pairs: rows {0,0} {0,1} | {0,2} {2,1} | {1,1} {1,1};
    # columns {0,0} {0,1} | {0,2} {2,1} | {1,1} {1,1}. Each counts once per order (twice on the diagonal).
    # Image 2 (all 2s): 24 ordered pairs with 4 neighbours, 40 with 8.
    four = symmetric(3, {(0, 0): 4, (0, 1): 2, (0, 2): 2, (1, 1): 8, (1, 2): 2, (2, 2): 24})
    assert np.array_equal(count_cooccurrence(grids, 3, 4, backend), four)
    # Diagonals add: down-right {0,2} {0,1} {0,1} {2,1}; down-left {0,0} {1,2} {2,1} {1,1}.
    eight = symmetric(3, {(0, 0): 6, (0, 1): 4, (0, 2): 3, (1, 1): 10, (1, 2): 5, (2, 2): 40})
    assert np.array_equal(count_cooccurrence(grids, 3, 8, backend), eight)


@BACKENDS
@pytest.mark.parametrize("neighbourhood", [8, 4])
@pytest.mark.parametrize("shape", [(5, 3, 5), (4, 1, 6), (3, 6, 1), (1, 1, 1), (2, 7, 7)])
def test_vectorised_equals_per_cell_loop(neighbourhood, shape, backend):
    grids = np.random.default_rng(sum(shape)).integers(0, 6, size=shape)
    counts = count_cooccurrence(grids, 6, neighbourhood, backend)
    assert np.array_equal(counts, loop_count(grids, 6, neighbourhood))
    assert np.array_equal(counts, counts.T)


def test_counts_are_symmetric_and_additive_over_batches():
    grids = np.random.default_rng(1).integers(0, 50, size=(40, 7, 7)).astype(np.int32)
    whole = count_cooccurrence(grids, 50, 8)
    assert np.array_equal(whole, whole.T)
    parts = count_cooccurrence(grids[:13], 50, 8) + count_cooccurrence(grids[13:], 50, 8)
    assert np.array_equal(whole, parts)


@pytest.mark.parametrize("block", [1, 7, 128])
def test_blocked_symmetrise_equals_plain_transpose_add(block):
    forward = np.random.default_rng(block).integers(0, 1000, size=(45, 45))  # 45: ragged last block
    assert np.array_equal(symmetrise(forward, block), forward + forward.T)


def test_threaded_kernel_equals_numpy_and_names_a_bad_image(monkeypatch):
    # Force several threads on small inputs, so the per-thread tables and their sum are exercised
    # even on a one-core machine.
    monkeypatch.setattr(kernels, "MIN_IMAGES_PER_THREAD", 10)
    monkeypatch.setattr(kernels, "available_threads", lambda: 3)
    grids = np.random.default_rng(2).integers(0, 40, size=(95, 5, 6)).astype(np.int32)
    for neighbourhood in (8, 4):
        threaded = count_cooccurrence(grids, 40, neighbourhood, "compiled")
        assert np.array_equal(threaded, count_cooccurrence(grids, 40, neighbourhood, "numpy"))
    grids[71, 2, 3] = 40  # out of range: compiled code has no bounds checks, so it must refuse
    with pytest.raises(ValueError, match=r"image 71 holds a token outside \[0, 40\)"):
        count_cooccurrence(grids, 40, 8, "compiled")
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 40\)"):
        count_cooccurrence(grids, 40, 8, "numpy")
    grids[71, 2, 3] = -1
    with pytest.raises(ValueError, match="image 71"):
        count_cooccurrence(grids, 40, 8, "compiled")


def test_pruning_rule_with_ties():
    counts = np.zeros((6, 6), dtype=np.int64)
    counts[0] = [9, 3, 7, 3, 0, 3]  # self 9 is not a candidate; 4 non-zero others
    counts[1, 1] = 5  # only a self count: keeps nothing
    counts[2] = [2, 2, 0, 2, 2, 2]  # five equal counts: ties go to the smaller dst
    for ratio, row0, row2 in [
        (0.05, [2], [0]),  # max(1, floor(0.2)) = 1
        (0.5, [1, 2], [0, 1]),  # 2: the 7, then the smallest of the tied 3s
        (0.75, [1, 2, 3], [0, 1, 3]),  # 3
        (1.0, [1, 2, 3, 5], [0, 1, 3, 4, 5]),
    ]:
        src, dst = prune_top_ratio(counts, ratio)
        assert dst[src == 0].tolist() == row0, ratio
        assert dst[src == 2].tolist() == row2, ratio
        assert not np.any(src == 1) and not np.any(src == 4)
        assert not np.any(src == dst)


def test_pruning_uses_the_float_product_of_the_formula():
    # 100 * 0.29 is 28.999999999999996 in floating point: the formula keeps 28, not 29.
    counts = np.zeros((101, 101), dtype=np.int64)
    counts[0, 1:] = np.arange(100, 0, -1)
    src, dst = prune_top_ratio(counts, 0.29)
    assert (src == 0).sum() == math.floor(100 * 0.29) == 28
    assert dst[src == 0].tolist() == list(range(1, 29))


def test_pruning_blocks_do_not_change_the_result():
    counts = np.random.default_rng(2).integers(0, 4, size=(37, 37))
    counts = counts + counts.T
    whole = prune_top_ratio(counts, 0.3)
    blocked = prune_top_ratio(counts, 0.3, block_rows=5)
    assert all(np.array_equal(a, b) for a, b in zip(whole, blocked))


def dense_gcn(adjacency: np.ndarray) -> np.ndarray:
    a = adjacency + np.eye(len(adjacency))
    d = a.sum(axis=1)
    return a / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]


def test_cooccurrence_table_matches_dense_normalisation():
    rng = np.random.default_rng(3)
    grids = rng.integers(0, 12, size=(30, 4, 4))
    grids[grids == 11] = 3  # token 11 never occurs
    counts = count_cooccurrence(grids, 12, 8)
    table = cooccurrence_table(counts, 0.4)
    src, dst = table.column("src").to_numpy(), table.column("dst").to_numpy()
    count, weight = table.column("count").to_numpy(), table.column("weight").to_numpy()
    assert table.schema.field("src").type == "int32" and table.schema.field("weight").type == "float"
    # Sorted by (src, dst), one self-loop per token with its true count (0 for token 11).
    assert np.array_equal(np.lexsort((dst, src)), np.arange(len(src)))
    self_rows = src == dst
    assert src[self_rows].tolist() == list(range(12))
    assert np.array_equal(count[self_rows], np.diag(counts))
    assert count[self_rows][11] == 0 and weight[self_rows][11] == 1.0
    assert np.array_equal(count, counts[src, dst])
    # Weights: the unweighted kept adjacency, D^-1/2 (A + I) D^-1/2.
    kept = np.zeros((12, 12))
    kept[src[~self_rows], dst[~self_rows]] = 1.0
    reference = dense_gcn(kept)
    assert np.allclose(weight, reference[src, dst], rtol=1e-6, atol=0)
    assert np.count_nonzero(reference) == len(src)


def test_gcn_normalise_directed_weighted():
    src, dst = np.array([0, 0, 1, 2]), np.array([1, 2, 0, 1])
    values = np.array([0.5, 2.0, 1.0, 0.25])
    weights, diagonal = gcn_normalise(src, dst, values, 4)
    dense = np.zeros((4, 4))
    dense[src, dst] = values
    reference = dense_gcn(dense)
    assert np.allclose(weights, reference[src, dst], rtol=1e-12)
    assert np.allclose(diagonal, np.diag(reference), rtol=1e-12)
    assert diagonal[3] == 1.0
    with pytest.raises(ValueError):
        gcn_normalise(np.array([1]), np.array([1]), np.array([1.0]), 2)


@pytest.mark.parametrize("total,n", [(10, 3), (7, 7), (7, 9), (1000, 1), (1000, 999), (12345, 678)])
def test_subsample_mask_is_the_strided_definition(total, n):
    used = min(n, total)  # max_images above the split size means every row
    expected = np.zeros(total, dtype=bool)
    expected[[(i * total) // used for i in range(used)]] = True
    assert np.array_equal(subsample_mask(0, total, total, n), expected)
    # Any split of the rows into shards gives the same rows.
    cut = total // 3
    parts = np.concatenate([subsample_mask(0, cut, total, n), subsample_mask(cut, total - cut, total, n)])
    assert np.array_equal(parts, expected)
    assert expected.sum() == used


def test_graph_metrics_of_a_hand_built_graph() -> None:
    """Worked out by hand: a triangle 0-1-2 (0 <-> 1 kept both ways), an edge 3-4, a node 5 with
    only a self-loop and an isolated node 6, over 7 nodes."""
    from pipeline.graphs.stats import graph_metrics

    src, dst = np.array([0, 1, 1, 2, 3, 5]), np.array([1, 0, 2, 0, 4, 5])
    metrics = graph_metrics(src, dst, 7)
    assert metrics == {
        "nodes": 7,
        "edges": 5,  # directed rows, the self-loop excluded
        "undirected_edges": 4,  # 0-1, 1-2, 0-2, 3-4
        "reciprocal_fraction": pytest.approx(2 / 5),  # 0 -> 1 and 1 -> 0
        "isolated": 2,  # 5 (a self-loop is no neighbour) and 6
        "mean_degree": pytest.approx(8 / 7),  # degrees 2, 2, 2, 1, 1, 0, 0
        "max_degree": 2,
        "max_in_degree": 2,  # node 0, from 1 and 2
        "connected_components": 4,  # {0, 1, 2}, {3, 4}, {5}, {6}
        "largest_component_fraction": pytest.approx(3 / 7),
        "average_clustering": pytest.approx(3 / 7),  # 1 for each triangle node, 0 elsewhere
    }
