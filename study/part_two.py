"""Render ``reports/part_two.md``: the published adapter against its own null and against ours, and
the knowledge effect at 14 x 14 tokens against 7 x 7.

Two series of records (:mod:`study.grid`), each made on one machine, so that every pair shares its
tokenizer and base model (their fingerprints; :func:`study.report.require_same_models` refuses
anything else):

* ``reports/study/adapters/``: 7 x 7 tokens, base model 0, each fine-tune seed once with this
  pipeline's adapter (``b0-f<s>``) and once with the official one (``b0-f<s>-official``). The two
  share the base model and the control, and differ in ``fusion.adapter`` only;
* ``reports/study/long/``: 14 x 14 tokens (``configs/study_196.yaml``), one adapter.

The questions are answered at the top from the paired and Welch statistics of :mod:`study.stats`:
the knowledge effect of each adapter (KA-MIG − its null, paired within a replicate), official −
ours (paired on the fine-tune seed), and the relative knowledge effect at 196 tokens against 49
(Welch: the two designs share no replicate).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from study.report import (
    CONTRAST_HEADER,
    TARGET_EFFECT,
    Record,
    contrast,
    contrast_rows,
    fid,
    machine_of,
    matched,
    mean_fid,
    overrides,
    select,
    table,
    variant_table,
    verdict,
)
from study.stats import Estimate, difference, estimate, welch_mde

ADAPTER_NAMES = {"pipeline": "this pipeline's adapter", "official": "the official adapter"}
ADAPTERS_COMMAND = "make study-adapters"
PLANNED_SEEDS = 10  # the 7 x 7 series' fine-tune seeds per adapter (the Makefile's study-adapters)
PLANNED_LONG_SEEDS = 10  # the 14 x 14 series' fine-tune seeds on base 0 (the Makefile's LONG_SEEDS)
PLANNED_SECOND_BASE_SEEDS = 5  # ... and on base 1 (the Makefile's LONG_SECOND_BASE)
LONG_COMMAND = "make study-long"
STRONGER_AT_196 = "the effect is {} at 196 tokens"  # welch_line's outcome for 196 − 49


def relative_knowledge(records: Sequence[Record]) -> Estimate:
    """Per replicate, (KA-MIG − null) as a fraction of the cell's mean null FID."""
    null = mean_fid(records, "permuted")
    return estimate((fid(r, "kamig") - fid(r, "permuted")) / null for r in records)


def percent_with_ci(effect: Estimate, reference: float) -> str:
    """``-1.8% (95% CI -2.9% to -0.7%), MDE 1.1%`` for an effect in FID and its reference FID."""
    if effect.n < 2:
        return f"{effect.mean / reference:+.1%} (one replicate: no interval)"
    low, high = effect.interval
    return (f"{effect.mean / reference:+.1%} of FID (95% CI {low / reference:+.1%} to "
            f"{high / reference:+.1%}; MDE {effect.mde / reference:.1%})")


def knowledge_answer(cell: Sequence[Record], adapter: str, tokens: str) -> str:
    """One adapter's knowledge effect at one length: the answer line."""
    if not cell:
        return f"not measured yet ({tokens}, {ADAPTER_NAMES[adapter]})."
    effect, null = contrast(cell, "kamig", "permuted"), mean_fid(cell, "permuted")
    gap = mean_fid(cell, "kamig") - mean_fid(cell, "recon")
    return (f"KA-MIG − its null = {effect.mean:+.2f} FID, {percent_with_ci(effect, null)}, over "
            f"{seeds(effect.n)}: **{verdict(effect, null)}**. KA-MIG's FID {mean_fid(cell, 'kamig'):.2f} is "
            f"{gap:.2f} above the tokenizer floor (gFID − rFID).")


def adapter_answer(ours: Sequence[Record], official: Sequence[Record]) -> str:
    """Official − ours, paired on the fine-tune seed: KA-MIG's FID and the knowledge effect."""
    if not ours or not official:
        return f"not measured yet: `{ADAPTERS_COMMAND}` runs both adapters on the same seeds."
    kamig = matched(official, ours, "kamig")
    reference = mean_fid(ours, "kamig")
    by_seed = {overrides(r)["kamig.seed"]: r for r in ours}
    effects = estimate((fid(r, "kamig") - fid(r, "permuted"))
                       - (fid(by_seed[s], "kamig") - fid(by_seed[s], "permuted"))
                       for r in official if (s := overrides(r)["kamig.seed"]) in by_seed)
    low, high = effects.interval
    interval = f"95% CI {low:+.2f} to {high:+.2f}" if effects.n > 1 else "one seed: no interval"
    return (f"official − ours, KA-MIG's FID on the same {seeds(kamig.n)} = {kamig.mean:+.2f}, "
            f"{percent_with_ci(kamig, reference)}: **{verdict(kamig, reference)}**. Their knowledge "
            f"effects differ by {effects.mean:+.2f} FID (official − ours, paired; {interval}).")


