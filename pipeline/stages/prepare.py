"""Stage ``prepare``: validate the image source and write the manifest.

Writes ``data/prepared/`` (``manifest.parquet``: ``image_id``, ``label``, ``split``, path or source
index; ``classes.json``; ``skipped.csv``, the unusable files and why) and ``metrics/prepare.json``.
The work is :func:`pipeline.data.build_manifest`.

Usage: ``python -m pipeline.stages.prepare``.
"""

from __future__ import annotations

import logging

from pipeline import layout
from pipeline.config import Config
from pipeline.data import build_manifest, write_prepared
from pipeline.files import write_json
from pipeline.runtime import stage_main

log = logging.getLogger(__name__)


def run(cfg: Config) -> None:
    table, report, class_names = build_manifest(cfg)
    write_prepared(layout.PREPARED_DIR, table, report, class_names)
    write_json(layout.stage_metrics("prepare"), report.to_metrics(cfg.data.source, len(class_names)))
    log.info("manifest: %s; skipped %d files", report.counts, sum(report.skipped.values()))


def main() -> None:
    stage_main("prepare", run, outputs=lambda: [layout.PREPARED_DIR, layout.stage_metrics("prepare")])


if __name__ == "__main__":
    main()
