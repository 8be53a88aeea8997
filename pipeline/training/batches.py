"""What one optimiser step trains on: the data order, the masks and the masked-token loss.

Everything random is derived from ``(seed, stream, step)`` rather than from RNG state carried
along (:func:`pipeline.seeds.derive_seed`): the sample order of epoch e, the mask ratios and
positions and the label dropout of step s. A run resumed from a checkpoint therefore replays
exactly what an uninterrupted run does, and the global batch is drawn the same way whatever the
number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.config import TrainConfig
from pipeline.schedules import sample_train_mask_ratio
from pipeline.seeds import derive_seed


class SampleOrder:
    """The infinite sample sequence: epoch e is ``randperm(n)`` seeded by (seed, stream, e)."""

    def __init__(self, n: int, seed: int, stream: str):
        self.n, self.seed, self.stream = n, seed, stream
        self._epochs: dict[int, torch.Tensor] = {}

    def _epoch(self, epoch: int) -> torch.Tensor:
        if epoch not in self._epochs:
            if len(self._epochs) > 2:  # only neighbouring epochs are ever needed together
                self._epochs.pop(min(self._epochs))
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.stream, "epoch", epoch))
            self._epochs[epoch] = torch.randperm(self.n, generator=generator)
        return self._epochs[epoch]

    def indices(self, start: int, count: int) -> torch.Tensor:
        """Dataset indices of samples ``start .. start + count - 1`` of the sequence."""
        positions = torch.arange(start, start + count)
        epochs = positions // self.n
        out = torch.empty(count, dtype=torch.int64)
        for epoch in epochs.unique().tolist():
            sel = epochs == epoch
            out[sel] = self._epoch(epoch)[positions[sel] % self.n]
        return out


@dataclass
class MaskedBatch:
    inputs: torch.Tensor  # (B, L) with mask_id at masked positions
    targets: torch.Tensor  # (B, L) the original tokens
    mask: torch.Tensor  # (B, L) bool, True where masked (the loss positions)
    labels: torch.Tensor  # (B,) with null_class where the label was dropped

    def slice(self, start: int, stop: int) -> MaskedBatch:
        return MaskedBatch(self.inputs[start:stop], self.targets[start:stop], self.mask[start:stop],
                           self.labels[start:stop])

    def to(self, device: torch.device) -> MaskedBatch:
        return MaskedBatch(*(t.to(device, non_blocking=True) for t in
                             (self.inputs, self.targets, self.mask, self.labels)))


def mask_batch(
    tokens: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    *,
    mask_schedule: str,
    mask_beta: tuple[float, float],
    p_uncond: float,
    mask_id: int,
    null_class: int,
) -> MaskedBatch:
    """Mask ``ceil(ratio * L)`` (at least 1) random positions per image; drop labels for CFG."""
    batch, length = tokens.shape
    ratios = sample_train_mask_ratio(mask_schedule, batch, generator, mask_beta)  # type: ignore[arg-type]
    n_masked = torch.ceil(ratios * length).long().clamp(1, length)
    # The n_masked positions with the smallest random scores: a uniform random subset.
    ranks = torch.rand(batch, length, generator=generator).argsort(dim=1).argsort(dim=1)
    mask = ranks < n_masked[:, None]
    dropped = torch.rand(batch, generator=generator) < p_uncond
    return MaskedBatch(
        inputs=tokens.masked_fill(mask, mask_id),
        targets=tokens,
        mask=mask,
        labels=labels.masked_fill(dropped, null_class),
    )


def step_batch(
    recipe: TrainConfig, seed: int, stream: str, step: int, order: SampleOrder, tokens: torch.Tensor,
    labels: torch.Tensor, mask_id: int, null_class: int,
) -> MaskedBatch:
    """The global batch of optimiser step ``step`` (a pure function of its arguments)."""
    idx = order.indices(step * recipe.batch_size, recipe.batch_size)
    generator = torch.Generator().manual_seed(derive_seed(seed, stream, "step", step))
    return mask_batch(
        tokens[idx].long(), labels[idx].long(), generator, mask_schedule=recipe.mask_schedule,
        mask_beta=tuple(recipe.mask_beta), p_uncond=recipe.p_uncond, mask_id=mask_id,
        null_class=null_class,
    )


def masked_loss(
    logits: torch.Tensor, batch: MaskedBatch, label_smoothing: float, reduction: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cross-entropy over the masked tokens, number of correct argmax predictions, masked count).

    Training takes the label-smoothed mean; validation the plain sum, to average over batches.
    """
    picked = logits[batch.mask].float()
    targets = batch.targets[batch.mask]
    loss = F.cross_entropy(picked, targets, label_smoothing=label_smoothing, reduction=reduction)
    correct = (picked.argmax(dim=-1) == targets).sum()
    return loss, correct, targets.new_tensor(targets.numel())
