"""The graph files in ``data/graphs/``: their format, and every read of them (the model's included).

Three Parquet files, zstd-compressed, rows sorted, fixed row-group size and no timestamps, so the
same tokens always give the same bytes:

``cooccurrence.parquet``            src int32, dst int32, count int64, weight float32
``similarity.parquet``              src int32, dst int32, distance float32, weight float32
``position_token_counts.parquet``   label int32, position int32, token int32, count int64

``weight`` is an entry of the GCN operator ``A_hat = D^-1/2 (A + I) D^-1/2`` at (row ``src``,
column ``dst``): the model computes ``H' = A_hat @ H``, so row ``src`` aggregates from its ``dst``.
The co-occurrence file stores the diagonal of ``A_hat`` as its self-loop rows. The similarity file
stores exactly the k nearest neighbours of each token and no self-loops, so the diagonal
``1 / d_src`` is implicit; :func:`load_edges` rebuilds it from the file's distances and the
``alpha`` / distance scale kept in its Parquet metadata (see :mod:`pipeline.graphs.similarity`).

``data/graphs_official/`` holds the official KA-MIG construction (:mod:`pipeline.graphs.official`)
in the same fixed layout, ``cooccurrence.parquet`` and ``similarity.parquet`` both with schema
``src int32, dst int32, weight float32``: every stored row, self-loops included, already divided
by ``sqrt(n_src * n_dst)``; read them with :func:`load_official_edges`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import GraphName
from pipeline.errors import PipelineError
from pipeline.graphs.normalisation import similarity_self_loops

COOCCURRENCE_FILE = "cooccurrence.parquet"
SIMILARITY_FILE = "similarity.parquet"
POSITION_TOKEN_COUNTS_FILE = "position_token_counts.parquet"

META_PREFIX = "kamig."
# Fixed so that the bytes never depend on how the rows were produced (one pass or many).
ROW_GROUP_SIZE = 1 << 20

COOCCURRENCE_SCHEMA = pa.schema(
    [
        pa.field("src", pa.int32(), nullable=False),
        pa.field("dst", pa.int32(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("weight", pa.float32(), nullable=False),
    ]
)
SIMILARITY_SCHEMA = pa.schema(
    [
        pa.field("src", pa.int32(), nullable=False),
        pa.field("dst", pa.int32(), nullable=False),
        pa.field("distance", pa.float32(), nullable=False),
        pa.field("weight", pa.float32(), nullable=False),
    ]
)
# data/graphs_official/{cooccurrence,similarity}.parquet (same file names as in data/graphs).
OFFICIAL_EDGES_SCHEMA = pa.schema(
    [
        pa.field("src", pa.int32(), nullable=False),
        pa.field("dst", pa.int32(), nullable=False),
        pa.field("weight", pa.float32(), nullable=False),
    ]
)
POSITION_TOKEN_COUNTS_SCHEMA = pa.schema(
    [
        pa.field("label", pa.int32(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("token", pa.int32(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
    ]
)


def _with_metadata(schema: pa.Schema, metadata: dict[str, str] | None) -> pa.Schema:
    if not metadata:
        return schema
    return schema.with_metadata({f"{META_PREFIX}{k}".encode(): v.encode() for k, v in metadata.items()})


def table_from_columns(schema: pa.Schema, columns: dict[str, np.ndarray],
                       metadata: dict[str, str] | None = None) -> pa.Table:
    """Build a table with exactly ``schema``'s types (casting numpy columns as needed)."""
    arrays = [pa.array(np.asarray(columns[f.name], dtype=f.type.to_pandas_dtype()), type=f.type)
              for f in schema]
    return pa.Table.from_arrays(arrays, schema=_with_metadata(schema, metadata))


