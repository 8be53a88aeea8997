"""The training loop shared by ``train_base`` and ``finetune``: masked-token training with accelerate.

One optimiser step (``recipe.batch_size`` images, the *global* batch): set the learning rate; take
the step's batch (:func:`pipeline.training.batches.step_batch`); accumulate the label-smoothed
masked-token loss over ``grad_accum`` micro-batches; clip (unless ``grad_clip`` is null) and step
AdamW; update the EMA weights
(the ones that are saved and sample); log; checkpoint. The dropout RNG is re-seeded before every
micro-batch from ``(seed, stream, step, micro-batch, rank)``, so a resumed run replays exactly
what an uninterrupted one does.

Scaling out. The loop is plain accelerate, so the same stage runs on several GPUs or nodes::

    accelerate launch --multi_gpu --num_processes 8 -m pipeline.stages.train_base
    accelerate launch --num_machines 2 --machine_rank R --main_process_ip HOST \\
        --num_processes 16 -m pipeline.stages.finetune kamig

``recipe.batch_size`` stays the global batch (split over processes and ``grad_accum``; it must be
divisible by their product), so the optimisation is the same on 1 or 16 GPUs. The checkpoint
directory must be on a filesystem all nodes share.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline.config import TrainConfig
from pipeline.ema import EMA
from pipeline.errors import PipelineError
from pipeline.model.transformer import MaskGIT, count_parameters
from pipeline.progress import progress_bar
from pipeline.seeds import derive_seed
from pipeline.shards import TokenMeta, TokenSplit
from pipeline.training.batches import MaskedBatch, SampleOrder, mask_batch, masked_loss, step_batch
from pipeline.training.checkpoints import Checkpointer, TrainProgress
from pipeline.training.live import LiveLog
from pipeline.training.optim import (
    configure_optimizer,
    learning_rate,
    resolve_mixed_precision,
    set_learning_rate,
)

if TYPE_CHECKING:
    from accelerate import Accelerator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainRun:
    """One training run: its recipe, its random stream and where its state goes."""

    recipe: TrainConfig
    seed: int
    stream: str  # salts the data order and per-step randomness: "base" or "finetune"
    checkpoint_dir: Path
    fingerprint: dict[str, Any]  # the run definition; checkpoints of another one are discarded
    trainable: tuple[str, ...] | None = None  # parameter names to train (None: all)
    live_dir: Path | None = None
    desc: str = "train"


@dataclass
class TrainResult:
    model: MaskGIT  # EMA weights, eval mode, on CPU
    metrics: dict[str, float]
    is_main_process: bool  # only the main process writes outputs
    token_meta: TokenMeta | None = None  # the tokens it was trained on, saved with the model


def train_generator(model: MaskGIT, run: TrainRun, train: TokenSplit, val: TokenSplit | None) -> TrainResult:
    """Train ``model`` as ``run`` says, resuming from its newest matching checkpoint."""
    recipe = run.recipe
    accelerator = make_accelerator(recipe)
    main = accelerator.is_main_process
    micro = micro_batch_size(recipe, accelerator.num_processes)  # fails before any work if it does not split
    named = select_trainable(model, run.trainable)
    raw_model, optimizer = model, configure_optimizer(named, recipe)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema, progress = EMA(named, recipe.ema_decay, warmup=recipe.ema_warmup == "warmup"), TrainProgress()
    checkpoints = resume(accelerator, run, ema, progress)
    live = LiveLog(run.live_dir, replay=progress.history) if run.live_dir is not None and main else None
    # int32 as loaded (ImageNet with flips: 2.6 GB, not 5.2); batches are widened to int64.
    tokens = torch.from_numpy(np.ascontiguousarray(train.tokens, dtype=np.int32))
    labels = torch.from_numpy(np.ascontiguousarray(train.labels, dtype=np.int32))
    order = SampleOrder(len(train), run.seed, run.stream)
    window = LossWindow(accelerator, progress.window if main else None)  # others' shares were summed
    bar = progress_bar(total=recipe.steps, initial=progress.step, desc=run.desc, unit="step",
                       disable=not main)

    model.train()
    while progress.step < recipe.steps:
        step, started = progress.step, time.perf_counter()
        lr = set_learning_rate(optimizer, learning_rate(recipe, step))
        batch = step_batch(recipe, run.seed, run.stream, step, order, tokens, labels, raw_model.mask_id,
                           raw_model.null_class)
        accumulate_gradients(accelerator, model, batch, micro, run, step, window)
        if recipe.grad_clip is not None:
            accelerator.clip_grad_norm_([p for _, p in named], recipe.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(named)
        progress.advance(time.perf_counter() - started, recipe.batch_size * tokens.shape[1])
        bar.update(1)
        log_and_checkpoint(recipe, progress, window, live, bar, lr, checkpoints)
    bar.close()
    if live is not None:
        live.end()
    return finish(accelerator, model, ema, named, progress, run, val)


# --------------------------------------------------------------------------------------------
# The loop's parts
# --------------------------------------------------------------------------------------------


def make_accelerator(recipe: TrainConfig) -> Accelerator:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # The model's buffers (graphs) are constants loaded identically on every rank and there is no
    # BatchNorm: DDP need not broadcast them (gloo and NCCL cannot send the int16 token buffer).
    return Accelerator(mixed_precision=resolve_mixed_precision(recipe.mixed_precision),
                       kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])


def resume(accelerator: Accelerator, run: TrainRun, ema: EMA, progress: TrainProgress) -> Checkpointer:
    """Register the EMA and the progress with the checkpoints, and resume from the newest matching one."""
    accelerator.register_for_checkpointing(ema)
    accelerator.register_for_checkpointing(progress)
    checkpoints = Checkpointer(accelerator, run.checkpoint_dir, run.fingerprint)
    if (resumed := checkpoints.resume()) is not None:
        ema.to(accelerator.device)
        log.info("%s: resumed from %s (step %d of %d)", run.desc, resumed, progress.step, run.recipe.steps)
    return checkpoints


def accumulate_gradients(accelerator: Accelerator, model: torch.nn.Module, batch: MaskedBatch, micro: int,
                         run: TrainRun, step: int, window: LossWindow) -> None:
    """The masked-token loss of this process's share of the step's batch, over ``grad_accum``
    micro-batches of ``micro`` images, backpropagated (gradients synchronised at the last one)."""
    recipe = run.recipe
    world, rank = accelerator.num_processes, accelerator.process_index
    for k in range(recipe.grad_accum):
        start = (k * world + rank) * micro  # this process's share of micro-batch k
        part = batch.slice(start, start + micro).to(accelerator.device)
        torch.manual_seed(derive_seed(run.seed, run.stream, "dropout", step, k, rank))
        last = k == recipe.grad_accum - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            logits = model(part.inputs, part.labels)
            loss, correct, count = masked_loss(logits, part, recipe.label_smoothing)
            accelerator.backward(loss / recipe.grad_accum)
        window.add(loss, correct, count)


def log_and_checkpoint(recipe: TrainConfig, progress: TrainProgress, window: LossWindow, live: LiveLog | None,
                       bar: Any, lr: float, checkpoints: Checkpointer) -> None:
    """Every ``log_every`` steps a row of means (DVCLive, the bar); every ``checkpoint_every`` a
    checkpoint; both at the last step."""
    last = progress.step == recipe.steps
    if progress.step % recipe.log_every == 0 or last:
        row = {"step": progress.step, **window.pop_means(), "lr": lr}
        progress.history.append(row)
        if live is not None:
            live.log(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.2e}", tok_s=f"{progress.tokens_per_s:.0f}",
                        refresh=False)  # shown at the bar's next refresh: no extra log lines
    if progress.step % recipe.checkpoint_every == 0 or last:
        progress.window = window.totals()
        checkpoints.save(progress.step)


def micro_batch_size(recipe: TrainConfig, world: int) -> int:
    """Images per process and micro-batch; the global batch must split evenly."""
    if recipe.batch_size % (world * recipe.grad_accum):
        raise PipelineError(
            f"train.batch_size ({recipe.batch_size}) must be divisible by processes x train.grad_accum "
            f"({world} x {recipe.grad_accum})"
        )
    return recipe.batch_size // (world * recipe.grad_accum)


def select_trainable(
    model: torch.nn.Module, names: tuple[str, ...] | None
) -> list[tuple[str, torch.nn.Parameter]]:
    """Freeze every parameter not in ``names`` (None: train all); the trainable ones, in model order."""
    params = dict(model.named_parameters())
    wanted = set(params) if names is None else set(names)
    unknown = wanted - set(params)
    if unknown:
        raise ValueError(f"unknown trainable parameters: {sorted(unknown)[:5]}")
    for name, param in params.items():
        param.requires_grad_(name in wanted)
    return [(n, p) for n, p in params.items() if n in wanted]


class LossWindow:
    """Sums (loss * n, correct, n) since the last logged row, reduced over the processes when read."""

    def __init__(self, accelerator: Accelerator, restored: list[float] | None):
        self.accelerator = accelerator
        self.sums = torch.zeros(3, dtype=torch.float64, device=accelerator.device)
        if restored is not None:
            self.sums += torch.tensor(restored, dtype=torch.float64, device=accelerator.device)

    def add(self, loss: torch.Tensor, correct: torch.Tensor, count: torch.Tensor) -> None:
        self.sums += torch.stack([loss.detach().double() * count, correct.double(), count.double()])

    def totals(self) -> list[float]:
        return self.accelerator.reduce(self.sums.clone(), reduction="sum").tolist()

    def pop_means(self) -> dict[str, float]:
        """Mean loss and masked accuracy over the window, then start a new window."""
        loss, correct, count = self.accelerator.reduce(self.sums, reduction="sum").tolist()
        self.sums.zero_()
        return {"loss": loss / max(count, 1.0), "masked_accuracy": correct / max(count, 1.0)}


def finish(
    accelerator: Accelerator, model: torch.nn.Module, ema: EMA, named: list[tuple[str, torch.nn.Parameter]],
    progress: TrainProgress, run: TrainRun, val: TokenSplit | None,
) -> TrainResult:
    """The EMA weights in a copy of the plain (unwrapped, no autocast wrapper) model, and its metrics."""
    accelerator.wait_for_everyone()
    final = copy.deepcopy(accelerator.unwrap_model(model, keep_fp32_wrapper=False))
    ema.copy_to(final)
    final.requires_grad_(True)
    final.eval()
    metrics: dict[str, float] = {
        "loss": progress.history[-1]["loss"] if progress.history else float("nan"),
        "params": count_parameters(final),
        "adapter_params": count_parameters(final.adapter),
        "trainable_params": sum(p.numel() for _, p in named),
        "tokens_per_s": progress.tokens_per_s,
    }
    if val is not None and accelerator.is_main_process:
        metrics.update(evaluate_masked(final, val, run.recipe, run.seed, accelerator.device,
                                       batch_size=max(1, min(run.recipe.batch_size, 500))))
    accelerator.wait_for_everyone()
    return TrainResult(model=final.cpu(), metrics=metrics, is_main_process=accelerator.is_main_process)


@torch.no_grad()
def evaluate_masked(
    model: MaskGIT, split: TokenSplit, recipe: TrainConfig, seed: int, device: torch.device | str = "cpu",
    batch_size: int = 250,
) -> dict[str, float]:
    """Plain cross-entropy (no smoothing) and accuracy on masked val tokens, with true labels.

    Masks depend only on the seed and the batch index, so every variant sees the same val masks.
    """
    model.eval()
    model.precompute()
    n = min(len(split), recipe.val_images)
    tokens = torch.from_numpy(split.tokens[:n].astype(np.int64))
    labels = torch.from_numpy(split.labels[:n].astype(np.int64))
    total_loss, correct, count = 0.0, 0, 0
    for i, start in enumerate(range(0, n, batch_size)):
        generator = torch.Generator().manual_seed(derive_seed(seed, "val", i))
        batch = mask_batch(
            tokens[start:start + batch_size], labels[start:start + batch_size], generator,
            mask_schedule=recipe.mask_schedule, mask_beta=tuple(recipe.mask_beta), p_uncond=0.0,
            mask_id=model.mask_id, null_class=model.null_class,
        ).to(torch.device(device))
        loss, hits, masked = masked_loss(model(batch.inputs, batch.labels), batch, 0.0, reduction="sum")
        total_loss += float(loss)
        correct += int(hits)
        count += int(masked)
    model.release_precomputed()
    return {"val_loss": total_loss / max(count, 1), "val_masked_accuracy": correct / max(count, 1)}
