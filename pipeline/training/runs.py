"""The training runs of the DAG, from params to a trained model: ``train_base`` here, and the
fine-tunes in :mod:`pipeline.training.finetune` (which need the graph code; this module does not).

* :func:`train_base`: the base model (``model.arch``) from scratch on ``data/tokens`` with the
  ``train.*`` recipe, or (``train.init: checkpoint``) imported from published AutoNAT weights. It
  reads ``seed``, ``model.*`` and ``train.*`` only, never ``fusion.*`` or ``kamig.*``, so fine-tuning
  experiments never retrain the baseline.
* :func:`save_result`, shared with the fine-tunes: the model directory and the metrics file.

Every run resumes from ``checkpoints/<variant>/`` when it holds a checkpoint of the same run definition
(its fingerprint: the recipe, the architecture and digests of every input), so ``dvc repro``
after an interruption ends with the same weights as an uninterrupted run. :func:`save_result`
writes ``models/<variant>/`` and ``metrics/train_<variant>.json``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline import layout
from pipeline.config import Config, TrainConfig
from pipeline.errors import PipelineError
from pipeline.files import file_digest, write_json
from pipeline.model.io import build_backbone, save_generator, spec_from_config
from pipeline.model.transformer import MaskGIT, count_parameters
from pipeline.model.uvit import UViT
from pipeline.seeds import derive_seed
from pipeline.shards import TokenMeta, TokenSplit, list_shards, load_split, read_meta
from pipeline.training.loop import TrainResult, TrainRun, evaluate_masked, train_generator

log = logging.getLogger(__name__)

BASE_STREAM = "base"


@dataclass(frozen=True)
class TokenData:
    meta: TokenMeta
    train: TokenSplit
    val: TokenSplit


def load_token_splits(val_images: int, tokens_dir: Path = layout.TOKENS_DIR) -> TokenData:
    """The token meta, the whole train split, and the first ``val_images`` val images."""
    return TokenData(read_meta(tokens_dir), load_split(tokens_dir / "train"),
                     load_split(tokens_dir / "val", limit=val_images))


def resume_key(recipe: TrainConfig, seed: int, stream: str) -> dict[str, Any]:
    """What a checkpoint depends on: not checkpoint_every or val_images, which change no weight."""
    key = {"seed": seed, "stream": stream, **recipe.to_dict()}
    del key["checkpoint_every"], key["val_images"]
    return key


def split_digest(split_dir: Path) -> list[tuple[str, str]]:
    return [(path.name, file_digest(path)) for path in list_shards(split_dir)]


def train_base(cfg: Config) -> TrainResult:
    data = load_token_splits(cfg.train.val_images)
    meta = data.meta
    if cfg.train.init == "checkpoint":
        return import_base(cfg, data)
    spec = spec_from_config(cfg.model, meta.codebook_size, meta.num_classes, meta.seq_len)
    torch.manual_seed(derive_seed(cfg.seed, "init", layout.BASE))
    model = build_backbone(spec)
    run = TrainRun(
        recipe=cfg.train, seed=cfg.seed, stream=BASE_STREAM,
        checkpoint_dir=layout.checkpoint_dir(layout.BASE), live_dir=layout.live_dir(layout.BASE),
        desc=layout.BASE,
        fingerprint={
            "stage": "train_base",
            "settings": resume_key(cfg.train, cfg.seed, BASE_STREAM),
            "architecture": spec.to_dict(),
            "tokens": asdict(meta),
            "train_shards": split_digest(layout.TOKENS_DIR / "train"),
        },
    )
    return dataclasses.replace(train_generator(model, run, data.train, data.val), token_meta=meta)


def import_base(cfg: Config, data: TokenData) -> TrainResult:
    """The base model from published weights (``train.init: checkpoint``): no training, a check
    that they fit the tokens, and the same masked validation as a trained base."""
    from pipeline.model.autonat import import_autonat

    model = import_autonat(cfg.train.checkpoint, heads=cfg.model.heads)
    return imported_result(model, cfg.train.checkpoint, data, cfg.train, cfg.seed)


def imported_result(model: MaskGIT | UViT, source: str | Path, data: TokenData, recipe: TrainConfig,
                    seed: int) -> TrainResult:
    """An imported model as a run's result: a check that it fits the tokens, and the same masked
    validation (``recipe``'s val images, ``seed``'s masks) as a trained one."""
    from accelerate import PartialState

    meta = data.meta
    found = (model.codebook_size, model.num_classes, model.seq_len)
    if found != (meta.codebook_size, meta.num_classes, meta.seq_len):
        raise PipelineError(
            f"{source} has (codebook, classes, positions) {found}, but data/tokens has "
            f"{(meta.codebook_size, meta.num_classes, meta.seq_len)}: the weights belong to other tokens"
        )
    state = PartialState()
    metrics: dict[str, float] = {"params": count_parameters(model),
                                 "adapter_params": count_parameters(model.adapter), "trainable_params": 0}
    if state.is_main_process:
        metrics.update(evaluate_masked(model.to(state.device), data.val, recipe, seed, state.device,
                                       batch_size=max(1, min(recipe.batch_size, 500))))
    log.info("imported %s (%d parameters)", source, metrics["params"])
    return TrainResult(model=model.cpu().eval(), metrics=metrics, is_main_process=state.is_main_process,
                       token_meta=meta)


def save_result(result: TrainResult, variant: str) -> None:
    """Write ``models/<variant>/`` (EMA weights + config.json) and ``metrics/train_<variant>.json``."""
    assert result.token_meta is not None
    save_generator(result.model, layout.model_dir(variant), variant=variant, token_meta=result.token_meta)
    write_json(layout.train_metrics(variant), result.metrics)
    # An imported model trains nothing, but DVC needs every declared output to exist.
    for directory in (layout.checkpoint_dir(variant), layout.live_dir(variant)):
        directory.mkdir(parents=True, exist_ok=True)
    log.info("%s: %s", variant, ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items())))
