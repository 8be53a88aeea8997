"""Stage `tokenize`: encode the train and val images into Parquet token shards.

Outputs: data/tokens/train/, data/tokens/val/ (part-NNNNN.parquet) and data/tokens/meta.json,
following the contract in :mod:`pipeline.shards`; metrics/tokenize.json reports throughput.

Shard ``s`` always holds items ``[s * shard_size, (s + 1) * shard_size)`` of the split (in manifest
order, each train image followed by its mirror when ``tokenize.flip_augment``), so the bytes do not
depend on the batch size or on how many processes run it. Under ``accelerate launch`` each process
encodes the shards ``s`` with ``s % num_processes == process_index``; the main process then moves
the completed directory into place. (:func:`pipeline.launch.shared_stage`, not a bare
``PartialState()``: CPU processes under ``torchrun`` with ``ACCELERATE_USE_CPU=true`` then see
each other instead of each encoding every shard into the same directory, and every process leaves
the process group cleanly at the end.)
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from tqdm import tqdm

from pipeline.config import Config
from pipeline.data import ImageDataset, num_classes
from pipeline.files import write_json
from pipeline.launch import shared_stage
from pipeline.shards import TokenMeta, shard_name, write_meta, write_shard
from pipeline.stages.common import run_stage
from pipeline.tokenizer.base import load_tokenizer, tokenizer_fingerprint

log = logging.getLogger(__name__)
TOKENIZER_DIR = Path("models/tokenizer")
TOKENS_DIR = Path("data/tokens")
METRICS = "metrics/tokenize.json"


def encode_split(
    cfg: Config, split: str, meta: TokenMeta, out_dir: Path, state: PartialState
) -> int:
    """Encode this process's shards of ``split`` into ``out_dir``; return the split's item count."""
    dataset = ImageDataset(cfg, split, flip=cfg.tokenize.flip_augment and split == "train")
    tokenizer = load_tokenizer(TOKENIZER_DIR, device=state.device)
    shard_size = cfg.tokenize.shard_size
    n_shards = -(-len(dataset) // shard_size)
    mine = list(range(state.process_index, n_shards, state.num_processes))
    total = sum(min(shard_size, len(dataset) - s * shard_size) for s in mine)
    progress = tqdm(total=total, desc=f"tokenize {split}", unit="img",
                    disable=not state.is_local_main_process)
    for shard in mine:
        items = range(shard * shard_size, min(len(dataset), (shard + 1) * shard_size))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, items), batch_size=cfg.tokenize.batch_size,
            num_workers=0 if dataset.in_memory else cfg.data.workers,
        )
        ids, labels, tokens = [], [], []
        for images, batch_labels, batch_ids in loader:
            with torch.no_grad():
                tokens.append(tokenizer.encode(images.to(state.device).float() / 255.0).cpu().numpy())
            labels.append(batch_labels.numpy())
            ids.append(batch_ids.numpy())
            progress.update(len(images))
        write_shard(out_dir / shard_name(shard), meta, np.concatenate(ids), np.concatenate(labels),
                    np.concatenate(tokens))
    progress.close()
    return len(dataset)


def tokenize(cfg: Config) -> None:
    with shared_stage() as state:
        tokenize_splits(cfg, state)


def tokenize_splits(cfg: Config, state: PartialState) -> None:
    tokenizer = load_tokenizer(TOKENIZER_DIR)
    grid_h, grid_w = tokenizer.grid
    meta = TokenMeta(
        grid_h=grid_h,
        grid_w=grid_w,
        codebook_size=tokenizer.codebook_size,
        num_classes=num_classes(),
        tokenizer_fingerprint=tokenizer_fingerprint(TOKENIZER_DIR),
    )
    report: dict[str, dict[str, float]] = {}
    for split in ("train", "val"):
        final = TOKENS_DIR / split
        # A fixed temporary name that every process agrees on; renamed only when complete.
        partial = TOKENS_DIR / f".{split}.partial"
        if state.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        state.wait_for_everyone()
        start = time.perf_counter()
        count = encode_split(cfg, split, meta, partial, state)
        state.wait_for_everyone()
        seconds = time.perf_counter() - start
        if state.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
            shard_bytes = sum(f.stat().st_size for f in final.glob("*.parquet"))
            report[split] = {
                "images": count,
                "seconds": round(seconds, 2),
                "images_per_s": round(count / max(seconds, 1e-9), 1),
                "bytes_per_image": round(shard_bytes / count, 2),
            }
            log.info("tokenized %s: %d images in %.1fs", split, count, seconds)
    if state.is_main_process:
        write_meta(TOKENS_DIR, meta)
        write_json(METRICS, {**report, "grid_h": grid_h, "grid_w": grid_w,
                             "codebook_size": meta.codebook_size})


def main() -> None:
    run_stage("tokenize", tokenize, outputs=[TOKENS_DIR / "meta.json", METRICS])


if __name__ == "__main__":
    main()
