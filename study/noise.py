"""Sampling noise of FID at fixed models, measured from disjoint draws at several sample sizes.

A score's bootstrap SE (``fid_se``) estimates its sampling noise from the images of one draw. This
module measures that noise directly. One model's samples are split into disjoint class-balanced
subsets of n images; every image has its own Gumbel noise, so each subset is an independent draw
of n samples, and the spread of their FIDs is the sampling noise at n, with the model held fixed.
Two variants sampled with the same seed draw the same noise per image (common random numbers), so
the same subsets of both give the sampling noise of their paired difference, the study's contrast.

Used by ``scripts/sampling_noise.py``; no DVC stage imports it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.metrics import bootstrap_fid_se
from pipeline.metrics.fid import GaussianStats, feature_stats, fid_from_stats


@dataclass(frozen=True)
class Draw:
    """One variant's samples from one sampling seed: classifier features and requested classes."""

    variant: str
    seed: int
    features: np.ndarray  # (N, F)
    labels: np.ndarray  # (N,)


def balanced_disjoint_subsets(labels: np.ndarray, size: int, seed: int = 0) -> list[np.ndarray]:
    """As many disjoint subsets of ``size`` rows as fit, each with ``size / classes`` rows per class.

    The split depends only on the labels and ``seed``, so two variants sampled with the same seed
    (the same labels) are split identically, and their subsets stay paired.
    """
    classes = np.unique(labels)
    if size <= 0 or size % len(classes):
        raise ValueError(f"a subset of {size} images cannot hold the same count of each of "
                         f"{len(classes)} classes")
    per_class = size // len(classes)
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    count = min(len(pool) for pool in pools) // per_class
    return [np.sort(np.concatenate([pool[j * per_class : (j + 1) * per_class] for pool in pools]))
            for j in range(count)]


def _fid(features: np.ndarray, reference: GaussianStats) -> float:
    return fid_from_stats(feature_stats(features), reference)


def _spread(values: Sequence[float]) -> dict[str, Any]:
    return {"subsets": len(values), "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None}


def noise_table(draws: Sequence[Draw], reference: GaussianStats, sizes: Sequence[int], bootstrap: int,
                contrast: tuple[str, str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Per variant and size: the FIDs' mean and sd over disjoint subsets, and the mean bootstrap SE.

    ``contrast`` (minuend, subtrahend) adds the paired difference on the same subsets of the draws
    that share a sampling seed. A size larger than a draw is left out.
    """
    # Every subset is scored once; the rows and the paired contrast both read these.
    subsets = {(draw.variant, draw.seed, size): balanced_disjoint_subsets(draw.labels, size)
               for draw in draws for size in sizes}
    scores = {(draw.variant, draw.seed, size): [_fid(draw.features[subset], reference)
                                                for subset in subsets[draw.variant, draw.seed, size]]
              for draw in draws for size in sizes}
    rows = []
    for variant in dict.fromkeys(draw.variant for draw in draws):
        mine = [draw for draw in draws if draw.variant == variant]
        for size in sizes:
            fids = [fid for draw in mine for fid in scores[variant, draw.seed, size]]
            ses = [bootstrap_fid_se(draw.features[subsets[variant, draw.seed, size][0]], reference, bootstrap)
                   for draw in mine if bootstrap and subsets[variant, draw.seed, size]]
            if fids:
                rows.append({"variant": variant, "n": size, **_spread(fids),
                             "bootstrap_se": statistics.fmean(ses) if ses else None})
    differences = []
    if contrast is not None:
        minuend, subtrahend = contrast
        by_key = {(draw.variant, draw.seed): draw for draw in draws}
        seeds = sorted(seed for variant, seed in by_key
                       if variant == minuend and (subtrahend, seed) in by_key)
        for seed in seeds:  # the same labels split into the same subsets: the scores pair up
            if not np.array_equal(by_key[minuend, seed].labels, by_key[subtrahend, seed].labels):
                raise ValueError(f"{minuend} and {subtrahend} at sampling seed {seed} have different labels")
        for size in sizes:
            values = [a - b for seed in seeds for a, b in
                      zip(scores[minuend, seed, size], scores[subtrahend, seed, size], strict=True)]
            if values:
                differences.append({"contrast": f"{minuend} − {subtrahend}", "n": size, **_spread(values)})
    return {"rows": rows, "contrast": differences}
