"""Mask schedules, shared by training (how many tokens to mask) and sampling (how many stay masked).

A schedule maps progress ``r`` in [0, 1] to the fraction of tokens masked: 1 at r = 0 (everything
masked), 0 at r = 1. MaskGIT trains with mask ratio ``gamma(u)`` for ``u ~ U(0, 1)`` and decodes
with ``gamma(t / T)`` after step t.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch


def cosine(r: float) -> float:
    return math.cos(math.pi / 2 * r)


def arccos(r: float) -> float:
    return math.acos(r) / (math.pi / 2)


def linear(r: float) -> float:
    return 1.0 - r


SCHEDULES: dict[str, Callable[[float], float]] = {"cosine": cosine, "arccos": arccos, "linear": linear}


def mask_ratio(name: str, r: float) -> float:
    """Fraction of tokens masked at progress ``r`` (clipped to [0, 1])."""
    try:
        fn = SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown mask schedule {name!r}; choose from {sorted(SCHEDULES)}") from None
    return min(1.0, max(0.0, fn(min(1.0, max(0.0, r)))))


def masked_counts(name: str, steps: int, seq_len: int) -> list[int]:
    """How many tokens remain masked after each of ``steps`` decoding steps: the schedule's ratios
    at ``(t + 1) / steps`` through :func:`counts_from_ratios`."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    return list(counts_from_ratios([mask_ratio(name, (step + 1) / steps) for step in range(steps)], seq_len))


def counts_from_ratios(ratios: list[float] | tuple[float, ...], seq_len: int) -> tuple[int, ...]:
    """Per-step mask ratios -> tokens still masked after each step: ``floor(ratio * seq_len)``,
    strictly decreasing (every step reveals at least one token when ``steps <= seq_len``) and 0 at
    the last step."""
    counts, previous = [], seq_len
    for ratio in ratios:
        remaining = max(0, min(math.floor(ratio * seq_len), previous - 1))
        counts.append(remaining)
        previous = remaining
    counts[-1] = 0
    return tuple(counts)


def sample_train_mask_ratio(
    kind: Literal["cosine", "beta"],
    batch: int,
    generator: torch.Generator,
    beta: tuple[float, float] = (12.0, 3.0),
) -> torch.Tensor:
    """Per-sample training mask ratios in (0, 1].

    cosine: MaskGIT's ``cos(pi/2 * u)`` with ``u ~ U(0, 1)``.
    beta: ``Beta(a, b)`` draws, as in AutoNAT / KA-MIG fine-tuning (12, 3) (mean 0.8).
    """
    if kind == "cosine":
        u = torch.rand(batch, generator=generator)
        return torch.cos(math.pi / 2 * u).clamp_min(1e-6)
    if kind == "beta":
        # torch.distributions cannot take a Generator, so draw a seed from it and sample under a
        # forked global RNG: deterministic per generator state, and the global RNG is untouched.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            ratios = torch.distributions.Beta(float(beta[0]), float(beta[1])).sample((batch,))
        return ratios.clamp(1e-6, 1.0)
    raise ValueError(f"unknown train mask schedule {kind!r}; choose cosine or beta")
