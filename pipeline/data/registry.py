"""Which class reads which ``data.source``: a new source is one class and one line here."""

from __future__ import annotations

from pipeline.config import Config
from pipeline.data.fashion_mnist import FashionMnist
from pipeline.data.imagefolder import ImageFolder
from pipeline.data.source import ImageSource
from pipeline.data.synthetic import Synthetic
from pipeline.errors import DataSourceError

SOURCES: dict[str, ImageSource] = {
    source.name: source for source in (FashionMnist(), ImageFolder(), Synthetic())
}


def source_for(cfg: Config) -> ImageSource:
    try:
        return SOURCES[cfg.data.source]
    except KeyError:  # pragma: no cover - the config validator rejects other values
        raise DataSourceError(f"unknown data.source {cfg.data.source!r}; known: {sorted(SOURCES)}") from None
