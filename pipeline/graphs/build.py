"""The ``graphs`` stage's work from tokens to graph files: what runs in which order.

1. Open the train shards and check them all against ``meta.json`` (errors name the shard), and
   fix the rows used: all, or the evenly strided ``graphs.max_images`` subset defined in
   :mod:`pipeline.graphs.source` (the same rows for all three graphs).
2. One streaming numpy pass: co-occurrence, (position, token) and class counts.
3. One lazy polars query (a few passes at ImageNet scale): ``position_token_counts.parquet``.
   Its per-(position, token) sums must equal step 2's, a cheap cross-check of both paths.
4. Co-occurrence graph (prune, normalise), similarity graph (FAISS + exact JS re-rank).
5. The official KA-MIG construction of both graphs from the same counts, into
   ``data/graphs_official`` (:mod:`pipeline.graphs.official`; ``data/graphs`` does not depend on it).
6. Metrics, degree histograms and the neighbour picture, returned for the stage to write.

:func:`build_graphs` writes the graph files into the two directories it is given; the stage
(:mod:`pipeline.stages.graphs`) hands it temporary ones (:func:`pipeline.files.atomic_dir`) that
replace ``data/graphs`` and ``data/graphs_official`` only once everything succeeded, so a failure
(bad shard, full disk, Ctrl-C) leaves no partial graph files behind.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline import layout
from pipeline.config import GraphsConfig
from pipeline.graphs.cooccurrence import cooccurrence_table
from pipeline.graphs.counting import CorpusCounts, count_corpus
from pipeline.graphs.official import add_self_loops_and_normalise, official_cooccurrence, official_similarity
from pipeline.graphs.positions import PositionTokenSummary, count_position_tokens
from pipeline.graphs.similarity import SimilarityGraph, faiss_gpu_available, similarity_graph
from pipeline.graphs.source import TokenSource, open_source
from pipeline.graphs.stats import (
    degree_histogram,
    graph_metrics,
    max_row_sum,
    neighbour_to_self_median,
    official_graph_metrics,
    self_weight_mean,
)
from pipeline.graphs.storage import (
    COOCCURRENCE_FILE,
    POSITION_TOKEN_COUNTS_FILE,
    SIMILARITY_FILE,
    load_edges,
    load_official_edges,
    write_official_edges,
    write_table,
)

log = logging.getLogger(__name__)


# The stage reports the incompatibility statistics of the paper's definition, "never observed";
# the threshold the model uses is fusion.min_count, applied to the raw counts it stores.
NEVER_OBSERVED = 1


@dataclass
class Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)


def _columns(table: pa.Table, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {name: table.column(name).to_numpy() for name in names}


@dataclass(frozen=True)
class GraphsResult:
    """What the stage writes besides the graph directories: its metrics, the degree histograms and
    the neighbour picture (None without a tokenizer)."""

    metrics: dict[str, Any]
    histograms: dict[str, np.ndarray]
    picture: Image.Image | None


def build_graphs(cfg: GraphsConfig, tokens_dir: Path, out: Path, official_out: Path,
                 tokenizer_dir: Path | None = layout.TOKENIZER_DIR) -> GraphsResult:
    """The whole stage's work: the graph files into ``out`` and ``official_out`` (temporary
    directories that the caller commits), the rest returned for the caller to write."""
    timer, started = Timer(), time.perf_counter()
    with timer.part("validate"):
        source = open_source(tokens_dir, cfg.max_images)
    meta = source.meta
    log.info("graphs: %d of %d train images, %dx%d grid, V=%d, %d classes, %d shards",
             source.used_rows, source.total_rows, meta.grid_h, meta.grid_w, meta.codebook_size,
             meta.num_classes, len(source.shards))
    with timer.part("count"):
        counts = count_corpus(source, cfg.cooccurrence.neighbourhood)
    with timer.part("positions"):
        positions = _position_counts(cfg, source, counts, out / POSITION_TOKEN_COUNTS_FILE)
    with timer.part("cooccurrence"):
        cooccurrence = cooccurrence_table(counts.cooccurrence, cfg.cooccurrence.top_ratio)
        write_table(out / COOCCURRENCE_FILE, cooccurrence)
    with timer.part("similarity"):
        similarity = _similarity(cfg, counts)
        write_table(out / SIMILARITY_FILE, similarity.table)
    with timer.part("official"):
        official = _official_graphs(cfg, counts, meta.codebook_size, official_out)
    co = _columns(cooccurrence, ("src", "dst", "count", "weight"))
    sim = _columns(similarity.table, ("src", "dst", "distance", "weight"))
    with timer.part("metrics"):
        summaries, histograms = _summaries(out, co, sim, counts)
    with timer.part("picture"):
        picture = _picture(cfg, tokenizer_dir, meta.tokenizer_fingerprint, counts, co, sim)
    timer.seconds["total"] = round(time.perf_counter() - started, 3)
    metrics = _stage_metrics(source, counts, positions, summaries, similarity, official, timer)
    log.info("graphs: co-occurrence %d edges, similarity %d edges, incompatibility density %.4f (%.1fs)",
             summaries["cooccurrence"]["edges"], summaries["similarity"]["edges"],
             positions.incompatibility_density, timer.seconds["total"])
    return GraphsResult(metrics, histograms, picture)


def _position_counts(cfg: GraphsConfig, source: TokenSource, counts: CorpusCounts,
                     path: Path) -> PositionTokenSummary:
    """``position_token_counts.parquet`` by polars, cross-checked against the numpy pass's sums."""
    positions = count_position_tokens(source, path, cfg.positions_groups_per_pass, NEVER_OBSERVED)
    if not np.array_equal(positions.position_totals, counts.positions):
        raise RuntimeError("position-token counts from polars disagree with the numpy pass "
                           "(a bug: please report it with the shards)")
    return positions