class TableWriter:
    """Writes a Parquet file in fixed-size row groups, whatever the sizes of the appended pieces.

    Buffering to exact ``ROW_GROUP_SIZE`` boundaries makes a file written in several passes
    byte-identical to the same rows written at once.
    """

    def __init__(self, path: Path, schema: pa.Schema, metadata: dict[str, str] | None = None):
        self.schema = _with_metadata(schema, metadata) if metadata else schema
        self._writer = pq.ParquetWriter(path, self.schema, compression="zstd", write_statistics=True)
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        table = table.replace_schema_metadata(self.schema.metadata)
        self._pending.append(table)
        self._pending_rows += len(table)
        self.rows += len(table)
        if self._pending_rows >= ROW_GROUP_SIZE:
            # Contiguous columns: how the pieces were chunked must not leak into page boundaries.
            merged = pa.concat_tables(self._pending).combine_chunks()
            full = (len(merged) // ROW_GROUP_SIZE) * ROW_GROUP_SIZE
            self._writer.write_table(merged.slice(0, full), row_group_size=ROW_GROUP_SIZE)
            rest = merged.slice(full)
            self._pending, self._pending_rows = [rest], len(rest)

    def close(self) -> None:
        if self._pending_rows or self.rows == 0:
            pieces = self._pending or [self.schema.empty_table()]
            merged = pa.concat_tables(pieces).combine_chunks()
            self._writer.write_table(merged, row_group_size=ROW_GROUP_SIZE)
        self._writer.close()

    def abort(self) -> None:
        """Release the file after a failure (the caller's atomic directory discards it)."""
        self._writer.close()


def write_table(path: Path, table: pa.Table) -> None:
    """Write one whole table with the fixed layout (callers write inside an atomic directory)."""
    writer = TableWriter(path, table.schema)
    writer.write(table)
    writer.close()


def read_file_metadata(path: str | Path) -> dict[str, str]:
    """The ``kamig.*`` key-value metadata of a graph file, prefix removed."""
    raw = pq.read_schema(path).metadata or {}
    return {k.decode()[len(META_PREFIX):]: v.decode() for k, v in raw.items()
            if k.decode().startswith(META_PREFIX)}


def _read(path: str | Path, schema: pa.Schema) -> pa.Table:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"graph file {path} not found: run `dvc repro graphs`")
    table = pq.read_table(path)
    if not table.schema.remove_metadata().equals(schema):
        raise PipelineError(f"graph file {path} has schema {table.schema.remove_metadata()}, "
                            f"expected {schema}")
    return table


