"""The token-shard contract: schema, metadata, round trip, determinism and validation errors."""

import hashlib

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import ShardError
from pipeline.shards import (
    ShardWriter,
    TokenMeta,
    iter_shards,
    list_shards,
    load_split,
    read_meta,
    read_shard,
    write_meta,
    write_shard,
)

META = TokenMeta(grid_h=3, grid_w=2, codebook_size=16, num_classes=4, tokenizer_fingerprint="abc123")


def _rows(n, seed=0):
    rng = np.random.default_rng(seed)
    return (np.arange(n, dtype=np.int64) + 100, rng.integers(0, 4, n).astype(np.int32),
            rng.integers(0, 16, (n, 6)).astype(np.int32))


def _write_split(directory, n=25, shard_size=10, seed=0):
    ids, labels, tokens = _rows(n, seed)
    with ShardWriter(directory, META, shard_size) as writer:
        for start in range(0, n, 7):  # batches that do not align with shards
            writer.add(ids[start:start + 7], labels[start:start + 7], tokens[start:start + 7])
    return ids, labels, tokens


def test_round_trip_and_shard_sizes(tmp_path):
    ids, labels, tokens = _write_split(tmp_path / "train")
    shards = list_shards(tmp_path / "train")
    assert [p.name for p in shards] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.ParquetFile(p).metadata.num_rows for p in shards] == [10, 10, 5]
    split = load_split(tmp_path / "train")
    np.testing.assert_array_equal(split.image_ids, ids)
    np.testing.assert_array_equal(split.labels, labels)
    np.testing.assert_array_equal(split.tokens, tokens)
    assert split.meta == META


def test_schema_metadata_and_compression(tmp_path):
    _write_split(tmp_path / "train")
    path = list_shards(tmp_path / "train")[0]
    handle = pq.ParquetFile(path)
    schema = handle.schema_arrow
    assert schema.field("image_id").type == pa.int64()
    assert schema.field("label").type == pa.int32()
    assert schema.field("tokens").type == pa.list_(pa.field("item", pa.int32(), nullable=False), 6)
    assert isinstance(schema.field("tokens").type, pa.FixedSizeListType)
    metadata = {k.decode(): v.decode() for k, v in schema.metadata.items() if k.startswith(b"kamig.")}
    assert metadata == {"kamig.grid_h": "3", "kamig.grid_w": "2", "kamig.codebook_size": "16",
                        "kamig.num_classes": "4", "kamig.tokenizer_fingerprint": "abc123",
                        "kamig.class_names": "[]"}
    assert handle.metadata.row_group(0).column(2).compression == "ZSTD"


def test_class_names_travel_with_the_tokens(tmp_path):
    named = TokenMeta(grid_h=3, grid_w=2, codebook_size=16, num_classes=2, tokenizer_fingerprint="abc123",
                      class_names=["T-shirt/top", "Ankle \"boot\""])
    write_meta(tmp_path, named)
    with ShardWriter(tmp_path / "train", named, shard_size=5) as writer:
        writer.add(np.array([0, 1]), np.array([0, 1], dtype=np.int32), np.zeros((2, 6), dtype=np.int32))
    assert read_meta(tmp_path) == named and named.class_names == ("T-shirt/top", 'Ankle "boot"')
    assert load_split(tmp_path / "train").meta == named  # the shards' own metadata too
    assert named.class_labels() == ["0 T-shirt/top", '1 Ankle "boot"']
    assert META.class_labels() == ["0", "1", "2", "3"]
    with pytest.raises(ValueError, match="3 class names for 2 classes"):
        TokenMeta(3, 2, 16, 2, "abc123", class_names=("a", "b", "c"))


def test_polars_reads_the_glob(tmp_path):
    _write_split(tmp_path / "train", n=25)
    frame = pl.scan_parquet(str(tmp_path / "train" / "*.parquet")).collect()
    assert frame.height == 25
    flat = frame["tokens"].explode()
    assert flat.min() >= 0 and flat.max() < META.codebook_size


def test_meta_file_round_trip(tmp_path):
    write_meta(tmp_path, META)
    assert read_meta(tmp_path) == META
    with pytest.raises(ShardError, match="not found"):
        read_meta(tmp_path / "nowhere")


def test_bytes_are_deterministic_and_independent_of_batching(tmp_path):
    ids, labels, tokens = _rows(25)
    with ShardWriter(tmp_path / "a", META, 10) as writer:
        writer.add(ids, labels, tokens)
    _write_split(tmp_path / "b")
    digest = {d: [hashlib.sha256(p.read_bytes()).hexdigest() for p in list_shards(tmp_path / d)]
              for d in ("a", "b")}
    assert digest["a"] == digest["b"]


def test_writer_rejects_out_of_range_tokens(tmp_path):
    ids, labels, tokens = _rows(3)
    tokens[1, 2] = 16
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        write_shard(tmp_path / "part-00000.parquet", META, ids, labels, tokens)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_empty_or_missing_split_is_an_error(tmp_path):
    with pytest.raises(ShardError, match="not found"):
        list_shards(tmp_path / "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(ShardError, match="empty split"):
        list_shards(tmp_path / "train")


def test_corrupt_shard_error_names_the_shard(tmp_path):
    _write_split(tmp_path / "train")
    victim = list_shards(tmp_path / "train")[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(ShardError, match="part-00001.parquet"):
        list(iter_shards(tmp_path / "train"))


def test_out_of_range_token_in_a_foreign_shard_is_caught(tmp_path):
    # A shard written by something else that ignores the contract.
    ids, labels, tokens = _rows(4)
    tokens[0, 0] = 99
    table = pa.table({"image_id": ids, "label": labels,
                      "tokens": pa.FixedSizeListArray.from_arrays(pa.array(tokens.ravel()), 6)})
    table = table.cast(pa.schema([("image_id", pa.int64(), False), ("label", pa.int32(), False),
                                  ("tokens", pa.list_(pa.field("item", pa.int32(), False), 6), False)],
                                 metadata=META.to_parquet_metadata()))
    (tmp_path / "train").mkdir()
    pq.write_table(table, tmp_path / "train" / "part-00000.parquet")
    with pytest.raises(ShardError, match=r"part-00000.parquet holds token 99"):
        read_shard(tmp_path / "train" / "part-00000.parquet")


def test_grid_mismatch_between_shards_is_caught(tmp_path):
    _write_split(tmp_path / "train", n=10)
    other = TokenMeta(grid_h=2, grid_w=3, codebook_size=16, num_classes=4, tokenizer_fingerprint="abc123")
    ids, labels, tokens = _rows(2)
    write_shard(tmp_path / "train" / "part-00001.parquet", other, ids, labels, tokens)
    with pytest.raises(ShardError, match=r"part-00001.parquet has metadata .* mismatch"):
        list(iter_shards(tmp_path / "train"))
