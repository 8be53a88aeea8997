"""Progress bars (placeholder until the quiet-log factory lands)."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


def progress_bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    return tqdm(iterable, **kwargs)
