"""Generators with their adapters: building one from params, and loading one from its directory.

:mod:`pipeline.model.io` owns the disk format and the plain backbones; this module adds the two
knowledge adapters (``fusion.adapter``: :mod:`~pipeline.model.knowledge`, this pipeline's design,
and :mod:`~pipeline.model.official`, the published layer), so that code which only trains or
imports a backbone (``train_base``) does not depend on the graph code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.config import FusionConfig, replace
from pipeline.errors import PipelineError
from pipeline.model.adapter import Adapter
from pipeline.model.io import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    build_backbone,
    check_token_meta,
    read_generator_config,
    spec_from_architecture,
)
from pipeline.model.knowledge import KnowledgeAdapter, KnowledgeGraphs
from pipeline.model.official import OfficialAdapter, OfficialGraphs
from pipeline.model.transformer import GeneratorSpec, MaskGIT
from pipeline.model.uvit import UViT, UViTSpec
from pipeline.shards import TokenMeta
from pipeline.weights import load_weights

Graphs = KnowledgeGraphs | OfficialGraphs


def build_adapter(
    spec: GeneratorSpec | UViTSpec, fusion: FusionConfig, graphs: Graphs, seed: int | None = None
) -> Adapter:
    """The adapter ``fusion.adapter`` names, for ``spec``'s injection points (zero-initialised
    fusion). ``seed`` draws the official adapter's GCN and projection weights (this pipeline's
    adapter starts from fixed identity and zero weights)."""
    if fusion.adapter == "official":
        if not isinstance(graphs, OfficialGraphs):
            raise ValueError("fusion.adapter 'official' needs OfficialGraphs")
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        return OfficialAdapter(spec.dim, spec.injection_points, graphs, fusion, generator)
    if not isinstance(graphs, KnowledgeGraphs):
        raise ValueError("fusion.adapter 'pipeline' needs KnowledgeGraphs")
    return KnowledgeAdapter(spec.dim, spec.injection_points, graphs, fusion)


def build_generator(
    spec: GeneratorSpec | UViTSpec, fusion: FusionConfig | None = None, graphs: Graphs | None = None,
    seed: int | None = None,
) -> MaskGIT | UViT:
    """A fresh model; with ``fusion`` and ``graphs`` it carries a (zero-initialised) adapter."""
    adapter = None
    if fusion is not None:
        if graphs is None:
            raise ValueError("an adapter needs its graphs")
        adapter = build_adapter(spec, fusion, graphs, seed)
    return build_backbone(spec, adapter)


def _fusion_from_dict(raw: dict[str, Any]) -> FusionConfig:
    # The section alone: a control's weight 0 is not a params.yaml of its own to cross-check.
    return replace(FusionConfig(), **raw)


def load_generator(
    model_dir: str | Path, device: str | torch.device = "cpu", expected_meta: TokenMeta | None = None
) -> MaskGIT | UViT:
    """Load ``models/<variant>/`` in eval mode with its EMA weights (and adapter, if it has one).

    With ``expected_meta`` (e.g. ``read_meta("data/tokens")``), a model trained on other tokens
    (tokenizer fingerprint, grid, codebook or class count) raises :class:`PipelineError`.
    """
    model_dir = Path(model_dir)
    config = read_generator_config(model_dir)
    if expected_meta is not None:
        check_token_meta(model_dir, config["tokens"], expected_meta)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise PipelineError(f"{weights} not found: train the model first (dvc repro)")
    state = load_weights(weights)

    spec = spec_from_architecture(config["architecture"])
    fusion, graphs = None, None
    if config["adapter"] is not None:
        fusion = _fusion_from_dict(config["adapter"])
        graph_type = OfficialGraphs if fusion.adapter == "official" else KnowledgeGraphs
        graphs = graph_type.from_state(spec.codebook_size, spec.num_classes, spec.seq_len, state,
                                       prefix="adapter.")
    model = build_generator(spec, fusion, graphs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PipelineError(f"{weights} does not match {model_dir / CONFIG_FILE}: {exc}") from exc
    model.token_meta = TokenMeta(**config["tokens"])
    model.variant = config["variant"]
    return model.to(device).eval()
