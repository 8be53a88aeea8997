"""Stage ``graphs``: the co-occurrence, similarity and position-token graphs from the train tokens.

Reads ``data/tokens/train`` + ``meta.json`` (and ``models/tokenizer`` for the neighbour picture);
writes ``data/graphs/``, ``data/graphs_official/`` (the official KA-MIG construction of the
co-occurrence and similarity graphs, for ``fusion.adapter: official``), ``metrics/graphs.json``
and ``metrics/plots/graph_{degrees.csv,neighbours.png}``, each atomically. The work is
:func:`pipeline.graphs.build.build_graphs`.

Usage: ``python -m pipeline.stages.graphs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import layout
from pipeline.config import Config, GraphsConfig
from pipeline.files import atomic_dir, write_json
from pipeline.graphs.build import build_graphs
from pipeline.graphs.stats import write_degree_csv
from pipeline.images import save_png
from pipeline.runtime import stage_main


@dataclass(frozen=True)
class StagePaths:
    """Inputs and outputs of the stage; the defaults are the DVC layout, tests pass temporary ones."""

    tokens_dir: Path = layout.TOKENS_DIR
    graphs_dir: Path = layout.GRAPHS_DIR
    metrics_file: Path = layout.METRICS_DIR / "graphs.json"
    degrees_csv: Path = layout.PLOTS_DIR / "graph_degrees.csv"
    picture: Path = layout.PLOTS_DIR / "graph_neighbours.png"
    # None: no neighbour picture (unit tests have no tokenizer).
    tokenizer_dir: Path | None = layout.TOKENIZER_DIR
    # None: "<graphs_dir>_official" next to graphs_dir (layout.GRAPHS_OFFICIAL_DIR by default), so
    # that callers passing only a temporary graphs_dir never write into the working directory.
    official_dir: Path | None = None

    @property
    def official_graphs_dir(self) -> Path:
        if self.official_dir is not None:
            return self.official_dir
        return self.graphs_dir.with_name(f"{self.graphs_dir.name}_official")

    def outputs(self) -> list[Path]:
        return [self.graphs_dir, self.official_graphs_dir, self.metrics_file, self.degrees_csv, self.picture]


def write_graphs(cfg: GraphsConfig, paths: StagePaths | None = None) -> dict[str, Any]:
    """Build the graphs and write every output; returns the metrics written."""
    paths = paths or StagePaths()
    # Both directories are committed only when the block ends without an error (the official one
    # first, then data/graphs), so a failure anywhere inside leaves neither.
    with atomic_dir(paths.graphs_dir) as out, atomic_dir(paths.official_graphs_dir) as official_out:
        result = build_graphs(cfg, paths.tokens_dir, out, official_out, paths.tokenizer_dir)
        write_degree_csv(paths.degrees_csv, result.histograms)
        if result.picture is not None:
            save_png(paths.picture, result.picture)
        write_json(paths.metrics_file, result.metrics)
    return result.metrics


def run(cfg: Config) -> None:
    write_graphs(cfg.graphs)


def main() -> None:
    stage_main("graphs", run, outputs=lambda: StagePaths().outputs())


if __name__ == "__main__":
    main()
