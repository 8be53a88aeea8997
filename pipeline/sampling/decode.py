"""MaskGIT parallel decoding (Chang et al., 2022) as one pure function, plus its per-step plan.

Decoding starts from an all-masked sequence and runs ``T`` steps. At step ``t`` (0-based):

1. logits of every masked position, with classifier-free guidance ``cond + s_t * (cond - uncond)``;
   the conditional and unconditional passes run as one batch (the null class labels the second
   half); decoded positions need none, so the model's head skips them;
2. a token is sampled at every masked position from ``softmax(logits / temperature_t)``, by the
   Gumbel-max trick (the default) or by inverting the cumulative distribution (``token_draw``);
3. its confidence is its *untempered* log-probability ``log_softmax(logits)`` plus Gumbel noise
   scaled by the choice temperature (by default annealed, ``choice_temperature * (1 - (t + 1) / T)``);
   already decoded positions get +inf;
4. the ``masked_after[t]`` least confident positions are masked again, the rest are kept.

Since decoded positions have infinite confidence and ``masked_after`` is non-increasing, a decoded
token never changes, and ``masked_after[-1] == 0`` leaves nothing masked.

The per-step numbers (how many tokens stay masked, temperatures, guidance scale) form a
:class:`DecodePlan`: built from the mask schedule and the scalar ``sample.*`` params, or given
explicitly per step (AutoNAT style) through ``sample.strategy``.

The decoder does not know the model class: it takes ``logits_fn(tokens, labels, positions) ->
logits`` at the given grid positions, so the same function serves every variant (a generator is
one; tests use a tiny fake model). All randomness comes from the ``torch.Generator`` passed in:
the same generator state gives the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipeline.config import SampleConfig, TokenDraw
from pipeline.progress import progress_bar
from pipeline.schedules import counts_from_ratios, masked_counts

# logits_fn(tokens (B, L), labels (B,), positions (B, M)) -> the logits at those grid positions (B, M, V)
LogitsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor], None]


@dataclass(frozen=True)
class DecodePlan:
    """Per-step decoding settings; every tuple has one entry per step."""

    masked_after: tuple[int, ...]  # tokens still masked after each step (ends at 0)
    temperature: tuple[float, ...]  # sampling temperature
    choice_temperature: tuple[float, ...]  # Gumbel scale of the confidence (already annealed)
    cfg: tuple[float, ...]  # classifier-free guidance scale

    def __post_init__(self) -> None:
        steps = len(self.masked_after)
        if steps < 1:
            raise ValueError("a decode plan needs at least one step")
        for name in ("temperature", "choice_temperature", "cfg"):
            if len(getattr(self, name)) != steps:
                raise ValueError(f"plan.{name} has {len(getattr(self, name))} entries, expected {steps}")
        if any(b > a for a, b in zip(self.masked_after, self.masked_after[1:])) or self.masked_after[-1]:
            raise ValueError(f"masked_after must be non-increasing and end at 0, got {self.masked_after}")
        if any(t <= 0 for t in self.temperature):
            raise ValueError(f"temperatures must be > 0, got {self.temperature}")

    @property
    def steps(self) -> int:
        return len(self.masked_after)


def decode_plan(cfg: SampleConfig, seq_len: int) -> DecodePlan:
    """The plan for ``sample.*``: schedule-derived values, overridden per key by ``sample.strategy``."""
    steps = cfg.steps
    masked_after = tuple(masked_counts(cfg.schedule, steps, seq_len))
    temperature = (cfg.temperature,) * steps
    # MaskGIT anneals the confidence noise to zero at the last step: early steps explore which
    # positions to commit, late steps trust the model.
    choice = tuple(cfg.choice_temperature * (1.0 - (t + 1) / steps) for t in range(steps))
    if cfg.cfg_schedule == "linear" and steps > 1:
        # Ramp from no guidance at the first step to the full scale at the last (diversity early,
        # fidelity late), as in the public MaskGIT re-implementations.
        guidance = tuple(cfg.cfg * t / (steps - 1) for t in range(steps))
    else:
        guidance = (cfg.cfg,) * steps
    strategy = cfg.strategy.arrays() if cfg.strategy is not None else {}
    if "mask_ratio" in strategy:
        masked_after = counts_from_ratios(strategy["mask_ratio"], seq_len)
    return DecodePlan(
        masked_after=masked_after,
        temperature=tuple(strategy.get("temperature", temperature)),
        choice_temperature=tuple(strategy.get("choice_temperature", choice)),
        cfg=tuple(strategy.get("cfg", guidance)),
    )


def guided_logits(
    logits_fn: LogitsFn, tokens: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor,
    null_class: int, scale: float,
) -> torch.Tensor:
    """``cond + scale * (cond - uncond)`` at ``positions``, in float32; one batched pass (scale 0:
    conditional only)."""
    if scale == 0.0:
        return logits_fn(tokens, labels, positions).float()
    batch = tokens.shape[0]
    both = logits_fn(torch.cat([tokens, tokens]), torch.cat([labels, torch.full_like(labels, null_class)]),
                     torch.cat([positions, positions]))
    cond, uncond = both.float().split(batch)
    # In place on the one new tensor: the same arithmetic as cond + scale * (cond - uncond), bit
    # for bit (IEEE addition commutes), without two more (B, M, V) temporaries.
    return (cond - uncond).mul_(scale).add_(cond)


def _gumbel(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Standard Gumbel noise, -log(-log u). Computed in place: at (B, L, V) each temporary is
    hundreds of MB, and fresh ones cost page faults as well as memory traffic."""
    uniform = torch.rand(shape, generator=generator, device=device).clamp_(1e-20, 1.0)
    return uniform.log_().neg_().clamp_min_(1e-20).log_().neg_()


