"""Stage ``classifier``: the domain CNN (:mod:`pipeline.metrics.classifier`) on the real train images.

It depends only on the prepared data and ``eval.classifier.*`` (including its own
``eval.classifier.seed``), never on the top-level ``seed`` or any model param, so experiments on the
generator never retrain it. Writes ``models/classifier/`` and ``metrics/classifier.json`` (val
accuracy, training time). The work is :func:`pipeline.metrics.classifier.fit_domain_classifier`.

Usage: ``python -m pipeline.stages.classifier``.
"""

from __future__ import annotations

import logging

from pipeline import layout
from pipeline.config import Config
from pipeline.files import write_json
from pipeline.launch import single_process_device
from pipeline.metrics.classifier import fit_domain_classifier, save_classifier
from pipeline.runtime import stage_main

log = logging.getLogger(__name__)


def run(cfg: Config) -> None:
    model, metrics = fit_domain_classifier(cfg, single_process_device())
    save_classifier(model, layout.CLASSIFIER_DIR,
                    extra={"val_accuracy": metrics["val_accuracy"], "seed": cfg.eval.classifier.seed})
    write_json(layout.stage_metrics("classifier"), metrics)
    log.info("classifier: val accuracy %.4f after %d steps (%.1f s)", metrics["val_accuracy"],
             metrics["steps"], metrics["train_seconds"])


def main() -> None:
    stage_main("classifier", run, outputs=lambda: [layout.CLASSIFIER_DIR, layout.stage_metrics("classifier")])


if __name__ == "__main__":
    main()
