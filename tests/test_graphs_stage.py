"""The graphs stage end to end on small synthetic shards: exact files, streaming, determinism, errors."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from pipeline import layout
from pipeline.config import CooccurrenceConfig, GraphsConfig, SimilarityConfig, config_from_dict
from pipeline.errors import PipelineError, ShardError
from pipeline.graphs import pictures
from pipeline.graphs.cooccurrence import cooccurrence_table, count_cooccurrence
from pipeline.graphs.official import add_self_loops_and_normalise, official_cooccurrence, official_similarity
from pipeline.graphs.similarity import similarity_graph
from pipeline.graphs.storage import (
    COOCCURRENCE_FILE,
    POSITION_TOKEN_COUNTS_FILE,
    SIMILARITY_FILE,
    load_edges,
    load_official_edges,
    load_position_token_counts,
)
from pipeline.shards import ShardWriter, TokenMeta, load_split, shard_name, token_schema, write_meta
from pipeline.stages.graphs import StagePaths, write_graphs
from pipeline.tokenizer.base import Tokenizer, save_tokenizer, tokenizer_fingerprint
from tests.helpers import REPO_ROOT

GRAPH_FILES = (COOCCURRENCE_FILE, SIMILARITY_FILE, POSITION_TOKEN_COUNTS_FILE)
OFFICIAL_FILES = (COOCCURRENCE_FILE, SIMILARITY_FILE)
META = TokenMeta(grid_h=4, grid_w=5, codebook_size=40, num_classes=3, tokenizer_fingerprint="synthetic")


def synthetic_tokens(n: int, meta: TokenMeta = META, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tokens with structure: each position prefers a few tokens, shifted by class; 2 tokens never occur."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, meta.num_classes, n).astype(np.int32)
    positions = np.arange(meta.seq_len)
    base = (positions[None, :] * 3 + labels[:, None] * 5) % (meta.codebook_size - 2)
    noise = rng.integers(-2, 3, size=(n, meta.seq_len)) * (rng.random((n, meta.seq_len)) < 0.4)
    tokens = np.clip(base + noise, 0, meta.codebook_size - 3)  # the last two ids never occur
    return labels, tokens.astype(np.int32)


def write_tokens(root: Path, labels: np.ndarray, tokens: np.ndarray, shard_size: int,
                 meta: TokenMeta = META) -> Path:
    with ShardWriter(root / "train", meta, shard_size) as writer:
        writer.add(np.arange(len(labels), dtype=np.int64), labels, tokens)
    write_meta(root, meta)
    return root


def stage_paths(root: Path, tokens_dir: Path, tokenizer_dir: Path | None = None) -> StagePaths:
    return StagePaths(tokens_dir=tokens_dir, graphs_dir=root / "data" / "graphs",
                      metrics_file=root / "metrics" / "graphs.json",
                      degrees_csv=root / "metrics" / "plots" / "graph_degrees.csv",
                      picture=root / "metrics" / "plots" / "graph_neighbours.png",
                      tokenizer_dir=tokenizer_dir)


def graph_bytes(paths: StagePaths) -> dict[str, bytes]:
    """Every graph file of a run, data/graphs and data/graphs_official."""
    files = {name: (paths.graphs_dir / name).read_bytes() for name in GRAPH_FILES}
    official = paths.official_graphs_dir
    files.update({f"official/{name}": (official / name).read_bytes() for name in OFFICIAL_FILES})
    return files


def run(root: Path, tokens_dir: Path, **overrides: Any) -> tuple[StagePaths, dict[str, Any]]:
    paths = stage_paths(root, tokens_dir)
    return paths, write_graphs(GraphsConfig(**overrides), paths)


@pytest.fixture(scope="module")
def corpus() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_tokens(157)


def test_files_equal_in_memory_reference(tmp_path, corpus):
    labels, tokens = corpus
    tokens_dir = write_tokens(tmp_path / "tokens", labels, tokens, shard_size=20)
    paths, metrics = run(tmp_path / "out", tokens_dir)

    # In memory: the whole split at once, counted by definition.
    split = load_split(tokens_dir / "train")
    grids = split.tokens.reshape(-1, META.grid_h, META.grid_w)
    expected_co = cooccurrence_table(count_cooccurrence(grids, META.codebook_size, 8), 0.05)
    assert pq.read_table(paths.graphs_dir / COOCCURRENCE_FILE).equals(expected_co)

    triples = Counter((int(c), p, int(t))
                      for c, row in zip(split.labels, split.tokens) for p, t in enumerate(row))
    counts = load_position_token_counts(paths.graphs_dir / POSITION_TOKEN_COUNTS_FILE)
    observed = zip(counts.label.tolist(), counts.position.tolist(), counts.token.tolist())
    assert list(observed) == sorted(triples)
    assert counts.count.tolist() == [triples[key] for key in sorted(triples)]

    position_counts = np.zeros((META.seq_len, META.codebook_size), dtype=np.int64)
    for row in split.tokens:
        position_counts[np.arange(META.seq_len), row] += 1
    expected_sim = similarity_graph(position_counts, 2, 32, SimilarityConfig().alpha).table
    assert pq.read_table(paths.graphs_dir / SIMILARITY_FILE).equals(expected_sim)

    assert metrics["tokens_never_seen"] == 2
    total = META.num_classes * META.seq_len * META.codebook_size
    assert metrics["incompatibility_density"] == pytest.approx(1 - len(triples) / total)
    assert metrics["images"] == 157 and metrics["tokens"] == 157 * META.seq_len


def test_streaming_equals_in_memory_byte_for_byte(tmp_path, corpus):
    labels, tokens = corpus
    one = write_tokens(tmp_path / "one", labels, tokens, shard_size=10_000)
    many = write_tokens(tmp_path / "many", labels, tokens, shard_size=7)
    paths_one, _ = run(tmp_path / "out_one", one)
    # Many shards, and the label ranges split into one polars pass per class.
    paths_many, metrics = run(tmp_path / "out_many", many,
                              positions_groups_per_pass=META.seq_len * META.codebook_size)
    assert metrics["incompatibility"]["polars_passes"] == META.num_classes
    assert graph_bytes(paths_one) == graph_bytes(paths_many)


def test_row_groups_do_not_depend_on_polars_passes(tmp_path, corpus, monkeypatch):
    import pipeline.graphs.storage as storage

    monkeypatch.setattr(storage, "ROW_GROUP_SIZE", 37)  # many row groups, cut across passes
    labels, tokens = corpus
    tokens_dir = write_tokens(tmp_path / "tokens", labels, tokens, shard_size=25)
    one, _ = run(tmp_path / "one", tokens_dir)
    many, _ = run(tmp_path / "many", tokens_dir, positions_groups_per_pass=1)
    assert graph_bytes(one) == graph_bytes(many)
    assert pq.ParquetFile(one.graphs_dir / POSITION_TOKEN_COUNTS_FILE).metadata.num_row_groups > 3


def test_deterministic_bytes(tmp_path, corpus):
    labels, tokens = corpus
    tokens_dir = write_tokens(tmp_path / "tokens", labels, tokens, shard_size=50)
    first, _ = run(tmp_path / "a", tokens_dir)
    second, _ = run(tmp_path / "b", tokens_dir)
    assert graph_bytes(first) == graph_bytes(second)
    table = pq.read_table(first.graphs_dir / COOCCURRENCE_FILE)
    row_group = pq.ParquetFile(first.graphs_dir / COOCCURRENCE_FILE).metadata.row_group(0)
    assert row_group.column(0).compression == "ZSTD"
    assert table.schema.remove_metadata().names == ["src", "dst", "count", "weight"]


def test_max_images_is_the_strided_subset(tmp_path, corpus):
    labels, tokens = corpus
    tokens_dir = write_tokens(tmp_path / "tokens", labels, tokens, shard_size=30)
    chosen = [(i * len(labels)) // 40 for i in range(40)]
    subset_dir = write_tokens(tmp_path / "subset", labels[chosen], tokens[chosen], shard_size=1000)
    sub_paths, metrics = run(tmp_path / "sub", tokens_dir, max_images=40)
    ref_paths, _ = run(tmp_path / "ref", subset_dir)
    assert metrics["images"] == 40 and metrics["images_available"] == 157
    assert graph_bytes(sub_paths) == graph_bytes(ref_paths)
    _, metrics = run(tmp_path / "all", tokens_dir, max_images=10_000)
    assert metrics["images"] == 157


def test_four_neighbourhood_and_ratio_params(tmp_path, corpus):
    labels, tokens = corpus
    tokens_dir = write_tokens(tmp_path / "tokens", labels, tokens, shard_size=40)
    paths, _ = run(tmp_path / "out", tokens_dir,
                   cooccurrence=CooccurrenceConfig(neighbourhood=4, top_ratio=0.5))
    split = load_split(tokens_dir / "train")
    grids = split.tokens.reshape(-1, META.grid_h, META.grid_w)
    expected = cooccurrence_table(count_cooccurrence(grids, META.codebook_size, 4), 0.5)
    assert pq.read_table(paths.graphs_dir / COOCCURRENCE_FILE).equals(expected)


def numeric_leaves(value: Any) -> bool:
    if isinstance(value, dict):
        return all(numeric_leaves(v) for v in value.values())
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_metrics_and_degree_plot(tmp_path, corpus):
    labels, tokens = corpus
    tokens_dir = write_tokens(tmp_path / "tokens", labels, tokens, shard_size=40)
    paths, metrics = run(tmp_path / "out", tokens_dir)
    on_disk = json.loads(paths.metrics_file.read_text())
    assert on_disk["cooccurrence"] == metrics["cooccurrence"]
    assert numeric_leaves(on_disk)
    for graph in ("cooccurrence", "similarity"):
        g = on_disk[graph]
        assert g["nodes"] == META.codebook_size
        assert g["isolated"] >= 2  # the never-seen tokens
        assert 1 <= g["connected_components"] <= META.codebook_size
        assert 0 < g["largest_component_fraction"] <= 1
        assert 0 <= g["average_clustering"] <= 1
        assert g["max_degree"] >= g["mean_degree"] > 0
        assert 0 < g["self_weight_mean"] < 1  # every occurring token has neighbours
    assert on_disk["similarity"]["edges"] == 2 * (META.codebook_size - 2)
    assert set(on_disk["seconds"]) >= {"count", "positions", "cooccurrence", "similarity", "total"}
    with open(paths.degrees_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["degree", "cooccurrence", "similarity"]
    assert [int(r["degree"]) for r in rows] == list(range(len(rows)))
    for graph in ("cooccurrence", "similarity"):
        assert sum(int(r[graph]) for r in rows) == META.codebook_size
        assert int(rows[0][graph]) == on_disk[graph]["isolated"]
    assert not paths.picture.exists()  # no tokenizer given


def test_loaders(tmp_path, corpus):
    labels, tokens = corpus
    tokens_dir = write_tokens(tmp_path / "tokens", labels, tokens, shard_size=40)
    paths, _ = run(tmp_path / "out", tokens_dir)
    src, _, weight = load_edges(paths.graphs_dir / COOCCURRENCE_FILE)
    table = pq.read_table(paths.graphs_dir / COOCCURRENCE_FILE)
    assert np.array_equal(src, table.column("src").to_numpy()) and src.dtype == np.int64
    assert np.array_equal(weight, table.column("weight").to_numpy()) and weight.dtype == np.float32
    counts = load_position_token_counts(paths.graphs_dir / POSITION_TOKEN_COUNTS_FILE)
    c, _, _ = counts.compatible(2)
    assert len(c) == np.count_nonzero(counts.count >= 2) < len(counts.count)
    # The stage reports the paper's definition, "never observed" (fusion.min_count is the model's).
    metrics = json.loads(paths.metrics_file.read_text())
    total = META.num_classes * META.seq_len * META.codebook_size
    assert metrics["incompatibility"]["min_count"] == 1
    assert metrics["incompatibility_density"] == pytest.approx(1 - len(counts.compatible(1)[0]) / total)
    with pytest.raises(PipelineError, match="not found"):
        load_edges(tmp_path / "missing.parquet")


# ------------------------------------------------------------------------------------------
# data/graphs_official: the official KA-MIG construction, next to (and independent of) data/graphs
# ------------------------------------------------------------------------------------------


def test_official_graphs_equal_in_memory_reference(tmp_path, corpus):
    labels, tokens = corpus
    tokens_dir = write_tokens(tmp_path / "tokens", labels, tokens, shard_size=20)
    paths, metrics = run(tmp_path / "out", tokens_dir)
    assert paths.official_graphs_dir == tmp_path / "out" / "data" / "graphs_official"
    assert sorted(p.name for p in paths.official_graphs_dir.iterdir()) == sorted(OFFICIAL_FILES)

    split = load_split(tokens_dir / "train")
    grids = split.tokens.reshape(-1, META.grid_h, META.grid_w)
    position_counts = np.zeros((META.seq_len, META.codebook_size), dtype=np.int64)
    for row in split.tokens:
        position_counts[np.arange(META.seq_len), row] += 1
    vocab, cfg = META.codebook_size, GraphsConfig().official
    expected = {
        COOCCURRENCE_FILE: official_cooccurrence(count_cooccurrence(grids, vocab, 8), cfg.cooccurrence_ratio),
        SIMILARITY_FILE: official_similarity(position_counts, cfg.similarity_k, cfg.similarity_alpha),
    }
    on_disk = json.loads(paths.metrics_file.read_text())
    assert on_disk["official"] == metrics["official"]
    for name, edges in expected.items():
        src, dst, weight = load_official_edges(paths.official_graphs_dir / name)
        want_src, want_dst, want_weight = add_self_loops_and_normalise(*edges, vocab)
        assert np.array_equal(src, want_src) and np.array_equal(dst, want_dst)
        assert np.array_equal(weight, want_weight.astype(np.float32))
        per_row = np.bincount(src, minlength=vocab)
        loops = src == dst
        assert np.array_equal(src[loops], np.arange(vocab))  # every token, the never-seen ones too
        assert np.array_equal(weight[loops], (1.0 / per_row).astype(np.float32))
        summary = on_disk["official"][name.removesuffix(".parquet")]
        assert summary["edges"] == len(src) and summary["self_loops"] == vocab
        assert summary["edges_per_row_max"] == per_row.max()
    # The two never-seen tokens keep no co-occurrence edge (self-loop only), but do have k
    # similarity neighbours (their profile is uniform: see pipeline.graphs.official).
    assert on_disk["official"]["cooccurrence"]["edges_per_row_min"] == 1
    similarity = on_disk["official"]["similarity"]
    assert similarity["edges_per_row_min"] == similarity["edges_per_row_max"] == cfg.similarity_k + 1
    assert similarity["edges"] == vocab * (cfg.similarity_k + 1)


def test_official_params_change_only_the_official_files(tmp_path, corpus):
    from pipeline.config import OfficialGraphsConfig

    labels, tokens = corpus
    tokens_dir = write_tokens(tmp_path / "tokens", labels, tokens, shard_size=40)
    default, metrics = run(tmp_path / "a", tokens_dir)
    other, other_metrics = run(tmp_path / "b", tokens_dir, official=OfficialGraphsConfig(
        cooccurrence_ratio=0.5, similarity_k=3, similarity_alpha=1.0))
    first, second = graph_bytes(default), graph_bytes(other)
    for name in GRAPH_FILES:
        assert first[name] == second[name]
    for name in OFFICIAL_FILES:
        assert first[f"official/{name}"] != second[f"official/{name}"]
    for key in ("cooccurrence", "similarity", "incompatibility"):
        assert metrics[key] == other_metrics[key]
    assert other_metrics["official"]["similarity"]["edges"] == META.codebook_size * 4


def test_official_directory_is_a_declared_output():
    assert StagePaths().official_graphs_dir == layout.GRAPHS_OFFICIAL_DIR
    assert layout.GRAPHS_OFFICIAL_DIR in StagePaths().outputs()
    assert StagePaths(official_dir=Path("elsewhere")).official_graphs_dir == Path("elsewhere")
    stage = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["graphs"]
    outs = {next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"]}
    assert {str(layout.GRAPHS_DIR), str(layout.GRAPHS_OFFICIAL_DIR)} <= outs


# ------------------------------------------------------------------------------------------
# Validation: each bad input fails with the shard's name and leaves no data/graphs behind.
# ------------------------------------------------------------------------------------------


def assert_fails_cleanly(tmp_path: Path, tokens_dir: Path, match: str) -> None:
    paths = stage_paths(tmp_path / "out", tokens_dir)
    with pytest.raises(ShardError, match=match):
        write_graphs(GraphsConfig(), paths)
    assert not paths.graphs_dir.exists()
    leftovers = list(paths.graphs_dir.parent.iterdir()) if paths.graphs_dir.parent.exists() else []
    assert leftovers == []
    assert not paths.metrics_file.exists()


def raw_shard(path: Path, meta: TokenMeta, labels: list[int], tokens: np.ndarray) -> None:
    """Write a shard without write_shard's range checks (to fake a corrupt producer)."""
    schema = token_schema(meta)
    table = pa.Table.from_arrays([
        pa.array(np.arange(len(labels)), pa.int64()),
        pa.array(labels, pa.int32()),
        pa.FixedSizeListArray.from_arrays(pa.array(tokens.ravel(), pa.int32()),
                                          type=schema.field("tokens").type),
    ], schema=schema)
    pq.write_table(table, path, compression="zstd")


