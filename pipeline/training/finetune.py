"""The fine-tunes of the DAG: ``finetune@{control,permuted,kamig}``, from params to a trained model.

Each starts from the base model's EMA weights and trains with the ``kamig.*`` recipe on the same
data order, the same output head and, but for the control, the same adapter (``fusion.adapter``):

* ``control`` is the base model alone, without an adapter: a head-only fine-tune. It reads no
  ``fusion.*`` param and no graph, so an adapter or graph experiment re-uses it;
* ``permuted`` uses the graphs relabelled by one fixed permutation of the vocabulary
  (:func:`pipeline.graphs.storage.permuted`): the adapter's capacity without its knowledge;
* ``kamig`` uses the graphs.

The graphs: ``fusion.adapter: pipeline`` reads ``data/graphs``; ``official`` reads the official
construction of the co-occurrence and similarity graphs in ``data/graphs_official`` and the
incompatibility matrix from ``data/graphs``' position-token counts (``fusion.min_count``).
``kamig.freeze_backbone: true`` (the paper) trains the adapter and the output head's own layers;
``false`` trains everything. With ``kamig.init: checkpoint``, ``kamig`` is the authors' released
model imported from ``pretrained/kamig/`` (:func:`import_release`) instead of a fine-tune.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipeline import layout
from pipeline.config import Config, FusionConfig, Recipe, TrainConfig, replace
from pipeline.errors import PipelineError
from pipeline.files import file_digest
from pipeline.graphs.storage import (
    GRAPH_FILES,
    POSITIVE_GRAPHS,
    KnowledgeGraphData,
    load_knowledge_graphs,
    load_official_edges,
    permuted,
)
from pipeline.model.generators import Graphs, build_generator, load_generator
from pipeline.model.io import WEIGHTS_FILE
from pipeline.model.kamig import ReleasedFiles, import_kamig
from pipeline.model.knowledge import KnowledgeGraphs
from pipeline.model.official import OfficialGraphs
from pipeline.model.transformer import MaskGIT
from pipeline.model.uvit import UViT
from pipeline.seeds import derive_seed
from pipeline.shards import TokenMeta
from pipeline.training.loop import TrainResult, TrainRun, train_generator
from pipeline.training.runs import TokenData, imported_result, load_token_splits, resume_key, split_digest

FINETUNE_STREAM = "finetune"  # every fine-tune shares it: the same data order and masks
# The permuted (null) variant's one fixed relabelling of the vocabulary: a constant, not a param.
NULL_PERMUTATION_SEED = 20251115


def finetune_recipe(cfg: Config) -> TrainConfig:
    """The ``kamig`` recipe, executed and checkpointed as ``train`` says (grad_accum, precision...)."""
    return replace(cfg.train, **{name: getattr(cfg.kamig, name) for name in Recipe.model_fields})


def graph_files(fusion: FusionConfig) -> dict[str, Path]:
    """The file each enabled graph is read from."""
    official = fusion.adapter == "official"
    return {name: (layout.GRAPHS_OFFICIAL_DIR if official and name in POSITIVE_GRAPHS else layout.GRAPHS_DIR)
            / GRAPH_FILES[name] for name in fusion.graphs}


def load_graph_data(fusion: FusionConfig, meta: TokenMeta) -> KnowledgeGraphData:
    """The enabled graphs as checked arrays, from the files :func:`graph_files` names."""
    official = fusion.adapter == "official"
    mined = [g for g in fusion.graphs if not (official and g in POSITIVE_GRAPHS)]
    data = load_knowledge_graphs(layout.GRAPHS_DIR, codebook_size=meta.codebook_size,
                                 num_classes=meta.num_classes, seq_len=meta.seq_len, graphs=mined,
                                 min_count=fusion.min_count)
    files = graph_files(fusion)
    for name in fusion.graphs:
        if official and name in POSITIVE_GRAPHS:
            src, dst, weight = load_official_edges(files[name])
            nodes = np.concatenate([src, dst])
            if nodes.size and (nodes.min() < 0 or nodes.max() >= meta.codebook_size):
                raise PipelineError(f"graph file {files[name]} names tokens outside [0, "
                                    f"{meta.codebook_size}): other tokens? re-run dvc repro graphs")
            data.edges[name] = (src, dst, weight)
    return data


def adapter_graphs(fusion: FusionConfig, data: KnowledgeGraphData) -> Graphs:
    """The graph tensors the adapter ``fusion.adapter`` names is built from."""
    if fusion.adapter == "official":
        return OfficialGraphs.from_compatible_sets(data.codebook_size, data.num_classes, data.seq_len,
                                                   data.edges, data.compatible_ptr, data.compatible_tokens)
    return KnowledgeGraphs.from_data(data)


def finetune(cfg: Config, variant: str) -> TrainResult:
    if variant not in layout.FINETUNE_VARIANTS:
        raise PipelineError(f"unknown fine-tuning variant {variant!r}; "
                            f"choose one of {list(layout.FINETUNE_VARIANTS)}")
    data = load_token_splits(cfg.train.val_images)
    meta = data.meta
    if variant == layout.KAMIG and cfg.kamig.init == "checkpoint":
        return import_release(cfg, data)
    base_dir = layout.model_dir(layout.BASE)
    model = load_generator(base_dir, expected_meta=meta)
    adapter: dict[str, object] = {}  # what the run depends on besides the base model and tokens
    if variant != layout.CONTROL:  # the control is the base model alone: a head-only fine-tune
        model = with_adapter(model, cfg, variant, meta)
        adapter = {"adapter": cfg.fusion.to_dict(),
                   "graphs": {name: file_digest(path) for name, path in graph_files(cfg.fusion).items()}}

    names = [name for name, _ in model.named_parameters()]
    if cfg.kamig.freeze_backbone:  # the paper: the adapter and the output head's own layers
        trainable = [n for n in names if n.startswith(("adapter.", model.head_prefix))]
    else:
        trainable = names
    recipe = finetune_recipe(cfg)
    run = TrainRun(
        recipe=recipe, seed=cfg.kamig.seed, stream=FINETUNE_STREAM, trainable=tuple(trainable),
        checkpoint_dir=layout.checkpoint_dir(variant), live_dir=layout.live_dir(variant), desc=variant,
        fingerprint={
            "stage": f"finetune@{variant}",
            "settings": resume_key(recipe, cfg.kamig.seed, FINETUNE_STREAM),
            "trainable": trainable,
            "tokens": asdict(meta),
            "train_shards": split_digest(layout.TOKENS_DIR / "train"),
            "base_weights": file_digest(base_dir / WEIGHTS_FILE),
            **adapter,
        },
    )
    return dataclasses.replace(train_generator(model, run, data.train, data.val), token_meta=meta)


def with_adapter(base: MaskGIT | UViT, cfg: Config, variant: str, meta: TokenMeta) -> MaskGIT | UViT:
    """``base`` plus the zero-initialised adapter ``fusion.adapter`` names, over the graphs
    (``permuted``: relabelled by :data:`NULL_PERMUTATION_SEED`)."""
    graphs = load_graph_data(cfg.fusion, meta)
    if variant == layout.PERMUTED:
        relabelling = np.random.default_rng(NULL_PERMUTATION_SEED).permutation(meta.codebook_size)
        graphs = permuted(graphs, relabelling)
    # The official adapter's GCN weights are drawn: the same for both variants of one kamig.seed.
    model = build_generator(base.spec, cfg.fusion, adapter_graphs(cfg.fusion, graphs),
                            seed=derive_seed(cfg.kamig.seed, "adapter", "init"))
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    if unexpected or any(not name.startswith("adapter.") for name in missing):
        raise PipelineError(f"the base model does not fit the fine-tuning model: {missing} {unexpected}")
    return model


def import_release(cfg: Config, data: TokenData) -> TrainResult:
    """``models/kamig`` from the authors' released model (``kamig.init: checkpoint``): no training, a
    check that it fits the tokens, and the same masked validation as a fine-tuned model."""
    checkpoint = Path(cfg.kamig.checkpoint)
    graphs = (checkpoint.parent / name for name in layout.KAMIG_RELEASE_GRAPHS.values())  # published names
    model = import_kamig(ReleasedFiles(checkpoint, *graphs), heads=cfg.model.heads)
    return imported_result(model, checkpoint, data, finetune_recipe(cfg), cfg.kamig.seed)
