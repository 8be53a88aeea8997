"""The token-shard contract: how tokenised images are stored and read back.

Layout of a token directory (``data/tokens`` for real data, ``data/samples/<variant>`` for samples)::

    meta.json                    grid_h, grid_w, codebook_size, num_classes, tokenizer_fingerprint,
                                 class_names (readable labels; empty when the source has none)
    train/part-00000.parquet     image_id int64, label int32, tokens fixed_size_list<int32>[grid_h*grid_w]
    val/part-00000.parquet       ... (row-major tokens, ``shard_size`` rows per shard, zstd)

Each shard also carries the meta fields as Parquet key-value metadata (prefixed ``kamig.``; the
class names as a JSON list), so a single shard is self-describing. Shards are written whole (one
row group each), which makes the bytes independent of the tokenisation batch size and of how many
processes wrote them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import ShardError
from pipeline.files import atomic_path, write_json

META_FILE = "meta.json"
META_PREFIX = "kamig."
SHARD_GLOB = "part-*.parquet"


@dataclass(frozen=True)
class TokenMeta:
    grid_h: int
    grid_w: int
    codebook_size: int
    num_classes: int
    tokenizer_fingerprint: str
    # The labels' names, so that every model and sample set written from these tokens can name its
    # classes without the data; () where the source names none (and in metas written before).
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))  # a JSON list reads back equal
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")

    @property
    def seq_len(self) -> int:
        return self.grid_h * self.grid_w

    def class_labels(self) -> list[str]:
        """Each class as "<id> <name>", or as "<id>" where no names are recorded."""
        if self.class_names:
            return [f"{i} {name}" for i, name in enumerate(self.class_names)]
        return [str(i) for i in range(self.num_classes)]

    def to_parquet_metadata(self) -> dict[bytes, bytes]:
        fields = asdict(self)
        fields["class_names"] = json.dumps(list(self.class_names))
        return {f"{META_PREFIX}{k}".encode(): str(v).encode() for k, v in fields.items()}

    @classmethod
    def from_parquet_metadata(cls, metadata: dict[bytes, bytes] | None, where: str) -> TokenMeta:
        metadata = metadata or {}
        values = {}
        for name, kind in (
            ("grid_h", int),
            ("grid_w", int),
            ("codebook_size", int),
            ("num_classes", int),
            ("tokenizer_fingerprint", str),
        ):
            raw = metadata.get(f"{META_PREFIX}{name}".encode())
            if raw is None:
                raise ShardError(f"{where}: missing Parquet metadata key '{META_PREFIX}{name}'")
            values[name] = kind(raw.decode())
        names = metadata.get(f"{META_PREFIX}class_names".encode())
        return cls(**values, class_names=tuple(json.loads(names)) if names else ())


def token_schema(meta: TokenMeta) -> pa.Schema:
    return pa.schema(
        [
            pa.field("image_id", pa.int64(), nullable=False),
            pa.field("label", pa.int32(), nullable=False),
            pa.field("tokens", pa.list_(pa.field("item", pa.int32(), nullable=False), meta.seq_len),
                     nullable=False),
        ],
        metadata=meta.to_parquet_metadata(),
    )


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def write_shard(path: Path, meta: TokenMeta, image_ids: np.ndarray, labels: np.ndarray,
                tokens: np.ndarray) -> None:
    """Atomically write one shard. ``tokens`` is (rows, grid_h*grid_w), row-major per image."""
    tokens = np.ascontiguousarray(tokens, dtype=np.int32)
    if tokens.ndim != 2 or tokens.shape[1] != meta.seq_len:
        raise ValueError(f"tokens must be (rows, {meta.seq_len}), got {tokens.shape}")
    if len(image_ids) != len(tokens) or len(labels) != len(tokens):
        raise ValueError("image_ids, labels and tokens must have the same number of rows")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= meta.codebook_size):
        raise ValueError(f"tokens must lie in [0, {meta.codebook_size})")
    schema = token_schema(meta)
    flat = pa.array(tokens.reshape(-1), type=pa.int32())
    table = pa.Table.from_arrays(
        [
            pa.array(np.asarray(image_ids, dtype=np.int64)),
            pa.array(np.asarray(labels, dtype=np.int32)),
            pa.FixedSizeListArray.from_arrays(flat, type=schema.field("tokens").type),
        ],
        schema=schema,
    )
    with atomic_path(path) as tmp:
        # Page checksums: a flipped bit in a shard fails the read instead of becoming other tokens.
        pq.write_table(table, tmp, compression="zstd", row_group_size=max(1, len(tokens)),
                       write_statistics=True, write_page_checksum=True)


class ShardWriter:
    """Streams rows into ``part-NNNNN.parquet`` files of ``shard_size`` rows each.

    Memory is bounded by one shard: rows are buffered until a shard is full, then written.
    """

    def __init__(self, directory: Path, meta: TokenMeta, shard_size: int, first_shard: int = 0):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.meta = meta
        self.shard_size = shard_size
        self.next_shard = first_shard
        self.rows_written = 0
        self._buffers: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._buffered = 0

    def add(self, image_ids: np.ndarray, labels: np.ndarray, tokens: np.ndarray) -> None:
        start = 0
        while start < len(tokens):
            take = min(self.shard_size - self._buffered, len(tokens) - start)
            end = start + take
            self._buffers.append((image_ids[start:end], labels[start:end], tokens[start:end]))
            self._buffered += take
            start = end
            if self._buffered == self.shard_size:
                self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        ids, labels, tokens = (np.concatenate(parts) for parts in zip(*self._buffers))
        write_shard(self.directory / shard_name(self.next_shard), self.meta, ids, labels, tokens)
        self.next_shard += 1
        self.rows_written += self._buffered
        self._buffers, self._buffered = [], 0

    def close(self) -> None:
        self._flush()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def write_meta(directory: Path, meta: TokenMeta) -> None:
    write_json(Path(directory) / META_FILE, asdict(meta))


def read_meta(directory: str | Path) -> TokenMeta:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise ShardError(f"{path} not found: run the stage that writes these tokens (dvc repro)")
    try:
        return TokenMeta(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise ShardError(f"{path} is not a valid token meta file: {exc}") from exc


def list_shards(split_dir: str | Path) -> list[Path]:
    """The shards of one split, in order. An empty or missing split is an error."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise ShardError(f"token split {split_dir} not found: run `dvc repro` to create it")
    shards = sorted(split_dir.glob(SHARD_GLOB))
    if not shards:
        raise ShardError(f"token split {split_dir} holds no {SHARD_GLOB} files (empty split)")
    return shards


