"""Test fixtures shared by several test files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config import CooccurrenceConfig, GraphsConfig
from pipeline.graphs.build import StagePaths, build_graphs
from pipeline.shards import ShardWriter, TokenMeta, write_meta


def write_token_split(directory: Path, tokens: np.ndarray, labels: np.ndarray, meta: TokenMeta,
                      split: str = "train", shard_size: int = 1000) -> Path:
    """Write ``tokens`` (n, seq_len) as a token directory (``<directory>/<split>`` + meta.json)."""
    with ShardWriter(directory / split, meta, shard_size) as writer:
        writer.add(np.arange(len(tokens), dtype=np.int64), labels.astype(np.int32), tokens.astype(np.int32))
    write_meta(directory, meta)
    return directory


def write_graph_files(directory: Path, tokens: np.ndarray, labels: np.ndarray, codebook_size: int,
                      grid: tuple[int, int], top_ratio: float = 1.0, neighbourhood: int = 4) -> Path:
    """Real graph files for ``tokens`` (n, h*w), built by the graphs stage itself into ``directory``."""
    num_classes = int(labels.max()) + 1
    meta = TokenMeta(grid[0], grid[1], codebook_size, num_classes, "test")
    tokens_dir = write_token_split(directory.parent / f"{directory.name}-tokens", tokens, labels, meta)
    metrics = directory.parent / f"{directory.name}-metrics"
    cfg = GraphsConfig(cooccurrence=CooccurrenceConfig(neighbourhood=neighbourhood, top_ratio=top_ratio))
    build_graphs(cfg, StagePaths(tokens_dir=tokens_dir, graphs_dir=directory,
                                 metrics_file=metrics / "graphs.json", degrees_csv=metrics / "degrees.csv",
                                 picture=metrics / "neighbours.png", tokenizer_dir=None))
    return directory
