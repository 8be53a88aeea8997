"""Which class rebuilds a saved tokenizer: an explicit mapping from ``kind`` to implementation."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.errors import PipelineError
from pipeline.tokenizer.base import CONFIG_FILE, WEIGHTS_FILE, Tokenizer, fingerprint_of
from pipeline.tokenizer.vqgan import VQGANTokenizer
from pipeline.tokenizer.vqvae import VQVAE
from pipeline.weights import load_weights

TOKENIZERS: dict[str, type[Tokenizer]] = {cls.kind: cls for cls in (VQVAE, VQGANTokenizer)}


def load_tokenizer(directory: str | Path, device: str | torch.device = "cpu", *,
                   expected_fingerprint: str | None = None, hint: str = "re-run `dvc repro`") -> Tokenizer:
    """Rebuild a saved tokenizer in eval mode.

    With ``expected_fingerprint`` (a token shard's or a model's record of the tokenizer its tokens
    came from), refuse a different tokenizer, naming both fingerprints and ``hint``.
    """
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise PipelineError(f"no tokenizer at {directory} ({CONFIG_FILE} missing): run `dvc repro tokenizer`")
    config = json.loads(config_path.read_text())
    kind = config["kind"]
    if kind not in TOKENIZERS:
        raise PipelineError(f"{config_path}: unknown tokenizer kind {kind!r}; known: {sorted(TOKENIZERS)}")
    state = load_weights(directory / WEIGHTS_FILE)
    if expected_fingerprint is not None and (found := fingerprint_of(config, state)) != expected_fingerprint:
        raise PipelineError(f"the tokenizer at {directory} (fingerprint {found}) is not the one the tokens "
                            f"were made with ({expected_fingerprint}): {hint}")
    model = TOKENIZERS[kind](**config["args"])
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
