"""Stage ``sample@{base,control,kamig}``: class-balanced MaskGIT samples of one trained variant.

Outputs:

- ``data/samples/<variant>/``: the tokens in the token-shard schema (:mod:`pipeline.shards`)::

      meta.json                     same grid / codebook / classes / tokenizer as data/tokens
      samples/part-00000.parquet    image_id = sample index, label = the requested class

  ``sample.per_class`` samples of every class, class-major (all of class 0, then class 1, ...).
- ``metrics/plots/samples_<variant>.png``: decoded samples, one row per class (at most
  ``sample.grid_classes`` rows, evenly spaced class ids), ``sample.grid_columns`` columns.
- ``metrics/sample_<variant>.json``: throughput (images/s of token generation) and counts; read by
  ``evaluate@<variant>`` for ``sampling_images_per_s``. Kept out of ``data/samples`` so the token
  directory stays byte-identical for a given seed.

Randomness: batch ``b`` draws from a generator seeded by (``seed``, ``b``)
(:func:`pipeline.sampling.batch_generator`), so the tokens depend on ``seed``, the ``sample.*``
params and the model only.

Several processes (``accelerate launch`` / ``torchrun``, see :mod:`pipeline.launch`): each decodes
a contiguous block of the batches, the main process gathers the blocks in order and writes every
output, so the samples are byte-identical to a single-process run. The throughput is then the
total count over the slowest process's time.

Usage: ``python -m pipeline.stages.sample base|control|kamig``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from pipeline.config import Config, SampleConfig
from pipeline.errors import DataSourceError, PipelineError
from pipeline.files import atomic_dir, atomic_path, write_json
from pipeline.sampling import batch_generator, class_balanced_labels, decode_plan, maskgit_decode
from pipeline.shards import ShardWriter, TokenMeta, read_meta, write_meta

if TYPE_CHECKING:
    from accelerate import PartialState

log = logging.getLogger(__name__)

VARIANTS = ("base", "control", "kamig")
TOKENS_DIR = Path("data/tokens")
MODELS_DIR = Path("models")
TOKENIZER_DIR = Path("models/tokenizer")
SAMPLES_DIR = Path("data/samples")
SAMPLES_SPLIT = "samples"
PLOTS_DIR = Path("metrics/plots")
METRICS_DIR = Path("metrics")
SHARD_SIZE = 10_000
MIN_TILE = 56  # grid tiles are upscaled (nearest) to at least this many pixels


def sample_paths(variant: str) -> tuple[Path, Path, Path]:
    """(samples dir, grid PNG, throughput json) of a variant."""
    return (
        SAMPLES_DIR / variant,
        PLOTS_DIR / f"samples_{variant}.png",
        METRICS_DIR / f"sample_{variant}.json",
    )


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Samples:
    labels: np.ndarray  # (N,) int64, the requested classes
    tokens: np.ndarray  # (N, L) int32
    seconds: float  # wall time of token generation only (the slowest process's)
    processes: int = 1

    @property
    def images_per_s(self) -> float:
        return len(self.labels) / self.seconds if self.seconds > 0 else float("inf")


def generate_samples(
    logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    num_classes: int,
    seq_len: int,
    mask_id: int,
    null_class: int,
    sample_cfg: SampleConfig,
    seed: int,
    device: str | torch.device = "cpu",
    batches: range | None = None,
    desc: str = "sampling",
) -> Samples:
    """``sample_cfg.per_class`` samples per class, decoded in batches of ``sample_cfg.batch_size``.

    ``batches`` (default: all) restricts the work to those batch indices, one process's share;
    the result then holds just their rows, in order.
    """
    device = torch.device(device)
    plan = decode_plan(sample_cfg, seq_len)
    labels = class_balanced_labels(num_classes, sample_cfg.per_class)
    size = sample_cfg.batch_size
    if batches is None:
        batches = range(-(-len(labels) // size))
    mine = labels[batches.start * size : batches.stop * size]
    outputs = [torch.zeros((0, seq_len), dtype=torch.long)]
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    synchronize()
    start = time.perf_counter()
    with tqdm(total=len(mine), desc=desc, unit="img") as progress:
        for index in batches:
            batch = labels[index * size : (index + 1) * size].to(device)
            tokens = maskgit_decode(
                logits_fn, batch, seq_len=seq_len, mask_id=mask_id, null_class=null_class, plan=plan,
                generator=batch_generator(seed, index, device),
            )
            outputs.append(tokens.cpu())
            progress.update(len(batch))
    synchronize()
    seconds = time.perf_counter() - start
    return Samples(
        labels=mine.numpy(),
        tokens=torch.cat(outputs).numpy().astype(np.int32),
        seconds=seconds,
    )


def merge_samples(parts: Sequence[Samples]) -> Samples:
    """Concatenate processes' shares in order; they ran in parallel, so the time is the longest."""
    return Samples(
        labels=np.concatenate([p.labels for p in parts]),
        tokens=np.concatenate([p.tokens for p in parts]),
        seconds=max(p.seconds for p in parts),
        processes=len(parts),
    )


