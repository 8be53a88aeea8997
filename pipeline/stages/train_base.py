"""Stage ``train_base``: the MaskGIT baseline, trained from scratch on the token shards.

Reads ``data/tokens`` and the params ``seed``, ``model.*`` and ``train.*`` - never ``fusion.*`` or
``kamig.*``, so fine-tuning experiments never retrain the baseline. Writes ``models/base/`` (EMA
weights + config.json), ``metrics/train_base.json`` and DVCLive curves in
``metrics/live/train_base/``. Checkpoints go to ``checkpoints/base/`` (a ``persist: true`` output):
after an interruption, ``dvc repro`` resumes from the newest one and ends with the same weights
as an uninterrupted run.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from pipeline.config import Config
from pipeline.files import write_json
from pipeline.model import GeneratorSpec, MaskGIT, save_generator
from pipeline.shards import TokenMeta, TokenSplit, list_shards, load_split, read_meta
from pipeline.train import TrainResult, TrainSettings, derive_seed, file_digest, train_generator

log = logging.getLogger(__name__)

TOKENS_DIR = Path("data/tokens")
MODELS_DIR = Path("models")
CHECKPOINTS_DIR = Path("checkpoints")
METRICS_DIR = Path("metrics")


def load_token_splits(cfg: Config) -> tuple[TokenMeta, TokenSplit, TokenSplit]:
    """The token meta, the whole train split, and the first ``train.val_images`` val images."""
    meta = read_meta(TOKENS_DIR)
    train = load_split(TOKENS_DIR / "train")
    val = load_split(TOKENS_DIR / "val", limit=cfg.train.val_images)
    return meta, train, val


def split_digest(split_dir: Path) -> list[tuple[str, str]]:
    return [(path.name, file_digest(path)) for path in list_shards(split_dir)]


def run_and_save(
    cfg: Config,
    variant: str,
    model: MaskGIT,
    settings: TrainSettings,
    splits: tuple[TokenMeta, TokenSplit, TokenSplit],
    fingerprint: dict[str, Any],
    trainable: list[str] | None = None,
) -> TrainResult:
    """Train (resuming if possible), then write models/<variant> and metrics/train_<variant>.json."""
    from accelerate import PartialState

    meta, train, val = splits
    result = train_generator(
        model, settings, train, val,
        checkpoint_dir=CHECKPOINTS_DIR / variant,
        fingerprint=fingerprint,
        trainable=trainable,
        live_dir=METRICS_DIR / "live" / f"train_{variant}",
        desc=variant,
    )
    assert result is not None  # only a stop_after run returns None
    if PartialState().is_main_process:
        save_generator(result.model, MODELS_DIR / variant, variant=variant, token_meta=meta)
        write_json(METRICS_DIR / f"train_{variant}.json", result.metrics)
        log.info("%s: %s", variant, ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items())))
    return result


def body(cfg: Config) -> None:
    splits = load_token_splits(cfg)
    meta = splits[0]
    spec = GeneratorSpec(
        codebook_size=meta.codebook_size, num_classes=meta.num_classes, seq_len=meta.seq_len,
        dim=cfg.model.dim, depth=cfg.model.depth, heads=cfg.model.heads, mlp_ratio=cfg.model.mlp_ratio,
        dropout=cfg.model.dropout, tie_head=cfg.model.tie_head,
    )
    torch.manual_seed(derive_seed(cfg.seed, "init", "base"))
    model = MaskGIT(spec)
    settings = TrainSettings.from_config(cfg, "base")
    fingerprint = {
        "stage": "train_base",
        "settings": settings.resume_key(),
        "architecture": spec.to_dict(),
        "tokens": asdict(meta),
        "train_shards": split_digest(TOKENS_DIR / "train"),
    }
    run_and_save(cfg, "base", model, settings, splits, fingerprint)


def stage_outputs(variant: str) -> list[Path]:
    return [MODELS_DIR / variant, CHECKPOINTS_DIR / variant, METRICS_DIR / f"train_{variant}.json",
            METRICS_DIR / "live" / f"train_{variant}"]


def main() -> None:
    from pipeline.stages.common import run_stage

    run_stage("train_base", body, outputs=stage_outputs("base"))


if __name__ == "__main__":
    main()
