"""The tokenize stage's work: encode the train and val images into Parquet token shards.

Shard ``s`` always holds items ``[s * shard_size, (s + 1) * shard_size)`` of the split (in manifest
order, each train image followed by its mirror when ``tokenize.flip_augment``), so the bytes do not
depend on the batch size or on how many processes run it. Under ``accelerate launch`` each process
encodes the shards ``s`` with ``s % num_processes == process_index`` into a temporary folder every
process agrees on; the main process renames it into place once complete. (The state comes from
:func:`pipeline.launch.shared_stage`, not a bare ``PartialState()``: CPU processes under
``torchrun`` with ``ACCELERATE_USE_CPU=true`` then see each other instead of each encoding every
shard into the same directory.)
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline import layout
from pipeline.config import Config
from pipeline.progress import progress_bar
from pipeline.shards import TokenMeta, shard_name, write_shard
from pipeline.tokenizer.base import tokenizer_fingerprint
from pipeline.tokenizer.registry import load_tokenizer

if TYPE_CHECKING:
    from accelerate import PartialState

log = logging.getLogger(__name__)
SPLITS = ("train", "val")


def token_meta(tokenizer_dir: Path = layout.TOKENIZER_DIR) -> TokenMeta:
    """The layout of the tokens this tokenizer produces, with its fingerprint."""
    from pipeline.data import read_class_names

    tokenizer = load_tokenizer(tokenizer_dir)
    grid_h, grid_w = tokenizer.grid
    names = read_class_names()
    return TokenMeta(grid_h=grid_h, grid_w=grid_w, codebook_size=tokenizer.codebook_size,
                     num_classes=len(names), tokenizer_fingerprint=tokenizer_fingerprint(tokenizer_dir),
                     class_names=tuple(names))


def encode_split(cfg: Config, split: str, meta: TokenMeta, out_dir: Path, state: PartialState) -> int:
    """Encode this process's shards of ``split`` into ``out_dir``; return the split's item count."""
    from pipeline.data import ImageDataset

    dataset = ImageDataset(cfg, split, flip=cfg.tokenize.flip_augment and split == "train")
    tokenizer = load_tokenizer(layout.TOKENIZER_DIR, device=state.device)
    shard_size = cfg.tokenize.shard_size
    n_shards = -(-len(dataset) // shard_size)
    mine = list(range(state.process_index, n_shards, state.num_processes))
    total = sum(min(shard_size, len(dataset) - s * shard_size) for s in mine)
    progress = progress_bar(total=total, desc=f"tokenize {split}", unit="img",
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


def tokenize_splits(cfg: Config, meta: TokenMeta, state: PartialState) -> dict[str, Any] | None:
    """Encode both splits into ``data/tokens/<split>/``; the main process returns the throughput."""
    report: dict[str, Any] = {}
    for split in SPLITS:
        final = layout.TOKENS_DIR / split
        partial = layout.TOKENS_DIR / f".{split}.partial"  # renamed only when complete
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
    if not state.is_main_process:
        return None
    return {**report, "grid_h": meta.grid_h, "grid_w": meta.grid_w, "codebook_size": meta.codebook_size}
