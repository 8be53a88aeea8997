"""Stages ``evaluate@<variant>``, ``evaluate_real`` and ``evaluate_recon``: ``metrics/eval_<name>.json``.

A variant's samples are decoded by the tokenizer, quantised to uint8 like the real images and
scored against ``data/reference``. The floors score held-out train images the classifier never
trained on: ``real`` as they are, ``recon`` through ``decode(encode(x))`` (the tokenizer floor,
rFID). Keys:

    fid                    Fréchet distance of the domain-classifier features, samples vs reference
    fid_inception          the same on InceptionV3 pool3 features (null unless eval.inception)
    inception_score        ADM's Inception Score (null unless eval.inception and eval.inception_weights)
    precision, recall      Kynkäänniemi et al., k = eval.pr_k (Inception features when on)
    class_accuracy         the classifier's accuracy at predicting the requested class
    n_samples              images scored
    sampling_images_per_s  token generation throughput, from metrics/sample_<variant>.json

The work is :func:`pipeline.metrics.evaluation.evaluate`.

Usage: ``python -m pipeline.stages.evaluate base|control|permuted|kamig|real|recon`` (or under
``accelerate launch``).
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline import layout
from pipeline.config import Config
from pipeline.files import write_json
from pipeline.launch import shared_stage
from pipeline.metrics.evaluation import evaluate
from pipeline.runtime import stage_main


def run(cfg: Config, name: str) -> None:
    with shared_stage() as state:
        metrics = evaluate(cfg, name, state)
        if state.is_main_process:
            write_json(layout.eval_metrics(name), metrics)


def main(argv: Sequence[str] | None = None) -> None:
    stage_main("evaluate", run, outputs=lambda name: [layout.eval_metrics(name)],
               variants=[*layout.GENERATOR_VARIANTS, *layout.FLOORS], argv=argv,
               display=lambda name: f"evaluate_{name}" if name in layout.FLOORS else f"evaluate@{name}")


if __name__ == "__main__":
    main()
