"""Graph summaries for ``metrics/graphs.json`` and the degree histograms plotted by DVC.

The stored graphs are directed (each token keeps its own neighbours). The structural numbers
(degree, isolation, components, clustering) are computed with networkx on the *undirected* simple
graph over all V codebook tokens: an edge a-b exists when either keeps the other, self-loops are
ignored. Never-seen tokens are therefore isolated nodes, counted in ``isolated`` and as
singleton components. ``edges`` counts the stored directed rows (self-loops excluded),
``reciprocal_fraction`` how many of them are kept in both directions, and ``max_in_degree`` how
many tokens aggregate from the most popular one (hubness).
"""

from __future__ import annotations

import csv
from pathlib import Path

import networkx as nx
import numpy as np

from pipeline.files import atomic_path


def undirected_graph(src: np.ndarray, dst: np.ndarray, num_nodes: int) -> nx.Graph:
    graph = nx.Graph()
    graph.add_nodes_from(range(num_nodes))
    off = src != dst
    graph.add_edges_from(zip(src[off].tolist(), dst[off].tolist()))
    return graph


def degrees(graph: nx.Graph) -> np.ndarray:
    """Undirected degree of nodes 0 .. V-1."""
    return np.array([graph.degree(node) for node in range(graph.number_of_nodes())], dtype=np.int64)


def graph_metrics(src: np.ndarray, dst: np.ndarray, num_nodes: int) -> dict[str, float | int]:
    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    off = src != dst
    graph = undirected_graph(src, dst, num_nodes)
    degree = degrees(graph)
    components = [len(c) for c in nx.connected_components(graph)]
    directed = set(zip(src[off].tolist(), dst[off].tolist()))
    reciprocal = sum((b, a) in directed for a, b in directed)
    in_degree = np.bincount(dst[off], minlength=num_nodes)
    return {
        "nodes": num_nodes,
        "edges": int(off.sum()),
        "undirected_edges": graph.number_of_edges(),
        "reciprocal_fraction": reciprocal / len(directed) if directed else 0.0,
        "isolated": int(np.count_nonzero(degree == 0)),
        "mean_degree": float(degree.mean()) if num_nodes else 0.0,
        "max_degree": int(degree.max()) if num_nodes else 0,
        "max_in_degree": int(in_degree.max()) if num_nodes else 0,
        "connected_components": len(components),
        "largest_component_fraction": max(components) / num_nodes if num_nodes else 0.0,
        "average_clustering": float(nx.average_clustering(graph)) if num_nodes else 0.0,
    }


def self_weight_mean(src: np.ndarray, dst: np.ndarray, weight: np.ndarray, occurring: np.ndarray) -> float:
    """Mean diagonal of a normalised operator over the tokens that occur.

    How much of its own embedding a token keeps in one GCN layer: 1 means the graph adds nothing
    to it, ``1 / (k + 1)`` an even mix with k neighbours. A diagnostic for whether a graph can carry
    information into the model at all.
    """
    diagonal = _diagonal(src, dst, weight, len(occurring))
    return float(diagonal[occurring].mean()) if occurring.any() else 0.0


def _diagonal(src: np.ndarray, dst: np.ndarray, weight: np.ndarray, num_nodes: int) -> np.ndarray:
    """The diagonal of the operator given as (src, dst, weight) edges (0 where a node has no loop)."""
    diagonal = np.zeros(num_nodes, dtype=np.float64)
    loops = src == dst
    diagonal[src[loops]] = weight[loops]
    return diagonal


def neighbour_to_self_median(src: np.ndarray, dst: np.ndarray, weight: np.ndarray) -> float:
    """Median over the edges ``i -> j`` (``i != j``) of ``A_hat[i, j] / A_hat[i, i]``.

    How much a typical neighbour counts against the token itself in one layer: near 0 the graph
    is close to the identity and carries almost nothing; near 1 neighbours weigh like the token.
    """
    diagonal = _diagonal(src, dst, weight, int(max(src.max(initial=0), dst.max(initial=0))) + 1)
    edges = (src != dst) & (diagonal[src] > 0)
    return float(np.median(weight[edges] / diagonal[src[edges]])) if edges.any() else 0.0


def max_row_sum(src: np.ndarray, weight: np.ndarray, num_nodes: int) -> float:
    """The largest row sum of a normalised operator: above 1, three GCN layers amplify that token
    (with D^-1/2 A D^-1/2 of a directed graph, hubs can exceed 1)."""
    return float(np.bincount(src, weights=weight, minlength=num_nodes).max()) if num_nodes else 0.0


def degree_histogram(src: np.ndarray, dst: np.ndarray, num_nodes: int) -> np.ndarray:
    """Number of tokens with undirected degree 0, 1, 2, ..."""
    return np.bincount(degrees(undirected_graph(np.asarray(src), np.asarray(dst), num_nodes)))


def write_degree_csv(path: Path, histograms: dict[str, np.ndarray]) -> None:
    """Wide CSV ``degree,<graph>,...``: one row per degree, every degree up to the largest.

    Wide rather than long because DVC plots draw one line per ``y`` column of one file.
    """
    length = max(len(h) for h in histograms.values())
    names = list(histograms)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["degree", *names])
        for degree in range(length):
            writer.writerow([degree, *(int(histograms[n][degree]) if degree < len(histograms[n]) else 0
                                       for n in names)])


def official_graph_metrics(src: np.ndarray, dst: np.ndarray, weight: np.ndarray,
                           num_nodes: int) -> dict[str, float | int]:
    """Summary of an official graph file (:mod:`pipeline.graphs.official`), self-loops included.

    Unlike :func:`graph_metrics`, ``edges`` counts every stored row (self-loops too), and the
    per-row / in-degree counts include each node's self-loop, as the normalisation's ``n_i`` does.
    """
    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    weight = np.asarray(weight, dtype=np.float64)
    per_row = np.bincount(src, minlength=num_nodes)
    in_degree = np.bincount(dst, minlength=num_nodes)
    return {
        "nodes": num_nodes,
        "edges": len(src),
        "self_loops": int(np.count_nonzero(src == dst)),
        "edges_per_row_min": int(per_row.min()) if num_nodes else 0,
        "edges_per_row_max": int(per_row.max()) if num_nodes else 0,
        "in_degree_min": int(in_degree.min()) if num_nodes else 0,
        "in_degree_max": int(in_degree.max()) if num_nodes else 0,
        "weight_min": float(weight.min()) if weight.size else 0.0,
        "weight_max": float(weight.max()) if weight.size else 0.0,
    }