@pytest.fixture()
def good_tokens(tmp_path, corpus) -> Path:
    labels, tokens = corpus
    return write_tokens(tmp_path / "tokens", labels, tokens, shard_size=40)


def test_unreadable_shard(tmp_path, good_tokens):
    (good_tokens / "train" / shard_name(1)).write_bytes(b"this is not parquet")
    assert_fails_cleanly(tmp_path, good_tokens, f"unreadable token shard .*{shard_name(1)}")


def test_token_out_of_range(tmp_path, good_tokens):
    bad = np.zeros((3, META.seq_len), dtype=np.int32)
    bad[2, 7] = META.codebook_size
    raw_shard(good_tokens / "train" / shard_name(2), META, [0, 1, 2], bad)
    assert_fails_cleanly(tmp_path, good_tokens, f"{shard_name(2)} holds token {META.codebook_size}")


def test_label_out_of_range(tmp_path, good_tokens):
    raw_shard(good_tokens / "train" / shard_name(3), META, [0, META.num_classes],
              np.zeros((2, META.seq_len), dtype=np.int32))
    assert_fails_cleanly(tmp_path, good_tokens, f"{shard_name(3)} holds labels outside")


@pytest.mark.parametrize("other", [
    TokenMeta(5, 4, 40, 3, "synthetic"),  # same sequence length, transposed grid
    TokenMeta(4, 5, 64, 3, "synthetic"),  # codebook
])
def test_grid_or_codebook_mismatch_between_shards(tmp_path, good_tokens, other):
    raw_shard(good_tokens / "train" / shard_name(1), other, [0], np.zeros((1, other.seq_len), np.int32))
    assert_fails_cleanly(tmp_path, good_tokens, f"{shard_name(1)} has metadata .* mismatch")


