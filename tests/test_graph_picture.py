"""The neighbour picture picks informative tokens: frequent, but not flat background patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import CooccurrenceConfig, GraphsConfig
from pipeline.graphs import pictures
from pipeline.shards import TokenMeta
from pipeline.stages.graphs import StagePaths, write_graphs
from pipeline.tokenizer.base import save_tokenizer
from tests.helpers import write_token_split
from tests.test_graphs_stage import StripeTokenizer

VOCAB, FLAT, CELL, GRID = 16, 6, 4, (4, 4)


class BackgroundTokenizer(StripeTokenizer):
    """Frequent flat grey tokens (background) and textured, checkered ones (an object)."""

    kind = "test-picture-background"

    def __init__(self, vocab: int = VOCAB, grid: tuple[int, int] = GRID, cell: int = CELL):
        super().__init__(vocab, grid, cell)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        h, w = self._grid
        level = tokens.float().reshape(-1, 1, h, w)
        flat = level / (FLAT - 1) * 0.6  # greys from black to 0.6
        contrast = ((level - FLAT + 1) / (self._vocab - FLAT)).clamp(0, 1) * 0.5
        cells = flat.repeat_interleave(self._cell, 2).repeat_interleave(self._cell, 3)
        amplitude = contrast.repeat_interleave(self._cell, 2).repeat_interleave(self._cell, 3)
        size = self.image_size
        checker = ((torch.arange(size)[:, None] + torch.arange(size)[None, :]) % 2).float() * 2 - 1
        textured = (0.5 + amplitude * checker).clamp(0, 1)
        is_flat = (level < FLAT).repeat_interleave(self._cell, 2).repeat_interleave(self._cell, 3)
        return torch.where(is_flat, cells, textured)


def background_heavy_totals() -> np.ndarray:
    """The flat tokens are by far the most frequent (like black background), texture is rarer."""
    totals = np.zeros(VOCAB, dtype=np.int64)
    totals[:FLAT] = 10_000 - 100 * np.arange(FLAT)
    totals[FLAT:] = 500 - 10 * np.arange(VOCAB - FLAT)
    totals[VOCAB - 1] = 0  # never occurs
    return totals


def test_patch_detail_of_flat_and_textured_patches():
    flat = np.full((1, 3, 8, 8), 0.3)
    checker = (np.indices((8, 8)).sum(0) % 2).astype(float)[None, None].repeat(3, axis=1)
    edge = np.zeros((1, 1, 8, 8))
    edge[..., 4:] = 1.0
    detail = pictures.patch_detail(np.concatenate([flat, checker]))
    assert detail[0] == pytest.approx(0.0) and detail[1] == pytest.approx(0.5)
    assert pictures.patch_detail(edge)[0] == pytest.approx(0.5)  # an edge is detail too


def test_frequent_uniform_patches_are_not_chosen():
    totals = background_heavy_totals()
    crops = pictures.decode_patches(BackgroundTokenizer(), list(range(VOCAB)))
    detail = pictures.patch_detail(crops)
    assert (detail[:FLAT] < 1e-6).all() and (detail[FLAT + 1:] > pictures.MIN_DETAIL).all()
    # Frequency alone (the old picture): the flat background tokens.
    assert set(pictures.choose_example_tokens(totals, 3)) <= set(range(FLAT))
    chosen = pictures.choose_example_tokens(totals, 3, detail)
    assert len(chosen) == 3 and not set(chosen) & set(range(FLAT))
    assert VOCAB - 1 not in chosen  # never occurs
    # The most frequent informative token leads: frequent *and* not flat.
    floor = max(pictures.MIN_DETAIL, np.median(detail[totals > 0]))  # median of the occurring ones
    informative = [t for t in range(FLAT, VOCAB) if totals[t] > 0 and detail[t] >= floor]
    assert chosen[0] == max(informative, key=lambda t: (totals[t], -t))


def test_unmeasured_tokens_are_not_chosen_and_too_few_informative_ones_are_filled_up():
    totals = np.array([100, 90, 80, 70, 60, 50, 40, 30])
    detail = np.full(8, np.nan)
    detail[[0, 1, 2, 3]] = [0.0, 0.001, 0.3, 0.06]  # 4..7 never decoded
    # Above MIN_DETAIL (and the median, 0.03): 2 and 3; the third is the more detailed of the
    # flat rest (1, not 0).
    assert pictures.choose_example_tokens(totals, 3, detail) == [2, 3, 1]
    assert pictures.choose_example_tokens(totals, 1, detail) == [2]


def test_without_any_detail_frequency_decides_as_before():
    totals = np.array([0, 50, 40, 30, 20, 10, 5, 1])
    flat = np.zeros(8)
    assert pictures.choose_example_tokens(totals, 3, flat) == pictures.choose_example_tokens(totals, 3)
    assert pictures.choose_example_tokens(totals, 3) == [1, 2, 3]
    assert pictures.choose_example_tokens(totals, 0, flat) == []
    assert pictures.choose_example_tokens(np.zeros(4, dtype=int), 2, flat) == []


def test_measure_detail_decodes_only_the_most_frequent_candidates(monkeypatch):
    monkeypatch.setattr(pictures, "DETAIL_CANDIDATES", 8)
    monkeypatch.setattr(pictures, "DECODE_BATCH", 3)  # several decoding batches
    totals = background_heavy_totals()
    detail = pictures.measure_detail(BackgroundTokenizer(), totals)
    measured = np.flatnonzero(~np.isnan(detail))
    assert measured.tolist() == sorted(pictures.detail_candidates(totals, 8))
    assert measured.tolist() == list(range(8))  # the 6 flat ones and the 2 most frequent textures
    full = pictures.patch_detail(pictures.decode_patches(BackgroundTokenizer(), list(range(8))))
    np.testing.assert_allclose(detail[:8], full)


def test_stage_picture_shows_textured_tokens_with_weights(tmp_path, monkeypatch):
    from pipeline.tokenizer import registry

    monkeypatch.setitem(registry.TOKENIZERS, BackgroundTokenizer.kind, BackgroundTokenizer)
    # The real stage: tokens whose grids are mostly flat background with a textured object.
    rng = np.random.default_rng(0)
    n = 300
    grids = rng.integers(0, 2, (n, 16))  # background: tokens 0 and 1 everywhere
    grids[:, [5, 6, 9, 10]] = rng.integers(FLAT, VOCAB - 1, (n, 4))  # an object in the centre
    labels = rng.integers(0, 3, n)
    tokenizer_dir = tmp_path / "tokenizer"
    fingerprint = save_tokenizer(BackgroundTokenizer(), tokenizer_dir)
    meta = TokenMeta(GRID[0], GRID[1], VOCAB, 3, fingerprint)
    tokens_dir = write_token_split(tmp_path / "tokens", grids, labels, meta)
    picture = tmp_path / "neighbours.png"
    cfg = GraphsConfig(cooccurrence=CooccurrenceConfig(top_ratio=0.5), num_examples=3)
    captured = {}
    original = pictures.example_rows

    def spy(*args, **kwargs):
        captured["rows"] = original(*args, **kwargs)
        return captured["rows"]

    monkeypatch.setattr(pictures, "example_rows", spy)
    write_graphs(cfg, StagePaths(tokens_dir=tokens_dir, graphs_dir=tmp_path / "graphs",
                                 metrics_file=tmp_path / "m/graphs.json",
                                 degrees_csv=tmp_path / "m/degrees.csv", picture=picture,
                                 tokenizer_dir=tokenizer_dir))
    rows = captured["rows"]
    assert len(rows) == 3
    assert all(row.token >= FLAT for row in rows)  # tokens 0 and 1 are 60% of all cells
    for row in rows:
        assert row.detail is not None and row.detail > pictures.MIN_DETAIL
        assert row.cooccurrence_weights and len(row.cooccurrence_weights) == len(row.cooccurrence)
        assert all(0 < w <= 1 for w in row.cooccurrence_weights + row.similarity_weights)
        assert row.similarity_weights is not None and len(row.similarity_weights) == len(row.similarity)
    image = np.asarray(Image.open(picture).convert("L"))
    assert image.shape[0] >= 3 * pictures.PATCH_PIXELS
    assert len(np.unique(image)) > 3