def _similarity(cfg: GraphsConfig, counts: CorpusCounts) -> SimilarityGraph:
    use_gpu = cfg.device == "cuda" and faiss_gpu_available()
    if cfg.device == "cuda" and not use_gpu:
        log.warning("graphs.device is cuda but faiss has no GPU support here: using the CPU index")
    sim = cfg.similarity
    return similarity_graph(counts.positions, sim.k, sim.candidates, sim.alpha, sim.index, use_gpu,
                            sim.distance_unit)


def _summaries(out: Path, co: dict[str, np.ndarray], sim: dict[str, np.ndarray],
               counts: CorpusCounts) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Each positive graph's structure and operator statistics, and its degree histogram."""
    vocab = len(counts.token_totals)
    occurring = counts.token_totals > 0
    summaries, histograms = {}, {}
    for name, edges, file in (("cooccurrence", co, COOCCURRENCE_FILE), ("similarity", sim, SIMILARITY_FILE)):
        summary = graph_metrics(edges["src"], edges["dst"], vocab)
        # The complete operator as the model loads it (the similarity diagonal is implicit).
        src, dst, weight = load_edges(out / file)
        summary["self_weight_mean"] = self_weight_mean(src, dst, weight, occurring)
        summary["max_row_sum"] = max_row_sum(src, weight, vocab)
        summary["neighbour_to_self_median"] = neighbour_to_self_median(src, dst, weight)
        summaries[name] = summary
        histograms[name] = degree_histogram(edges["src"], edges["dst"], vocab)
    return summaries, histograms


def _stage_metrics(source: TokenSource, counts: CorpusCounts, positions: PositionTokenSummary,
                   summaries: dict[str, dict[str, Any]], similarity: SimilarityGraph,
                   official: dict[str, Any], timer: Timer) -> dict[str, Any]:
    """``metrics/graphs.json``."""
    meta = source.meta
    return {
        "images": counts.images,
        "images_available": source.total_rows,
        "tokens": counts.images * meta.seq_len,
        "vocab_size": meta.codebook_size,
        "tokens_never_seen": int(np.count_nonzero(counts.token_totals == 0)),
        "incompatibility_density": positions.incompatibility_density,
        "cooccurrence": summaries["cooccurrence"],
        "similarity": {
            **summaries["similarity"],
            "occurring_tokens": similarity.occurring,
            "median_distance": similarity.distance_scale,
            "exact": int(similarity.exact),
            "bruteforce_fallbacks": similarity.fallbacks,
        },
        "official": official,
        "incompatibility": {
            "min_count": NEVER_OBSERVED,
            "density": positions.incompatibility_density,
            "observed_triples": positions.observed_triples,
            "compatible_triples": positions.compatible_triples,
            "total_triples": positions.total_triples,
            "polars_passes": positions.passes,
        },
        "seconds": timer.seconds,
    }


def _official_graphs(cfg: GraphsConfig, counts: CorpusCounts, vocab: int, out: Path) -> dict[str, Any]:
    """Write the official co-occurrence and similarity files into ``out``; returns their metrics."""
    official = cfg.official
    if cfg.cooccurrence.neighbourhood != 8:
        # One count pass serves both constructions; the official one is defined on 8 neighbours.
        log.warning("graphs: the official co-occurrence graph uses graphs.cooccurrence.neighbourhood = %d, "
                    "not the official 8", cfg.cooccurrence.neighbourhood)
    graphs = {
        COOCCURRENCE_FILE: official_cooccurrence(counts.cooccurrence, official.cooccurrence_ratio),
        SIMILARITY_FILE: official_similarity(counts.positions, official.similarity_k,
                                             official.similarity_alpha),
    }
    parameters = {
        COOCCURRENCE_FILE: {"neighbourhood": str(cfg.cooccurrence.neighbourhood),
                            "ratio": repr(float(official.cooccurrence_ratio))},
        SIMILARITY_FILE: {"k": str(official.similarity_k), "alpha": repr(float(official.similarity_alpha))},
    }
    metrics = {}
    for file, (src, dst, weight) in graphs.items():
        src, dst, weight = add_self_loops_and_normalise(src, dst, weight, vocab)
        write_official_edges(out / file, src, dst, weight.astype(np.float32),
                             {"construction": "official", "num_tokens": str(vocab), **parameters[file]})
        # Summarised as stored (float32), i.e. as the model reads the file.
        name = file.removesuffix(".parquet")
        metrics[name] = official_graph_metrics(*load_official_edges(out / file), vocab)
    return metrics


def _picture(cfg: GraphsConfig, tokenizer_dir: Path | None, fingerprint: str, counts: CorpusCounts,
             co: dict[str, np.ndarray], sim: dict[str, np.ndarray]) -> Image.Image | None:
    if tokenizer_dir is None:
        log.info("graphs: no tokenizer directory given, no neighbour picture")
        return None
    # Imported here: only the picture needs torch and the tokenizer implementations.
    from pipeline.graphs import pictures
    from pipeline.tokenizer.registry import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir, expected_fingerprint=fingerprint,
                               hint="re-run `dvc repro tokenize`")
    # Frequent but not flat: the most frequent patches are background (see pictures).
    detail = pictures.measure_detail(tokenizer, counts.token_totals) if cfg.num_examples else None
    tokens = pictures.choose_example_tokens(counts.token_totals, cfg.num_examples, detail)
    rows = pictures.example_rows(tokens, counts.token_totals, co, sim, detail)
    return pictures.draw_neighbours(tokenizer, rows)