def load_edges(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-zero entries of the normalised operator ``A_hat`` stored in a graph file.

    Returns ``(src int64, dst int64, weight float32)``, sorted by (src, dst): build a sparse
    matrix with rows ``src`` and columns ``dst`` and compute ``H' = A_hat @ H``. For the
    similarity graph the implicit diagonal ``1 / d_v`` of every token (1 for tokens without
    neighbours) is added, so both graphs come back as the complete operator.
    """
    path = Path(path)
    schema = pq.read_schema(path).remove_metadata() if path.is_file() else None
    if schema is not None and schema.equals(SIMILARITY_SCHEMA):
        table = _read(path, SIMILARITY_SCHEMA)
        return _similarity_operator(table, read_file_metadata(path), path)
    table = _read(path, COOCCURRENCE_SCHEMA)
    return (
        table.column("src").to_numpy().astype(np.int64),
        table.column("dst").to_numpy().astype(np.int64),
        table.column("weight").to_numpy().astype(np.float32),
    )


def _similarity_operator(table: pa.Table, meta: dict[str, str],
                         path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        num_tokens = int(meta["num_tokens"])
        alpha, scale = float(meta["alpha"]), float(meta["distance_scale"])
    except (KeyError, ValueError) as exc:
        raise PipelineError(f"graph file {path} lacks its similarity metadata ({exc}): rebuild it") from exc
    src = table.column("src").to_numpy().astype(np.int64)
    dst = table.column("dst").to_numpy().astype(np.int64)
    weight = table.column("weight").to_numpy().astype(np.float32)
    distance = table.column("distance").to_numpy()
    diagonal = similarity_self_loops(src, distance, alpha, scale, num_tokens)
    nodes = np.arange(num_tokens, dtype=np.int64)
    src, dst = np.concatenate([src, nodes]), np.concatenate([dst, nodes])
    weight = np.concatenate([weight, diagonal])
    order = np.lexsort((dst, src))
    return src[order], dst[order], weight[order]


@dataclass(frozen=True)
class PositionTokenCounts:
    """Observed (label, position, token) triples with their counts, sorted by (label, position, token)."""

    label: np.ndarray
    position: np.ndarray
    token: np.ndarray
    count: np.ndarray

    def compatible(self, min_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(label, position, token) of the compatible triples, those with ``count >= min_count``.

        Every other (c, p, t) in num_classes x positions x vocabulary is incompatible.
        """
        keep = self.count >= min_count
        return self.label[keep], self.position[keep], self.token[keep]


def load_position_token_counts(path: str | Path) -> PositionTokenCounts:
    """Read ``position_token_counts.parquet`` as int64 numpy columns."""
    table = _read(path, POSITION_TOKEN_COUNTS_SCHEMA)
    return PositionTokenCounts(*(table.column(name).to_numpy().astype(np.int64)
                                 for name in ("label", "position", "token", "count")))


def write_official_edges(path: Path, src: np.ndarray, dst: np.ndarray, weight: np.ndarray,
                         metadata: dict[str, str] | None = None) -> None:
    """Write one official graph (``OFFICIAL_EDGES_SCHEMA``), rows sorted by (src, dst)."""
    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    order = np.lexsort((dst, src))
    write_table(path, table_from_columns(
        OFFICIAL_EDGES_SCHEMA, {"src": src[order], "dst": dst[order], "weight": np.asarray(weight)[order]},
        metadata))


def load_official_edges(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An official graph file as ``(src int64, dst int64, weight float32)``, sorted by (src, dst).

    Every entry is stored, self-loops included: row ``src`` aggregates from column ``dst``.
    """
    table = _read(path, OFFICIAL_EDGES_SCHEMA)
    return (
        table.column("src").to_numpy().astype(np.int64),
        table.column("dst").to_numpy().astype(np.int64),
        table.column("weight").to_numpy().astype(np.float32),
    )


# --------------------------------------------------------------------------------------------
# What the knowledge adapter reads: the files above, checked against the token layout
# --------------------------------------------------------------------------------------------

GRAPH_FILES: dict[GraphName, str] = {
    "cooccurrence": COOCCURRENCE_FILE,
    "similarity": SIMILARITY_FILE,
    "incompatibility": POSITION_TOKEN_COUNTS_FILE,
}
# The graphs the GCN convolves over; incompatibility enters as the negative term instead.
POSITIVE_GRAPHS: tuple[GraphName, ...] = ("cooccurrence", "similarity")


@dataclass
class KnowledgeGraphData:
    """The graph inputs of the adapter, as numpy arrays checked against the token layout.

    ``edges[g]`` are the entries ``(src, dst, weight)`` of graph g's normalised operator (row
    ``src`` aggregates from column ``dst``). ``compatible_ptr`` / ``compatible_tokens`` are a CSR
    matrix over rows ``c * seq_len + i`` for classes c in [0, num_classes] (the last one is the
    null class, whose statistics are the class marginals): ``compatible_tokens[ptr[r]:ptr[r + 1]]``
    are the tokens seen at least ``min_count`` times at (c, i); every other token is incompatible.
    """

    codebook_size: int
    num_classes: int
    seq_len: int
    edges: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    compatible_ptr: np.ndarray | None = None
    compatible_tokens: np.ndarray | None = None


def permuted(data: KnowledgeGraphData, permutation: np.ndarray) -> KnowledgeGraphData:
    """The graphs with their token ids relabelled by ``permutation`` (a permutation of the vocabulary).

    ``A'[i, j] = A[pi(i), pi(j)]`` for every operator, and the compatible sets become
    ``{pi^-1(t)}``: every degree, weight and per-(class, position) density is kept exactly, and only
    the correspondence between graph nodes and real tokens is broken. The ``permuted`` (null)
    variant's graphs.
    """
    inverse = np.empty_like(permutation)
    inverse[permutation] = np.arange(len(permutation))
    result = KnowledgeGraphData(data.codebook_size, data.num_classes, data.seq_len)
    for name, (src, dst, weight) in data.edges.items():
        src, dst = inverse[src], inverse[dst]
        order = np.lexsort((dst, src))
        result.edges[name] = (src[order], dst[order], weight[order])
    if data.compatible_ptr is not None:
        tokens = inverse[data.compatible_tokens.astype(np.int64)].astype(data.compatible_tokens.dtype)
        result.compatible_ptr, result.compatible_tokens = data.compatible_ptr, tokens
    return result


def _check_range(path: Path, name: str, values: np.ndarray, upper: int) -> None:
    if values.size and (values.min() < 0 or values.max() >= upper):
        raise PipelineError(
            f"graph file {path}: column '{name}' holds values outside [0, {upper}) "
            "(graphs built from different tokens? re-run dvc repro graphs)"
        )


def _checked(load: Any, path: Path) -> Any:
    try:
        return load(path)
    except PipelineError:
        raise
    except Exception as exc:  # pyarrow raises several types; the message is what matters
        raise PipelineError(f"cannot read graph file {path}: {exc}") from exc


def compatible_sets(
    counts: PositionTokenCounts, codebook_size: int, num_classes: int, seq_len: int, min_count: int
) -> tuple[np.ndarray, np.ndarray]:
    """(ptr, tokens) of the compatible sets per (class, position), the null class last."""
    label, position, token, count = counts.label, counts.position, counts.token, counts.count
    # Per class: the observed triples with enough occurrences.
    keep = count >= min_count
    keys = [(label[keep] * seq_len + position[keep]) * codebook_size + token[keep]]
    # Null class (CFG): the class-marginal counts, one extra block of rows after the real classes.
    marginal = np.bincount(position * codebook_size + token, weights=count, minlength=seq_len * codebook_size)
    (flat,) = np.nonzero(marginal >= min_count)
    keys.append(num_classes * seq_len * codebook_size + flat)
    key = np.unique(np.concatenate(keys))  # sorted by (row, token); duplicates merged

    rows, tokens = np.divmod(key, codebook_size)
    ptr = np.zeros((num_classes + 1) * seq_len + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=(num_classes + 1) * seq_len), out=ptr[1:])
    # int16 halves the largest buffer (ImageNet: ~10^8 entries) whenever the vocabulary allows.
    token_dtype = np.int16 if codebook_size <= np.iinfo(np.int16).max else np.int32
    return ptr, tokens.astype(token_dtype)


def load_knowledge_graphs(
    graph_dir: str | Path,
    *,
    codebook_size: int,
    num_classes: int,
    seq_len: int,
    graphs: Iterable[GraphName],
    min_count: int,
) -> KnowledgeGraphData:
    """Read and check the graph files the adapter needs from ``graph_dir`` (``data/graphs``)."""
    graph_dir = Path(graph_dir)
    result = KnowledgeGraphData(codebook_size, num_classes, seq_len)
    for name in graphs:
        path = graph_dir / GRAPH_FILES[name]
        if name in POSITIVE_GRAPHS:
            src, dst, weight = _checked(load_edges, path)
            _check_range(path, "src", src, codebook_size)
            _check_range(path, "dst", dst, codebook_size)
            if not np.isfinite(weight).all():
                raise PipelineError(f"graph file {path}: column 'weight' holds non-finite values")
            result.edges[name] = (src, dst, weight)
        else:
            counts = _checked(load_position_token_counts, path)
            for column, upper in (("label", num_classes), ("position", seq_len), ("token", codebook_size)):
                _check_range(path, column, getattr(counts, column), upper)
            result.compatible_ptr, result.compatible_tokens = compatible_sets(
                counts, codebook_size, num_classes, seq_len, min_count
            )
    return result
