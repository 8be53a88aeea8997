"""The study report (study.report): selection, paired statistics and the three-way conclusion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from study.grid import experiment
from study.report import Estimate, contrast, difference, matched, render_report, select, verdict


def _record(ft: int, fids: dict[str, float], base: int = 0, graphs=None, negative_at: str = "all") -> dict:
    run = experiment(base, ft, **({"graphs": graphs} if graphs else {}), negative_at=negative_at)
    evaluation = {}
    for name in ("base", "control", "permuted", "kamig", "real", "recon"):
        evaluation[name] = {"fid": fids.get(name, {"real": 6.0, "recon": 25.0}.get(name, 45.0)),
                            "fid_se": 1.0, "precision": 0.7, "recall": 0.4, "class_accuracy": 0.9,
                            "n_samples": 5000, "fid_subsets": {"1000": fids.get(name, 45.0) + 3.0}}
    return {"name": run.name, "overrides": run.overrides({"sample.per_class": 500}), "seconds": 600.0,
            "evaluation": evaluation,
            "graphs": {"similarity": {"self_weight_mean": 0.6, "neighbour_to_self_median": 0.4,
                                      "max_row_sum": 1.01, "mean_degree": 2.8}}}


def test_estimate_interval_and_mde_follow_student_t():
    e = Estimate((1.0, 2.0, 3.0, 4.0))
    t = scipy.stats.t.ppf(0.975, 3)
    assert e.half_width == pytest.approx(t * np.std([1, 2, 3, 4], ddof=1) / 2)
    assert e.mde == pytest.approx((t + scipy.stats.t.ppf(0.8, 3)) * e.sd / 2)
    assert e.mde > e.half_width
    assert math.isnan(Estimate((1.0,)).half_width)
    # The replicates that bring the MDE down to an effect: the first n whose t-based MDE reaches it.
    needed = e.replicates_for(1.0)
    mde = lambda n: (scipy.stats.t.ppf(0.975, n - 1) + scipy.stats.t.ppf(0.8, n - 1)) * e.sd / math.sqrt(n)  # noqa: E731
    assert mde(needed) <= 1.0 < mde(needed - 1)
    # A CI half-width of 1.0 needs fewer replicates than detecting 1.0 with 80% power.
    assert 2 <= e.replicates_for(1.0, power=None) < needed


def test_contrast_is_paired_within_a_replicate():
    # A large common seed effect cancels in the paired difference.
    records = [_record(ft, {"kamig": 40.0 + 5 * ft, "permuted": 41.0 + 5 * ft}) for ft in range(4)]
    effect = contrast(records, "kamig", "permuted")
    assert effect.values == (-1.0, -1.0, -1.0, -1.0) and effect.half_width == 0.0


def test_verdict_has_three_outcomes():
    assert verdict(Estimate((-2.0, -2.2, -1.8, -2.1)), 45.0).startswith("detected: better")
    assert verdict(Estimate((2.0, 2.2, 1.8, 2.1)), 45.0).startswith("detected: worse")
    ruled = verdict(Estimate((0.3, -0.2, 0.1, -0.3, 0.2)), 45.0)
    assert ruled.startswith("ruled out") and "%" in ruled
    open_ = verdict(Estimate((5.0, -6.0, 4.0, -3.0)), 45.0)
    assert open_.startswith("inconclusive") and "replicates" in open_


def test_select_keeps_one_design_cell_in_seed_order():
    records = [_record(2, {}), _record(0, {}), _record(1, {}, base=1), _record(0, {}, graphs=("similarity",)),
               _record(0, {}, negative_at="masked")]
    assert [r["name"] for r in select(records)] == ["b0-f0", "b0-f2"]
    assert [r["name"] for r in select(records, graphs=("similarity",))] == ["b0-f0-similarity"]
    assert [r["name"] for r in select(records, base=1)] == ["b1-f1"]
    assert [r["name"] for r in select(records, negative_at="masked")] == ["b0-f0-negmasked"]


def test_matched_pairs_cells_by_fine_tune_seed():
    # A seed effect shared by both cells cancels; seeds only one cell has are left out.
    full = [_record(ft, {"kamig": 40.0 + 5 * ft}) for ft in range(4)]
    alone = [_record(ft, {"kamig": 41.0 + 5 * ft}, graphs=("cooccurrence",)) for ft in (0, 2, 7)]
    effect = matched(alone, full)
    assert effect.values == (1.0, 1.0) and effect.half_width == 0.0
    text = render_report([*full, *alone])
    row = next(line for line in text.splitlines() if line.startswith("| cooccurrence only |"))
    assert row.endswith("| 1.00 (+2.2%, 2 seeds) |")  # +1 FID against a null FID of 45
    assert "| all three | 4 |" in text and "same seeds |" in text
    # Across base models the seeds pair nothing, so that table has no such column.
    second = render_report([*full, _record(0, {}, base=1), _record(1, {}, base=1)])
    assert "| base seed 1 | 2 |" in second
    assert "with base seed 0, same seeds" not in second


def test_report_states_the_answer_the_floor_and_what_is_missing():
    rng = np.random.default_rng(0)
    records = [_record(ft, {"control": 46.0 + d, "permuted": 45.0 + d, "kamig": 45.0 + d + e})
               for ft, (d, e) in enumerate(zip(rng.normal(0, 2, 6), rng.normal(0, 0.3, 6)))]
    records[0]["seconds"] = 3600.0  # a replicate that also trained the base model: not the typical cost
    text = render_report(records)
    assert "**ruled out" in text  # KA-MIG − null within a few tenths: an 8% effect is excluded
    assert "Cost: 10.0 min of 2-core CPU per replicate, the median" in text
    assert "rFID (the tokenizer floor) is 25.00" in text
    assert "| knowledge: kamig − permuted |" in text
    assert "Not run yet" in text  # no ablation, negative_at or second-base records
    assert "b0-f5" in text
    lonely = render_report([_record(0, {}, base=1)])
    assert lonely.endswith("No replicate of the main comparison (base 0, all graphs) yet.\n")


def test_difference_of_independent_designs_is_welch():
    a, b = Estimate((1.0, 2.0, 4.0, 3.0)), Estimate((0.5, 0.0, 1.5))
    gap, (low, high) = difference(a, b)
    t = scipy.stats.ttest_ind(a.values, b.values, equal_var=False)
    interval = t.confidence_interval(0.95)
    assert gap == pytest.approx(2.5 - 2 / 3)
    assert (low, high) == pytest.approx((interval.low, interval.high))
    assert all(math.isnan(x) for x in difference(a, Estimate((1.0,)))[1])


def test_report_compares_the_second_base_model_with_the_first():
    base0 = [_record(ft, {"permuted": 45.0 + d, "kamig": 44.0 + d + e})
             for ft, (d, e) in enumerate([(0.0, 0.1), (1.0, -0.1), (-1.0, 0.05), (0.5, -0.05)])]
    agreeing = [_record(ft, {"permuted": 46.0 + ft, "kamig": 45.0 + ft + e}, base=1)
                for ft, e in enumerate([0.2, -0.2, 0.1])]
    text = render_report(base0 + agreeing)
    assert "On `seed` 1, over 3 fine-tune seeds, KA-MIG − null = -0.97 FID: detected" in text
    assert "agree within their uncertainty" in text
    no_effect = [_record(ft, {"permuted": 46.0 + ft, "kamig": 46.0 + ft + e}, base=1)
                 for ft, e in enumerate([0.1, -0.1, 0.05])]
    assert "not the same on both backbones" in render_report(base0 + no_effect)


def test_report_shows_the_measured_sampling_noise_when_given():
    records = [_record(ft, {"kamig": 44.0 + ft}) for ft in range(3)]
    assert "Not measured yet: `python scripts/sampling_noise.py`" in render_report(records)
    noise = {"label": "b0-f9", "per_class": 1000, "samples_per_draw": 10000, "sampling_seeds": [1, 2],
             "rows": [{"variant": "kamig", "n": 1000, "subsets": 20, "mean": 50.1, "sd": 1.84,
                       "bootstrap_se": 2.01},
                      {"variant": "kamig", "n": 10000, "subsets": 2, "mean": 45.3, "sd": 0.52,
                       "bootstrap_se": 0.61}],
             "contrast": [{"contrast": "kamig − permuted", "n": 10000, "subsets": 2, "mean": -0.4,
                           "sd": None}]}
    text = render_report(records, sampling_noise=noise)
    assert "models of experiment `b0-f9` held fixed, 10,000 samples per variant" in text
    assert "| kamig | 1,000 | 20 | 50.10 | 1.84 | 2.01 |" in text
    assert "| kamig − permuted | 10,000 | 2 | -0.40 | – | – |" in text


def test_rendered_contrast_rows_equal_a_scipy_recomputation():
    """Each contrast row's mean, CI, percentage (of the subtrahend's mean FID), CI half-width and
    MDE, as printed, against scipy's paired t-test and the closed-form MDE on the same records."""
    rng = np.random.default_rng(0)
    fids = {name: 45.0 + rng.normal(0, 1.0, 5) for name in ("base", "control", "permuted", "kamig")}
    records = [_record(ft, {name: float(v[ft]) for name, v in fids.items()}) for ft in range(5)]
    lines = render_report(records).splitlines()
    contrasts = (("knowledge", "kamig", "permuted"), ("capacity", "permuted", "control"),
                 ("the paper's", "kamig", "base"))
    for label, minuend, subtrahend in contrasts:
        row = next(line for line in lines if line.startswith(f"| {label}: {minuend} − {subtrahend} |"))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        test = scipy.stats.ttest_rel(fids[minuend], fids[subtrahend])
        interval = test.confidence_interval(0.95)
        diff = fids[minuend] - fids[subtrahend]
        reference = fids[subtrahend].mean()
        mde = (scipy.stats.t.ppf(0.975, 4) + scipy.stats.t.ppf(0.8, 4)) * diff.std(ddof=1) / math.sqrt(5)
        assert cells[1] == f"{diff.mean():+.2f}"
        assert cells[2] == f"{interval.low:+.2f} to {interval.high:+.2f}"
        assert cells[3] == f"{diff.mean() / reference:+.1%}"
        assert cells[4] == f"±{(interval.high - interval.low) / 2 / reference:.1%}"
        assert cells[5] == f"{mde / reference:.1%}"
        assert cells[6] == f"{int((diff < 0).sum())} of 5"


