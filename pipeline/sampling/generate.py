"""The sample stage's work: class-balanced samples of one trained variant, across processes.

``sample.per_class`` samples of every class, class-major (all of class 0, then class 1, ...),
decoded in batches of ``sample.batch_size``. Batch ``b`` draws from a generator seeded by
(``sample.seed``, ``b``) (:func:`batch_generator`), so the tokens depend on the ``sample.*``
params and the model only, and a batch's samples do not depend on which batches ran before it.
Under several processes (``accelerate launch`` / ``torchrun``, :mod:`pipeline.launch`) each one
decodes a contiguous block of batches and the main process gathers the blocks in order, so the
samples are byte-identical to a single-process run; the throughput is then the total count over
the slowest process's time.

Outputs (written by the stage through :func:`write_samples`, :func:`sample_grid` and
:func:`throughput`): ``data/samples/<variant>/`` in the token-shard schema (``meta.json`` +
``samples/part-*.parquet``, ``image_id`` = sample index, ``label`` = the requested class), the PNG
grid and the throughput json.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from pipeline import layout
from pipeline.config import Config, SampleConfig
from pipeline.errors import PipelineError
from pipeline.files import atomic_dir
from pipeline.images import grid_classes, grid_selection, quantize, render_grid
from pipeline.progress import progress_bar
from pipeline.sampling.decode import LogitsFn, decode_plan, maskgit_decode
from pipeline.seeds import batch_seed
from pipeline.shards import ShardWriter, TokenMeta, write_meta

if TYPE_CHECKING:
    from accelerate import PartialState

log = logging.getLogger(__name__)

SHARD_SIZE = 10_000


@dataclass(frozen=True)
class Samples:
    labels: np.ndarray  # (N,) int64, the requested classes
    tokens: np.ndarray  # (N, L) int32
    seconds: float  # wall time of token generation only (the slowest process's)
    processes: int = 1

    @property
    def images_per_s(self) -> float:
        return len(self.labels) / self.seconds if self.seconds > 0 else float("inf")


def class_balanced_labels(num_classes: int, per_class: int) -> torch.Tensor:
    """``per_class`` copies of each class, class-major: [0]*per_class + [1]*per_class + ..."""
    return torch.arange(num_classes, dtype=torch.long).repeat_interleave(per_class)


def batch_generator(seed: int, batch_index: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator of one batch, derived from (seed, batch index) only."""
    generator = torch.Generator(device=device)
    generator.manual_seed(batch_seed(seed, batch_index))
    return generator


def generate_samples(
    logits_fn: LogitsFn,
    *,
    num_classes: int,
    sample_cfg: SampleConfig,
    **decoding: Any,
) -> Samples:
    """``sample_cfg.per_class`` samples per class (class-major), drawn by :func:`generate_tokens`
    (``decoding``: its other keywords)."""
    labels = class_balanced_labels(num_classes, sample_cfg.per_class)
    return generate_tokens(logits_fn, labels, sample_cfg=sample_cfg, **decoding)


