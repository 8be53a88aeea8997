"""The tokenizer interface every image tokenizer implements, and its on-disk format.

A tokenizer maps images (B, C, H, W) with pixels in [0, 1] to row-major token sequences
(B, grid_h * grid_w) of ints in [0, codebook_size), and back. ``models/tokenizer/`` holds
``config.json`` (``kind`` plus the constructor arguments) and ``model.safetensors`` (the state
dict, :mod:`pipeline.weights`), read back by :func:`pipeline.tokenizer.registry.load_tokenizer`.
The fingerprint of the pair (the architecture and the tensors' contents, not the file's bytes) is
recorded in every token shard, so tokens are never decoded by a different tokenizer than the one
that produced them.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from pipeline.files import atomic_path
from pipeline.weights import WEIGHTS_FILE, load_weights, save_weights, tensor_fingerprint

CONFIG_FILE = "config.json"


class Tokenizer(nn.Module, ABC):
    """Base class: subclasses set ``kind`` (the ``tokenizer.kind`` that builds them, saved in
    config.json; :data:`pipeline.tokenizer.registry.TOKENIZERS` maps it back to the class) and
    implement the members below."""

    kind: ClassVar[str]
    _args: dict[str, Any]  # the constructor's arguments, set by every subclass (config.json "args")

    @property
    @abstractmethod
    def codebook_size(self) -> int: ...

    @property
    @abstractmethod
    def grid(self) -> tuple[int, int]:
        """(grid_h, grid_w) of the token grid."""

    @property
    def channels(self) -> int:
        return self._args["channels"]

    @property
    def image_size(self) -> int:
        return self._args["image_size"]

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
    """Write config.json and model.safetensors into ``directory``; return the fingerprint."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(tokenizer.state_dict(), directory / WEIGHTS_FILE)
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
    """The identity of the tokenizer saved in ``directory``: see :func:`fingerprint_of`."""
    directory = Path(directory)
    config = json.loads((directory / CONFIG_FILE).read_text())
    return fingerprint_of(config, load_weights(directory / WEIGHTS_FILE))


def fingerprint_of(config: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
    """sha256 over the architecture (``kind``, ``args``) and the tensors' contents."""
    architecture = json.dumps({"kind": config["kind"], "args": config["args"]}, sort_keys=True)
    return tensor_fingerprint(state, extra=architecture.encode())
