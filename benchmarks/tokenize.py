"""Tokenization throughput and storage cost of the token shards.

Prints, measured in one run on this machine:
  * encode throughput (images/s) of the tokenizer in models/tokenizer, at the stage's batch size;
  * end-to-end `tokenize` throughput (read pixels + encode + write zstd Parquet shards);
  * bytes per image in the shards against raw uint8 pixels (and the gzip'd IDX source).

Uses Fashion-MNIST val (10k images) and the trained tokenizer when present (run `dvc repro
tokenize` first); otherwise a randomly initialised VQ-VAE of the default size, which encodes just as
fast but whose tokens compress differently (the script says which it used).

    python benchmarks/tokenize.py [--images 10000] [--batch-size 500]
"""

from __future__ import annotations

import os
import sys

# This file is named like the standard library's `tokenize`, which numpy and torch import
# indirectly; drop the script's own folder from the import path before anything else.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config import Config, load_config
from pipeline.data import FASHION_MNIST_FILES, read_fashion_mnist, synthetic_image
from pipeline.shards import ShardWriter, TokenMeta
from pipeline.tokenizer.base import Tokenizer
from pipeline.tokenizer.registry import load_tokenizer
from pipeline.tokenizer.train import build_vqvae


def _tokenizer(cfg: Config) -> tuple[Tokenizer, str]:
    if Path("models/tokenizer/config.json").is_file():
        return load_tokenizer("models/tokenizer"), "trained (models/tokenizer)"
    model = build_vqvae(cfg.tokenizer, 1, cfg.data.image_size).eval()
    return model, "random-init VQ-VAE (no models/tokenizer)"


def _images(cfg: Config, count: int) -> tuple[np.ndarray, str, float | None]:
    directory = Path(cfg.data.fashion_mnist_dir)
    if all((directory / name).is_file() for name in FASHION_MNIST_FILES["val"]):
        images = read_fashion_mnist(directory, "val").images[:count, None].copy()
        idx_bytes = (directory / FASHION_MNIST_FILES["val"][0]).stat().st_size / 10000
        return np.ascontiguousarray(images), "Fashion-MNIST val", idx_bytes
    images = np.stack([synthetic_image(i, "val", cfg.data.image_size, 1, 10)[0] for i in range(count)])
    return images, "synthetic", None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()
    cfg = load_config()
    batch_size = args.batch_size or cfg.tokenize.batch_size
    tokenizer, which = _tokenizer(cfg)
    images, source, idx_bytes = _images(cfg, args.images)
    n = len(images)
    print(f"tokenizer: {which}; data: {source}, {n} images {images.shape[1:]}; "
          f"batch {batch_size}; torch threads {torch.get_num_threads()}")

    with torch.no_grad():
        tokenizer.encode(torch.from_numpy(images[:batch_size]).float() / 255)  # warm-up
        start = time.perf_counter()
        tokens = np.concatenate([
            tokenizer.encode(torch.from_numpy(images[i : i + batch_size]).float() / 255).numpy()
            for i in range(0, n, batch_size)
        ])
        encode_s = time.perf_counter() - start

    grid_h, grid_w = tokenizer.grid
    meta = TokenMeta(grid_h, grid_w, tokenizer.codebook_size, 10, "benchmark")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with ShardWriter(Path(tmp), meta, cfg.tokenize.shard_size) as writer:
            writer.add(np.arange(n, dtype=np.int64), np.zeros(n, np.int32), tokens)
        write_s = time.perf_counter() - start
        shard_bytes = sum(p.stat().st_size for p in Path(tmp).glob("*.parquet"))

    raw_bytes = images[0].size
    per_image = shard_bytes / n
    print(f"encode throughput        : {n / encode_s:10.1f} images/s ({encode_s:.2f} s)")
    print(f"encode + write shards    : {n / (encode_s + write_s):10.1f} images/s (write {write_s:.3f} s)")
    print(f"raw uint8 pixels         : {raw_bytes:10.1f} bytes/image")
    print(f"token shards (zstd)      : {per_image:10.1f} bytes/image "
          f"({grid_h * grid_w} tokens; {raw_bytes / per_image:.1f}x smaller than raw pixels)")
    print(f"tokens as int32, no zstd : {grid_h * grid_w * 4:10.1f} bytes/image")
    if idx_bytes is not None:
        print(f"gzip'd IDX source        : {idx_bytes:10.1f} bytes/image")


if __name__ == "__main__":
    main()
