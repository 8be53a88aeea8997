"""Stage ``finetune@{control,permuted,kamig}``: the fair comparison, built into the DAG.

The three variants start from the EMA weights of ``models/base`` and train for ``kamig.steps`` on
the same data order: ``control`` the output head alone, with no adapter (it reads no ``fusion.*``
param); ``permuted`` the head and the knowledge adapter (``fusion.adapter``) over permuted graphs
(the null control); ``kamig`` the head and the same adapter over the graphs. So
``dvc exp run -S fusion.weight=0.5`` or a graph ablation re-runs ``finetune@kamig`` and
``finetune@permuted`` only. With ``kamig.init: checkpoint``, ``finetune@kamig`` imports the released
KA-MIG model instead of training. Writes ``models/<variant>/``,
``metrics/train_<variant>.json`` and ``metrics/live/train_<variant>/``; checkpoints in
``checkpoints/<variant>/`` (persist). The work is :func:`pipeline.training.finetune.finetune`.

Usage: ``python -m pipeline.stages.finetune control|permuted|kamig``.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline import layout
from pipeline.config import Config
from pipeline.runtime import stage_main
from pipeline.training.finetune import finetune
from pipeline.training.runs import save_result


def run(cfg: Config, variant: str) -> None:
    result = finetune(cfg, variant)
    if result.is_main_process:
        save_result(result, variant)


def main(argv: Sequence[str] | None = None) -> None:
    stage_main("finetune", run, outputs=layout.training_outputs, variants=layout.FINETUNE_VARIANTS, argv=argv)


if __name__ == "__main__":
    main()
