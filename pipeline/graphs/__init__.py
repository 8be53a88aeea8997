"""KA-MIG's token graphs (the ``graphs`` DVC stage) and the loaders the model uses.

``data/graphs/`` holds ``cooccurrence.parquet``, ``similarity.parquet`` and
``position_token_counts.parquet``; :mod:`pipeline.graphs.storage` documents the format. The model
side needs only::

    from pipeline.graphs import GRAPHS_DIR, COOCCURRENCE_FILE, load_edges, load_position_token_counts
    src, dst, weight = load_edges(GRAPHS_DIR / COOCCURRENCE_FILE)    # A_hat entries, H' = A_hat @ H
    counts = load_position_token_counts(GRAPHS_DIR / POSITION_TOKEN_COUNTS_FILE)
    label, position, token = counts.compatible(min_count)            # everything else is incompatible

This package's ``__init__`` imports neither faiss, polars nor torch.
"""

from pathlib import Path

from pipeline.graphs.storage import (
    COOCCURRENCE_FILE,
    POSITION_TOKEN_COUNTS_FILE,
    SIMILARITY_FILE,
    PositionTokenCounts,
    load_edges,
    load_position_token_counts,
)

GRAPHS_DIR = Path("data/graphs")

__all__ = [
    "COOCCURRENCE_FILE",
    "GRAPHS_DIR",
    "POSITION_TOKEN_COUNTS_FILE",
    "SIMILARITY_FILE",
    "PositionTokenCounts",
    "load_edges",
    "load_position_token_counts",
]