def gumbel_max(log_probs: torch.Tensor, positions: torch.Tensor, seq_len: int,
               generator: torch.Generator) -> torch.Tensor:
    """Tokens (rows, M) drawn from ``log_probs`` (rows, M, V) at ``positions`` (rows, M) as
    ``argmax(log p + g)``, g Gumbel noise: an exact sample. The noise covers the whole (rows,
    seq_len, V) grid, decoded positions included, as it always has: the generator's stream, and
    with it every sample, stays that of earlier versions. The uniform draws are about 7% of a
    CPU decoding step (one thread)."""
    vocab = log_probs.shape[-1]
    noise = _gumbel((positions.shape[0], seq_len, vocab), generator, log_probs.device)
    return noise.gather(1, positions.unsqueeze(-1).expand(-1, -1, vocab)).add_(log_probs).argmax(dim=-1)


def inverse_cdf(log_probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Tokens (rows, M) drawn from ``log_probs`` (rows, M, V) by inverting the cumulative
    distribution: the first token whose cumulative probability exceeds ``u * total``, one uniform
    u per position (``total`` absorbs the float rounding of the sum). Also an exact sample, from
    V times fewer random numbers than :func:`gumbel_max`, but of other tokens for the same
    generator state (``sample.token_draw`` chooses)."""
    cdf = log_probs.exp().cumsum_(dim=-1)
    threshold = torch.rand((*cdf.shape[:-1], 1), generator=generator, device=cdf.device).mul_(cdf[..., -1:])
    # u < 1, but u * total may round up to total: the clamp keeps that one-in-billions case in range.
    return torch.searchsorted(cdf, threshold, right=True).squeeze_(-1).clamp_max_(cdf.shape[-1] - 1)


def _draw_rows(
    logits_fn: LogitsFn, tokens: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor, *,
    null_class: int, plan: DecodePlan, step: int, token_draw: TokenDraw, generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's draw for some rows at their masked ``positions`` (rows, M): the tokens drawn
    there and their untempered log-probabilities (the confidence before its noise), both (rows, M)."""
    logits = guided_logits(logits_fn, tokens, labels, positions, null_class, plan.cfg[step])
    if logits.shape[:2] != positions.shape:
        raise ValueError(f"logits_fn returned {tuple(logits.shape)}, expected {(*positions.shape, 'V')}")
    # The temperature tempers the draw only; the confidence ranks the untempered post-CFG
    # log-probabilities, as MaskGIT and AutoNAT do (ImprovedNAT nat_misc.py, the generate loop).
    log_probs = torch.log_softmax(logits, dim=-1)
    temperature = plan.temperature[step]
    tempered = log_probs if temperature == 1.0 else torch.log_softmax(logits / temperature, dim=-1)
    if token_draw == "gumbel_max":
        drawn = gumbel_max(tempered, positions, tokens.shape[1], generator)
    else:
        drawn = inverse_cdf(tempered, generator)
    return drawn, log_probs.gather(-1, drawn.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def maskgit_decode(
    logits_fn: LogitsFn,
    labels: torch.Tensor,
    *,
    seq_len: int,
    mask_id: int,
    null_class: int,
    plan: DecodePlan,
    generator: torch.Generator,
    token_draw: TokenDraw = "gumbel_max",
    chunk_rows: int | None = None,
    on_step: StepCallback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Decode ``len(labels)`` token sequences (B, seq_len) int64, all positions filled.

    ``logits_fn(tokens (B', L) int64, labels (B',) int64, positions (B', M) int64) -> (B', M, V)``:
    masked positions hold ``mask_id``, ``positions`` are each row's masked ones (ascending, as many
    in every row); label ``null_class`` asks for the unconditional prediction. ``chunk_rows`` runs
    the forward and the draw over that many sequences at a time (default: all), so that on a CPU
    each chunk's logits and noise stay in cache; the tokens are the same bit for bit, because the
    generator fills the chunks' noise in the same order as one whole-batch draw and every other
    operation is per row. ``on_step(t, tokens)`` is called after every step (tests and visualisations).
    """
    device = labels.device
    batch = labels.shape[0]
    chunk = batch if chunk_rows is None else max(1, chunk_rows)
    tokens = torch.full((batch, seq_len), mask_id, dtype=torch.long, device=device)
    steps = progress_bar(range(plan.steps), desc="decoding", unit="step", leave=False, disable=not progress)
    rows = [slice(start, start + chunk) for start in range(0, batch, chunk)]
    masked_before = (seq_len, *plan.masked_after[:-1])
    for step in steps:
        # Every row has the same number of masked positions (one plan), so they form a (B, M) grid.
        positions = (tokens == mask_id).nonzero()[:, 1].view(batch, masked_before[step])
        drawn = [_draw_rows(logits_fn, tokens[part], labels[part], positions[part], null_class=null_class,
                            plan=plan, step=step, token_draw=token_draw, generator=generator)
                 for part in rows]
        tokens = tokens.scatter(1, positions, torch.cat([part for part, _ in drawn]))
        confidence = torch.full(tokens.shape, math.inf, device=device).scatter_(
            1, positions, torch.cat([part for _, part in drawn]))
        noise_scale = plan.choice_temperature[step]
        if noise_scale > 0:
            confidence = confidence + noise_scale * _gumbel(confidence.shape, generator, device)

        keep_masked = plan.masked_after[step]
        if keep_masked > 0:
            # Decoded positions (+inf) are never among the least confident.
            remask = confidence.topk(keep_masked, dim=-1, largest=False).indices
            tokens = tokens.scatter(1, remask, mask_id)
        if on_step is not None:
            on_step(step, tokens)
    return tokens
