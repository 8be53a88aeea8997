"""Which class rebuilds a saved tokenizer: an explicit mapping from ``kind`` to implementation."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.errors import PipelineError
from pipeline.tokenizer.base import CONFIG_FILE, WEIGHTS_FILE, Tokenizer
from pipeline.tokenizer.vqgan import VQGANTokenizer
from pipeline.tokenizer.vqvae import VQVAE

TOKENIZERS: dict[str, type[Tokenizer]] = {cls.kind: cls for cls in (VQVAE, VQGANTokenizer)}


def load_tokenizer(directory: str | Path, device: str | torch.device = "cpu") -> Tokenizer:
    """Rebuild a saved tokenizer in eval mode."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise PipelineError(f"no tokenizer at {directory} ({CONFIG_FILE} missing): run `dvc repro tokenizer`")
    config = json.loads(config_path.read_text())
    kind = config["kind"]
    if kind not in TOKENIZERS:
        raise PipelineError(f"{config_path}: unknown tokenizer kind {kind!r}; known: {sorted(TOKENIZERS)}")
    model = TOKENIZERS[kind](**config["args"])
    state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