def test_meta_json_disagrees_with_shards(tmp_path, good_tokens):
    write_meta(good_tokens, TokenMeta(4, 5, 64, 3, "synthetic"))
    assert_fails_cleanly(tmp_path, good_tokens, f"{shard_name(0)} has metadata")


def test_empty_split(tmp_path, good_tokens):
    for shard in (good_tokens / "train").iterdir():
        shard.unlink()
    assert_fails_cleanly(tmp_path, good_tokens, "empty split")


def test_split_of_empty_shards(tmp_path):
    root = tmp_path / "tokens"
    (root / "train").mkdir(parents=True)
    raw_shard(root / "train" / shard_name(0), META, [], np.zeros((0, META.seq_len), np.int32))
    write_meta(root, META)
    assert_fails_cleanly(tmp_path, root, f"{shard_name(0)}.*empty split")


# A failure in this pipeline's similarity graph, or in the official graphs written beside it,
# leaves neither data/graphs nor data/graphs_official.
@pytest.mark.parametrize("step", ["similarity_graph", "official_similarity"])
def test_failure_after_writing_started_leaves_nothing(tmp_path, good_tokens, monkeypatch, step):
    import pipeline.graphs.build as build

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(build, step, broken)
    paths = stage_paths(tmp_path / "out", good_tokens)
    with pytest.raises(OSError, match="No space"):
        write_graphs(GraphsConfig(), paths)
    assert list(paths.graphs_dir.parent.iterdir()) == []  # no data/graphs, no temporary sibling
    assert not paths.metrics_file.exists()


