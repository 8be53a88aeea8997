"""The authors' released KA-MIG model as a :class:`~pipeline.model.uvit.UViT` with an
:class:`~pipeline.model.official.OfficialAdapter` (``--from kamig`` of :mod:`pipeline.model.convert`).

The release (GuotaoLiang/KA-MIG, spec §2.1-2.3 of ``pretrained-generators.md``) is four files:

* ``graph_nnet_ema.pth``: AutoNAT-L's state dict plus 114 ``graph_layer.*`` keys (spec §2.2,
  Appendix A.2; torch_geometric 2.x names ``convK.lin.weight``, ``convK.bias``), read with
  ``torch.load(weights_only=True)``;
* the co-occurrence and similarity graphs, pickled ``[edge_index (2, E) int64, edge_weight (E,)]``;
* the (classes x positions x codes) incompatibility matrix, pickled dense; the official code appends
  a zero row for the null class, so does this importer.

The pickles are read by :mod:`pipeline.model.pickles`, which runs no code from a file. Width, depth,
vocabulary, classes and positions come from the shapes; the load is strict, listing every missing,
unexpected and wrongly shaped key of the whole file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import FusionConfig
from pipeline.errors import PipelineError
from pipeline.model.autonat import AUTONAT_HEADS, IGNORED_KEY_SUFFIXES, autonat_spec, read_torch_state
from pipeline.model.official import OfficialAdapter, OfficialGraphs, RowConstantMatrix
from pipeline.model.pickles import read_graph_pickle, read_incompatibility_pickle
from pipeline.model.uvit import UViT
from pipeline.state_dicts import layout_differences

RELEASE_PREFIX = "graph_layer."  # the adapter's attribute in UViTGraphAdapter (spec §2.2)
ADAPTER_PREFIX = "adapter."  # ours
# The released layer is the official one with every graph: fusion as the official code fixes it.
RELEASED_FUSION = FusionConfig(adapter="official", null_negative="zero")


@dataclass(frozen=True)
class ReleasedFiles:
    checkpoint: Path
    cooccurrence: Path
    similarity: Path
    incompatibility: Path


def released_graphs(files: ReleasedFiles, codes: int, classes: int, positions: int) -> OfficialGraphs:
    """The three graph files, checked against the checkpoint's codes, classes and positions."""
    graphs = OfficialGraphs(codes, classes, positions)
    for name, path in (("cooccurrence", files.cooccurrence), ("similarity", files.similarity)):
        graphs.edges[name] = read_graph_pickle(path, num_codes=codes)
    dense = read_incompatibility_pickle(files.incompatibility, num_classes=classes, seq_len=positions,
                                        num_codes=codes)
    if dense.shape[0] == classes:  # the official code appends the null class's zero row (spec §2.2)
        dense = torch.cat([dense, dense.new_zeros(1, positions, codes)])
    try:
        graphs.incompatibility = RowConstantMatrix.from_dense(dense.reshape(-1, codes))
    except ValueError as exc:
        raise PipelineError(f"{files.incompatibility}: {exc}") from exc
    return graphs


def import_kamig(files: ReleasedFiles, heads: int = AUTONAT_HEADS) -> UViT:
    """The released model (eval mode, float32): the checkpoint's tensors and the graph files."""
    state = read_torch_state(files.checkpoint)
    state = {k: v for k, v in state.items() if not k.endswith(IGNORED_KEY_SUFFIXES)}
    backbone_state = {k: v for k, v in state.items() if not k.startswith(RELEASE_PREFIX)}
    if len(backbone_state) == len(state):
        raise PipelineError(f"{files.checkpoint} has no '{RELEASE_PREFIX}*' keys: not a KA-MIG checkpoint "
                            "(an AutoNAT one imports with --from autonat)")
    spec = autonat_spec(backbone_state, heads)
    graphs = released_graphs(files, spec.codebook_size, spec.num_classes, spec.seq_len)
    adapter = OfficialAdapter(spec.dim, spec.injection_points, graphs, RELEASED_FUSION)
    with torch.device("meta"):  # no memory and no random init for weights about to be replaced
        backbone = UViT(spec)
    expected = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    expected |= {RELEASE_PREFIX + k: tuple(v.shape) for k, v in adapter.named_parameters()}
    problems = layout_differences(expected, state, floating=True)
    if problems:
        raise PipelineError(f"{files.checkpoint} does not match the KA-MIG layout (AutoNAT U-ViT + official "
                            "graph layer): " + "; ".join(problems))
    weights = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in state.items()}
    backbone.load_state_dict({k: weights[k] for k in backbone_state}, strict=True, assign=True)
    adapter_weights = {k[len(RELEASE_PREFIX):]: v for k, v in weights.items() if k.startswith(RELEASE_PREFIX)}
    missing, unexpected = adapter.load_state_dict(adapter_weights, strict=False)
    assert not unexpected and all(name in dict(adapter.named_buffers()) for name in missing)
    backbone.adapter = adapter
    return backbone.eval()


def compare_backbones(released: UViT, autonat_state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the released backbone's tensors that differ from AutoNAT-L's, ``mlm_layer.*`` aside
    (fine-tuned with the adapter, spec §2.1). Spec §2.1 marks their equality unverified."""
    ours = {k: v for k, v in released.state_dict().items() if not k.startswith(ADAPTER_PREFIX)}
    differ = []
    for name, value in ours.items():
        if name.startswith("mlm_layer."):
            continue
        other = autonat_state.get(name)
        if other is None or other.shape != value.shape or not torch.equal(other.to(value.dtype), value):
            differ.append(name)
    return differ