def test_the_welch_line_says_which_base_is_subtracted():
    base0 = [_record(ft, {"permuted": 45.0 + ft, "kamig": 44.0 + ft + e})
             for ft, e in enumerate([0.1, -0.1, 0.0])]
    base1 = [_record(ft, {"permuted": 46.0 + ft, "kamig": 46.0 + ft + e}, base=1)
             for ft, e in enumerate([0.1, -0.1, 0.05])]
    gap = -1.0 - (0.05 / 3)
    assert f"`seed` 0's effect − `seed` 1's = {gap:+.2f}" in render_report(base0 + base1)


def test_the_committed_reports_regenerate_byte_identically_from_the_records():
    """The reports are generated from the committed records alone: rendering them again gives the
    committed files (``python scripts/make_report.py`` after every new record)."""
    import json

    from study.grid import load_records
    from study.part_two import render_part_two
    from tests.helpers import REPO_ROOT

    reports = REPO_ROOT / "reports"
    noise = json.loads((reports / "sampling_noise.json").read_text())
    assert render_report(load_records(reports / "study"), sampling_noise=noise) == \
        (reports / "fashion_mnist.md").read_text()
    part_two = render_part_two(load_records(reports / "study/adapters"), load_records(reports / "study/long"))
    assert part_two == (reports / "part_two.md").read_text()
