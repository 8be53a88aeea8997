"""The one weight format of every model the pipeline writes: safetensors beside a JSON config.

Tokenizers, the evaluation classifier and generators keep their tensors in ``model.safetensors``
(no pickle: loading runs no code) and what rebuilds the module in ``config.json``. Loading is
strict: the caller's ``load_state_dict(..., strict=True)`` names any missing or unexpected key.

:func:`tensor_fingerprint` identifies weights by their contents (names, dtypes, shapes and bytes,
in name order), not by a file's bytes, so the identity of a model survives a change of container.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pipeline.errors import PipelineError
from pipeline.files import atomic_path

WEIGHTS_FILE = "model.safetensors"


def save_weights(state: Mapping[str, torch.Tensor], path: str | Path,
                 metadata: dict[str, str] | None = None) -> None:
    """Atomically write ``state`` (a state dict) as safetensors, with string ``metadata``."""
    # safetensors stores each tensor once: contiguous CPU copies, shared storage split.
    tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a safetensors file, on the CPU."""
    path = Path(path)
    if not path.is_file():
        old = sorted(p.name for p in path.parent.glob("*.pt"))
        hint = (f" ({', '.join(old)} is the format of an older version: re-run `dvc repro`)" if old else "")
        raise PipelineError(f"no weights at {path}{hint}")
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise PipelineError(f"cannot read the weights in {path}: {exc}") from exc


def tensor_fingerprint(state: Mapping[str, torch.Tensor], extra: bytes = b"") -> str:
    """sha256 (16 hex digits) over ``extra`` and every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(extra)
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{str(tensor.dtype).removeprefix('torch.')}|{list(tensor.shape)}|".encode())
        # Bytes as stored (bfloat16 has no numpy dtype, so view every tensor as raw bytes).
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