def write_samples(directory: str | Path, meta: TokenMeta, samples: Samples) -> None:
    """Atomically write the samples directory (meta.json + samples/part-*.parquet)."""
    with atomic_dir(directory) as tmp:
        write_meta(tmp, meta)
        with ShardWriter(tmp / SAMPLES_SPLIT, meta, SHARD_SIZE) as writer:
            writer.add(np.arange(len(samples.labels), dtype=np.int64), samples.labels, samples.tokens)


# --------------------------------------------------------------------------------------------
# The PNG grid
# --------------------------------------------------------------------------------------------


def grid_classes(num_classes: int, max_rows: int) -> list[int]:
    """All classes when they fit, else ``max_rows`` evenly spaced class ids."""
    if num_classes <= max_rows:
        return list(range(num_classes))
    return sorted({round(x) for x in np.linspace(0, num_classes - 1, max_rows)})


def grid_selection(labels: np.ndarray, classes: Sequence[int], columns: int) -> np.ndarray:
    """Indices of the first ``columns`` samples of each shown class, row by row."""
    rows = []
    for c in classes:
        hits = np.flatnonzero(labels == c)[:columns]
        if len(hits) < columns:
            raise ValueError(f"class {c} has {len(hits)} samples, the grid needs {columns}")
        rows.append(hits)
    return np.concatenate(rows)


