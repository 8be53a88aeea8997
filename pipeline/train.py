"""The training loop shared by ``train_base`` and ``finetune``: masked-token training with accelerate.

What one optimiser step does (``train.batch_size`` images, the *global* batch):

1. take the next ``batch_size`` images of the sample order (a fresh permutation per epoch);
2. mask each image at a ratio drawn from ``train.mask_schedule`` (at least one token), replace
   its label by the null class with probability ``train.p_uncond`` (classifier-free guidance);
3. cross-entropy with label smoothing on the masked tokens, accumulated over ``grad_accum``
   micro-batches; clip, AdamW step, learning rate from warmup + cosine/constant;
4. update the EMA weights (the ones that are saved and sample).

Determinism and resume. Everything random is derived from ``(seed, stream, step)`` instead of
from RNG state carried along: the sample order of epoch e, the mask ratios and positions and the
label dropout of step s, and the dropout RNG (re-seeded before every micro-batch). A run resumed
from a checkpoint therefore replays exactly what an uninterrupted run does, and the whole global
batch is drawn the same way whatever the number of processes. ``accelerator.save_state`` writes a
checkpoint every ``train.checkpoint_every`` steps into ``checkpoints/<variant>/step-NNNNNNNN``
(written under a temporary name, then renamed, so a kill mid-save leaves the previous one
intact). A checkpoint directory made for other params or inputs (``run.json`` fingerprint) is
discarded rather than resumed.

Scaling out. The loop is plain accelerate, so the same stage runs on several GPUs or nodes::

    accelerate launch --multi_gpu --num_processes 8 -m pipeline.stages.train_base
    accelerate launch --num_machines 2 --machine_rank R --main_process_ip HOST \\
        --num_processes 16 -m pipeline.stages.finetune kamig

``train.batch_size`` stays the global batch (split over processes and ``grad_accum``; it must be
divisible by their product), so the optimisation is the same on 1 or 16 GPUs. The checkpoint
directory must be on a filesystem all nodes share. Mixed precision ``auto`` is bf16 on GPUs that
support it and full precision on CPU.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.config import Config
from pipeline.ema import EMA
from pipeline.errors import PipelineError
from pipeline.model.transformer import MaskGIT, count_parameters
from pipeline.schedules import sample_train_mask_ratio
from pipeline.shards import TokenSplit

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step-"
RUN_FILE = "run.json"


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    """Everything the loop needs; built from ``train.*`` (and ``kamig.*`` for fine-tuning)."""

    seed: int
    stream: str  # salts the data order and per-step randomness: "base" or "finetune"
    steps: int
    batch_size: int  # global, per optimiser step
    lr: float
    warmup_steps: int
    grad_accum: int = 1
    weight_decay: float = 0.05
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float = 1.0
    mask_schedule: Literal["cosine", "beta"] = "cosine"
    mask_beta: tuple[float, float] = (12.0, 3.0)
    label_smoothing: float = 0.1
    p_uncond: float = 0.1
    ema_decay: float = 0.999
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    checkpoint_every: int = 250
    log_every: int = 25
    val_images: int = 2000

    @classmethod
    def from_config(cls, cfg: Config, stage: Literal["base", "finetune"]) -> TrainSettings:
        t = cfg.train
        if stage == "base":
            steps, lr, warmup = t.steps, t.lr, t.warmup_steps
        else:  # control and kamig: identical schedule, so the only difference is fusion.weight
            steps, lr, warmup = cfg.kamig.steps, cfg.kamig.lr, cfg.kamig.warmup_steps
        return cls(
            seed=cfg.seed, stream=stage, steps=steps, batch_size=t.batch_size, lr=lr,
            warmup_steps=warmup, grad_accum=t.grad_accum, weight_decay=t.weight_decay,
            lr_schedule=t.lr_schedule, grad_clip=t.grad_clip, mask_schedule=t.mask_schedule,
            mask_beta=tuple(t.mask_beta), label_smoothing=t.label_smoothing, p_uncond=t.p_uncond,
            ema_decay=t.ema_decay, mixed_precision=t.mixed_precision,
            checkpoint_every=t.checkpoint_every, log_every=t.log_every, val_images=t.val_images,
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mask_beta": list(self.mask_beta)}

    def resume_key(self) -> dict[str, Any]:
        """The settings a checkpoint depends on (not checkpoint_every or val_images: they do not
        change the weights, so changing them must not throw finished training away)."""
        key = self.to_dict()
        del key["checkpoint_every"], key["val_images"]
        return key


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts, stable across processes, platforms and Python versions."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def learning_rate(settings: TrainSettings, step: int) -> float:
    """Linear warmup over ``warmup_steps``, then constant or cosine decay to 0 at ``steps``."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    if settings.lr_schedule == "constant":
        return settings.lr
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def resolve_mixed_precision(setting: str) -> str:
    cuda = torch.cuda.is_available()
    if setting == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if setting == "fp16" and not cuda:
        raise PipelineError("train.mixed_precision 'fp16' needs a CUDA GPU; use 'auto', 'no' or 'bf16'")
    return setting


