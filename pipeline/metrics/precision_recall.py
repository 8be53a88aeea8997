"""Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019).

Each feature set defines a manifold: the union of balls centred on its points, each ball's radius
being the distance to that point's k-th nearest neighbour within the set (k = 3 in the paper).

- precision: the fraction of generated samples that fall inside the real manifold (fidelity);
- recall: the fraction of real samples that fall inside the generated manifold (coverage).

The k-NN radii come from an exact FAISS index. Membership needs, for each query, *any* ball that
contains it, which is not a k-NN query (a far point with a big ball can cover a query that its
nearest neighbours do not), so it is an exact chunked distance computation in torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import torch


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float
    recall: float


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row to its k-th nearest *other* row (exact L2, float32 FAISS index)."""
    feats = np.ascontiguousarray(features, dtype=np.float32)
    if feats.ndim != 2:
        raise ValueError(f"features must be (n, d), got {feats.shape}")
    if feats.shape[0] <= k:
        raise ValueError(f"need more than k={k} points to define k-NN radii, got {feats.shape[0]}")
    index = faiss.IndexFlatL2(feats.shape[1])
    index.add(feats)
    # Searching k + 1 neighbours includes the point itself at distance 0; the (k+1)-th smallest
    # distance is then the k-th neighbour's, even when exact duplicates reorder the ties.
    squared, _ = index.search(feats, k + 1)
    return np.sqrt(np.clip(squared[:, k], 0.0, None)).astype(np.float64)


def inside_manifold(
    queries: np.ndarray,
    support: np.ndarray,
    radii: np.ndarray,
    device: str | torch.device = "cpu",
    chunk: int = 1024,
) -> np.ndarray:
    """Boolean per query row: is it within ``radii[j]`` of some ``support[j]``?"""
    device = torch.device(device)
    # float64 is cheap on CPU at our sizes and removes any doubt at ball boundaries; on a GPU the
    # float32 path keeps 50k x 50k comparisons fast.
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    sup = torch.as_tensor(np.asarray(support), dtype=dtype, device=device)
    sup_sq = (sup * sup).sum(1)
    rad_sq = torch.as_tensor(np.asarray(radii), dtype=dtype, device=device).square()
    result = np.empty(len(queries), dtype=bool)
    for start in range(0, len(queries), chunk):
        q = torch.as_tensor(np.asarray(queries[start : start + chunk]), dtype=dtype, device=device)
        dist_sq = ((q * q).sum(1, keepdim=True) + sup_sq[None, :] - 2.0 * q @ sup.T).clamp_min(0.0)
        result[start : start + len(q)] = (dist_sq <= rad_sq[None, :]).any(dim=1).cpu().numpy()
    return result


def precision_recall(
    real: np.ndarray,
    generated: np.ndarray,
    k: int = 3,
    device: str | torch.device = "cpu",
    real_radii: np.ndarray | None = None,
) -> PrecisionRecall:
    """Improved precision/recall of ``generated`` against ``real`` (rows are feature vectors).

    ``real_radii`` may be passed in when cached with the reference features (they depend only on
    the real set and k).
    """
    if real.shape[1] != generated.shape[1]:
        raise ValueError(f"feature dims differ: real {real.shape[1]}, generated {generated.shape[1]}")
    if real_radii is None:
        real_radii = knn_radii(real, k)
    fake_radii = knn_radii(generated, k)
    precision = inside_manifold(generated, real, real_radii, device).mean()
    recall = inside_manifold(real, generated, fake_radii, device).mean()
    return PrecisionRecall(precision=float(precision), recall=float(recall))
