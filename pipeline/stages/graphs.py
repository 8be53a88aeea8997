"""Stage ``graphs``: the co-occurrence, similarity and position-token graphs from the train tokens.

Reads ``data/tokens/train`` + ``meta.json`` (and ``models/tokenizer`` for the neighbour picture);
writes ``data/graphs/``, ``data/graphs_official/`` (the official KA-MIG construction of the
co-occurrence and similarity graphs, for ``fusion.adapter: official``), ``metrics/graphs.json``
and ``metrics/plots/graph_{degrees.csv,neighbours.png}``,
each atomically. The work is :func:`pipeline.graphs.build.build_graphs`.

Usage: ``python -m pipeline.stages.graphs``.
"""

from __future__ import annotations

from pipeline.config import Config
from pipeline.graphs.build import StagePaths, build_graphs
from pipeline.runtime import stage_main


def run(cfg: Config) -> None:
    build_graphs(cfg.graphs, StagePaths())


def main() -> None:
    stage_main("graphs", run, outputs=lambda: StagePaths().outputs())


if __name__ == "__main__":
    main()
