"""Cross-field checks: what a single field's type cannot express. They run once every field of a
:class:`pipeline.config.schema.Config` is valid, and raise :class:`ConfigError` naming the keys."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import layout
from pipeline.config.messages import ConfigError

if TYPE_CHECKING:
    from pipeline.config.schema import Config, FusionConfig


# --------------------------------------------------------------------------------------------
# Cross-field checks: things a single field's type cannot express.
# --------------------------------------------------------------------------------------------


def check_consistency(cfg: Config) -> None:
    if cfg.model.dim % cfg.model.heads:
        raise ConfigError(
            f"model.dim ({cfg.model.dim}) must be divisible by model.heads ({cfg.model.heads})"
        )
    if cfg.data.source == "imagefolder" and not cfg.data.root:
        raise ConfigError("data.root must name the image folder when data.source is 'imagefolder'")
    if cfg.data.source == "synthetic" and (cfg.data.max_train is None or cfg.data.max_val is None):
        raise ConfigError("data.source 'synthetic' needs data.max_train and data.max_val (dataset sizes)")
    if cfg.tokenizer.kind == "pretrained" and not cfg.tokenizer.checkpoint:
        raise ConfigError("tokenizer.checkpoint must be set when tokenizer.kind is 'pretrained'")
    if cfg.tokenizer.kind == "train" and cfg.data.image_size % (2**cfg.tokenizer.downsamples):
        raise ConfigError(
            f"data.image_size ({cfg.data.image_size}) must be divisible by "
            f"2**tokenizer.downsamples ({2**cfg.tokenizer.downsamples})"
        )
    if cfg.fusion.adapter == "official":
        check_official_fusion(cfg.fusion)
    if len(set(cfg.fusion.graphs)) != len(cfg.fusion.graphs):
        raise ConfigError(f"fusion.graphs lists a graph twice: {list(cfg.fusion.graphs)}")
    for section in ("train", "kamig"):
        recipe = getattr(cfg, section)
        a, b = recipe.mask_beta
        if a <= 0 or b <= 0:
            raise ConfigError(f"{section}.mask_beta must be two positive numbers (a, b), got {[a, b]}")
        if any(not 0.0 <= beta < 1.0 for beta in recipe.betas):
            raise ConfigError(f"{section}.betas must be two numbers in [0, 1), got {list(recipe.betas)}")
    if cfg.model.arch == "uvit" and cfg.model.depth % 2:
        raise ConfigError(f"model.depth ({cfg.model.depth}) must be even for the uvit: in- plus out-blocks")
    if cfg.train.init == "checkpoint":
        if cfg.model.arch != "uvit":
            raise ConfigError("train.init 'checkpoint' imports AutoNAT weights: set model.arch to 'uvit'")
        check_inside("train.checkpoint", cfg.train.checkpoint, layout.AUTONAT_DIR, "train_base")
    if cfg.kamig.init == "checkpoint":
        if cfg.model.arch != "uvit" or cfg.fusion.adapter != "official":
            raise ConfigError("kamig.init 'checkpoint' imports the released KA-MIG model (an AutoNAT U-ViT "
                              "with the official graph layer): set model.arch to 'uvit' and fusion.adapter "
                              "to 'official'")
        if set(cfg.fusion.graphs) != {"cooccurrence", "similarity", "incompatibility"}:
            raise ConfigError("kamig.init 'checkpoint': the released model uses every graph; fusion.graphs "
                              f"must list all three, got {list(cfg.fusion.graphs)}")
        check_inside("kamig.checkpoint", cfg.kamig.checkpoint, layout.KAMIG_RELEASE_DIR, "finetune@kamig")


def check_inside(key: str, value: str | None, folder: Path, stage: str) -> None:
    """``value`` must name a file inside ``folder``, the folder ``stage`` depends on in dvc.yaml."""
    path = Path(value or "")
    if path.parts[: len(folder.parts)] != folder.parts or len(path.parts) <= len(folder.parts) \
            or ".." in path.parts:
        raise ConfigError(f"{key} must name a file inside {folder}/ (the folder {stage} depends on, so a "
                          f"new file re-runs it), got {value!r}")


# What the official code fixes (KA configs/GraphNAT_L.yaml, libs/graph_layer.py): in official mode
# these params may not differ, so that "official" always means the published layer.
OFFICIAL_FUSION = {"weight": 1.0, "null_negative": "zero", "negative_at": "all", "gcn_layers": 3}


def check_official_fusion(fusion: FusionConfig) -> None:
    for key, fixed in OFFICIAL_FUSION.items():
        value = getattr(fusion, key)
        if value != fixed:
            raise ConfigError(
                f"fusion.{key} is {value!r}, but fusion.adapter 'official' fixes it to {fixed!r} (the "
                f"published layer has no such option): set fusion.{key}: {fixed!r} or "
                "fusion.adapter: 'pipeline'"
            )
