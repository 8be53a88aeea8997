"""The one small interface between a backbone and a knowledge adapter.

A backbone (:class:`~pipeline.model.transformer.MaskGIT`, :class:`~pipeline.model.uvit.UViT`) calls
its adapter once per forward::

    inject = adapter(tokens, labels, token_embeddings)   # None: the adapter adds nothing
    x = x + inject(point)                                 # before each injection point

where ``inject(point)`` is the (B, L + 1, dim) vector added to the residual stream (the class slot
included) before injection point ``point``. Which block gets which point is the backbone's business
(spec §2.3 for the U-ViT). Two adapters implement it: this pipeline's design
(:mod:`pipeline.model.knowledge`, ``fusion.adapter: pipeline``) and the published KA-MIG graph
layer (:mod:`pipeline.model.official`, ``fusion.adapter: official``).

This module imports nothing from the graph code, so the backbones (and ``train_base``, which
builds a backbone without an adapter) do not depend on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

Inject = Callable[[int], torch.Tensor]


class Adapter(nn.Module):
    """What every knowledge adapter provides; the backbones rely on nothing else."""

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, embeddings: torch.Tensor) -> Inject | None:
        """``tokens`` (B, L) with the mask id, ``labels`` (B,), ``embeddings`` the (V, dim) codebook
        rows of the backbone's token table -> ``inject(point)``, or None when it adds nothing."""
        raise NotImplementedError

    def precompute(self, embeddings: torch.Tensor) -> bool:
        """Build inference tables from the final weights (sampling); False when none were built."""
        return False

    def release_precomputed(self) -> None:
        """Drop the tables built by :meth:`precompute`."""

    def config_dict(self) -> dict[str, Any]:
        """The ``adapter`` entry of a saved model's ``config.json``: how to rebuild this adapter."""
        raise NotImplementedError


class AdapterHost:
    """What every backbone that can carry an :class:`Adapter` shares (MaskGIT, U-ViT).

    ``head_prefix`` names the output head's own parameters, which fine-tuning trains with the
    adapter while the backbone stays frozen (the tied token table is not among them: it is the
    backbone's input and the adapter's node features).
    """

    adapter: Adapter | None
    head_prefix: str
    token_embeddings: torch.Tensor  # (V, dim): the codebook rows of the token table

    def precompute(self) -> None:
        """Freeze the adapter's inference tables from the current weights (sampling)."""
        if self.adapter is not None:
            self.adapter.precompute(self.token_embeddings)

    def release_precomputed(self) -> None:
        if self.adapter is not None:
            self.adapter.release_precomputed()

    @staticmethod
    def grid_rows(x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """The grid positions' rows of ``x`` (B, L + 1, dim), the class slot first: all L of them,
        or (B, M, dim) at ``positions`` (B, M). The sampler asks only for its masked positions, so
        the head, the largest per-position cost after the blocks, skips the decoded ones."""
        if positions is None:
            return x[:, 1:]
        return x.gather(1, (positions + 1).unsqueeze(-1).expand(-1, -1, x.shape[-1]))
