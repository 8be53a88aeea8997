"""The optimiser, its learning-rate schedule and the mixed-precision choice of a training run."""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.config import TrainConfig
from pipeline.errors import PipelineError


def configure_optimizer(named: list[tuple[str, nn.Parameter]], recipe: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: matrices and embedding tables decay, the rest does not.

    Biases, LayerNorm weights and other vectors are never decayed: shrinking them towards zero
    only fights the normalisation.
    """
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=tuple(recipe.betas))


def learning_rate(recipe: TrainConfig, step: int) -> float:
    """Linear warmup over ``warmup_steps``, then constant or cosine decay to 0 at ``steps``."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    if recipe.lr_schedule == "constant":
        return recipe.lr
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def resolve_mixed_precision(setting: str) -> str:
    """``auto``: bf16 on CUDA GPUs that support it, full precision elsewhere."""
    cuda = torch.cuda.is_available()
    if setting == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if setting == "fp16" and not cuda:
        raise PipelineError("train.mixed_precision 'fp16' needs a CUDA GPU; use 'auto', 'no' or 'bf16'")
    return setting