def generate_tokens(
    logits_fn: LogitsFn,
    labels: torch.Tensor,
    *,
    seq_len: int,
    mask_id: int,
    null_class: int,
    sample_cfg: SampleConfig,
    seed: int,
    device: str | torch.device = "cpu",
    batches: range | None = None,
    desc: str = "sampling",
) -> Samples:
    """One sample per entry of ``labels`` (B,), decoded in batches of ``sample_cfg.batch_size``.

    Batch ``b`` (rows ``b * batch_size`` onwards) draws from :func:`batch_generator` (seed, b), so
    the same labels, settings and seed give the same tokens, here, in the sample stage or in
    ``python -m pipeline.generate``. ``batches`` (default: all) restricts the work to those batch
    indices, one process's share; the result then holds just their rows, in order.
    """
    device = torch.device(device)
    plan = decode_plan(sample_cfg, seq_len)
    size = sample_cfg.batch_size
    if batches is None:
        batches = range(-(-len(labels) // size))
    mine = labels[batches.start * size : batches.stop * size]
    outputs = [torch.zeros((0, seq_len), dtype=torch.long)]
    # On a CPU the decoder works over chunks of rows whose forward (conditional and unconditional
    # rows together) is about CPU_CHUNK_TOKENS tokens: its logits and noise then stay in cache.
    chunk_rows = cpu_chunk_rows(seq_len, passes=2) if device.type == "cpu" else None
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    synchronize()
    start = time.perf_counter()
    with progress_bar(total=len(mine), desc=desc, unit="img") as progress:
        for index in batches:
            batch = labels[index * size : (index + 1) * size].to(device)
            tokens = maskgit_decode(
                logits_fn, batch, seq_len=seq_len, mask_id=mask_id, null_class=null_class, plan=plan,
                generator=batch_generator(seed, index, device), token_draw=sample_cfg.token_draw,
                chunk_rows=chunk_rows,
            )
            outputs.append(tokens.cpu())
            progress.update(len(batch))
    synchronize()
    return Samples(labels=mine.numpy(), tokens=torch.cat(outputs).numpy().astype(np.int32),
                   seconds=time.perf_counter() - start)


# On a CPU the forward runs over chunks of about this many tokens: a whole sampling batch (500
# images, twice with CFG: 50,000 tokens) makes every activation ~100 MB, and the memory-bound work
# (bias, GELU, residual adds, LayerNorm) then waits on RAM. Chunks keep them in cache: the default
# model's forward runs 1.8x faster with the same bytes out (each row's arithmetic is unchanged;
# tests/test_sampling.py checks the equality).
CPU_CHUNK_TOKENS = 5000


def cpu_chunk_rows(seq_len: int, passes: int = 1) -> int:
    """Sequences per CPU chunk, so that ``passes`` forward passes of them (2 with CFG) hold about
    :data:`CPU_CHUNK_TOKENS` tokens."""
    return max(1, CPU_CHUNK_TOKENS // (passes * seq_len))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX), where bf16 sampling pays."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def model_logits(model: torch.nn.Module, device: torch.device, mixed_precision: str = "auto") -> LogitsFn:
    """The sampler's ``logits_fn`` for a loaded generator, in row chunks of about
    :data:`CPU_CHUNK_TOKENS` tokens on a CPU. ``mixed_precision`` (``sample.mixed_precision``):
    ``auto`` is bf16 autocast on CUDA and float32 elsewhere; ``bf16`` and ``no`` force it."""
    rows = cpu_chunk_rows(model.seq_len) if device.type == "cpu" else None
    bf16 = mixed_precision == "bf16" or (mixed_precision == "auto" and device.type == "cuda")
    if bf16 and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("sample.mixed_precision is bf16, but this CPU has no native bf16 (AVX512-BF16 or AMX): "
                    "bf16 is emulated there and samples about half as fast as float32 ('no')")

    def logits_fn(tokens: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if rows is None or len(tokens) <= rows:
                return model(tokens, labels, positions)
            return torch.cat([model(tokens[i : i + rows], labels[i : i + rows], positions[i : i + rows])
                              for i in range(0, len(tokens), rows)])

    return logits_fn


def decode_images(tokenizer: torch.nn.Module, tokens: np.ndarray, device: torch.device,
                  batch_size: int) -> np.ndarray:
    """uint8 images (N, C, H, W) of token rows, decoded batch by batch."""
    parts = [np.zeros((0,), dtype=np.uint8)]
    for first in range(0, len(tokens), batch_size):
        batch = torch.from_numpy(np.asarray(tokens[first : first + batch_size])).long().to(device)
        with torch.inference_mode():
            parts.append(quantize(tokenizer.decode(batch)).cpu().numpy())
    return np.concatenate(parts[1:]) if len(parts) > 1 else parts[0]


def merge_samples(parts: Sequence[Samples]) -> Samples:
    """Concatenate processes' shares in order; they ran in parallel, so the time is the longest."""
    return Samples(
        labels=np.concatenate([p.labels for p in parts]),
        tokens=np.concatenate([p.tokens for p in parts]),
        seconds=max(p.seconds for p in parts),
        processes=len(parts),
    )


def sample_variant(cfg: Config, variant: str, meta: TokenMeta, state: PartialState) -> Samples | None:
    """This process's batches of ``variant``'s samples; the main process returns all of them in
    order, the others None."""
    from pipeline.launch import batch_share, gather_parts
    from pipeline.model.generators import load_generator
    from pipeline.tokenizer.registry import load_tokenizer

    if variant not in layout.GENERATOR_VARIANTS:
        raise PipelineError(f"unknown variant {variant!r}; choose one of {list(layout.GENERATOR_VARIANTS)}")
    device = state.device
    model = load_generator(layout.model_dir(variant), device, expected_meta=meta)
    model.precompute()
    # Before the work: the grid decodes the samples with this tokenizer.
    load_tokenizer(layout.TOKENIZER_DIR, expected_fingerprint=meta.tokenizer_fingerprint)

    batches, _ = batch_share(meta.num_classes * cfg.sample.per_class, cfg.sample.batch_size, state)
    part = generate_samples(
        model_logits(model, device, cfg.sample.mixed_precision), num_classes=meta.num_classes,
        seq_len=meta.seq_len, mask_id=model.mask_id, null_class=model.null_class, sample_cfg=cfg.sample,
        seed=cfg.sample.seed, device=device, batches=batches,
        desc="sampling" if state.num_processes == 1 else f"sampling [{state.process_index}]",
    )
    parts = gather_parts(part, state)
    return merge_samples(parts) if state.is_main_process else None


def write_samples(directory: str | Path, meta: TokenMeta, samples: Samples) -> None:
    """Atomically write the samples directory (meta.json + samples/part-*.parquet)."""
    with atomic_dir(directory) as tmp:
        write_meta(tmp, meta)
        with ShardWriter(tmp / layout.SAMPLES_SPLIT, meta, SHARD_SIZE) as writer:
            writer.add(np.arange(len(samples.labels), dtype=np.int64), samples.labels, samples.tokens)


def sample_grid(
    sample_cfg: SampleConfig, meta: TokenMeta, samples: Samples, device: torch.device
) -> Image.Image:
    """Decoded samples, one row per class (at most ``sample.grid_classes`` rows, evenly spaced
    class ids), ``sample.grid_columns`` columns, each row named by its class."""
    from pipeline.tokenizer.registry import load_tokenizer

    tokenizer = load_tokenizer(layout.TOKENIZER_DIR, device)
    classes = grid_classes(meta.num_classes, sample_cfg.grid_classes)
    columns = min(sample_cfg.grid_columns, sample_cfg.per_class)
    chosen = grid_selection(samples.labels, classes, columns)
    pixels = decode_images(tokenizer, samples.tokens[chosen], device, batch_size=max(1, len(chosen)))
    labels = meta.class_labels()
    return render_grid(pixels.reshape(len(classes), columns, *pixels.shape[1:]), [labels[c] for c in classes])


def throughput(sample_cfg: SampleConfig, samples: Samples, device: torch.device) -> dict[str, Any]:
    """``metrics/sample_<variant>.json``: read by ``evaluate@<variant>`` for ``sampling_images_per_s``."""
    log.info("%d samples in %.1f s (%.1f images/s, %d process(es))", len(samples.labels), samples.seconds,
             samples.images_per_s, samples.processes)
    return {
        "images_per_s": samples.images_per_s,
        "seconds": samples.seconds,
        "n_samples": len(samples.labels),
        "steps": sample_cfg.steps,
        "device": device.type,
        "processes": samples.processes,
    }