def render_grid(images: np.ndarray, row_names: Sequence[str]) -> Image.Image:
    """uint8 (rows, cols, C, H, W) -> an RGB image, with the class name left of each row."""
    rows, cols, channels, height, width = images.shape
    scale = max(1, -(-MIN_TILE // max(height, width)))
    tile_h, tile_w, pad = height * scale, width * scale, 2
    font = ImageFont.load_default()
    label_w = 8 + max((int(font.getlength(name)) for name in row_names), default=0)
    canvas = Image.new("RGB", (label_w + cols * (tile_w + pad) + pad, rows * (tile_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r in range(rows):
        top = pad + r * (tile_h + pad)
        draw.text((4, top + tile_h // 2 - 5), row_names[r], fill="black", font=font)
        for c in range(cols):
            pixels = images[r, c].transpose(1, 2, 0)
            tile = Image.fromarray(pixels[..., 0] if channels == 1 else pixels).convert("RGB")
            tile = tile.resize((tile_w, tile_h), Image.Resampling.NEAREST)
            canvas.paste(tile, (label_w + pad + c * (tile_w + pad), top))
    return canvas


def save_grid(path: str | Path, images: np.ndarray, row_names: Sequence[str]) -> None:
    with atomic_path(path) as tmp:
        render_grid(images, row_names).save(tmp, format="PNG")


def class_names_or_ids(num_classes: int) -> list[str]:
    from pipeline.data import read_class_names

    try:
        names = read_class_names()
    except DataSourceError as exc:
        log.warning("no class names (%s); labelling grid rows by class id", exc)
        return [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        log.warning("%d class names for %d classes; labelling grid rows by class id", len(names), num_classes)
        return [str(i) for i in range(num_classes)]
    return [f"{i} {name}" for i, name in enumerate(names)]


# --------------------------------------------------------------------------------------------
# Stage body
# --------------------------------------------------------------------------------------------


def body(cfg: Config, variant: str) -> None:
    from pipeline.launch import shared_stage

    if variant not in VARIANTS:
        raise PipelineError(f"unknown variant {variant!r}; choose one of {list(VARIANTS)}")
    with shared_stage() as state:
        meta = read_meta(TOKENS_DIR)
        samples = generate_shared(cfg, variant, meta, state)
        if state.is_main_process:
            write_outputs(cfg, variant, meta, samples, state.device)


def generate_shared(cfg: Config, variant: str, meta: TokenMeta, state: PartialState) -> Samples | None:
    """This process's batches; the main process returns all samples in order, the others None."""
    from pipeline.launch import batch_share, gather_parts
    from pipeline.model import load_generator
    from pipeline.tokenizer.base import tokenizer_fingerprint

    device = state.device
    model = load_generator(MODELS_DIR / variant, device, expected_meta=meta)
    if tokenizer_fingerprint(TOKENIZER_DIR) != meta.tokenizer_fingerprint:
        raise PipelineError(
            f"{TOKENIZER_DIR} is not the tokenizer that produced {TOKENS_DIR}: re-run dvc repro"
        )

    def logits_fn(tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return model(tokens, labels)

    batches, _ = batch_share(meta.num_classes * cfg.sample.per_class, cfg.sample.batch_size, state)
    part = generate_samples(
        logits_fn, num_classes=meta.num_classes, seq_len=meta.seq_len, mask_id=model.mask_id,
        null_class=model.null_class, sample_cfg=cfg.sample, seed=cfg.seed, device=device,
        batches=batches,
        desc="sampling" if state.num_processes == 1 else f"sampling [{state.process_index}]",
    )
    parts = gather_parts(part, state)
    return merge_samples(parts) if state.is_main_process else None


def write_outputs(cfg: Config, variant: str, meta: TokenMeta, samples: Samples, device: torch.device) -> None:
    """The samples directory, the PNG grid and the throughput json (main process only)."""
    from pipeline.metrics.classifier import quantize
    from pipeline.tokenizer.base import load_tokenizer

    samples_dir, grid_path, metrics_path = sample_paths(variant)
    write_samples(samples_dir, meta, samples)

    tokenizer = load_tokenizer(TOKENIZER_DIR, device)
    classes = grid_classes(meta.num_classes, cfg.sample.grid_classes)
    columns = min(cfg.sample.grid_columns, cfg.sample.per_class)
    chosen = grid_selection(samples.labels, classes, columns)
    with torch.inference_mode():
        decoded = tokenizer.decode(torch.from_numpy(samples.tokens[chosen]).long().to(device))
    pixels = quantize(decoded).cpu().numpy()
    names = class_names_or_ids(meta.num_classes)
    rows = pixels.reshape(len(classes), columns, *pixels.shape[1:])
    save_grid(grid_path, rows, [names[c] for c in classes])

    write_json(metrics_path, {
        "images_per_s": samples.images_per_s,
        "seconds": samples.seconds,
        "n_samples": len(samples.labels),
        "steps": cfg.sample.steps,
        "device": device.type,
        "processes": samples.processes,
    })
    log.info("sample@%s: %d samples in %.1f s (%.1f images/s, %d process(es)) -> %s, %s", variant,
             len(samples.labels), samples.seconds, samples.images_per_s, samples.processes,
             samples_dir, grid_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.stages.sample", description=__doc__.split("\n")[0]
    )
    parser.add_argument("variant", choices=VARIANTS)
    args = parser.parse_args(argv)
    from pipeline.stages.common import run_stage

    run_stage(f"sample@{args.variant}", functools.partial(body, variant=args.variant),
              outputs=sample_paths(args.variant))


if __name__ == "__main__":
    main()
