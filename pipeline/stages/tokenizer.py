"""Stage `tokenizer`: train the VQ-VAE (tokenizer.kind: train) or import the pretrained VQGAN.

Outputs: models/tokenizer/ (config.json + model.pt), metrics/tokenizer.json and
metrics/plots/tokenizer_recon.png (originals above their reconstructions).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict

import numpy as np
import torch

from pipeline.config import Config
from pipeline.data import ImageDataset, load_split_images, num_channels
from pipeline.files import atomic_dir, write_json
from pipeline.images import image_grid, save_png
from pipeline.stages.common import run_stage, seed_everything
from pipeline.tokenizer.base import Tokenizer, save_tokenizer
from pipeline.tokenizer.train import (
    build_vqvae,
    evaluate_tokenizer,
    loader_batches,
    random_batches,
    train_vqvae,
)

log = logging.getLogger(__name__)
MODEL_DIR = "models/tokenizer"
METRICS = "metrics/tokenizer.json"
RECON_PLOT = "metrics/plots/tokenizer_recon.png"


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _val_batches(cfg: Config, limit: int, batch_size: int = 500) -> Iterator[torch.Tensor]:
    dataset = ImageDataset(cfg, "val")
    indices = range(min(limit, len(dataset)))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
        num_workers=0 if dataset.in_memory else cfg.data.workers,
    )
    for images, _, _ in loader:
        yield images.float() / 255.0


def fit_tokenizer(cfg: Config) -> Tokenizer:
    device = _device()
    if cfg.tokenizer.kind == "pretrained":
        from pipeline.tokenizer.vqgan import load_pretrained_vqgan

        return load_pretrained_vqgan(cfg.tokenizer.checkpoint)

    generator = torch.Generator().manual_seed(cfg.tokenizer.seed)
    model = build_vqvae(cfg.tokenizer, num_channels(cfg), cfg.data.image_size)
    train = ImageDataset(cfg, "train")
    if train.in_memory:
        images, _, _ = load_split_images(cfg, "train")
        batches = random_batches(images, cfg.tokenizer.batch_size, generator)
    else:
        loader = torch.utils.data.DataLoader(
            train, batch_size=cfg.tokenizer.batch_size, num_workers=cfg.data.workers, drop_last=True,
            sampler=torch.utils.data.RandomSampler(train, generator=generator),
        )
        batches = loader_batches(loader)
    train_vqvae(model, batches, cfg.tokenizer, generator, device)
    return model.eval()


def reconstruction_picture(cfg: Config, tokenizer: Tokenizer) -> None:
    count = cfg.tokenizer.num_recon_examples
    originals = next(_val_batches(cfg, count, batch_size=count))
    device = next(tokenizer.parameters()).device
    with torch.no_grad():
        recon = tokenizer.decode(tokenizer.encode(originals.to(device))).cpu()
    columns = min(count, 8)
    rows = []
    for start in range(0, len(originals), columns):
        rows += [originals[start : start + columns], recon[start : start + columns]]
    scale = max(1, 112 // cfg.data.image_size)
    save_png(RECON_PLOT, image_grid(np.concatenate([r.numpy() for r in rows]), columns, scale=scale))


def tokenizer_stage(cfg: Config) -> None:
    seed_everything(cfg.tokenizer.seed)
    tokenizer = fit_tokenizer(cfg)
    with atomic_dir(MODEL_DIR) as tmp:
        fingerprint = save_tokenizer(tokenizer, tmp)
    report = evaluate_tokenizer(tokenizer, _val_batches(cfg, cfg.tokenizer.eval_images), _device())
    write_json(METRICS, {**asdict(report), "fingerprint": fingerprint})
    reconstruction_picture(cfg, tokenizer)
    log.info("tokenizer %s: psnr %.2f dB, codebook usage %.3f, perplexity %.1f",
             fingerprint, report.psnr, report.codebook_usage, report.perplexity)


def main() -> None:
    run_stage("tokenizer", tokenizer_stage, outputs=[MODEL_DIR, METRICS, RECON_PLOT])


if __name__ == "__main__":
    main()