def test_cuda_without_faiss_gpu_falls_back_to_cpu(tmp_path, corpus, caplog, monkeypatch):
    import pipeline.graphs.build as build

    monkeypatch.setattr(build, "faiss_gpu_available", lambda: False)
    labels, tokens = corpus
    tokens_dir = write_tokens(tmp_path / "tokens", labels, tokens, shard_size=40)
    cpu, _ = run(tmp_path / "cpu", tokens_dir)
    with caplog.at_level("WARNING"):
        cuda, _ = run(tmp_path / "cuda", tokens_dir, device="cuda")
    assert "faiss has no GPU support" in caplog.text
    assert graph_bytes(cpu) == graph_bytes(cuda)


def test_config_section():
    cfg = config_from_dict({"graphs": {"max_images": 5, "positions_groups_per_pass": 1000,
                                       "similarity": {"k": 3, "index": "hnsw"}}}).graphs
    assert (cfg.max_images, cfg.positions_groups_per_pass, cfg.similarity.k) == (5, 1000, 3)


def test_missing_tokens(tmp_path):
    with pytest.raises(ShardError, match=r"meta\.json not found"):
        write_graphs(GraphsConfig(), stage_paths(tmp_path / "out", tmp_path / "nothing"))


# ------------------------------------------------------------------------------------------
# The neighbour picture, with a tiny tokenizer whose decoded patch brightness encodes the token.
# ------------------------------------------------------------------------------------------


