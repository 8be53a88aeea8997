"""Part two of the study's report (study.part_two): the official adapter against its null and
against ours, and the knowledge effect at 196 tokens against 49, recomputed with scipy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from study.grid import experiment
from study.part_two import relative_knowledge, render_part_two
from study.stats import Estimate, welch_mde

PRINTS = {"tokenizer": "t1", "base": "b1"}


def _record(ft: int, adapter: str, kamig: float, null: float, prints=PRINTS, recon: float = 25.0,
            base: int = 0) -> dict:
    run = experiment(base, ft, adapter=adapter)
    fids = {"base": 50.0, "control": 48.0, "permuted": null, "kamig": kamig, "real": 2.0, "recon": recon}
    evaluation = {name: {"fid": value, "fid_se": 1.0, "precision": 0.7, "recall": 0.4, "class_accuracy": 0.9,
                         "n_samples": 5000} for name, value in fids.items()}
    return {"name": run.name, "overrides": run.overrides({"sample.per_class": 500}), "seconds": 480.0,
            "evaluation": evaluation, "fingerprints": dict(prints)}


OURS_K, OURS_N = [46.0, 47.1, 45.2, 46.6, 45.9], [47.0, 47.5, 46.9, 47.2, 46.8]
OFF_K, OFF_N = [45.1, 46.0, 44.7, 45.5, 45.0], [47.2, 47.9, 46.8, 47.6, 47.1]
LONG_K, LONG_N = [30.0, 29.1, 30.4, 29.6, 29.9], [33.0, 32.5, 33.4, 32.8, 33.1]


def _series():
    adapters = [_record(s, "pipeline", k, n) for s, (k, n) in enumerate(zip(OURS_K, OURS_N))]
    adapters += [_record(s, "official", k, n) for s, (k, n) in enumerate(zip(OFF_K, OFF_N))]
    long = [_record(s, "official", k, n, prints={"tokenizer": "t2", "base": "b2"}, recon=10.0)
            for s, (k, n) in enumerate(zip(LONG_K, LONG_N))]
    return adapters, long


def test_the_answers_are_scipys_paired_and_welch_intervals():
    adapters, long = _series()
    text = render_part_two(adapters, long)
    answers = text.split("## Design")[0]
    # 1. the official knowledge effect: paired within each replicate.
    diffs = np.subtract(OFF_K, OFF_N)
    ci = scipy.stats.ttest_1samp(diffs, 0).confidence_interval(0.95)
    null = np.mean(OFF_N)
    assert f"KA-MIG − its null = {diffs.mean():+.2f} FID, {diffs.mean() / null:+.1%} of FID (95% CI " \
           f"{ci.low / null:+.1%} to {ci.high / null:+.1%}" in answers
    # 2. official − ours, paired on the seed.
    paired = scipy.stats.ttest_rel(OFF_K, OURS_K).confidence_interval(0.95)
    paired_mean = np.mean(np.subtract(OFF_K, OURS_K))
    assert f"official − ours, KA-MIG's FID on the same 5 fine-tune seeds = {paired_mean:+.2f}" in answers
    assert f"(95% CI {paired.low / np.mean(OURS_K):+.1%}" in answers
    # 3. 196 against 49, relative to each cell's null, by Welch.
    short = np.subtract(OFF_K, OFF_N) / np.mean(OFF_N)
    longer = np.subtract(LONG_K, LONG_N) / np.mean(LONG_N)
    welch = scipy.stats.ttest_ind(longer, short, equal_var=False).confidence_interval(0.95)
    assert (f"196 − 49 tokens, base 0 at each, = {longer.mean() - short.mean():+.1%} (Welch 95% CI "
            f"{welch.low:+.1%} to {welch.high:+.1%}") in answers
    assert "detected: the effect is stronger at 196 tokens" in answers
    assert "0.65 FID" in answers  # one base per length: said plainly
    # gFID − rFID beside the FID
    assert f"{np.mean(LONG_K) - 10.0:.2f} above the tokenizer floor" in answers


def test_relative_knowledge_divides_by_the_cells_mean_null():
    adapters, _ = _series()
    official = [r for r in adapters if r["overrides"]["fusion.adapter"] == "official"]
    expected = np.subtract(OFF_K, OFF_N) / np.mean(OFF_N)
    assert relative_knowledge(official).values == pytest.approx(tuple(expected))


def test_welch_mde_is_the_closed_form_with_satterthwaite_df():
    a, b = Estimate((1.0, 2.0, 4.0, 3.0)), Estimate((0.0, 0.5, 0.2, 0.1, 0.6))
    va, vb = np.var(a.values, ddof=1) / 4, np.var(b.values, ddof=1) / 5
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 4)
    expected = (scipy.stats.t.ppf(0.975, df) + scipy.stats.t.ppf(0.8, df)) * np.sqrt(va + vb)
    assert welch_mde(a, b) == pytest.approx(expected)


def test_records_of_other_base_models_are_never_paired():
    adapters, long = _series()
    adapters[-1] = _record(4, "official", 45.0, 47.1, prints={"tokenizer": "t1", "base": "elsewhere"})
    with pytest.raises(ValueError, match="different tokenizers or base models"):
        render_part_two(adapters, long)


def test_missing_series_say_how_to_run_them():
    adapters, _ = _series()
    text = render_part_two(adapters, [])
    assert "not measured yet: `make study-long`" in text
    assert "not measured yet: `make study-adapters`" in render_part_two([], [])


def test_answers_before_the_planned_seeds_are_marked_interim():
    adapters, long = _series()
    interim = "*Interim: 5 of the 10 planned 7 × 7 seeds per adapter are recorded"
    assert interim in render_part_two(adapters, long)
    ten = [_record(s, adapter, 45.0 + 0.1 * s, 46.0)
           for s in range(10) for adapter in ("pipeline", "official")]
    text = render_part_two(ten, long)
    assert "7 × 7 seeds per adapter are recorded" not in text
    # The 14 x 14 series has its own plan: 5 of its 10 seeds.
    assert "*Interim: 5 of the 10 planned 14 × 14 seeds on base 0 are recorded; answer 3 is" in text
    long_ten = [_record(s, "official", 30.0, 31.0 + 0.1 * s, prints={"tokenizer": "t2", "base": "b2"})
                for s in range(10)]
    assert "Interim" not in render_part_two(ten, long_ten)
    assert "*Interim: 1 of the 10 planned 14 × 14 seeds on base 0 is recorded;" in render_part_two(
        ten, long_ten[:1])


def test_one_long_replicate_gives_its_effect_and_no_interval():
    adapters, long = _series()
    answer = render_part_two(adapters, long[:1]).split("## Design")[0]
    effect = (LONG_K[0] - LONG_N[0]) / LONG_N[0]
    assert f"the knowledge effect is {effect:+.1%} of FID at 196 tokens (1 fine-tune seed)" in answer
    assert "no interval until each length has two replicates" in answer and "nan" not in answer


def _second_base(kamig=(31.0, 31.4, 30.2), null=(31.5, 31.1, 31.0)):
    return [_record(s, "official", k, n, prints={"tokenizer": "t2", "base": "b3"}, recon=10.0, base=1)
            for s, (k, n) in enumerate(zip(kamig, null))]


def test_a_second_long_base_is_answered_apart_from_the_first():
    adapters, long = _series()
    second_k, second_n = [31.0, 31.4, 30.2], [31.5, 31.1, 31.0]
    text = render_part_two(adapters, long + _second_base(second_k, second_n))
    answers = text.split("## Design")[0]
    line = next(line for line in answers.splitlines() if "second 14 × 14 base" in line)
    diffs = np.subtract(second_k, second_n)
    assert f"KA-MIG − its null = {diffs.mean():+.2f} FID" in line and "over 3 fine-tune seeds" in line
    # Its own length contrast: base 1 at 196 against base 0 at 49, by Welch.
    second = diffs / np.mean(second_n)
    short = np.subtract(OFF_K, OFF_N) / np.mean(OFF_N)
    welch = scipy.stats.ttest_ind(second, short, equal_var=False).confidence_interval(0.95)
    assert (f"196 tokens on base 1 − 49 tokens on base 0 = {second.mean() - short.mean():+.1%} (Welch 95% CI "
            f"{welch.low:+.1%} to {welch.high:+.1%}") in line
    # With two bases at 196 tokens, the caveat becomes their measured difference, base 0 − base 1.
    first = np.subtract(LONG_K, LONG_N) / np.mean(LONG_N)
    between = scipy.stats.ttest_ind(first, second, equal_var=False).confidence_interval(0.95)
    assert (f"Base-to-base variance at 196 tokens, base 0 − base 1: {first.mean() - second.mean():+.1%} "
            f"(Welch 95% CI {between.low:+.1%} to {between.high:+.1%}") in answers
    assert "0.65 FID" not in answers
    # The first base's numbers ignore the second base's records.
    without = render_part_two(adapters, long).split("## Design")[0]
    assert next(x for x in answers.splitlines() if x.startswith("   At 14 × 14 tokens")) == \
        next(x for x in without.splitlines() if x.startswith("   At 14 × 14 tokens"))
    # Its own plan, its own tables, and each base's fingerprints in the design.
    assert "*Interim: 3 of the 5 planned 14 × 14 seeds on base 1 are recorded; its line is" in answers
    assert "## 14 × 14 tokens, second base model (seed 1)" in text
    assert ("base 0: tokenizer `t2`, base model `b2`; base 1: tokenizer `t2`, base model `b3`"
            in text.split("## Design")[1])


def test_one_replicate_on_the_second_base_keeps_the_plain_caveat():
    adapters, long = _series()
    answers = render_part_two(adapters, long + _second_base()[:1]).split("## Design")[0]
    assert "0.65 FID" in answers and "Base-to-base" not in answers and "nan" not in answers
