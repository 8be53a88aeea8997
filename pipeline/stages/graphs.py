"""DVC stage ``graphs``: the co-occurrence, similarity and position-token graphs from the train tokens.

    python -m pipeline.stages.graphs

Reads ``data/tokens/train`` + ``meta.json`` (and ``models/tokenizer`` for the neighbour picture);
writes ``data/graphs/``, ``metrics/graphs.json`` and ``metrics/plots/graph_{degrees.csv,neighbours.png}``.
The work is in :mod:`pipeline.graphs.build`.
"""

from __future__ import annotations

from pipeline.config import Config
from pipeline.graphs.build import StagePaths, build_graphs
from pipeline.stages.common import run_stage


def body(cfg: Config) -> None:
    build_graphs(cfg.graphs, StagePaths())


def main() -> None:
    paths = StagePaths()
    outputs = [paths.graphs_dir, paths.metrics_file, paths.degrees_csv, paths.picture]
    run_stage("graphs", body, outputs=outputs)


if __name__ == "__main__":
    main()
