"""``metrics/plots/graph_neighbours.png``: do the graphs mean something? Look at the patches.

Each row shows one frequent token decoded as an image patch, then the patches of its top
co-occurrence neighbours (by count) and of its similarity neighbours (by JS distance), each with
its edge weight in the graph the model loads (``w``). A token's patch is the centre of the image
the tokenizer decodes from a grid filled with that token alone (3 x 3 cells where the grid allows,
so the patch shows the token's texture with its decoder context, not a few isolated pixels).

Example tokens: the most frequent ones are flat background (black or grey patches in
Fashion-MNIST), whose neighbours say little. So the :data:`DETAIL_CANDIDATES` most frequent tokens
are decoded and scored by *detail*, the spatial standard deviation of their patch
(:func:`patch_detail`); the flat ones (detail below :data:`MIN_DETAIL` or below the median of the
candidates) are dropped, and the ``graphs.num_examples`` tokens are taken at evenly spaced
frequency ranks within the most frequent quarter of the rest (:func:`choose_example_tokens`).
Without any detailed patch it falls back to frequency alone. Deterministic, like the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from pipeline.tokenizer.base import Tokenizer

PATCH_PIXELS = 64
GAP = 8
CAPTION = 12
CONTEXT_CELLS = 3
COOCCURRENCE_SHOWN = 4
# The most frequent tokens whose patches are decoded to measure their detail (bounds the cost for
# a large codebook: 256 small decodes), and the decoding batch.
DETAIL_CANDIDATES = 256
DECODE_BATCH = 32
# Spatial standard deviation (pixels in [0, 1]) below which a patch counts as flat: about 13 grey
# levels of 255. Measured on the Fashion-MNIST VQ-VAE: background patches score 0-0.005, grey
# patches with the decoder's faint ripple 0.02-0.03, edges and textures 0.08-0.4.
MIN_DETAIL = 0.05


@dataclass(frozen=True)
class ExampleRow:
    token: int
    occurrences: int
    cooccurrence: list[tuple[int, int]]  # (token, count), best first
    similarity: list[tuple[int, float]]  # (token, JS distance), nearest first
    # Edge weights (the normalised operator's entries), in the order above; None: not given.
    cooccurrence_weights: list[float] | None = None
    similarity_weights: list[float] | None = None
    detail: float | None = None  # the token's patch detail, when it was measured


def frequency_ranking(token_totals: np.ndarray) -> np.ndarray:
    """The occurring tokens, most frequent first (ties: smaller id)."""
    occurring = np.flatnonzero(token_totals > 0)
    return occurring[np.lexsort((occurring, -token_totals[occurring]))]


def detail_candidates(token_totals: np.ndarray, limit: int | None = None) -> list[int]:
    """The tokens whose detail is worth measuring: the ``limit`` (default
    :data:`DETAIL_CANDIDATES`) most frequent occurring ones."""
    limit = DETAIL_CANDIDATES if limit is None else limit
    return [int(t) for t in frequency_ranking(token_totals)[:limit]]


def patch_detail(patches: np.ndarray) -> np.ndarray:
    """Detail of each patch (N, C, H, W), pixels in [0, 1]: the spatial standard deviation,
    averaged over channels. 0 for a uniform patch; about 0.5 for a black-and-white checkerboard."""
    patches = np.asarray(patches, dtype=np.float64)
    return patches.reshape(*patches.shape[:2], -1).std(axis=2).mean(axis=1)


def choose_example_tokens(token_totals: np.ndarray, count: int,
                          detail: np.ndarray | None = None) -> list[int]:
    """``count`` frequent, informative tokens, at evenly spaced ranks within the most frequent quarter.

    ``detail`` (one value per token id, NaN where not measured; see :func:`patch_detail`) drops the
    flat patches first: a measured token is kept when its detail is at least :data:`MIN_DETAIL`
    and at least the median of the measured ones. Fewer kept than ``count``: the most detailed of
    the others fill up. No detail given, or none above :data:`MIN_DETAIL`: frequency alone.
    Ties in frequency go to the smaller id.
    """
    ranked = frequency_ranking(token_totals)
    if count == 0 or len(ranked) == 0:
        return []
    if detail is not None:
        values = np.asarray(detail, dtype=np.float64)[ranked]
        measured = ~np.isnan(values)
        if measured.any() and values[measured].max() >= MIN_DETAIL:
            floor = max(MIN_DETAIL, float(np.median(values[measured])))
            keep = measured & (values >= floor)
            kept = ranked[keep]
            if len(kept) < count:  # the most detailed of the measured rest (ties: more frequent)
                rest = np.flatnonzero(measured & ~keep)
                rest = rest[np.argsort(-values[rest], kind="stable")]
                kept = np.concatenate([kept, ranked[rest[: count - len(kept)]]])
            ranked = kept
    pool = ranked[: max(count, len(ranked) // 4)]
    picks = np.unique(np.linspace(0, len(pool) - 1, num=min(count, len(pool))).round().astype(int))
    return [int(pool[i]) for i in picks]


def example_rows(tokens: list[int], token_totals: np.ndarray, cooccurrence: dict[str, np.ndarray],
                 similarity: dict[str, np.ndarray], detail: np.ndarray | None = None) -> list[ExampleRow]:
    """Collect each example token's neighbours from the two graph tables (as numpy columns; with a
    ``weight`` column, the rows carry the edge weights too)."""
    rows = []
    for token in tokens:
        mine = (cooccurrence["src"] == token) & (cooccurrence["dst"] != token)
        dst, count = cooccurrence["dst"][mine], cooccurrence["count"][mine]
        best = np.lexsort((dst, -count))[:COOCCURRENCE_SHOWN]
        near = similarity["src"] == token
        s_dst, s_dist = similarity["dst"][near], similarity["distance"][near]
        order = np.lexsort((s_dst, s_dist))
        co_w = [float(w) for w in cooccurrence["weight"][mine][best]] if "weight" in cooccurrence else None
        sim_w = [float(w) for w in similarity["weight"][near][order]] if "weight" in similarity else None
        value = None if detail is None or np.isnan(detail[token]) else float(detail[token])
        rows.append(ExampleRow(
            token=token,
            occurrences=int(token_totals[token]),
            cooccurrence=[(int(dst[i]), int(count[i])) for i in best],
            similarity=[(int(s_dst[i]), float(s_dist[i])) for i in order],
            cooccurrence_weights=co_w,
            similarity_weights=sim_w,
            detail=value,
        ))
    return rows


@torch.no_grad()
def decode_patches(tokenizer: Tokenizer, tokens: list[int]) -> np.ndarray:
    """The patches of ``tokens`` (in that order) as floats in [0, 1], (N, C, h, w): the centre
    of the image decoded from a grid of each token alone. Decoded :data:`DECODE_BATCH` at a time."""
    grid_h, grid_w = tokenizer.grid
    crops = []
    for start in range(0, len(tokens), DECODE_BATCH):
        ids = torch.tensor(tokens[start:start + DECODE_BATCH], dtype=torch.long)
        grids = ids[:, None].expand(len(ids), grid_h * grid_w).contiguous()
        images = tokenizer.decode(grids).clamp(0, 1).float().cpu().numpy()
        height, width = images.shape[2:]
        cell_h, cell_w = height // grid_h, width // grid_w
        span_h, span_w = min(CONTEXT_CELLS, grid_h), min(CONTEXT_CELLS, grid_w)
        top, left = (grid_h - span_h) // 2 * cell_h, (grid_w - span_w) // 2 * cell_w
        crops.append(images[:, :, top:top + span_h * cell_h, left:left + span_w * cell_w])
    return np.concatenate(crops) if crops else np.zeros((0, tokenizer.channels, 0, 0), np.float32)


def measure_detail(tokenizer: Tokenizer, token_totals: np.ndarray) -> np.ndarray:
    """:func:`patch_detail` of the :func:`detail_candidates`, as one value per token id (NaN: not
    measured), for :func:`choose_example_tokens`."""
    candidates = detail_candidates(token_totals)
    detail = np.full(len(token_totals), np.nan)
    if candidates:
        detail[candidates] = patch_detail(decode_patches(tokenizer, candidates))
    return detail


def token_patches(tokenizer: Tokenizer, tokens: list[int]) -> dict[int, Image.Image]:
    """Each token's patch as a :data:`PATCH_PIXELS`-square RGB image (see :func:`decode_patches`)."""
    ids = sorted(set(tokens))
    crops = decode_patches(tokenizer, ids)
    channels = crops.shape[1]
    pixels = (crops * 255.0).round().astype(np.uint8).transpose(0, 2, 3, 1)
    patches = {}
    for token, array in zip(ids, pixels):
        image = Image.fromarray(array[..., 0] if channels == 1 else array).convert("RGB")
        patches[token] = image.resize((PATCH_PIXELS, PATCH_PIXELS), Image.Resampling.NEAREST)
    return patches