class StripeTokenizer(Tokenizer):
    kind = "test-graphs-stripes"

    def __init__(self, vocab: int = 40, grid: tuple[int, int] = (4, 5), cell: int = 4):
        super().__init__()
        self._vocab, self._grid, self._cell = vocab, tuple(grid), cell
        self.register_buffer("dummy", torch.zeros(1))

    @property
    def codebook_size(self) -> int:
        return self._vocab

    @property
    def grid(self) -> tuple[int, int]:
        return self._grid

    @property
    def channels(self) -> int:
        return 1

    @property
    def image_size(self) -> int:
        return self._grid[0] * self._cell

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        h, w = self._grid
        values = tokens.float().reshape(-1, 1, h, w) / (self._vocab - 1)
        return values.repeat_interleave(self._cell, 2).repeat_interleave(self._cell, 3)

    def init_args(self) -> dict[str, Any]:
        return {"vocab": self._vocab, "grid": list(self._grid), "cell": self._cell}


def test_draw_neighbours_picture(tmp_path):
    totals = np.array([0, 50, 40, 30, 20, 10, 5, 1])
    assert pictures.choose_example_tokens(totals, 3) == [1, 2, 3]
    co = {"src": np.array([1, 1, 1, 2, 2]), "dst": np.array([1, 2, 3, 1, 5]),
          "count": np.array([9, 4, 7, 4, 2])}
    sim = {"src": np.array([1, 1, 2]), "dst": np.array([4, 2, 1]), "distance": np.array([0.2, 0.1, 0.3])}
    rows = pictures.example_rows([1, 2], totals, co, sim)
    assert rows[0].cooccurrence == [(3, 7), (2, 4)]  # self-loop excluded, by count
    assert [t for t, _ in rows[0].similarity] == [2, 4]  # nearest first
    image = np.asarray(pictures.draw_neighbours(StripeTokenizer(vocab=8), rows).convert("L"))
    assert image.shape[0] > 2 * pictures.PATCH_PIXELS
    assert len(np.unique(image)) > 3


