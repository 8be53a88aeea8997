"""Exponential moving average (EMA) of model weights: the weights that are saved and sample.

``shadow <- d * shadow + (1 - d) * param`` after every optimiser step, with the usual warm-up
``d_t = min(decay, (1 + t) / (10 + t))`` so that early, random weights are forgotten quickly
instead of dominating a short run's average (2000 steps at decay 0.999 would otherwise still
carry 13% of the initialisation). ``warmup=False`` uses ``decay`` from step 0, as the official
KA-MIG recipe does (0.9999 over 1500 steps: the EMA copy keeps 0.9999^1500 = 86% of the initial
weights, spec §2.1).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class EMA:
    """EMA of named parameters; accelerate checkpoints it through ``state_dict``/``load_state_dict``."""

    def __init__(
        self, named_parameters: Iterable[tuple[str, nn.Parameter]], decay: float, warmup: bool = True
    ):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        # float32 copies: a bf16 average would lose the small (1 - d) increments entirely.
        self.shadow = {name: p.detach().clone().float() for name, p in named_parameters}

    def decay_at(self, updates: int) -> float:
        return min(self.decay, (1 + updates) / (10 + updates)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, named_parameters: Iterable[tuple[str, nn.Parameter]]) -> None:
        weight = 1.0 - self.decay_at(self.updates)
        params = dict(named_parameters)
        names = list(self.shadow)
        torch._foreach_lerp_(
            [self.shadow[n] for n in names], [params[n].detach().float() for n in names], weight
        )
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Overwrite the module's parameters of the same names with the averaged values."""
        params = dict(module.named_parameters())
        for name, value in self.shadow.items():
            params[name].copy_(value)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("EMA checkpoint holds different parameters than the model being trained")
        self.decay = state["decay"]
        self.updates = state["updates"]
        for name, value in state["shadow"].items():
            self.shadow[name] = value.to(self.shadow[name].device, torch.float32)

    def to(self, device: torch.device | str) -> EMA:
        self.shadow = {name: value.to(device) for name, value in self.shadow.items()}
        return self