def open_shard(path: Path, expected: TokenMeta | None = None) -> tuple[pq.ParquetFile, TokenMeta]:
    """Open a shard and check its schema and metadata; errors name the shard."""
    try:
        handle = pq.ParquetFile(path, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as exc:
        raise ShardError(f"unreadable token shard {path}: {exc}") from exc
    schema = handle.schema_arrow
    meta = TokenMeta.from_parquet_metadata(schema.metadata, str(path))
    expected_schema = token_schema(meta)
    if not schema.remove_metadata().equals(expected_schema.remove_metadata()):
        raise ShardError(f"token shard {path} has schema {schema.remove_metadata()}, "
                         f"expected {expected_schema.remove_metadata()}")
    if expected is not None and meta != expected:
        raise ShardError(f"token shard {path} has metadata {meta}, which does not match {expected} "
                         "(grid or codebook mismatch between shards)")
    return handle, meta


def read_shard(path: Path, expected: TokenMeta | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read and validate one shard: (image_ids int64, labels int32, tokens int32 (rows, seq_len))."""
    handle, meta = open_shard(path, expected)
    try:
        table = handle.read()
    except (OSError, pa.ArrowException) as exc:
        raise ShardError(f"unreadable token shard {path}: {exc}") from exc
    ids = table.column("image_id").to_numpy()
    labels = table.column("label").to_numpy()
    flat = table.column("tokens").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    tokens = flat.reshape(len(table), meta.seq_len).astype(np.int32, copy=False)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= meta.codebook_size):
        bad = int(tokens.min()) if tokens.min() < 0 else int(tokens.max())
        raise ShardError(f"token shard {path} holds token {bad}, outside [0, {meta.codebook_size})")
    if labels.size and (labels.min() < 0 or labels.max() >= meta.num_classes):
        raise ShardError(f"token shard {path} holds labels outside [0, {meta.num_classes})")
    return ids, labels, tokens


def iter_shards(split_dir: str | Path) -> Iterator[tuple[Path, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (path, image_ids, labels, tokens) per shard; every shard must share the first's metadata."""
    expected: TokenMeta | None = None
    for path in list_shards(split_dir):
        if expected is None:
            _, expected = open_shard(path)
        yield (path, *read_shard(path, expected))


@dataclass(frozen=True)
class TokenSplit:
    image_ids: np.ndarray
    labels: np.ndarray
    tokens: np.ndarray
    meta: TokenMeta

    def __len__(self) -> int:
        return len(self.labels)


def load_split(split_dir: str | Path, limit: int | None = None) -> TokenSplit:
    """Load a whole split into memory (fine for training: 60k x 49 int32 is 12 MB)."""
    parts, meta, total = [], None, 0
    for path, ids, labels, tokens in iter_shards(split_dir):
        if meta is None:
            _, meta = open_shard(path)
        parts.append((ids, labels, tokens))
        total += len(ids)
        if limit is not None and total >= limit:
            break
    ids, labels, tokens = (np.concatenate(p) for p in zip(*parts))
    if limit is not None:
        ids, labels, tokens = ids[:limit], labels[:limit], tokens[:limit]
    assert meta is not None
    return TokenSplit(ids, labels, tokens, meta)
