"""A small convolutional VQ-VAE, trained from scratch (``tokenizer.kind: train``).

Encoder: 3x3 stem, ``downsamples`` stride-2 4x4 convs, residual blocks, 1x1 projection to
``code_dim``. The quantiser keeps its codebook as exponential moving averages of the encoder outputs
assigned to each code (van den Oord et al. 2017, appendix; Razavi et al. 2019), which trains faster
and more stably than a codebook loss, and restarts *dead* codes (EMA usage below
``dead_threshold``) at random encoder outputs of the current batch, which is what keeps codebook
usage high. Restarts favour inputs far from every live code (k-means++ style), so they land
where the data is poorly represented rather than on yet another copy of the background. The
decoder mirrors the encoder with transposed convolutions.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.tokenizer.base import Tokenizer


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class Encoder(nn.Module):
    def __init__(self, channels: int, hidden: int, code_dim: int, downsamples: int, res_blocks: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, hidden, 3, padding=1)]
        for _ in range(downsamples):
            layers += [nn.ReLU(), nn.Conv2d(hidden, hidden, 4, stride=2, padding=1)]
        layers += [ResidualBlock(hidden) for _ in range(res_blocks)]
        layers += [nn.ReLU(), nn.Conv2d(hidden, code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, channels: int, hidden: int, code_dim: int, downsamples: int, res_blocks: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(code_dim, hidden, 3, padding=1)]
        layers += [ResidualBlock(hidden) for _ in range(res_blocks)]
        for _ in range(downsamples):
            layers += [nn.ReLU(), nn.ConvTranspose2d(hidden, hidden, 4, stride=2, padding=1)]
        layers += [nn.ReLU(), nn.Conv2d(hidden, channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class EMAQuantizer(nn.Module):
    """Nearest-code quantisation with an EMA-updated codebook and dead-code restarts."""

    def __init__(self, codebook_size: int, code_dim: int, decay: float, dead_threshold: float):
        super().__init__()
        self.decay = decay
        self.dead_threshold = dead_threshold
        self.register_buffer("codebook", torch.randn(codebook_size, code_dim) * 0.1)
        self.register_buffer("ema_count", torch.ones(codebook_size))
        self.register_buffer("ema_sum", self.codebook.clone())
        self.register_buffer("initialised", torch.tensor(False))

    @property
    def codebook_size(self) -> int:
        return self.codebook.shape[0]

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (squared L2) for each row of ``flat`` (N, D)."""
        distances = (
            flat.pow(2).sum(1, keepdim=True)
            - 2 * flat @ self.codebook.t()
            + self.codebook.pow(2).sum(1)[None, :]
        )
        return distances.argmin(dim=1)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, codes: torch.Tensor, generator: torch.Generator) -> None:
        if not bool(self.initialised):
            # Start from real encoder outputs rather than noise, so no code starts out dead.
            picks = torch.randint(0, flat.shape[0], (self.codebook_size,), generator=generator)
            self.codebook.copy_(flat[picks])
            self.ema_sum.copy_(flat[picks])
            self.ema_count.fill_(1.0)
            self.initialised.fill_(True)
            codes = self.nearest(flat)
        one_hot = F.one_hot(codes, self.codebook_size).type_as(flat)
        self.ema_count.mul_(self.decay).add_(one_hot.sum(0), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(one_hot.t() @ flat, alpha=1 - self.decay)
        # Laplace smoothing keeps rarely used codes from dividing by ~0.
        total = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (total + self.codebook_size * 1e-5) * total
        self.codebook.copy_(self.ema_sum / smoothed[:, None])

        dead = self.ema_count < self.dead_threshold
        n_dead = int(dead.sum())
        if n_dead:
            # Restart where the codebook represents the data worst: pick inputs with probability
            # proportional to their squared distance to the nearest live code (k-means++ seeding).
            live = self.codebook[~dead] if bool((~dead).any()) else self.codebook
            error = torch.cdist(flat, live).min(dim=1).values.pow(2)
            weights = error if float(error.sum()) > 0 else torch.ones_like(error)
            picks = torch.multinomial(weights, n_dead, replacement=True, generator=generator)
            fresh = flat[picks] + 0.01 * flat.std() * torch.randn(
                n_dead, flat.shape[1], generator=generator
            )
            self.codebook[dead] = fresh
            self.ema_sum[dead] = fresh
            self.ema_count[dead] = 1.0

    def forward(
        self, z: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, D, H, W) -> (straight-through quantised z, codes (B, H, W), commitment loss)."""
        batch, dim, height, width = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, dim)
        codes = self.nearest(flat)
        if self.training:
            if generator is None:
                raise ValueError("training the quantiser needs a torch.Generator for restarts")
            self._update(flat.detach(), codes, generator)
            codes = self.nearest(flat)
        quantised = self.codebook[codes].view(batch, height, width, dim).permute(0, 3, 1, 2)
        commitment = F.mse_loss(z, quantised.detach())
        straight_through = z + (quantised - z).detach()
        return straight_through, codes.view(batch, height, width), commitment


class VQVAE(Tokenizer):
    kind = "train"

    def __init__(
        self,
        channels: int = 1,
        image_size: int = 28,
        hidden: int = 64,
        code_dim: int = 32,
        codebook_size: int = 512,
        downsamples: int = 2,
        res_blocks: int = 1,
        ema_decay: float = 0.99,
        dead_threshold: float = 1.0,
    ):
        super().__init__()
        self._args = {
            "channels": channels, "image_size": image_size, "hidden": hidden, "code_dim": code_dim,
            "codebook_size": codebook_size, "downsamples": downsamples, "res_blocks": res_blocks,
            "ema_decay": ema_decay, "dead_threshold": dead_threshold,
        }
        self.encoder = Encoder(channels, hidden, code_dim, downsamples, res_blocks)
        self.decoder = Decoder(channels, hidden, code_dim, downsamples, res_blocks)
        self.quantizer = EMAQuantizer(codebook_size, code_dim, ema_decay, dead_threshold)
        side = image_size // 2**downsamples
        self._grid = (side, side)

    # -- the Tokenizer interface --------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def grid(self) -> tuple[int, int]:
        return self._grid

    def init_args(self) -> dict[str, Any]:
        return dict(self._args)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        z = self.encoder(images * 2 - 1)
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        return self.quantizer.nearest(flat).view(images.shape[0], -1)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        grid_h, grid_w = self.grid
        codes = self.quantizer.codebook[tokens.long()].view(tokens.shape[0], grid_h, grid_w, -1)
        return self._decode_latents(codes.permute(0, 3, 1, 2)).clamp(0, 1)

    # -- training -----------------------------------------------------------------------------
    def _decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        return (self.decoder(z) + 1) / 2

    def forward(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction in [0, 1] scale, unclamped), codes (B, h, w), commitment."""
        z = self.encoder(images * 2 - 1)
        quantised, codes, commitment = self.quantizer(z, generator)
        return self._decode_latents(quantised), codes, commitment
