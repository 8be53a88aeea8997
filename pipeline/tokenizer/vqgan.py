"""The MaskGIT VQGAN (PyTorch port of the JAX model), ``tokenizer.kind: pretrained``.

MAGE, AutoNAT and KA-MIG all tokenise ImageNet 256 with the same frozen checkpoint,
``vqgan_jax_strongaug.ckpt``: an f16 VQGAN (16x16 tokens, 1024 codes of 256 dims). To reuse that
file the module tree below must reproduce its parameter names and shapes exactly, so that it
loads with ``strict=True``. The port has several quirks that differ from the usual taming VQGAN
and that are reproduced on purpose (changing any of them breaks the checkpoint or its outputs):

* no attention anywhere and no ``quant_conv`` / ``post_quant_conv``;
* the residual blocks' 3x3 convolutions (and the encoder's ``conv_in``) have no bias;
* a channel-changing block has a 1x1 ``nin_shortcut`` from out to out channels that is applied
  to the block's *output* h, not to its input: it returns ``nin_shortcut(h) + h``;
* the encoder downsamples by 2x2 average pooling (no parameters);
* the encoder's ``conv_out`` is 1x1 with bias, the decoder's is 3x3.

Pixels are in [0, 1] on both sides. The constructor's defaults are the checkpoint's architecture;
smaller settings build the same family (tests use a tiny one).
"""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from pipeline.state_dicts import layout_differences
from pipeline.tokenizer.base import Tokenizer

# The port normalises with 32 groups everywhere, so every level's width must be a multiple of 32.
NORM_GROUPS = 32
NORM_EPS = 1e-6
# Rows (latent cells) per block of the nearest-code search: 4096 x 1024 float32 distances = 16 MiB,
# so memory stays flat however many images a batch holds.
QUANTIZE_CHUNK_ROWS = 4096
# How many differences a bad-checkpoint error lists per category.


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(NORM_GROUPS, channels, eps=NORM_EPS, affine=True)


