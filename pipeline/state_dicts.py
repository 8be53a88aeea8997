"""Strict loading of published weights: what keeps a state dict from matching a module's layout.

Every importer (the MaskGIT VQGAN, AutoNAT's U-ViT, the FID InceptionV3) loads with ``strict=True``
after this check, so a wrong file fails with the complete list of differences instead of torch's
first error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LISTED = 8  # names shown per kind of difference; the count says how many there are


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:LISTED])
    return shown if len(names) <= LISTED else f"{shown}, ... ({len(names)} in all)"


def layout_differences(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, Any], floating: bool = False
) -> list[str]:
    """One line per kind of difference between ``found`` and the ``expected`` key -> shape layout:
    missing keys, unexpected keys, wrong shapes, entries that are not tensors and (``floating``:
    every expected entry is a weight) integer tensors. Empty when ``found`` matches."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    present = [k for k in expected if k in found]
    not_tensors = [f"{k} ({type(found[k]).__name__})" for k in present if not hasattr(found[k], "shape")]
    tensors = [k for k in present if hasattr(found[k], "shape")]
    wrong = [f"{k} {tuple(found[k].shape)} (expected {tuple(expected[k])})" for k in tensors
             if tuple(found[k].shape) != tuple(expected[k])]
    not_float = [f"{k} ({found[k].dtype})" for k in tensors if floating and not found[k].is_floating_point()]
    lines = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong),
                         ("not a tensor", not_tensors), ("not floating-point", not_float)):
        if items:
            lines.append(f"{len(items)} {label}: {_listed(items)}")
    return lines
