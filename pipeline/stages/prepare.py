"""Stage `prepare`: validate the image source and write the manifest.

Outputs: data/prepared/ (manifest.parquet, classes.json, skipped.csv) and metrics/prepare.json.
"""

from __future__ import annotations

import csv
import json
import logging

import pyarrow.parquet as pq

from pipeline.config import Config
from pipeline.data import MANIFEST_PATH, build_manifest
from pipeline.files import atomic_dir, write_json
from pipeline.stages.common import run_stage

log = logging.getLogger(__name__)
METRICS = "metrics/prepare.json"


def prepare(cfg: Config) -> None:
    table, report, class_names = build_manifest(cfg)
    with atomic_dir(MANIFEST_PATH.parent) as tmp:
        pq.write_table(table, tmp / MANIFEST_PATH.name, compression="zstd")
        (tmp / "classes.json").write_text(json.dumps(class_names, indent=1) + "\n")
        with open(tmp / "skipped.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "reason"])
            writer.writerows(report.skipped_files)
    write_json(METRICS, report.to_metrics(cfg.data.source, len(class_names)))
    log.info("manifest: %s; skipped %d files", report.counts, sum(report.skipped.values()))


def main() -> None:
    run_stage("prepare", prepare, outputs=[MANIFEST_PATH, METRICS])


if __name__ == "__main__":
    main()
