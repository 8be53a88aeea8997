"""The held-out train images: the floors are scored on images the domain classifier never saw.

The classifier's features define every FID here, so a floor measured on images it trained on is
biased low: it has learnt to map exactly those images near the class statistics. A fixed random
set of ``eval.holdout`` train images is therefore kept out of its training, and both floors draw
from it:

* ``evaluate_real``: the real images themselves (the floor no generator can beat);
* ``evaluate_recon``: ``decode(encode(x))`` of the same images (the tokenizer floor, rFID): what a
  generator that got every token right would score.

The tokenizer and the generators do train on them, as on every train image.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

HOLDOUT_SALT = 2  # the permutation's seed: fixed, so every experiment holds out the same images


def holdout_size(num_train: int, holdout: int) -> int:
    """``eval.holdout``, capped at half the train split so the classifier keeps most of its data."""
    size = min(holdout, num_train // 2)
    if size < holdout:
        _warn_capped(num_train, holdout, size)
    return size


@functools.cache  # once per process: the classifier stage asks twice (its batches and its metrics)
def _warn_capped(num_train: int, holdout: int, size: int) -> None:
    log.warning("eval.holdout = %d exceeds half of the %d train images: holding out %d",
                holdout, num_train, size)


def _order(num_train: int) -> np.ndarray:
    return np.random.default_rng(HOLDOUT_SALT).permutation(num_train)


def holdout_indices(num_train: int, holdout: int, count: int) -> np.ndarray:
    """``count`` held-out train indices: a prefix of one fixed random order of the held-out set.

    A prefix, so a floor at n images is a uniform sample of the held-out set and the floor at
    1,000 images is a subset of the floor at 10,000.
    """
    size = holdout_size(num_train, holdout)
    if count > size:
        raise PipelineError(f"a floor of {count} images needs {count} held-out train images, but only "
                            f"{size} are held out: raise eval.holdout or lower eval.real_samples")
    return _order(num_train)[num_train - size :][:count]


def classifier_train_indices(num_train: int, holdout: int) -> np.ndarray:
    """Sorted train indices the classifier trains on: all but the held-out ones."""
    return np.sort(_order(num_train)[: num_train - holdout_size(num_train, holdout)])