def length_answer(short: Sequence[Record], long: Sequence[Record], adapter: str,
                  second: Sequence[Record] = ()) -> str:
    """The relative knowledge effect at 196 tokens against 49, by Welch's interval (both on base 0),
    and what a second 196-token base model (``second``) says about base-to-base variance."""
    if not short or not long:
        return f"not measured yet: `{LONG_COMMAND}` runs the 14 × 14 series."
    at_49, at_196 = relative_knowledge(short), relative_knowledge(long)
    if min(at_49.n, at_196.n) < 2:
        return (f"With {ADAPTER_NAMES[adapter]}, the knowledge effect is {at_196.mean:+.1%} of FID at 196 "
                f"tokens ({seeds(at_196.n)}) against {at_49.mean:+.1%} at 49 ({seeds(at_49.n)}): no "
                "interval until each length has two replicates.")
    return (f"With {ADAPTER_NAMES[adapter]}, the knowledge effect is {at_196.mean:+.1%} of FID at 196 tokens "
            f"({seeds(at_196.n)}) against {at_49.mean:+.1%} at 49 ({seeds(at_49.n)}): 196 − 49 tokens, "
            f"base 0 at each, = {welch_line(at_196, at_49, STRONGER_AT_196)}. "
            f"{base_variance_line(at_196, second)}")


def welch_line(minuend: Estimate, subtrahend: Estimate, detected: str) -> str:
    """``-3.5% (Welch 95% CI ...; MDE ...): **outcome**`` for two independent relative effects;
    ``detected`` has a ``{}`` for "stronger" or "weaker" (of the minuend's effect). Both have at
    least two replicates."""
    gap, (low, high) = difference(minuend, subtrahend)
    if low > 0 or high < 0:
        outcome = "detected: " + detected.format("stronger" if high < 0 else "weaker")
    elif max(abs(low), abs(high)) <= TARGET_EFFECT:
        outcome = f"a difference beyond ±{max(abs(low), abs(high)):.1%} of FID is ruled out"
    else:
        outcome = "inconclusive"
    return (f"{gap:+.1%} (Welch 95% CI {low:+.1%} to {high:+.1%}; MDE {welch_mde(minuend, subtrahend):.1%}): "
            f"**{outcome}**")


def base_variance_line(first: Estimate, second: Sequence[Record]) -> str:
    """Whether one base model per length can be read as the length's effect: the plain caveat until
    a second 196-token base has two replicates, then the two bases' difference (``first``: base 0's
    relative knowledge effect at 196 tokens)."""
    if len(second) < 2:
        return ("One base model per length cannot separate length from base-to-base variance: at 49 "
                "tokens two bases' effects differed by 0.65 FID (reports/fashion_mnist.md).")
    between = welch_line(first, relative_knowledge(second), "base 0's effect is {}")
    return f"Base-to-base variance at 196 tokens, base 0 − base 1: {between}."


def second_base_answer(short: Sequence[Record], second: Sequence[Record], adapter: str) -> str:
    """The second 196-token base model's knowledge effect, and its own 196 − 49 contrast."""
    answer = knowledge_answer(second, adapter, "14 × 14, base 1")
    if len(second) < 2 or len(short) < 2:
        return answer
    against_49 = welch_line(relative_knowledge(second), relative_knowledge(short), STRONGER_AT_196)
    return f"{answer} 196 tokens on base 1 − 49 tokens on base 0 = {against_49}."


def series_section(records: Sequence[Record], adapter: str, base: int = 0) -> list[str]:
    """One adapter's cell on one base model: the variants and the paired contrasts."""
    cell = select(records, base=base, adapter=adapter)
    if not cell:
        return [f"No record of {ADAPTER_NAMES[adapter]} yet."]
    return [*variant_table(cell), "", *table(CONTRAST_HEADER, contrast_rows(cell))]


def seeds(n: int) -> str:
    return f"{n} fine-tune seed{'' if n == 1 else 's'}"


def interim_line(done: int, planned: int = PLANNED_SEEDS, series: str = "7 × 7 seeds per adapter",
                 answers: str = "the answers are") -> list[str]:
    """Before the planned seeds are in, the answers are interim looks, not the test."""
    if done >= planned:
        return []
    verb = "is" if done == 1 else "are"
    return [f"*Interim: {done} of the {planned} planned {series} {verb} recorded; {answers} read at "
            f"{planned}, and an interval that excludes 0 now is not yet a result.*", ""]


