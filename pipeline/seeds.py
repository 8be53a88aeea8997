"""Seeds: every random stream of the pipeline is derived from a param, never from carried state."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts, stable across processes, platforms and Python versions."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def batch_seed(seed: int, batch_index: int) -> int:
    """The seed of sampling batch ``batch_index`` under ``sample.seed``.

    An affine formula rather than :func:`derive_seed`: it predates it, and every committed sample and
    FID was drawn with it, so it stays. Distinct (seed, batch) pairs below 10**6 batches never collide.
    """
    return (seed * 1_000_003 + batch_index) % (2**63 - 1)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (for code that uses them implicitly)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
