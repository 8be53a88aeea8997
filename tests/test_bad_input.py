"""Bad input files, end to end through the stage entry points (``python -m pipeline.stages.X``).

What a user sees matters here, so every test runs the real entry point in a scratch project
directory and checks: exit code 1, one ``error: stage '...' failed:`` line on stderr that names
the bad file, no Python traceback, the outputs of an earlier run untouched, and no temporary
files left behind. The in-process versions of these checks live in ``test_graphs_stage.py``
and ``test_data.py``.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.data import FASHION_MNIST_FILES
from tests.helpers import run_entry, snapshot, temp_leftovers, token_project

BAD_SHARD = "data/tokens/train/part-00001.parquet"


def assert_clean_failure(result, stage: str, names: str) -> None:
    """A one-line, user-actionable failure of ``stage`` whose message names ``names``."""
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith(f"error: stage '{stage}' failed:"), errors[0]
    assert names in errors[0], errors[0]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


# --------------------------------------------------------------------------------------------
# graphs: a corrupted or truncated token shard
# --------------------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _flip_token_page(path: Path) -> None:
    """Flip 16 bytes in the middle of the tokens column's data: the footer stays valid."""
    column = pq.ParquetFile(path).metadata.row_group(0).column(2)
    middle = column.data_page_offset + column.total_compressed_size // 2
    raw = bytearray(path.read_bytes())
    for i in range(middle, middle + 16):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _not_parquet(path: Path) -> None:
    path.write_text("image_id,label,tokens\n0,1,2 3 4\n")


@pytest.fixture
def graphs_project(tmp_path: Path) -> Path:
    """params.yaml, two train shards, and the outputs of an earlier successful graphs run."""
    token_project(tmp_path)
    for name in ("data/graphs/cooccurrence.parquet", "data/graphs/similarity.parquet",
                 "metrics/graphs.json", "metrics/plots/graph_degrees.csv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"{name} of an earlier run\n")
    return tmp_path


@pytest.mark.parametrize("damage", [_truncate, _flip_token_page, _empty, _not_parquet],
                         ids=["truncated", "flipped-bytes-in-data-page", "empty-file", "not-parquet"])
def test_damaged_shard_stops_graphs_naming_the_shard(graphs_project: Path, damage) -> None:
    damage(graphs_project / BAD_SHARD)
    before = snapshot(graphs_project, "data/graphs", "metrics")

    result = run_entry("pipeline.stages.graphs", graphs_project)

    assert_clean_failure(result, "graphs", BAD_SHARD)
    assert "part-00000" not in result.stderr  # the intact shard is not blamed
    assert snapshot(graphs_project, "data/graphs", "metrics") == before
    assert temp_leftovers(graphs_project) == []


# --------------------------------------------------------------------------------------------
# prepare: a truncated IDX file (data.source fashion-mnist)
# --------------------------------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray, keep_bytes: int | None = None) -> None:
    """A gzipped IDX file; ``keep_bytes`` cuts the *decompressed* payload (a valid gzip stream)."""
    raw = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(raw if keep_bytes is None else raw[:keep_bytes])


@pytest.fixture
def fashion_project(tmp_path: Path) -> Path:
    """A project whose params point data.fashion_mnist_dir at four small, valid fake IDX files."""
    source = tmp_path / "fashion-mnist"
    source.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("val", 20)):
        images, labels = FASHION_MNIST_FILES[split]
        _write_idx(source / images, rng.integers(0, 256, (n, 28, 28)))
        _write_idx(source / labels, np.arange(n) % 10)
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(
        f"data:\n  source: fashion-mnist\n  fashion_mnist_dir: {source}\n"
    )
    return project


def _cut_gzip_stream(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 200])


def _short_payload(path: Path) -> None:
    _write_idx(path, np.arange(20) % 10, keep_bytes=8 + 12)  # header promises 20 labels, 12 follow


@pytest.mark.parametrize(
    ("split", "kind", "damage", "says"),
    [
        ("train", 0, _cut_gzip_stream, "is corrupt or truncated"),
        ("val", 1, _short_payload, "is truncated or corrupt: header promises shape (20,)"),
    ],
    ids=["train-images-cut-gzip", "val-labels-short-payload"],
)
def test_truncated_idx_stops_prepare_naming_the_file(
    fashion_project: Path, split: str, kind: int, damage, says: str
) -> None:
    # The control, and the outputs a failed re-run must leave alone: intact files prepare fine.
    first = run_entry("pipeline.stages.prepare", fashion_project)
    assert first.returncode == 0, first.stderr[-3000:]
    assert pq.read_table(fashion_project / "data/prepared/manifest.parquet").num_rows == 60
    before = snapshot(fashion_project, "data", "metrics")
    source = fashion_project.parent / "fashion-mnist"
    victim = source / FASHION_MNIST_FILES[split][kind]
    damage(victim)

    result = run_entry("pipeline.stages.prepare", fashion_project)

    assert_clean_failure(result, "prepare", str(victim))
    assert says in result.stderr
    assert snapshot(fashion_project, "data", "metrics") == before
    assert temp_leftovers(fashion_project) == []
