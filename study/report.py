"""Render ``reports/fashion_mnist.md`` from the study's records (:mod:`study.grid`).

Each record is one replicate: every variant (base, control, permuted, kamig) and both floors (real,
recon) scored in one experiment. The question is whether the *knowledge* helps, as opposed to the
adapter's *capacity*, so the report is built on paired differences within a replicate:

* knowledge = kamig − permuted (same adapter, recipe and graph statistics; only which tokens the
  graph nodes are differs);
* capacity = permuted − control (the adapter on knowledge-free graphs against a head-only fine-tune);
* total = kamig − control.

Each difference is given as a mean with its 95% confidence interval (Student t over replicates),
and with the design's minimum detectable effect (two-sided 5%, 80% power). The conclusion follows
from the interval alone: an effect is *detected* when the interval excludes zero; an effect of at
least X% is *ruled out* when the whole interval lies within ±X% of the null's FID, with X at most
the target effect; otherwise the result is *inconclusive*, with the number of replicates that would
settle it.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pipeline import layout
from study.grid import GRAPH_NAMES
from study.stats import Estimate, difference, estimate

Record = dict[str, Any]
GRAPHS = GRAPH_NAMES
VARIANTS = layout.GENERATOR_VARIANTS
FLOORS = layout.FLOORS
LABELS = {"base": "base (no fine-tune)", "control": "control (head-only fine-tune)",
          "permuted": "null (adapter on permuted graphs)", "kamig": "KA-MIG", "real": "held-out real images",
          "recon": "tokenizer floor: decode(encode(x))"}
TARGET_EFFECT = 0.08  # the effect the study is meant to resolve: 8% of FID (the paper's 2.68 -> 2.45)
CI_GOAL = 0.03  # the design's goal for the knowledge effect's CI half-width, as a fraction of FID


# --------------------------------------------------------------------------------------------
# Selecting records
# --------------------------------------------------------------------------------------------


def overrides(record: Record) -> dict[str, Any]:
    return record["overrides"]


def select(records: Iterable[Record], base: int = 0, graphs: Sequence[str] = GRAPHS,
           negative_at: str = "all", adapter: str = "pipeline") -> list[Record]:
    """The replicates of one design cell, ordered by fine-tune seed (records from before the official
    adapter existed are this pipeline's). They must share one tokenizer and base model."""
    chosen = [r for r in records if overrides(r)["seed"] == base
              and tuple(overrides(r)["fusion.graphs"]) == tuple(graphs)
              and overrides(r)["fusion.negative_at"] == negative_at
              and overrides(r).get("fusion.adapter", "pipeline") == adapter]
    require_same_models(chosen)
    return sorted(chosen, key=lambda r: overrides(r)["kamig.seed"])


def require_same_models(records: Sequence[Record]) -> None:
    """Refuse to compare records made on different tokenizers or base models (their fingerprints;
    records from before fingerprints carry none, and compare only among themselves)."""
    kinds = {json.dumps(r.get("fingerprints"), sort_keys=True) for r in records}
    if len(kinds) > 1:
        names = ", ".join(f"{r['name']} {r.get('fingerprints')}" for r in records)
        raise ValueError(f"these records ran on different tokenizers or base models and cannot be paired: "
                         f"{names}")


def fid(record: Record, variant: str) -> float:
    return float(record["evaluation"][variant]["fid"])


def mean_fid(records: Iterable[Record], variant: str) -> float:
    return estimate(fid(r, variant) for r in records).mean


def contrast(records: Sequence[Record], minuend: str, subtrahend: str,
             value: Callable[[Record, str], float] = fid) -> Estimate:
    """Per-replicate ``value(minuend) - value(subtrahend)`` (negative: the minuend scores lower FID)."""
    return estimate(value(r, minuend) - value(r, subtrahend) for r in records)


def verdict(effect: Estimate, reference: float, target: float = TARGET_EFFECT) -> str:
    """One of three conclusions, read off the confidence interval (FID: lower is better)."""
    if effect.n < 2:
        return f"inconclusive: {effect.n} replicate, no interval"
    low, high = effect.interval
    if low > 0 or high < 0:
        direction = "better" if high < 0 else "worse"
        return (f"detected: {direction} by {abs(effect.mean) / reference:.1%} of FID "
                f"(95% CI {low:+.2f} to {high:+.2f})")
    bound = max(abs(low), abs(high)) / reference
    if bound <= target:
        return f"ruled out: any effect beyond ±{bound:.1%} of FID (95% CI {low:+.2f} to {high:+.2f})"
    needed = effect.replicates_for(target * reference)
    return (f"inconclusive: the 95% CI ({low:+.2f} to {high:+.2f}) allows ±{bound:.1%}; an MDE of "
            f"{target:.0%} needs about {needed} replicates at this spread")


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def row_line(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    return [row_line(header), row_line(["---"] * len(header)), *(row_line(r) for r in rows)]


def with_ci(e: Estimate, digits: int = 2) -> str:
    if e.n == 0:
        return "–"
    if e.n == 1 or e.sd == 0:  # e.g. the base model's samples, the same in every replicate
        return f"{e.mean:.{digits}f}"
    return f"{e.mean:.{digits}f} ± {e.half_width:.{digits}f}"


def variant_table(records: Sequence[Record]) -> list[str]:
    rfid = mean_fid(records, "recon")
    rows = []
    for name in (*VARIANTS, *FLOORS):
        metric = lambda key, n=name: estimate(r["evaluation"][n].get(key) for r in records)  # noqa: E731
        gap = "–" if name in FLOORS else with_ci(estimate(fid(r, name) - fid(r, "recon") for r in records))
        rows.append([LABELS[name], with_ci(metric("fid")), gap, f"{metric('fid_se').mean:.2f}",
                     f"{metric('fid').sd:.2f}" if len(records) > 1 else "–",
                     f"{metric('precision').mean:.3f}", f"{metric('recall').mean:.3f}",
                     f"{metric('class_accuracy').mean:.3f}"])
    return [f"rFID (the tokenizer floor) is {rfid:.2f}: no generator of these tokens can score below it.",
            "", *table(["variant", "FID ± 95% CI", "gFID − rFID", "bootstrap SE", "sd over seeds",
                         "precision", "recall", "class accuracy"], rows)]


# The last is the paper's own comparison: the fine-tuned KA-MIG against its frozen backbone.
CONTRASTS = (("knowledge", "kamig", "permuted"), ("capacity", "permuted", "control"),
             ("total", "kamig", "control"), ("fine-tuning", "control", "base"),
             ("the paper's", "kamig", "base"))


def contrast_rows(records: Sequence[Record]) -> list[list[str]]:
    rows = []
    for label, minuend, subtrahend in CONTRASTS:
        effect = contrast(records, minuend, subtrahend)
        reference = mean_fid(records, subtrahend)
        low, high = effect.interval
        relative = f"{effect.mean / reference:+.1%}"
        if effect.n > 1:
            spread = [f"{low:+.2f} to {high:+.2f}", relative, f"±{effect.half_width / reference:.1%}",
                      f"{effect.mde / reference:.1%}"]
        else:
            spread = ["–", relative, "–", "–"]
        rows.append([f"{label}: {minuend} − {subtrahend}", f"{effect.mean:+.2f}", *spread,
                     f"{sum(v < 0 for v in effect.values)} of {effect.n}", verdict(effect, reference)])
    return rows


CONTRAST_HEADER = ["contrast (FID)", "mean", "95% CI", "mean, % of FID", "CI half-width, %",
                   "MDE (80% power), %", "minuend better on", "conclusion"]


def _noise_lines(records: Sequence[Record]) -> list[str]:
    n = records[0]["evaluation"]["kamig"]["n_samples"]
    sizes = sorted({int(k) for r in records for k in r["evaluation"]["kamig"].get("fid_subsets", {})})
    header = ["variant", *(f"FID at {s:,}" for s in sizes), f"FID at {n:,}", "bootstrap SE at n"]
    rows = []
    for name in VARIANTS:
        cells = [name]
        for size in sizes:
            subset = (r["evaluation"][name]["fid_subsets"].get(str(size)) for r in records)
            cells.append(with_ci(estimate(subset)))
        cells += [with_ci(estimate(fid(r, name) for r in records)),
                  f"{estimate(r['evaluation'][name]['fid_se'] for r in records).mean:.2f}"]
        rows.append(cells)
    knowledge = [with_ci(estimate(r["evaluation"]["kamig"]["fid_subsets"].get(str(s), math.nan)
                                   - r["evaluation"]["permuted"]["fid_subsets"].get(str(s), math.nan)
                                   for r in records)) for s in sizes]
    rows.append(["kamig − permuted", *knowledge, with_ci(contrast(records, "kamig", "permuted")), "–"])
    return ["Every score at n images is biased upward by an amount that shrinks like 1/n; the columns "
            "below score nested uniform subsets of the same samples (`fid_subsets` in "
            "`metrics/eval_*.json`), mean ± 95% CI over the replicates. The bootstrap SE is the noise "
            "of one score from the particular images drawn; the spread over fine-tune seeds adds the "
            "training noise.", "", *table(header, rows)]


def _sampling_noise_lines(noise: dict[str, Any] | None) -> list[str]:
    """The measured sampling noise at fixed models (``scripts/sampling_noise.py``), if it was run."""
    if noise is None:
        return ["Not measured yet: `python scripts/sampling_noise.py` (see its docstring)."]

    def sd(row: dict[str, Any]) -> str:
        return "–" if row["sd"] is None else f"{row['sd']:.2f}"

    rows = [[row["variant"], f"{row['n']:,}", str(row["subsets"]), f"{row['mean']:.2f}", sd(row),
             "–" if row.get("bootstrap_se") is None else f"{row['bootstrap_se']:.2f}"]
            for row in noise["rows"]]
    rows += [[row["contrast"], f"{row['n']:,}", str(row["subsets"]), f"{row['mean']:+.2f}", sd(row), "–"]
             for row in noise["contrast"]]
    seeds = ", ".join(map(str, noise["sampling_seeds"]))
    source = f" of experiment `{noise['label']}`" if noise.get("label") else ""
    return [f"The models{source} held fixed, {noise['samples_per_draw']:,} samples per variant from each "
            f"sampling seed ({seeds}), split into disjoint class-balanced subsets of n images. Each "
            "subset is an independent draw, so the sd of their FIDs is the measured sampling noise at n; "
            "the bootstrap SE is the estimate one score gives of it. The contrast uses the same subsets of "
            "both variants (the same Gumbel noise).", "",
            *table(["variant", "n", "disjoint draws", "mean FID", "sd over draws", "bootstrap SE"], rows)]


def matched(cell: Sequence[Record], reference: Sequence[Record], variant: str = "kamig") -> Estimate:
    """``variant``'s FID in ``cell`` minus in ``reference``, paired by fine-tune seed. On the same base
    model, the same seed means the same data order, masks and sampling noise, so the pair differs
    only in the design."""
    by_seed = {overrides(r)["kamig.seed"]: r for r in reference}
    pairs = [(r, by_seed[overrides(r)["kamig.seed"]]) for r in cell if overrides(r)["kamig.seed"] in by_seed]
    for pair in pairs:
        require_same_models(pair)
    return estimate(fid(r, variant) - fid(partner, variant) for r, partner in pairs)


def _cell_table(records: Sequence[Record], cells: Sequence[tuple[str, dict[str, Any]]],
                reference: tuple[str, dict[str, Any]], paired: bool = True) -> list[str]:
    """KA-MIG against the null in each design cell, beside the main comparison (``reference``);
    with ``paired``, also each cell's KA-MIG against the reference's on the same fine-tune seeds."""
    if not any(select(records, **where) for _, where in cells):
        return ["Not run yet: `python scripts/run_experiments.py` runs it after the main comparison."]
    reference_records = select(records, **reference[1])
    rows = []
    for label, where in [*cells, reference]:
        chosen = select(records, **where)
        if not chosen:
            continue
        effect = contrast(chosen, "kamig", "permuted")
        null_fid = mean_fid(chosen, "permuted")
        row = [label, str(len(chosen)), with_ci(estimate(fid(r, "kamig") for r in chosen)),
               with_ci(estimate(fid(r, "permuted") for r in chosen)), with_ci(effect),
               verdict(effect, null_fid)]
        if paired:
            against = matched(chosen, reference_records) if where != reference[1] else Estimate(())
            row.append("–" if against.n == 0 else
                       f"{with_ci(against)} ({against.mean / null_fid:+.1%}, {against.n} "
                       f"seed{'s' if against.n > 1 else ''})")
        rows.append(row)
    header = ["design", "replicates", "KA-MIG FID", "null FID", "KA-MIG − null", "conclusion"]
    if paired:
        header.append(f"KA-MIG − KA-MIG with {reference[0]}, same seeds")
    return table(header, rows)


def _graph_lines(record: Record) -> list[str]:
    stats = record.get("graphs", {})
    rows = []
    for graph in ("cooccurrence", "similarity"):
        g = stats.get(graph, {})
        if "self_weight_mean" in g:
            rows.append([graph, f"{g['self_weight_mean']:.3f}",
                         f"{g.get('neighbour_to_self_median', math.nan):.3f}", f"{g['max_row_sum']:.3f}",
                         f"{g.get('mean_degree', math.nan):.1f}"])
    lines = table(["graph", "self weight (mean diagonal)", "median neighbour / self", "max row sum",
                    "mean degree"], rows)
    density = stats.get("incompatibility_density")
    if density is not None:
        lines += ["", "Incompatibility density (never-observed (class, position, token) triples): "
                  f"{density:.1%}."]
    return lines


def _second_base_line(knowledge: Estimate, second: Sequence[Record]) -> str:
    if not second:
        return ("* **On a second base model?** Not run yet: `python scripts/run_experiments.py` runs "
                "`seed` 1 after the main comparison.")
    other = contrast(second, "kamig", "permuted")
    null_fid = mean_fid(second, "permuted")
    line = (f"* **On a second base model?** On `seed` 1, over {other.n} fine-tune seeds, KA-MIG − null = "
            f"{other.mean:+.2f} FID: {verdict(other, null_fid)}.")
    gap, (low, high) = difference(knowledge, other)
    if math.isnan(low):
        return line
    if low > 0 or high < 0:
        return (line + f" The two base models differ: `seed` 0's effect − `seed` 1's = {gap:+.2f} FID (Welch "
                f"95% CI {low:+.2f} to {high:+.2f}): the knowledge effect is not the same on both backbones.")
    return (line + " The two base models' effects agree within their uncertainty (`seed` 0's effect − "
            f"`seed` 1's = {gap:+.2f}, Welch 95% CI {low:+.2f} to {high:+.2f}).")


def _conclusion(main: Sequence[Record], second: Sequence[Record] = ()) -> list[str]:
    knowledge = contrast(main, "kamig", "permuted")
    null_fid = mean_fid(main, "permuted")
    capacity = contrast(main, "permuted", "control")
    control_fid = mean_fid(main, "control")
    rfid = mean_fid(main, "recon")
    kamig_fid = mean_fid(main, "kamig")
    half_width = knowledge.half_width / null_fid
    if knowledge.n < 2:
        return [f"* Only {knowledge.n} replicate so far (KA-MIG − null = {knowledge.mean:+.2f} FID): no "
                "interval yet. Run `python scripts/run_experiments.py` for the rest of the grid."]
    return [
        f"* **Does the knowledge help?** KA-MIG − null = {knowledge.mean:+.2f} FID "
        f"({knowledge.mean / null_fid:+.1%}), 95% CI {knowledge.interval[0]:+.2f} to "
        f"{knowledge.interval[1]:+.2f}, over {knowledge.n} fine-tune seeds on one base model: "
        f"**{verdict(knowledge, null_fid)}**.",
        _second_base_line(knowledge, second),
        f"* **Does the adapter's capacity help?** null − control = {capacity.mean:+.2f} FID "
        f"({capacity.mean / control_fid:+.1%}): {verdict(capacity, control_fid)}.",
        f"* **Power.** The design's minimum detectable effect is {knowledge.mde:.2f} FID "
        f"({knowledge.mde / null_fid:.1%} of the null's FID); the CI half-width is "
        f"{half_width:.1%} (the goal was at most {CI_GOAL:.0%}; at this spread about "
        f"{knowledge.replicates_for(CI_GOAL * null_fid, power=None)} replicates reach it).",
        f"* **Distance to the tokenizer floor.** KA-MIG's FID {kamig_fid:.2f} is {kamig_fid - rfid:.2f} "
        f"above the tokenizer floor (rFID {rfid:.2f}); the whole knowledge effect is measured in that gap.",
    ]


def machine_of(records: Sequence[Record]) -> str:
    """The machine the records ran on, as they record it (records from before the key: the 2-core
    CPU machine of the first study)."""
    machines = {(m["cpus"], m["processor"]) for r in records if (m := r.get("machine"))}
    if not machines:
        return "2-core CPU"
    return " / ".join(f"{cpus}-core CPU ({processor})" for cpus, processor in sorted(machines))


def render_report(records: Sequence[Record], title: str = "KA-MIG on Fashion-MNIST",
                  sampling_noise: dict[str, Any] | None = None) -> str:
    """The whole report as Markdown; ``sampling_noise`` is ``reports/sampling_noise.json``, if measured."""
    main = select(records)
    lines = [f"# {title}: does the knowledge help, or the capacity?", "",
             f"Generated by `python scripts/make_report.py` from the {len(records)} experiment records in "
             "`reports/study/` (written by `python scripts/run_experiments.py`); do not edit by hand.", ""]
    if not main:
        return "\n".join([*lines, "No replicate of the main comparison (base 0, all graphs) yet."]) + "\n"
    first = main[0]
    n = first["evaluation"]["kamig"]["n_samples"]
    # The median: a replicate that also trains or samples the base model, or shares the machine with
    # another job, takes far longer than the typical one.
    minutes = statistics.median(r["seconds"] / 60 for r in main)
    seeds = ", ".join(str(overrides(r)["kamig.seed"]) for r in main)
    lines += [
        "## Answer", "", *_conclusion(main, select(records, base=1)), "",
        "## Design", "",
        f"* {len(main)} replicates: fine-tune seeds `kamig.seed` {seeds} on one base model (`seed` 0), "
        "as the paper fine-tunes one pretrained backbone. Each replicate "
        "fine-tunes all three variants with the same seed (same data order and masks) and samples them "
        "with the same sampling seed (the same Gumbel noise): differences are paired.",
        f"* {n:,} samples per variant ({n // 10:,} per class) against the 10,000 val images, on the domain "
        "classifier's features. The floors score as many held-out train images that the classifier "
        "never trained on.",
        f"* Cost: {minutes:.1f} min of {machine_of(main)} per replicate, the median over the records (three "
        "fine-tunes, three samplings, the evaluations; the first replicate of a base model also trains "
        "and samples it).",
        "",
        "## Variants", "", *variant_table(main), "",
        "## Paired differences", "",
        "Negative means the first variant has the lower (better) FID. MDE: the smallest true "
        "difference this design detects with 80% power at the 5% level.", "",
        *table(CONTRAST_HEADER, contrast_rows(main)), "",
        "## Sample size: bias and noise", "", *_noise_lines(main), "",
        "### Sampling noise at fixed models", "", *_sampling_noise_lines(sampling_noise), "",
        "## Graph ablation against the null", "",
        "Each graph alone; the null control uses the same graph set, permuted. The last column pairs "
        "each cell's KA-MIG with the all-graph KA-MIG of the same fine-tune seed: positive means "
        "dropping the other graphs costs FID.", "",
        *_cell_table(records, [(f"{g} only", {"graphs": (g,)}) for g in GRAPHS], ("all three", {})), "",
        "## Negative term at masked positions only (`fusion.negative_at: masked`)", "",
        *_cell_table(records, [("masked positions (paper text)", {"negative_at": "masked"})],
                     ("all positions (official code)", {})), "",
        "## A second base model", "",
        # Different base models: the same fine-tune seed pairs nothing across them.
        *_cell_table(records, [("base seed 1", {"base": 1})], ("base seed 0", {}), paired=False), "",
        "## Graph operators", "", *_graph_lines(first), "",
        "## Experiments", "",
        *table(["name", "base", "fine-tune", "graphs", "negative at", *VARIANTS, "rFID", "minutes"],
                [[r["name"], str(overrides(r)["seed"]), str(overrides(r)["kamig.seed"]),
                  "+".join(overrides(r)["fusion.graphs"]), overrides(r)["fusion.negative_at"],
                  *(f"{fid(r, v):.2f}" for v in VARIANTS), f"{fid(r, 'recon'):.2f}",
                  f"{r['seconds'] / 60:.1f}"]
                 for r in sorted(records, key=lambda r: r["name"])]),
    ]
    return "\n".join(lines) + "\n"