def test_stage_entry_with_picture(tmp_path, monkeypatch, corpus):
    from pipeline.config import Config
    from pipeline.stages import graphs as stage
    from pipeline.tokenizer import registry

    monkeypatch.setitem(registry.TOKENIZERS, StripeTokenizer.kind, StripeTokenizer)
    monkeypatch.chdir(tmp_path)
    fingerprint = save_tokenizer(StripeTokenizer(), Path("models/tokenizer"))
    labels, tokens = corpus
    meta = TokenMeta(4, 5, 40, 3, fingerprint)
    write_tokens(Path("data/tokens"), labels, tokens, shard_size=60, meta=meta)
    stage.run(Config())
    for name in GRAPH_FILES:
        assert (Path("data/graphs") / name).is_file()
    for name in OFFICIAL_FILES:
        assert (layout.GRAPHS_OFFICIAL_DIR / name).is_file()
    assert Path("metrics/graphs.json").is_file() and Path("metrics/plots/graph_degrees.csv").is_file()
    assert Path("metrics/plots/graph_neighbours.png").stat().st_size > 0
    assert tokenizer_fingerprint("models/tokenizer") == fingerprint

    # Tokens made by another tokenizer: refuse to decode them, leave no graphs.
    save_tokenizer(StripeTokenizer(cell=2), Path("models/tokenizer"))
    shutil.rmtree("data/graphs")
    with pytest.raises(PipelineError, match="fingerprint"):
        stage.run(Config())
    assert not Path("data/graphs").exists()


