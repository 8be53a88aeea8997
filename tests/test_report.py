"""The experiment report: parsing `dvc exp show --json`, paired statistics and the conclusion."""

import pytest

from pipeline.report import ALL_GRAPHS, paired_difference, records_from_exp_show, render_report, select


def _node(rev, seed, weight, graphs, fids, name=None, val_loss=(2.0, 2.0, 2.0)):
    metrics = {f"metrics/eval_{v}.json": {"data": {"fid": fid, "precision": 0.5, "recall": 0.4,
                                                   "class_accuracy": 0.8}}
               for v, fid in zip(("base", "control", "kamig"), fids)}
    metrics["metrics/eval_real.json"] = {"data": {"fid": 4.0, "precision": 0.9, "recall": 0.9,
                                                  "class_accuracy": 0.95}}
    for v, loss in zip(("base", "control", "kamig"), val_loss):
        metrics[f"metrics/train_{v}.json"] = {"data": {"val_loss": loss, "val_masked_accuracy": 0.2}}
    params = {"seed": seed, "fusion": {"weight": weight, "graphs": list(graphs), "negative_at": "all"}}
    return {"rev": rev, "name": name, "data": {"rev": rev, "params": {"params.yaml": {"data": params}},
                                               "metrics": metrics}}


def _shown(experiments):
    head = _node("abc1234", 0, 1.0, ALL_GRAPHS, (50.0, 48.0, 47.0), name="main")
    workspace = _node("workspace", 0, 1.0, ALL_GRAPHS, (0.0, 0.0, 0.0))
    head["experiments"] = [{"revs": [exp]} for exp in experiments]
    return [workspace, head]


def test_records_skip_the_workspace_and_incomplete_rows():
    incomplete = _node("e1", 5, 1.0, ALL_GRAPHS, (1.0, 1.0, 1.0), name="broken")
    del incomplete["data"]["metrics"]["metrics/eval_kamig.json"]
    records = records_from_exp_show(_shown([_node("e2", 1, 1.0, ALL_GRAPHS, (51, 49, 48), name="seed1"),
                                            incomplete]))
    assert [(r.name, r.seed) for r in records] == [("main", 0), ("seed1", 1)]
    assert records[0].evaluation["real"]["fid"] == 4.0


def test_duplicate_parameter_sets_keep_the_first_row():
    records = records_from_exp_show(_shown([_node("e2", 1, 1.0, ALL_GRAPHS, (51, 49, 48), name="new"),
                                            _node("e3", 1, 1.0, ALL_GRAPHS, (1, 1, 1), name="old")]))
    assert [r.name for r in records] == ["main", "new"]


def test_paired_difference_and_significance():
    seeds = [_node(f"e{s}", s, 1.0, ALL_GRAPHS, (50, 48.0 + 0.1 * s, 46.0 + 0.1 * s), name=f"s{s}")
             for s in (1, 2)]
    records = select(records_from_exp_show(_shown(seeds)), weight=1.0, graphs=ALL_GRAPHS)
    diff = paired_difference(records, "fid")
    assert diff.summary.n == 3
    assert diff.summary.mean == pytest.approx((-1.0 - 2.0 - 2.0) / 3)
    assert diff.kamig_better == 3 and diff.favours_kamig and diff.significant
    report = render_report(records)
    assert "At this scale the knowledge graphs beat the control" in report


def test_noise_level_differences_are_not_called_a_win():
    seeds = [_node("e1", 1, 1.0, ALL_GRAPHS, (50, 48.0, 49.0), name="s1"),
             _node("e2", 2, 1.0, ALL_GRAPHS, (50, 48.0, 47.5), name="s2")]
    report = render_report(records_from_exp_show(_shown(seeds)))
    assert "do not beat the control" in report
    assert "indistinguishable from seed noise" in report


def test_ablation_and_weight_tables_list_the_runs():
    exps = [_node("e1", 0, 1.0, ("cooccurrence",), (50, 48, 47.5), name="co"),
            _node("e2", 0, 0.5, ALL_GRAPHS, (50, 48, 47.8), name="w05")]
    report = render_report(records_from_exp_show(_shown(exps)))
    assert "| cooccurrence | 1 | 47.50 |" in report
    assert "| 0.5 | 1 | 47.80 |" in report
    assert "Only 1 seed is available" in report


def test_graph_statistics_feed_the_evidence():
    node = _node("e1", 1, 1.0, ALL_GRAPHS, (50, 48.0, 49.0), name="s1")
    head = _shown([node])
    head[1]["data"]["metrics"]["metrics/graphs.json"] = {"data": {
        "cooccurrence": {"self_weight_mean": 0.04}, "similarity": {"self_weight_mean": 0.98},
        "incompatibility_density": 0.41, "tokens": 490, "images": 10}}
    report = render_report(records_from_exp_show(head))
    assert "98.0% of its own embedding in the similarity graph and 4.0% in the co-occurrence" in report
    assert "close to the identity" in report
    assert "Incompatibility density 41.0% (10 training grids of 49 positions)" in report


def test_p_value_is_the_paired_t_test():
    import scipy.stats

    from pipeline.report import PairedDifference, summarise

    diffs = [-1.0, -2.5, 0.3, -1.2]
    difference = PairedDifference("fid", summarise(diffs), kamig_better=3)
    assert difference.p_value == pytest.approx(scipy.stats.ttest_1samp(diffs, 0.0).pvalue)
    assert PairedDifference("fid", summarise([1.0]), 0).significant is False
