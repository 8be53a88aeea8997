"""AutoNAT's published weights as a :class:`~pipeline.model.uvit.UViT` (``--from autonat`` of
:mod:`pipeline.model.convert`, and ``train.init: checkpoint``).

:func:`import_autonat` reads AutoNAT's ``nnet_ema.pth`` (LeapLabTHU/ImprovedNAT, the backbone KA-MIG
fine-tunes; spec §1.1 of ``pretrained-generators.md``): a flat ``state_dict`` of the ``UViT``
module, saved without a ``module.`` prefix and loaded by the originals with strict key matching. So
is this importer:

1. ``torch.load(..., weights_only=True)`` - no pickled code is executed. A directory is taken as an
   AutoNAT training checkpoint (``<step>.ckpt/``), whose EMA weights are its ``nnet_ema.pth``
   (ImprovedNAT ``utils.py`` ``TrainState.save``: one ``<attribute>.pth`` file per state).
2. The architecture is read off the tensor shapes (width, number of in/out blocks, vocabulary,
   classes, sequence length, MLP width), so a reduced-depth file in the same layout imports too.
   The number of heads is not recoverable from shapes: 8 for AutoNAT-L (spec §1.2), ``--heads``
   overrides.
3. The keys must equal those of :class:`~pipeline.model.uvit.UViT` for that architecture; any
   missing, unexpected or wrongly shaped tensor fails with the full list of differences. The only
   tolerated extras are listed in :data:`IGNORED_KEY_SUFFIXES`.
4. The model is written with :func:`~pipeline.model.io.save_generator` as variant "base". Its token
   meta comes from the shapes (square grid, fingerprint ``imported:autonat``) or, with
   ``--tokens-meta``, from the project's ``data/tokens/meta.json``, which must agree with the shapes.

"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from pipeline.errors import PipelineError
from pipeline.model.uvit import UViT, UViTSpec
from pipeline.shards import META_FILE, TokenMeta, read_meta
from pipeline.state_dicts import layout_differences

AUTONAT_FINGERPRINT = "imported:autonat"
AUTONAT_HEADS = 8  # AutoNAT-L, configs/AutoNAT_L.yaml (spec §1.2); not stored in the weights
AUTONAT_EMA_FILE = "nnet_ema.pth"  # inside an AutoNAT training-checkpoint directory
# Harmless extras, dropped before the strict comparison. Only `*position_ids`: ImprovedNAT strips
# such keys when resuming (utils.py l.81, spec §1.1). The UViT registers no such buffer and the
# strict eval load implies the published file has none (UNVERIFIED, spec §6); if present it is an
# index buffer (arange), not a weight.
IGNORED_KEY_SUFFIXES = ("position_ids",)
# How many names of each kind of difference an error lists before summarising.
_LIST_AT_MOST = 20


def read_torch_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` state dict from a torch checkpoint (file, or AutoNAT ckpt dir)."""
    path = Path(path)
    if path.is_dir():
        path = path / AUTONAT_EMA_FILE
    if not path.is_file():
        raise PipelineError(f"checkpoint {path} not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling raises many types; the message says what is wrong
        raise PipelineError(f"cannot read checkpoint {path} as a torch state dict: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise PipelineError(f"checkpoint {path} holds a {type(raw).__name__}, not a state dict")
    # The published file is flat (spec §1.1); nothing documents a nesting key, so none is guessed.
    nested = sorted(str(k) for k, v in raw.items() if not isinstance(v, torch.Tensor))
    if nested:
        raise PipelineError(
            f"checkpoint {path} is not a flat state dict (non-tensor entries: {_names(nested)}); "
            "expected the module's state_dict() as saved by AutoNAT (nnet_ema.pth)"
        )
    return {str(k): v for k, v in raw.items()}


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_LIST_AT_MOST])
    return shown if len(names) <= _LIST_AT_MOST else f"{shown}, ... ({len(names)} in all)"


def _shape(state: Mapping[str, torch.Tensor], key: str, ndim: int) -> tuple[int, ...]:
    if key not in state:
        raise PipelineError(f"not an AutoNAT checkpoint: key '{key}' is missing")
    shape = tuple(state[key].shape)
    if len(shape) != ndim:
        raise PipelineError(f"not an AutoNAT checkpoint: '{key}' has shape {shape}, expected {ndim} dims")
    return shape