def design_lines(records: Sequence[Record], label: str) -> list[str]:
    """Size, cost per arm (the median experiment that did not also train the base model) and the
    models the series ran on."""
    if not records:
        return [f"* {label}: no record yet."]
    first = records[0]
    costs = []
    for adapter in sorted({overrides(r).get("fusion.adapter", "pipeline") for r in records}):
        arm = [r for r in records if overrides(r).get("fusion.adapter", "pipeline") == adapter]
        typical = [r for r in arm if "train_base" not in r.get("stages_run", ())] or arm
        minutes = statistics.median(r["seconds"] / 60 for r in typical)
        costs.append(f"{minutes:.1f} min per experiment with {ADAPTER_NAMES[adapter]}")
    return [f"* {label}: {len(records)} experiments, {first['evaluation']['kamig']['n_samples']:,} samples "
            f"per variant; {', '.join(costs)} (medians, on a {machine_of(records)}); "
            f"{models_line(records)}."]


def models_line(records: Sequence[Record]) -> str:
    """The tokenizer and base model fingerprints of each base seed in a series."""
    by_base: dict[int, dict[str, str]] = {}
    for r in sorted(records, key=lambda r: overrides(r)["seed"]):
        by_base.setdefault(overrides(r)["seed"], r.get("fingerprints", {}))
    return "; ".join(f"base {seed}: tokenizer `{prints.get('tokenizer')}`, base model `{prints.get('base')}`"
                     for seed, prints in by_base.items())


def render_part_two(adapters: Sequence[Record], long: Sequence[Record],
                    long_adapter: str = "official") -> str:
    """The report as Markdown, from the two series' records."""
    ours, official = select(adapters, adapter="pipeline"), select(adapters, adapter="official")
    long_cell, second = select(long, adapter=long_adapter), select(long, base=1, adapter=long_adapter)
    short_same = official if long_adapter == "official" else ours
    lines = [
        "# KA-MIG on Fashion-MNIST, part two: the published adapter, and longer sequences", "",
        "Generated by `python scripts/make_report.py` from the records in `reports/study/adapters/` and "
        "`reports/study/long/`; do not edit by hand. FIDs are on the domain classifier's features: a "
        "percentage is comparable with the paper's Inception-FID 8–12% in direction and rough size only.",
        "", "## Answers", "",
        *interim_line(min(len(ours), len(official))),
        *(interim_line(len(long_cell), PLANNED_LONG_SEEDS, "14 × 14 seeds on base 0", "answer 3 is")
          if long_cell else []),
        *(interim_line(len(second), PLANNED_SECOND_BASE_SEEDS, "14 × 14 seeds on base 1",
                       "its line is") if second else []),
        f"1. **Does the published adapter's knowledge help at 7 × 7 tokens?** "
        f"{knowledge_answer(official, 'official', '7 × 7 tokens')}",
        f"   With this pipeline's adapter: {knowledge_answer(ours, 'pipeline', '7 × 7')}",
        f"2. **Is it better or worse than ours?** {adapter_answer(ours, official)}",
        f"3. **Does the knowledge effect grow with sequence length?** "
        f"{length_answer(short_same, long_cell, long_adapter, second)}",
        f"   At 14 × 14 tokens: {knowledge_answer(long_cell, long_adapter, '14 × 14 tokens')}",
        f"   On a second 14 × 14 base model (seed 1): "
        f"{second_base_answer(short_same, second, long_adapter)}",
        "", "## Design", "",
        *design_lines(adapters, "7 × 7 tokens, both adapters"),
        *design_lines(long, "14 × 14 tokens"),
        "", "## 7 × 7 tokens: the official adapter", "", *series_section(adapters, "official"),
        "", "## 7 × 7 tokens: this pipeline's adapter", "", *series_section(adapters, "pipeline"),
        "", f"## 14 × 14 tokens: {ADAPTER_NAMES[long_adapter]}", "", *series_section(long, long_adapter),
        *(["", f"## 14 × 14 tokens, second base model (seed 1): {ADAPTER_NAMES[long_adapter]}", "",
           *series_section(long, long_adapter, base=1)] if second else []),
        "", "## Experiments", "",
        *table(["series", "name", "adapter", "fine-tune", "base", "control", "null", "KA-MIG", "rFID",
                "minutes"],
               [[series, r["name"], overrides(r).get("fusion.adapter", "pipeline"),
                 str(overrides(r)["kamig.seed"]),
                 *(f"{fid(r, v):.2f}" for v in ("base", "control", "permuted", "kamig", "recon")),
                 f"{r['seconds'] / 60:.1f}"]
                for series, records in (("7 × 7", adapters), ("14 × 14", long))
                for r in sorted(records, key=lambda r: r["name"])]),
    ]
    return "\n".join(lines) + "\n"