def _compact(value: float) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:g}"


def _weight(value: float | None) -> str | None:
    return None if value is None else f"w={value:.3f}"


def draw_neighbours(tokenizer: Tokenizer, rows: list[ExampleRow]) -> Image.Image:
    """Render the rows (token | co-occurrence neighbours | similarity neighbours) as a picture.

    Captions: the token id; then its occurrences (n) and patch detail (d), or the co-occurrence
    count (c) or JS distance (js) and the edge weight (w) of each neighbour.
    """
    needed = [r.token for r in rows] + [t for r in rows for t, _ in r.cooccurrence + r.similarity]
    patches = token_patches(tokenizer, needed) if needed else {}
    # At least two columns per group, so that the group titles fit.
    n_co = max([len(r.cooccurrence) for r in rows] + [2])
    n_sim = max([len(r.similarity) for r in rows] + [2])
    cell = PATCH_PIXELS + GAP
    column_x = [GAP, GAP + cell + 2 * GAP, GAP + cell * (1 + n_co) + 4 * GAP]
    width = column_x[2] + cell * n_sim + GAP
    header = CAPTION + GAP
    row_height = PATCH_PIXELS + 3 * CAPTION + GAP
    canvas = Image.new("RGB", (width, header + len(rows) * row_height + GAP), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for x, title in zip(column_x, ("token", "co-occurrence", "similarity")):
        draw.text((x, 2), title, fill="black", font=font)
    for i, row in enumerate(rows):
        y = header + i * row_height
        co_w = row.cooccurrence_weights or [None] * len(row.cooccurrence)
        sim_w = row.similarity_weights or [None] * len(row.similarity)
        items = [(column_x[0], row.token, f"n={_compact(row.occurrences)}",
                  None if row.detail is None else f"d={row.detail:.3f}")]
        items += [(column_x[1] + j * cell, t, f"c={_compact(c)}", _weight(w))
                  for j, ((t, c), w) in enumerate(zip(row.cooccurrence, co_w))]
        items += [(column_x[2] + j * cell, t, f"js={d:.3f}", _weight(w))
                  for j, ((t, d), w) in enumerate(zip(row.similarity, sim_w))]
        for x, token, caption, extra in items:
            canvas.paste(patches[token], (x, y))
            draw.text((x, y + PATCH_PIXELS + 1), f"#{token}", fill="black", font=font)
            draw.text((x, y + PATCH_PIXELS + CAPTION), caption, fill="black", font=font)
            if extra is not None:
                draw.text((x, y + PATCH_PIXELS + 2 * CAPTION), extra, fill="black", font=font)
    return canvas