def _block_count(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    if indices != set(range(len(indices))):
        raise PipelineError(f"{prefix} indices are not 0..n-1: {sorted(indices)}")
    return len(indices)


def autonat_spec(state: Mapping[str, torch.Tensor], heads: int = AUTONAT_HEADS) -> UViTSpec:
    """The :class:`UViTSpec` that an AutoNAT state dict's shapes imply (spec §1.2, §1.5)."""
    if heads < 1:
        raise PipelineError(f"heads must be a positive number, got {heads}")
    vocab, dim = _shape(state, "token_emb.word_embeddings.weight", 2)
    positions, _ = _shape(state, "token_emb.position_embeddings.weight", 2)
    classes, _ = _shape(state, "context_embed.word_embeddings.weight", 2)
    hidden, _ = _shape(state, "mid_block.mlp.fc1.weight", 2)
    n_in, n_out = _block_count(state, "in_blocks"), _block_count(state, "out_blocks")
    if n_in != n_out:
        raise PipelineError(f"not a U-ViT: {n_in} in_blocks but {n_out} out_blocks")
    if hidden % dim:
        raise PipelineError(f"MLP width {hidden} is not a multiple of the width {dim}")
    try:
        # vocab = codes + mask row, classes = classes + null row (spec §1.2, §1.3)
        return UViTSpec(codebook_size=vocab - 1, num_classes=classes - 1, seq_len=positions, dim=dim,
                        depth=2 * n_in, heads=heads, mlp_ratio=hidden / dim)
    except ValueError as exc:
        raise PipelineError(f"cannot build the U-ViT these weights describe: {exc}") from exc


def check_state(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]) -> None:
    """Raise :class:`PipelineError` listing every missing, unexpected and wrongly shaped key."""
    problems = layout_differences(expected, state, floating=True)
    if problems:
        raise PipelineError("checkpoint does not match the AutoNAT U-ViT layout: " + "; ".join(problems))


def load_autonat_state(state: Mapping[str, torch.Tensor], heads: int = AUTONAT_HEADS) -> UViT:
    """A :class:`UViT` (eval mode, float32) holding exactly the tensors of ``state``."""
    state = {k: v for k, v in state.items() if not k.endswith(IGNORED_KEY_SUFFIXES)}
    if state and all(k.startswith("module.") for k in state):
        raise PipelineError("every key has a 'module.' prefix (the state dict of a DDP/accelerate wrapper); "
                            "the published file has none: save the unwrapped module's state_dict()")
    spec = autonat_spec(state, heads)
    with torch.device("meta"):  # no memory and no random init for weights about to be replaced
        model = UViT(spec)
    check_state(state, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    weights = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in state.items()}
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval()


def import_autonat(path: str | Path, heads: int = AUTONAT_HEADS) -> UViT:
    """Read AutoNAT's ``nnet_ema.pth`` (or a ``<step>.ckpt/`` directory) into a :class:`UViT`."""
    return load_autonat_state(read_torch_state(path), heads)


def token_meta_for(model: UViT, tokens_meta: str | Path | None = None) -> TokenMeta:
    """The token meta to save with ``model``: from ``tokens_meta`` (checked), else from its shapes."""
    spec = model.spec
    if tokens_meta is None:
        side = math.isqrt(spec.seq_len)
        if side * side != spec.seq_len:
            raise PipelineError(f"seq_len {spec.seq_len} is not a square grid: pass --tokens-meta")
        return TokenMeta(side, side, spec.codebook_size, spec.num_classes, AUTONAT_FINGERPRINT)
    path = Path(tokens_meta)
    meta = read_meta(path.parent if path.name == META_FILE else path)
    ours = {"seq_len": spec.seq_len, "codebook_size": spec.codebook_size, "num_classes": spec.num_classes}
    theirs = {"seq_len": meta.seq_len, "codebook_size": meta.codebook_size, "num_classes": meta.num_classes}
    if ours != theirs:
        diffs = "; ".join(f"{k}: weights {ours[k]} vs tokens {theirs[k]}"
                          for k in ours if ours[k] != theirs[k])
        raise PipelineError(f"{path} does not describe the tokens these weights expect ({diffs})")
    return meta
