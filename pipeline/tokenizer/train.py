"""Training and evaluation of the VQ-VAE tokenizer, and the tokenizer stage's work."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.config import Config, TokenizerConfig
from pipeline.images import quantize, render_grid
from pipeline.progress import progress_bar
from pipeline.seeds import seed_everything
from pipeline.tokenizer.base import Tokenizer
from pipeline.tokenizer.vqvae import VQVAE


def build_vqvae(cfg: TokenizerConfig, channels: int, image_size: int) -> VQVAE:
    return VQVAE(
        channels=channels,
        image_size=image_size,
        hidden=cfg.hidden,
        code_dim=cfg.code_dim,
        codebook_size=cfg.codebook_size,
        downsamples=cfg.downsamples,
        res_blocks=cfg.res_blocks,
        ema_decay=cfg.ema_decay,
        dead_threshold=cfg.dead_threshold,
    )


def random_batches(images: np.ndarray, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled epochs over an in-memory uint8 array, as float batches in [0, 1]."""
    data = torch.from_numpy(images)
    while True:
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield data[order[start : start + batch_size]].float() / 255.0


def loader_batches(loader: torch.utils.data.DataLoader) -> Iterator[torch.Tensor]:
    """Endless epochs over a DataLoader of (uint8 images, label, id), for sources not held in memory."""
    while True:
        for images, _, _ in loader:
            yield images.float() / 255.0


def train_vqvae(
    model: VQVAE,
    batches: Iterator[torch.Tensor],
    cfg: TokenizerConfig,
    generator: torch.Generator,
    device: torch.device,
) -> list[float]:
    """Optimise reconstruction + commitment; returns the loss per step."""
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    warmup = min(100, cfg.steps // 10)

    def lr_lambda(step: int) -> float:
        # Short warmup, then cosine decay to 10%: reconstructions sharpen at the end.
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, cfg.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    losses = []
    progress = progress_bar(range(cfg.steps), desc="tokenizer: training", unit="step")
    for _ in progress:
        images = next(batches).to(device)
        recon, _, commitment = model(images, generator)
        loss = F.mse_loss(recon, images) + cfg.commitment * commitment
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if len(losses) % 25 == 0:
            # refresh=False: shown at the bar's next refresh (a forced one would print a line
            # every 25 steps in a log, with a stale step count)
            progress.set_postfix(loss=f"{np.mean(losses[-25:]):.4f}", refresh=False)
    return losses


@dataclass
class TokenizerReport:
    recon_mse: float
    psnr: float
    codebook_usage: float
    perplexity: float
    grid_h: int
    grid_w: int
    codebook_size: int


@torch.no_grad()
def evaluate_tokenizer(
    tokenizer: Tokenizer, images: Iterator[torch.Tensor], device: torch.device
) -> TokenizerReport:
    """Reconstruction quality and codebook statistics over ``images`` (float batches in [0, 1])."""
    tokenizer.to(device).eval()
    counts = torch.zeros(tokenizer.codebook_size, dtype=torch.float64)
    squared_error, psnr_sum, n_images, n_pixels = 0.0, 0.0, 0, 0
    for batch in images:
        batch = batch.to(device)
        tokens = tokenizer.encode(batch)
        recon = tokenizer.decode(tokens)
        per_image = (recon - batch).pow(2).flatten(1).mean(1).double()
        squared_error += float(per_image.sum()) * batch[0].numel()
        psnr_sum += float((10 * torch.log10(1.0 / per_image.clamp_min(1e-10))).sum())
        n_images += batch.shape[0]
        n_pixels += batch.numel()
        counts += torch.bincount(tokens.flatten().cpu(), minlength=tokenizer.codebook_size).double()
    probabilities = counts / counts.sum()
    entropy = -(probabilities[probabilities > 0] * probabilities[probabilities > 0].log()).sum()
    grid_h, grid_w = tokenizer.grid
    return TokenizerReport(
        recon_mse=squared_error / n_pixels,
        psnr=psnr_sum / n_images,
        codebook_usage=float((counts > 0).double().mean()),
        perplexity=float(entropy.exp()),
        grid_h=grid_h,
        grid_w=grid_w,
        codebook_size=tokenizer.codebook_size,
    )


# --------------------------------------------------------------------------------------------
# The tokenizer stage's work
# --------------------------------------------------------------------------------------------


def val_batches(cfg: Config, limit: int, batch_size: int = 500) -> Iterator[torch.Tensor]:
    """The first ``limit`` val images as float batches in [0, 1]."""
    from pipeline.data import ImageDataset

    dataset = ImageDataset(cfg, "val")
    indices = range(min(limit, len(dataset)))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
        num_workers=0 if dataset.in_memory else cfg.data.workers,
    )
    for images, _, _ in loader:
        yield images.float() / 255.0


def fit_tokenizer(cfg: Config, device: torch.device) -> Tokenizer:
    """Train the VQ-VAE on the train split (``tokenizer.kind: train``) or import the MaskGIT VQGAN."""
    from pipeline.data import ImageDataset, load_split_images, num_channels

    seed_everything(cfg.tokenizer.seed)
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


def reconstruction_grid(cfg: Config, tokenizer: Tokenizer) -> Image.Image:
    """``tokenizer.num_recon_examples`` val images, rows of originals above their reconstructions."""
    count = cfg.tokenizer.num_recon_examples
    originals = next(val_batches(cfg, count, batch_size=count))
    device = next(tokenizer.parameters()).device
    with torch.no_grad():
        recon = tokenizer.decode(tokenizer.encode(originals.to(device))).cpu()
    columns = min(count, 8)
    rows = []
    for start in range(0, len(originals), columns):
        pair = torch.stack([originals[start : start + columns], recon[start : start + columns]])
        rows.append(F.pad(pair, (0, 0, 0, 0, 0, 0, 0, columns - pair.shape[1]), value=1.0))  # white fill
    pixels = quantize(torch.cat(rows)).numpy()
    return render_grid(pixels)
