"""Stage ``train_base``: the MaskGIT baseline, trained from scratch on the token shards.

Reads ``data/tokens`` and the params ``seed``, ``model.*`` and ``train.*``; writes ``models/base/``
(EMA weights + config.json), ``metrics/train_base.json`` and DVCLive curves in
``metrics/live/train_base/``. Checkpoints go to ``checkpoints/base/`` (``persist: true``): after an
interruption ``dvc repro`` resumes from the newest one. The work is
:func:`pipeline.training.runs.train_base`.

Usage: ``python -m pipeline.stages.train_base`` (or under ``accelerate launch``).
"""

from __future__ import annotations

from pipeline import layout
from pipeline.config import Config
from pipeline.runtime import stage_main
from pipeline.training.runs import save_result, train_base


def run(cfg: Config) -> None:
    result = train_base(cfg)
    if result.is_main_process:
        save_result(result, layout.BASE)


def main() -> None:
    stage_main("train_base", run, outputs=lambda: layout.training_outputs(layout.BASE))


if __name__ == "__main__":
    main()
