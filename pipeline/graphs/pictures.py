"""``metrics/plots/graph_neighbours.png``: do the graphs mean something? Look at the patches.

Each row shows one frequent token decoded as an image patch, then the patches of its top
co-occurrence neighbours (by count) and of its similarity neighbours (by JS distance). A token's
patch is the centre of the image the tokenizer decodes from a grid filled with that token alone
(3 x 3 cells where the grid allows, so the patch shows the token's texture with its decoder
context, not a few isolated pixels).

Example tokens: the most frequent ones are often flat background (black in Fashion-MNIST), whose
neighbours say little, so the ``graphs.num_examples`` tokens are taken at evenly spaced frequency
ranks within the most frequent quarter of the occurring tokens. Deterministic, like the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from pipeline.files import atomic_path
from pipeline.tokenizer.base import Tokenizer

PATCH_PIXELS = 64
GAP = 8
CAPTION = 12
CONTEXT_CELLS = 3
COOCCURRENCE_SHOWN = 4


@dataclass(frozen=True)
class ExampleRow:
    token: int
    occurrences: int
    cooccurrence: list[tuple[int, int]]  # (token, count), best first
    similarity: list[tuple[int, float]]  # (token, JS distance), nearest first


def choose_example_tokens(token_totals: np.ndarray, count: int) -> list[int]:
    """``count`` tokens at evenly spaced ranks within the most frequent quarter (ties: smaller id)."""
    occurring = np.flatnonzero(token_totals > 0)
    if count == 0 or len(occurring) == 0:
        return []
    ranked = occurring[np.lexsort((occurring, -token_totals[occurring]))]
    pool = ranked[: max(count, len(ranked) // 4)]
    picks = np.unique(np.linspace(0, len(pool) - 1, num=min(count, len(pool))).round().astype(int))
    return [int(pool[i]) for i in picks]


def example_rows(tokens: list[int], token_totals: np.ndarray, cooccurrence: dict[str, np.ndarray],
                 similarity: dict[str, np.ndarray]) -> list[ExampleRow]:
    """Collect each example token's neighbours from the two graph tables (as numpy columns)."""
    rows = []
    for token in tokens:
        mine = (cooccurrence["src"] == token) & (cooccurrence["dst"] != token)
        dst, count = cooccurrence["dst"][mine], cooccurrence["count"][mine]
        best = np.lexsort((dst, -count))[:COOCCURRENCE_SHOWN]
        near = similarity["src"] == token
        s_dst, s_dist = similarity["dst"][near], similarity["distance"][near]
        order = np.lexsort((s_dst, s_dist))
        rows.append(ExampleRow(
            token=token,
            occurrences=int(token_totals[token]),
            cooccurrence=[(int(dst[i]), int(count[i])) for i in best],
            similarity=[(int(s_dst[i]), float(s_dist[i])) for i in order],
        ))
    return rows


@torch.no_grad()
def token_patches(tokenizer: Tokenizer, tokens: list[int]) -> dict[int, Image.Image]:
    """Each token's patch: the centre of the image decoded from a grid of that token alone."""
    grid_h, grid_w = tokenizer.grid
    ids = sorted(set(tokens))
    grids = torch.tensor(ids, dtype=torch.long)[:, None].expand(len(ids), grid_h * grid_w)
    images = tokenizer.decode(grids.contiguous()).clamp(0, 1).cpu().numpy()
    _, channels, height, width = images.shape
    cell_h, cell_w = height // grid_h, width // grid_w
    span_h, span_w = min(CONTEXT_CELLS, grid_h), min(CONTEXT_CELLS, grid_w)
    top, left = (grid_h - span_h) // 2 * cell_h, (grid_w - span_w) // 2 * cell_w
    crops = images[:, :, top:top + span_h * cell_h, left:left + span_w * cell_w]
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


def draw_neighbours(tokenizer: Tokenizer, rows: list[ExampleRow], path: Path) -> None:
    """Render the rows (token | co-occurrence neighbours | similarity neighbours) to a PNG.

    Captions: the token id, then its occurrences (n), co-occurrence count (c) or JS distance.
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
    row_height = PATCH_PIXELS + 2 * CAPTION + GAP
    canvas = Image.new("RGB", (width, header + len(rows) * row_height + GAP), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for x, title in zip(column_x, ("token", "co-occurrence", "similarity")):
        draw.text((x, 2), title, fill="black", font=font)
    for i, row in enumerate(rows):
        y = header + i * row_height
        items = [(column_x[0], row.token, f"n={_compact(row.occurrences)}")]
        items += [(column_x[1] + j * cell, t, f"c={_compact(c)}")
                  for j, (t, c) in enumerate(row.cooccurrence)]
        items += [(column_x[2] + j * cell, t, f"js={d:.3f}")
                  for j, (t, d) in enumerate(row.similarity)]
        for x, token, caption in items:
            canvas.paste(patches[token], (x, y))
            draw.text((x, y + PATCH_PIXELS + 1), f"#{token}", fill="black", font=font)
            draw.text((x, y + PATCH_PIXELS + CAPTION), caption, fill="black", font=font)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
