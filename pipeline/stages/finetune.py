"""Stage ``finetune@{control,kamig}``: the fair comparison, built into the DAG.

Both variants start from the EMA weights of ``models/base``, add the same knowledge adapter
(``pipeline.model.knowledge``, graphs from ``data/graphs``), train the same parameters for the
same ``kamig.steps`` on the same data order. The only difference: ``control`` forces
``fusion.weight = 0``, so it gets the extra training without any graph signal, while ``kamig``
uses ``fusion.weight``. Hence ``dvc exp run -S fusion.weight=0.5`` re-runs ``finetune@kamig`` only.

``kamig.freeze_backbone: true`` (the paper) trains the adapter and the output head's own layers;
``false`` trains everything. Outputs: ``models/<variant>/``, ``metrics/train_<variant>.json``,
``metrics/live/train_<variant>/``; checkpoints in ``checkpoints/<variant>/`` (persist).

Usage: ``python -m pipeline.stages.finetune control|kamig``.
"""

from __future__ import annotations

import argparse
import functools
import logging
from dataclasses import asdict
from pathlib import Path

from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.model import AdapterSettings, build_generator, load_generator, load_knowledge_graphs
from pipeline.model.io import WEIGHTS_FILE
from pipeline.model.knowledge import GRAPH_FILES
from pipeline.stages.train_base import (
    MODELS_DIR,
    TOKENS_DIR,
    load_token_splits,
    run_and_save,
    split_digest,
    stage_outputs,
)
from pipeline.train import TrainSettings, file_digest

log = logging.getLogger(__name__)

VARIANTS = ("control", "kamig")
GRAPHS_DIR = Path("data/graphs")


def adapter_settings(cfg: Config, variant: str) -> AdapterSettings:
    if variant not in VARIANTS:
        raise PipelineError(f"unknown fine-tuning variant {variant!r}; choose one of {list(VARIANTS)}")
    return AdapterSettings(
        graphs=tuple(cfg.fusion.graphs),
        negative_at=cfg.fusion.negative_at,
        gcn_layers=cfg.fusion.gcn_layers,
        weight=0.0 if variant == "control" else cfg.fusion.weight,
        min_count=cfg.graphs.incompatibility.min_count,
    )


def body(cfg: Config, variant: str) -> None:
    settings = adapter_settings(cfg, variant)
    splits = load_token_splits(cfg)
    meta = splits[0]
    base_dir = MODELS_DIR / "base"
    base = load_generator(base_dir, expected_meta=meta)
    graphs = load_knowledge_graphs(
        GRAPHS_DIR, codebook_size=meta.codebook_size, num_classes=meta.num_classes,
        seq_len=meta.seq_len, graphs=settings.graphs, min_count=settings.min_count,
    )
    model = build_generator(base.spec, settings, graphs)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    if unexpected or any(not name.startswith("adapter.") for name in missing):
        raise PipelineError(f"{base_dir} does not fit the fine-tuning model: {missing} {unexpected}")

    names = [name for name, _ in model.named_parameters()]
    if cfg.kamig.freeze_backbone:
        trainable = [n for n in names if n.startswith(("adapter.", "head."))]
    else:
        trainable = names
    train_settings = TrainSettings.from_config(cfg, "finetune")
    fingerprint = {
        "stage": f"finetune@{variant}",
        "settings": train_settings.resume_key(),
        "adapter": settings.to_dict(),
        "trainable": trainable,
        "tokens": asdict(meta),
        "train_shards": split_digest(TOKENS_DIR / "train"),
        "base_weights": file_digest(base_dir / WEIGHTS_FILE),
        "graphs": {g: file_digest(GRAPHS_DIR / GRAPH_FILES[g]) for g in settings.graphs},
    }
    run_and_save(cfg, variant, model, train_settings, splits, fingerprint, trainable)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.stages.finetune", description=__doc__.split("\n")[0]
    )
    parser.add_argument("variant", choices=VARIANTS)
    args = parser.parse_args(argv)
    from pipeline.stages.common import run_stage

    run_stage(f"finetune@{args.variant}", functools.partial(body, variant=args.variant),
              outputs=stage_outputs(args.variant))


if __name__ == "__main__":
    main()