def test_self_weight_mean_of_a_normalised_operator():
    from pipeline.graphs.stats import self_weight_mean

    # Token 0 keeps half of itself, token 1 all of itself, token 2 never occurs (ignored).
    src = np.array([0, 0, 1, 2])
    dst = np.array([0, 1, 1, 2])
    weight = np.array([0.5, 0.5, 1.0, 1.0])
    assert self_weight_mean(src, dst, weight, np.array([True, True, False])) == pytest.approx(0.75)


def test_neighbour_to_self_median_of_a_normalised_operator():
    from pipeline.graphs.stats import neighbour_to_self_median

    # Token 0: neighbours at 0.2 and 0.4 against a self-loop of 0.5 (ratios 0.4, 0.8); token 1: 0.3
    # against 0.6 (0.5). The median of 0.4, 0.5, 0.8 is 0.5.
    src = np.array([0, 0, 0, 1, 1])
    dst = np.array([0, 1, 2, 1, 0])
    weight = np.array([0.5, 0.2, 0.4, 0.6, 0.3])
    assert neighbour_to_self_median(src, dst, weight) == pytest.approx(0.5)


def test_max_row_sum_of_a_normalised_operator(tmp_path, corpus):
    from pipeline.graphs.stats import max_row_sum

    assert max_row_sum(np.array([0, 0, 1, 2]), np.array([0.5, 0.9, 1.0, 0.2]), 3) == pytest.approx(1.4)
    labels, tokens = corpus
    paths, metrics = run(tmp_path / "out", write_tokens(tmp_path / "tokens", labels, tokens, shard_size=60))
    on_disk = json.loads(paths.metrics_file.read_text())
    for graph in ("cooccurrence", "similarity"):
        assert on_disk[graph]["max_row_sum"] == metrics[graph]["max_row_sum"] > 0
        assert 0 < on_disk[graph]["neighbour_to_self_median"] == metrics[graph]["neighbour_to_self_median"]
