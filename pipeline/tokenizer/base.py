"""The tokenizer interface every image tokenizer implements, and its on-disk format.

A tokenizer maps images (B, C, H, W) with pixels in [0, 1] to row-major token sequences
(B, grid_h * grid_w) of ints in [0, codebook_size), and back. ``models/tokenizer/`` holds
``config.json`` (``kind`` plus the constructor arguments) and ``model.pt`` (a state dict); the
fingerprint of that pair is recorded in every token shard, so tokens are never decoded by a
different tokenizer than the one that produced them.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.files import atomic_path

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"


class Tokenizer(nn.Module, ABC):
    """Base class: subclasses set ``kind`` and implement the four members below."""

    kind: ClassVar[str]
    registry: ClassVar[dict[str, type[Tokenizer]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            Tokenizer.registry[cls.kind] = cls

    @property
    @abstractmethod
    def codebook_size(self) -> int: ...

    @property
    @abstractmethod
    def grid(self) -> tuple[int, int]:
        """(grid_h, grid_w) of the token grid."""

    @property
    @abstractmethod
    def channels(self) -> int: ...

    @property
    @abstractmethod
    def image_size(self) -> int: ...

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) floats in [0, 1] -> (B, grid_h * grid_w) int64 tokens, row-major."""

    @abstractmethod
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, grid_h * grid_w) tokens -> (B, C, H, W) floats clamped to [0, 1]."""

    @abstractmethod
    def init_args(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this module (saved in config.json)."""

    @property
    def seq_len(self) -> int:
        grid_h, grid_w = self.grid
        return grid_h * grid_w


def save_tokenizer(tokenizer: Tokenizer, directory: str | Path, extra: dict[str, Any] | None = None) -> str:
    """Write config.json and model.pt into ``directory``; return the fingerprint."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        torch.save(tokenizer.state_dict(), tmp)
    config = {
        "kind": tokenizer.kind,
        "args": tokenizer.init_args(),
        "codebook_size": tokenizer.codebook_size,
        "grid": list(tokenizer.grid),
        "channels": tokenizer.channels,
        "image_size": tokenizer.image_size,
        **(extra or {}),
    }
    with atomic_path(directory / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return tokenizer_fingerprint(directory)


def tokenizer_fingerprint(directory: str | Path) -> str:
    """sha256 over the architecture arguments and the weights: the tokenizer's identity."""
    directory = Path(directory)
    config = json.loads((directory / CONFIG_FILE).read_text())
    digest = hashlib.sha256()
    digest.update(json.dumps({"kind": config["kind"], "args": config["args"]}, sort_keys=True).encode())
    with open(directory / WEIGHTS_FILE, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def load_tokenizer(directory: str | Path, device: str | torch.device = "cpu") -> Tokenizer:
    """Rebuild a saved tokenizer in eval mode."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise PipelineError(f"no tokenizer at {directory} ({CONFIG_FILE} missing): run `dvc repro tokenizer`")
    config = json.loads(config_path.read_text())
    kind = config["kind"]
    _import_implementations()
    if kind not in Tokenizer.registry:
        known = sorted(Tokenizer.registry)
        raise PipelineError(f"{config_path}: unknown tokenizer kind {kind!r}; known: {known}")
    model = Tokenizer.registry[kind](**config["args"])
    state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def _import_implementations() -> None:
    # Importing the modules registers their Tokenizer subclasses.
    from pipeline.tokenizer import vqgan, vqvae  # noqa: F401