# --------------------------------------------------------------------------------------------
# Data order and masking, derived from (seed, stream, step)
# --------------------------------------------------------------------------------------------


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
    settings: TrainSettings, step: int, order: SampleOrder, tokens: torch.Tensor, labels: torch.Tensor,
    mask_id: int, null_class: int,
) -> MaskedBatch:
    """The global batch of optimiser step ``step`` (a pure function of its arguments)."""
    idx = order.indices(step * settings.batch_size, settings.batch_size)
    generator = torch.Generator().manual_seed(derive_seed(settings.seed, settings.stream, "step", step))
    return mask_batch(
        tokens[idx].long(), labels[idx].long(), generator, mask_schedule=settings.mask_schedule,
        mask_beta=settings.mask_beta, p_uncond=settings.p_uncond, mask_id=mask_id, null_class=null_class,
    )


def masked_loss(
    logits: torch.Tensor, batch: MaskedBatch, label_smoothing: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean cross-entropy over masked tokens, number of correct argmax predictions, masked count)."""
    picked = logits[batch.mask].float()
    targets = batch.targets[batch.mask]
    loss = F.cross_entropy(picked, targets, label_smoothing=label_smoothing)
    correct = (picked.argmax(dim=-1) == targets).sum()
    return loss, correct, targets.new_tensor(targets.numel())


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_masked(
    model: MaskGIT, split: TokenSplit, settings: TrainSettings, device: torch.device | str = "cpu",
    batch_size: int = 250,
) -> dict[str, float]:
    """Plain cross-entropy (no smoothing) and accuracy on masked val tokens, with true labels.

    Masks depend only on the seed and the batch index, so every variant sees the same val masks.
    """
    model.eval()
    n = min(len(split), settings.val_images)
    tokens = torch.from_numpy(split.tokens[:n].astype(np.int64))
    labels = torch.from_numpy(split.labels[:n].astype(np.int64))
    total_loss, correct, count = 0.0, 0, 0
    for i, start in enumerate(range(0, n, batch_size)):
        generator = torch.Generator().manual_seed(derive_seed(settings.seed, "val", i))
        batch = mask_batch(
            tokens[start:start + batch_size], labels[start:start + batch_size], generator,
            mask_schedule=settings.mask_schedule, mask_beta=settings.mask_beta, p_uncond=0.0,
            mask_id=model.mask_id, null_class=model.null_class,
        ).to(torch.device(device))
        logits = model(batch.inputs, batch.labels)
        picked = logits[batch.mask].float()
        targets = batch.targets[batch.mask]
        total_loss += float(F.cross_entropy(picked, targets, reduction="sum"))
        correct += int((picked.argmax(-1) == targets).sum())
        count += targets.numel()
    return {"val_loss": total_loss / max(count, 1), "val_masked_accuracy": correct / max(count, 1)}


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


@dataclass
class TrainProgress:
    """Checkpointed loop state besides model/optimiser/EMA: step, logged rows, throughput."""

    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0
    # Sums since the last logged row (loss * n, correct, n) over all processes, so a checkpoint
    # between two log steps resumes the same logged averages.
    window: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.history = int(state["step"]), list(state["history"])
        self.seconds, self.tokens = float(state["seconds"]), int(state["tokens"])
        self.window = [float(v) for v in state["window"]]


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (renamed into place), oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        suffix = path.name[len(CHECKPOINT_PREFIX):]
        if path.is_dir() and path.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit():
            found.append((int(suffix), path))
    return sorted(found)


def prepare_checkpoint_dir(directory: Path, fingerprint: dict[str, Any]) -> None:
    """Keep the checkpoints only if they were made by the same run definition; clear leftovers."""
    directory.mkdir(parents=True, exist_ok=True)
    for leftover in directory.glob(".*"):  # a checkpoint being written when the run was killed
        _remove(leftover)
    # Compare in JSON form: the fingerprint holds tuples (shard digests, graph names) that come
    # back from run.json as lists, and (1, 2) != [1, 2] would discard every checkpoint.
    text = json.dumps(fingerprint, indent=2, sort_keys=True) + "\n"
    run_file = directory / RUN_FILE
    if run_file.is_file() and json.loads(run_file.read_text()) == json.loads(text):
        return
    for path in directory.iterdir():
        log.info("discarding %s: made for other params or inputs", path)
        _remove(path)
    tmp = directory / f".{RUN_FILE}.tmp"
    tmp.write_text(text)
    os.replace(tmp, run_file)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def file_digest(path: str | Path) -> str:
    """sha256 of a file, streamed (used to fingerprint the inputs a checkpoint was made from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    model: MaskGIT  # EMA weights, eval mode, on CPU
    metrics: dict[str, float]


def _param_groups(named: list[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    # Decay matrices (and embedding tables); never biases, norms or the fusion-free scalars.
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _open_live(live_dir: Path) -> Any:
    """DVCLive logger writing only inside ``live_dir`` (the lead's dvc.yaml declares the plots).

    DVCLive looks for the DVC repository around the working directory, and when it finds a git
    repository *without* DVC it runs ``dvc init`` there (and stages it in git). Refuse instead:
    the stages run from the DVC project root, tests from a temporary directory outside git.
    """
    here = Path.cwd().resolve()
    for directory in (here, *here.parents):
        if (directory / ".dvc").is_dir():
            break
        if (directory / ".git").exists():
            raise PipelineError(
                f"{directory} is a git repository without DVC: DVCLive would run `dvc init` there. "
                "Run the stage from the DVC project root (dvc repro)."
            )
    from dvclive import Live

    try:
        return Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False)
    except Exception as exc:  # e.g. a git repository without any commit
        raise PipelineError(f"DVCLive cannot log to {live_dir}: {exc}") from exc


def _log_row(live: Any, row: dict[str, float]) -> None:
    live.step = int(row["step"])
    for key in ("loss", "masked_accuracy", "lr"):
        live.log_metric(f"train/{key}", row[key])
    live.next_step()


def train_generator(
    model: MaskGIT,
    settings: TrainSettings,
    train_split: TokenSplit,
    val_split: TokenSplit | None,
    *,
    checkpoint_dir: str | Path,
    fingerprint: dict[str, Any],
    trainable: Iterable[str] | None = None,
    live_dir: str | Path | None = None,
    desc: str = "train",
    stop_after: int | None = None,
) -> TrainResult | None:
    """Train ``model`` (resuming from ``checkpoint_dir`` when it holds a matching checkpoint).

    ``trainable`` names the parameters to train (None: all). ``fingerprint`` identifies the run
    (params, inputs); checkpoints made under another fingerprint are discarded. ``stop_after``
    stops after that many completed steps *without* finishing, like an interruption, and
    returns None (tests). Every process gets the result; only the main process should write
    outputs (``accelerate.PartialState().is_main_process``).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # The model's buffers (graphs, fusion weight) are constants loaded identically on every rank,
    # and there is no BatchNorm: DDP need not broadcast them (gloo and NCCL cannot send the int16
    # compatible-token buffer anyway).
    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(settings.mixed_precision),
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )
    world, rank = accelerator.num_processes, accelerator.process_index
    per_step = settings.batch_size
    if per_step % (world * settings.grad_accum):
        raise PipelineError(
            f"train.batch_size ({per_step}) must be divisible by processes x train.grad_accum "
            f"({world} x {settings.grad_accum})"
        )
    micro = per_step // (world * settings.grad_accum)
    checkpoint_dir = Path(checkpoint_dir)

    names = set(dict(model.named_parameters())) if trainable is None else set(trainable)
    unknown = names - set(dict(model.named_parameters()))
    if unknown:
        raise ValueError(f"unknown trainable parameters: {sorted(unknown)[:5]}")
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    named_trainable = [(n, p) for n, p in model.named_parameters() if n in names]

    raw_model = model
    optimizer = torch.optim.AdamW(_param_groups(named_trainable, settings.weight_decay), lr=settings.lr,
                                  betas=(0.9, 0.95))
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = EMA(((n, p) for n, p in raw_model.named_parameters() if n in names), settings.ema_decay)
    progress = TrainProgress()
    accelerator.register_for_checkpointing(ema)
    accelerator.register_for_checkpointing(progress)

    if accelerator.is_main_process:
        prepare_checkpoint_dir(checkpoint_dir, fingerprint)
    accelerator.wait_for_everyone()
    existing = list_checkpoints(checkpoint_dir)
    if existing:
        _, path = existing[-1]
        accelerator.load_state(str(path))
        ema.to(accelerator.device)
        log.info("%s: resumed from %s (step %d of %d)", desc, path, progress.step, settings.steps)

    live = None
    if live_dir is not None and accelerator.is_main_process:
        live = _open_live(Path(live_dir))
        for row in progress.history:  # replay what was logged before the interruption
            _log_row(live, row)

    # int32 as loaded (ImageNet with flips: 2.6 GB, not 5.2); batches are widened to int64.
    tokens_all = torch.from_numpy(np.ascontiguousarray(train_split.tokens, dtype=np.int32))
    labels_all = torch.from_numpy(np.ascontiguousarray(train_split.labels, dtype=np.int32))
    order = SampleOrder(len(train_split), settings.seed, settings.stream)
    seq_len = tokens_all.shape[1]
    window = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # loss*n, correct, n
    if accelerator.is_main_process:  # the other processes' shares were summed into it
        window += torch.tensor(progress.window, dtype=torch.float64, device=accelerator.device)

    def save_checkpoint() -> None:
        progress.window = accelerator.reduce(window.clone(), reduction="sum").tolist()
        tmp = checkpoint_dir / f".tmp-{checkpoint_name(progress.step)}"
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            final = checkpoint_dir / checkpoint_name(progress.step)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for _, old in list_checkpoints(checkpoint_dir)[:-1]:
                shutil.rmtree(old)  # keep only the newest complete checkpoint
        accelerator.wait_for_everyone()

    bar = tqdm(total=settings.steps, initial=progress.step, desc=desc, unit="step",
               disable=not accelerator.is_main_process, dynamic_ncols=True)
    model.train()
    while progress.step < settings.steps:
        step = progress.step
        started = time.perf_counter()
        lr = learning_rate(settings, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = step_batch(
            settings, step, order, tokens_all, labels_all, raw_model.mask_id, raw_model.null_class
        )
        for k in range(settings.grad_accum):
            # This process's share of micro-batch k; the global batch is the same for any world size.
            start = (k * world + rank) * micro
            part = batch.slice(start, start + micro).to(accelerator.device)
            torch.manual_seed(derive_seed(settings.seed, settings.stream, "dropout", step, k, rank))
            sync = contextlib.nullcontext() if k == settings.grad_accum - 1 else accelerator.no_sync(model)
            with sync:
                logits = model(part.inputs, part.labels)
                loss, correct, count = masked_loss(logits, part, settings.label_smoothing)
                accelerator.backward(loss / settings.grad_accum)
            window += torch.stack([loss.detach().double() * count, correct.double(), count.double()])
        accelerator.clip_grad_norm_([p for _, p in named_trainable], settings.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(named_trainable)
        progress.step = step + 1
        progress.seconds += time.perf_counter() - started
        progress.tokens += per_step * seq_len
        bar.update(1)

        if progress.step % settings.log_every == 0 or progress.step == settings.steps:
            totals = accelerator.reduce(window, reduction="sum").tolist()
            window.zero_()
            row = {
                "step": progress.step,
                "loss": totals[0] / max(totals[2], 1.0),
                "masked_accuracy": totals[1] / max(totals[2], 1.0),
                "lr": lr,
            }
            progress.history.append(row)
            if live is not None:
                _log_row(live, row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.2e}",
                            tok_s=f"{progress.tokens / max(progress.seconds, 1e-9):.0f}")
        if progress.step % settings.checkpoint_every == 0 or progress.step == settings.steps:
            save_checkpoint()
        if stop_after is not None and progress.step >= stop_after and progress.step < settings.steps:
            bar.close()
            if live is not None:
                live.end()
            return None
    bar.close()
    if live is not None:
        live.end()

    # The result: the EMA weights in a copy of the plain (unwrapped, no autocast wrapper) model.
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    final = copy.deepcopy(unwrapped)
    ema.copy_to(final)
    final.requires_grad_(True)
    final.eval()
    metrics: dict[str, float] = {
        "loss": progress.history[-1]["loss"] if progress.history else float("nan"),
        "params": count_parameters(final),
        "adapter_params": count_parameters(final.adapter),
        "trainable_params": sum(p.numel() for _, p in named_trainable),
        "tokens_per_s": progress.tokens / max(progress.seconds, 1e-9),
    }
    if val_split is not None and accelerator.is_main_process:
        metrics.update(evaluate_masked(final, val_split, settings, accelerator.device,
                                       batch_size=max(1, min(settings.batch_size, 500))))
    accelerator.wait_for_everyone()
    return TrainResult(model=final.cpu(), metrics=metrics)
