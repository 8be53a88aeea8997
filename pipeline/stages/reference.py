"""Stage ``reference``: features and statistics of the real reference images, computed once.

Writes ``data/reference/``: ``domain.npz`` (classifier features, labels, ``mu``/``sigma``), with
``eval.inception`` also ``inception.npz`` (pool3 features and the FID statistics, taken from
``eval.reference_npz`` when it names an ADM / pytorch-fid npz), and ``info.json``. Every
``evaluate@...`` stage reads it instead of re-extracting the reference. The work is
:func:`pipeline.metrics.evaluation.reference_features`.

Usage: ``python -m pipeline.stages.reference`` (or under ``accelerate launch``).
"""

from __future__ import annotations

import logging

from pipeline import layout
from pipeline.config import Config
from pipeline.launch import shared_stage
from pipeline.metrics import save_reference
from pipeline.metrics.extraction import reference_features
from pipeline.runtime import stage_main

log = logging.getLogger(__name__)


def run(cfg: Config) -> None:
    with shared_stage() as state:
        reference = reference_features(cfg, state)
        if state.is_main_process:
            save_reference(layout.REFERENCE_DIR, reference.features, reference.info,
                           reference.inception_stats)
            log.info("reference: %d %s images -> %s", len(reference.features), cfg.eval.reference_split,
                     layout.REFERENCE_DIR)


def main() -> None:
    stage_main("reference", run, outputs=lambda: [layout.REFERENCE_DIR])


if __name__ == "__main__":
    main()