class ResnetBlock(nn.Module):
    """Pre-activation residual block of the JAX port (bias-free convs, shortcut on h)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        # The JAX model projects h (already out_channels wide), so the 1x1 conv is out -> out and
        # the input x is dropped entirely when the width changes. Odd, but it is what the
        # checkpoint was trained with.
        self.nin_shortcut = (
            nn.Conv2d(out_channels, out_channels, 1, bias=False) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.nin_shortcut is not None:
            return self.nin_shortcut(h) + h
        return x + h


class _Blocks(nn.Module):
    """A resolution level: ``block.0 .. block.{n-1}`` (the checkpoint's naming)."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * num_blocks
        self.block = nn.ModuleList(ResnetBlock(a, b) for a, b in itertools.pairwise(widths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return x


class _Mid(nn.Module):
    """Two residual blocks at the bottleneck; the port has no attention between them."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.block_1(x))


class _Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv (with bias)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _UpLevel(_Blocks):
    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, upsample: bool) -> None:
        super().__init__(in_channels, out_channels, num_blocks)
        self.upsample = _Upsample(out_channels) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return self.upsample(x) if self.upsample is not None else x


class Encoder(nn.Module):
    def __init__(
        self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int, in_channels: int
    ) -> None:
        super().__init__()
        widths = [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1, bias=False)
        previous = [ch, *widths[:-1]]
        self.down = nn.ModuleList(_Blocks(a, b, num_res_blocks) for a, b in zip(previous, widths))
        self.mid = _Mid(widths[-1])
        self.norm_out = _norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        last = len(self.down) - 1
        for i, level in enumerate(self.down):
            h = level(h)
            if i < last:  # every level but the last halves the resolution, without parameters
                h = F.avg_pool2d(h, kernel_size=2, stride=2)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(
        self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int, out_channels: int
    ) -> None:
        super().__init__()
        widths = [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(z_channels, widths[-1], 3, padding=1)
        self.mid = _Mid(widths[-1])
        # ``up`` is indexed by level (up.0 is applied last), and level i is fed by level i + 1.
        inputs = [*widths[1:], widths[-1]]
        self.up = nn.ModuleList(
            _UpLevel(inputs[i], widths[i], num_res_blocks, upsample=i > 0) for i in range(len(widths))
        )
        self.norm_out = _norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Codebook(nn.Module):
    """``quantize.embedding``: nearest entry by squared L2 distance, without normalisation."""

    def __init__(self, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, dim)

    def nearest(self, vectors: torch.Tensor) -> torch.Tensor:
        """(N, dim) -> (N,) int64 index of the nearest entry (ties: the lowest index).

        argmin_j ||z - e_j||^2 = argmin_j (||e_j||^2 - 2 z.e_j): ||z||^2 is the same for every j,
        so it is dropped (which also avoids cancellation in a large-minus-large difference). The
        search runs in float32 outside autocast so that a bf16 run picks the same codes, and in
        fixed-size row blocks so memory does not grow with the batch.
        """
        with torch.autocast(device_type=vectors.device.type, enabled=False):
            codes = self.embedding.weight.float()
            code_sq = codes.square().sum(dim=1)
            vectors = vectors.float()
            out = torch.empty(vectors.shape[0], dtype=torch.int64, device=vectors.device)
            for start in range(0, vectors.shape[0], QUANTIZE_CHUNK_ROWS):
                block = vectors[start : start + QUANTIZE_CHUNK_ROWS]
                distances = torch.addmm(code_sq.unsqueeze(0), block, codes.t(), alpha=-2.0)
                out[start : start + block.shape[0]] = distances.argmin(dim=1)
        return out


class VQGANTokenizer(Tokenizer):
    """The MaskGIT VQGAN behind the :class:`Tokenizer` interface; defaults = the checkpoint."""

    kind = "pretrained"

    def __init__(
        self,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        z_channels: int = 256,
        codebook_size: int = 1024,
        image_size: int = 256,
        channels: int = 3,
    ) -> None:
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)
        if not ch_mult or num_res_blocks < 1 or min(ch_mult) < 1:
            raise ValueError(f"VQGAN needs at least one level and one block per level: {ch_mult=}")
        bad_widths = sorted({ch * m for m in ch_mult if (ch * m) % NORM_GROUPS})
        if bad_widths:
            raise ValueError(
                f"VQGAN level widths {bad_widths} are not multiples of {NORM_GROUPS} (GroupNorm)"
            )
        factor = 2 ** (len(ch_mult) - 1)
        if image_size % factor:
            raise ValueError(f"image_size {image_size} is not divisible by the downsampling factor {factor}")
        self._args: dict[str, Any] = {
            "ch": ch,
            "ch_mult": list(ch_mult),
            "num_res_blocks": num_res_blocks,
            "z_channels": z_channels,
            "codebook_size": codebook_size,
            "image_size": image_size,
            "channels": channels,
        }
        self._grid = image_size // factor
        # Registration order fixes the state-dict order: encoder, decoder, quantize (as the file).
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, z_channels, channels)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, z_channels, channels)
        self.quantize = Codebook(codebook_size, z_channels)

    # -- Tokenizer interface -------------------------------------------------------------------

    @property
    def codebook_size(self) -> int:
        return self._args["codebook_size"]

    @property
    def grid(self) -> tuple[int, int]:
        return (self._grid, self._grid)

    def init_args(self) -> dict[str, Any]:
        return {**self._args, "ch_mult": list(self._args["ch_mult"])}

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, grid_h * grid_w) int64 tokens, row-major, on the model's device."""
        return self.quantize_latents(self.encode_latents(images))

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, grid_h * grid_w) tokens -> (B, C, H, W) images clamped to [0, 1]."""
        return self.decode_latents(self.lookup_tokens(tokens))

    # -- The two halves, exposed for tests and diagnostics -------------------------------------

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder output z (B, z_channels, grid_h, grid_w), before quantisation."""
        expected = (self.channels, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise PipelineError(
                f"the pretrained VQGAN expects images of shape (B, {', '.join(map(str, expected))}), "
                f"got {tuple(images.shape)}: set data.image_size to {self.image_size}"
            )
        weight = self.encoder.conv_in.weight
        return self.encoder(images.to(device=weight.device, dtype=weight.dtype))

    def quantize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) latents -> (B, h * w) indices of the nearest codes, row-major."""
        batch, dim, height, width = latents.shape
        flat = latents.permute(0, 2, 3, 1).reshape(batch * height * width, dim)
        return self.quantize.nearest(flat).view(batch, height * width)

    def lookup_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h * w) tokens -> code vectors laid out as latents (B, D, h, w)."""
        grid_h, grid_w = self.grid
        if tokens.ndim != 2 or tokens.shape[1] != grid_h * grid_w:
            raise ValueError(f"expected tokens of shape (B, {grid_h * grid_w}), got {tuple(tokens.shape)}")
        weight = self.quantize.embedding.weight
        tokens = tokens.to(device=weight.device, dtype=torch.int64)
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.codebook_size):
            raise ValueError(
                f"token ids must lie in [0, {self.codebook_size}), "
                f"got [{int(tokens.min())}, {int(tokens.max())}]"
            )
        vectors = self.quantize.embedding(tokens)  # (B, h*w, D), row-major cells
        return vectors.view(tokens.shape[0], grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous()

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Decoder output for latents (B, D, h, w), clamped to the [0, 1] pixel range."""
        weight = self.decoder.conv_in.weight
        return self.decoder(latents.to(dtype=weight.dtype)).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Loading the published checkpoint
# ----------------------------------------------------------------------------------------------


def load_pretrained_vqgan(path: str | Path, **arch: Any) -> VQGANTokenizer:
    """Load a MaskGIT VQGAN checkpoint strictly and return the tokenizer in eval mode on the CPU.

    ``path`` holds a state dict, or a dict with the state dict under ``"state_dict"``. ``arch``
    overrides the constructor's defaults (only for non-standard checkpoints, e.g. in tests).
    Missing, unexpected or misshapen entries raise :class:`PipelineError` listing them.
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError(
            f"VQGAN checkpoint {path} not found: download vqgan_jax_strongaug.ckpt "
            "(MaskGIT VQGAN, PyTorch port) and point tokenizer.checkpoint at it"
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise PipelineError(f"VQGAN checkpoint {path} cannot be read as a PyTorch state dict: {exc}") from exc
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise PipelineError(f"VQGAN checkpoint {path} holds a {type(loaded).__name__}, not a state dict")

    model = VQGANTokenizer(**arch)
    problems = layout_differences({k: tuple(v.shape) for k, v in model.state_dict().items()}, loaded)
    if problems:
        raise PipelineError(
            f"VQGAN checkpoint {path} does not match the MaskGIT VQGAN architecture:\n  "
            + "\n  ".join(problems)
        )
    model.load_state_dict(loaded, strict=True)
    return model.eval()
