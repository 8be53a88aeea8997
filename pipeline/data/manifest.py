"""The manifest, ``data/prepared/manifest.parquet``: one row per usable image of the configured
source, ``image_id`` int64, ``label`` int32, ``split`` ("train" | "val"), ``path`` (image folders
only) and ``source_index`` (the row in the source); beside it ``classes.json`` and ``skipped.csv``.

Image ids are stable and readable: train images are ``source_index``, val images
``VAL_ID_OFFSET + source_index`` and horizontally flipped train copies ``FLIP_ID_OFFSET + id``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import layout
from pipeline.config import Config
from pipeline.data.registry import source_for
from pipeline.data.source import PrepareReport
from pipeline.errors import DataSourceError

SPLITS = ("train", "val")
MANIFEST_PATH = layout.MANIFEST_PATH
VAL_ID_OFFSET = 1_000_000_000
FLIP_ID_OFFSET = 2_000_000_000

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("path", pa.string()),
        pa.field("source_index", pa.int64(), nullable=False),
    ]
)


def build_manifest(cfg: Config) -> tuple[pa.Table, PrepareReport, list[str]]:
    """Validate the configured source; return the manifest table, the report and the class names."""
    report = PrepareReport()
    scanned, names = source_for(cfg).scan(cfg, report)
    limits = {"train": cfg.data.max_train, "val": cfg.data.max_val}
    rows: list[dict] = []
    for split in SPLITS:
        in_split = [r for r in scanned if r["split"] == split]
        rows += in_split if limits[split] is None else in_split[: limits[split]]
    for split in SPLITS:
        report.counts[split] = sum(1 for r in rows if r["split"] == split)
        if report.counts[split] == 0:
            raise DataSourceError(f"data source {cfg.data.source!r} yields no {split} images")
    table = pa.Table.from_pylist(
        [
            {**r, "image_id": r["source_index"] + (VAL_ID_OFFSET if r["split"] == "val" else 0)}
            for r in rows
        ],
        schema=MANIFEST_SCHEMA,
    )
    return table, report, names


def read_manifest(path: str | Path = MANIFEST_PATH) -> pa.Table:
    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"{path} not found: run `dvc repro prepare` first")
    return pq.read_table(path)


def read_class_names(path: str | Path = MANIFEST_PATH) -> list[str]:
    """Class names stored beside the manifest by the prepare stage."""
    names_file = Path(path).with_name("classes.json")
    if not names_file.is_file():
        raise DataSourceError(f"{names_file} not found: run `dvc repro prepare` first")
    return json.loads(names_file.read_text())


def num_classes(path: str | Path = MANIFEST_PATH) -> int:
    return len(read_class_names(path))


def num_channels(cfg: Config) -> int:
    return source_for(cfg).channels(cfg)


def write_prepared(directory: Path, table: pa.Table, report: PrepareReport, class_names: list[str]) -> None:
    """Atomically write ``data/prepared/``: the manifest, the class names and the skipped files."""
    import csv

    from pipeline.files import atomic_dir

    with atomic_dir(directory) as tmp:
        pq.write_table(table, tmp / MANIFEST_PATH.name, compression="zstd")
        (tmp / "classes.json").write_text(json.dumps(class_names, indent=1) + "\n")
        with open(tmp / "skipped.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "reason"])
            writer.writerows(report.skipped_files)
