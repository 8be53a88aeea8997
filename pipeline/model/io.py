"""A generator on disk: ``models/<variant>/`` holds ``model.safetensors`` and ``config.json``.

``config.json`` records everything needed to rebuild the module without ``params.yaml``:

* ``architecture``: the :class:`GeneratorSpec`, or the :class:`UViTSpec` when ``arch`` is "uvit"
  (no ``arch`` key: "maskgit", as in model directories written before AutoNAT support);
* ``adapter``: the ``fusion`` params it was built with (graphs used, negative_at, GCN layers,
  fusion weight, min_count), or null for the base model. Its ``adapter`` key says which adapter
  (``official``); an entry without it is this pipeline's design (every model written before the
  official mode existed, and every model of that design since, so that their bytes stay the same).
  The graphs are buffers in the weights file;
* ``tokens``: the token meta the model was trained on, including the tokenizer fingerprint, so a
  model is never silently used with tokens from another tokenizer or grid;
* ``variant`` and ``weights``: "ema" (only the EMA weights are saved; they are what samples).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.config import ModelConfig
from pipeline.errors import PipelineError
from pipeline.files import atomic_dir
from pipeline.model.adapter import Adapter
from pipeline.model.transformer import GeneratorSpec, MaskGIT
from pipeline.model.uvit import UViT, UViTSpec
from pipeline.shards import TokenMeta
from pipeline.weights import WEIGHTS_FILE, save_weights

CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


def spec_from_architecture(architecture: dict[str, Any]) -> GeneratorSpec | UViTSpec:
    """The spec saved as ``config.json``'s ``architecture``, dispatched on its ``arch`` key."""
    arch = architecture.get("arch", "maskgit")
    if arch == "uvit":
        return UViTSpec.from_dict(architecture)
    if arch != "maskgit":
        raise PipelineError(f"unknown generator architecture {arch!r} (expected 'maskgit' or 'uvit')")
    return GeneratorSpec(**{k: v for k, v in architecture.items() if k != "arch"})


def spec_from_config(
    model: ModelConfig, codebook_size: int, num_classes: int, seq_len: int
) -> GeneratorSpec | UViTSpec:
    """The architecture ``model.*`` describes for this token layout (``model.arch`` picks the class)."""
    if model.arch == "uvit":
        return UViTSpec(codebook_size=codebook_size, num_classes=num_classes, seq_len=seq_len,
                        dim=model.dim, depth=model.depth, heads=model.heads, mlp_ratio=model.mlp_ratio,
                        dropout=model.dropout)
    return GeneratorSpec.from_config(model, codebook_size, num_classes, seq_len)


def build_backbone(spec: GeneratorSpec | UViTSpec, adapter: Adapter | None = None) -> MaskGIT | UViT:
    """A fresh backbone of ``spec``'s architecture, carrying ``adapter`` if one is given."""
    return UViT(spec, adapter) if isinstance(spec, UViTSpec) else MaskGIT(spec, adapter)


def save_generator(model: MaskGIT, directory: str | Path, *, variant: str, token_meta: TokenMeta) -> None:
    """Atomically write the weights (as given: pass the EMA model) and ``config.json``."""
    adapter = model.adapter
    config = {
        "format": FORMAT_VERSION,
        "variant": variant,
        "weights": "ema",
        "architecture": model.spec.to_dict(),
        "adapter": None if adapter is None else adapter.config_dict(),
        "tokens": asdict(token_meta),
    }
    with atomic_dir(directory) as tmp:
        save_weights(model.state_dict(), tmp / WEIGHTS_FILE, metadata={"format": str(FORMAT_VERSION)})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_generator_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise PipelineError(f"{path} not found: train the model first (dvc repro)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path} is not valid JSON: {exc}") from exc
    if config.get("format") != FORMAT_VERSION:
        raise PipelineError(f"{path} has format {config.get('format')!r}, expected {FORMAT_VERSION}")
    return config


def check_token_meta(model_dir: str | Path, model_tokens: dict[str, Any], expected: TokenMeta) -> None:
    """Fail clearly when a model was trained on other tokens than the ones at hand."""
    actual = TokenMeta(**model_tokens)
    if actual == expected:
        return
    diffs = [
        f"{name}: model {getattr(actual, name)!r} vs tokens {getattr(expected, name)!r}"
        for name in asdict(expected)
        if getattr(actual, name) != getattr(expected, name)
    ]
    raise PipelineError(
        f"{model_dir} was trained on different tokens than data/tokens ({'; '.join(diffs)}); "
        "re-run the training stages (dvc repro)"
    )
