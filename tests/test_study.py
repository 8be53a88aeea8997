"""The study's grid, its records and the resumable runner (study.grid, scripts/run_experiments.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import yaml

from pipeline import layout
from pipeline.config import ConfigError
from study.grid import (
    GRAPH_NAMES,
    STUDY_PRESET,
    collect_record,
    dotted,
    dvc_set_arguments,
    experiment,
    stage_durations,
    study_grid,
    study_scale,
    warm_start_names,
)
from tests.helpers import REPO_ROOT

SCALE = {"train.steps": 2500, "sample.per_class": 500}


def test_grid_order_names_and_overrides():
    runs = study_grid([0, 1], second_base_seeds=[0], ablation_seeds=[0], negative_seeds=[1])
    names = [run.name for run in runs]
    assert names == ["b0-f0", "b0-f1", "b0-f1-negmasked", "b0-f0-cooccurrence", "b0-f0-similarity",
                     "b0-f0-incompatibility", "b1-f0"]
    assert len(set(names)) == len(names)
    assert runs[-1].overrides(SCALE) == {"train.steps": 2500, "sample.per_class": 500, "seed": 1,
                                         "kamig.seed": 0, "fusion.graphs": list(GRAPH_NAMES),
                                         "fusion.negative_at": "all", "fusion.adapter": "pipeline"}
    assert experiment(0, 2, graphs=("similarity",)).overrides({})["fusion.graphs"] == ["similarity"]


def test_each_adapter_runs_every_main_seed_back_to_back():
    runs = study_grid([0, 1], adapters=("pipeline", "official"))
    assert [run.name for run in runs] == ["b0-f0", "b0-f0-official", "b0-f1", "b0-f1-official"]
    # The second base model runs the same adapters (the 14 x 14 series: the official one alone).
    second = study_grid([0], second_base_seeds=[0, 1], adapters=("official",))
    assert [run.name for run in second] == ["b0-f0-official", "b1-f0-official", "b1-f1-official"]
    assert {run.overrides({})["fusion.adapter"] for run in second} == {"official"}
    assert runs[1].overrides({})["fusion.adapter"] == "official" and runs[1].finetune_seed == 0
    # Every official experiment's params pass the config's official-mode check.
    from pipeline.config import config_from_dict, merge_overlay

    scale = study_scale(REPO_ROOT / STUDY_PRESET, REPO_ROOT / "params.yaml")
    for run in runs:
        nested: dict = {}
        for dotted_key, value in run.overrides(scale).items():
            *parents, key = dotted_key.split(".")
            section = nested
            for name in parents:
                section = section.setdefault(name, {})
            section[key] = value
        config_from_dict(merge_overlay(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()), nested))
    with pytest.raises(ValueError, match="ours"):
        study_grid([0], adapters=("ours",))


def test_records_pair_only_on_the_same_tokenizer_and_base_model():
    from study.grid import fingerprint_conflicts

    def record(name, seed, base):
        return {"name": name, "overrides": {"seed": seed}, "fingerprints": {"tokenizer": "t", "base": base}}

    here = [record("b0-f0", 0, "A"), record("b0-f0-official", 0, "A"), record("b1-f0", 1, "B")]
    assert fingerprint_conflicts(record("b0-f1", 0, "A"), here) == []
    # A base retrained elsewhere; a record from before fingerprints (none) pairs with nothing.
    assert fingerprint_conflicts(record("b0-f1", 0, "C"), here) == ["b0-f0", "b0-f0-official"]
    legacy = {"name": "b0-f1", "overrides": {"seed": 0}}
    assert fingerprint_conflicts(legacy, here) == ["b0-f0", "b0-f0-official"]
    assert fingerprint_conflicts(record("b1-f1", 1, "B"), here) == []


def test_the_study_scale_is_the_committed_preset_as_dvc_keys():
    scale = study_scale(REPO_ROOT / STUDY_PRESET, REPO_ROOT / "params.yaml")
    assert scale == dotted(yaml.safe_load((REPO_ROOT / STUDY_PRESET).read_text()))
    assert scale["sample.per_class"] == 500 and scale["train.steps"] == 2500
    defaults = dotted(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()))
    # The preset is an overlay: every key exists in params.yaml, and it changes something.
    assert set(scale) <= set(defaults) and any(defaults[key] != value for key, value in scale.items())


def test_dotted_keys_flatten_nested_mappings_only():
    assert dotted({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}


def test_a_preset_with_a_typo_or_a_grid_key_fails_before_any_experiment(tmp_path):
    params = REPO_ROOT / "params.yaml"
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  stepz: 10\n")
    with pytest.raises(ConfigError, match="stepz"):
        study_scale(typo, params)
    clash = tmp_path / "clash.yaml"
    clash.write_text("kamig:\n  seed: 3\n")
    with pytest.raises(ValueError, match="kamig.seed"):
        study_scale(clash, params)


def test_dvc_arguments_set_every_key_with_lists_in_yaml_form():
    arguments = dvc_set_arguments(experiment(0, 3, negative_at="masked").overrides(SCALE))
    assert arguments[::2] == ["-S"] * 7 and "train.steps=2500" in arguments
    assert "fusion.graphs=[cooccurrence,similarity,incompatibility]" in arguments
    assert "fusion.negative_at=masked" in arguments and "kamig.seed=3" in arguments


def test_a_record_holds_every_variant_and_floor(tmp_path):
    for name in (*layout.GENERATOR_VARIANTS, *layout.FLOORS):
        scores = {"fid": len(name), "precision": 0.7, "recall": 0.4, "class_accuracy": 0.9, "n_samples": 10}
        (tmp_path / f"eval_{name}.json").write_text(json.dumps(scores))
    for name in layout.GENERATOR_VARIANTS:
        (tmp_path / f"train_{name}.json").write_text("{}")
        (tmp_path / f"sample_{name}.json").write_text(json.dumps({"seconds": 1.0}))
    (tmp_path / "graphs.json").write_text("{}")
    starts = [(0.5, "finetune@kamig"), (7.25, "sample@kamig")]
    record = collect_record(experiment(0, 1), SCALE, 12.34, ["finetune@kamig", "sample@kamig"], "abc",
                            metrics_dir=tmp_path, fingerprints={"tokenizer": "t0", "base": "b0"},
                            stage_seconds=stage_durations(starts, 12.34))
    assert record["evaluation"]["recon"]["fid"] == 5 and record["evaluation"]["permuted"]["fid"] == 8
    assert record["version"] == 2
    assert record["fingerprints"] == {"tokenizer": "t0", "base": "b0"}
    assert record["seconds"] == 12.3 and record["overrides"]["kamig.seed"] == 1
    assert record["overrides"]["sample.per_class"] == 500
    # Each stage runs until the next starts; the last until the experiment ends.
    assert record["stage_seconds"] == {"finetune@kamig": 6.8, "sample@kamig": 5.1}


def test_the_runner_skips_experiments_that_have_a_record(tmp_path):
    (tmp_path / "b0-f0.json").write_text("{}")
    result = subprocess.run(
        [sys.executable, "scripts/run_experiments.py", "--dry-run", "--results", str(tmp_path),
         "--finetune-seeds", "0", "1", "--second-base", "--ablation", "--negative"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )
    scale_line, *lines = result.stdout.splitlines()
    assert "train.steps=2500" in scale_line and "sample.per_class=500" in scale_line
    assert [line.split()[:2] for line in lines] == [["done", "b0-f0"], ["todo", "b0-f1"]]


def test_the_runner_refuses_a_bad_preset_with_a_message(tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("sample:\n  per_clas: 500\n")
    result = subprocess.run(
        [sys.executable, "scripts/run_experiments.py", "--dry-run", "--preset", str(preset),
         "--results", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and "sample.per_clas" in result.stderr


def test_warm_start_candidates_share_the_base_seed_and_the_scale():
    def record(name, **overrides):
        return {"name": name, "overrides": overrides}

    records = [
        record("b0-f0", seed=0, **{"sample.per_class": 500}),  # before the preset: no train.steps
        record("b0-f1", seed=0, **SCALE),
        record("b0-quick", seed=0, **{**SCALE, "sample.per_class": 50}),
        record("b1-f0", seed=1, **SCALE),
    ]
    assert warm_start_names(records, experiment(0, 7), SCALE) == ["b0-f0", "b0-f1"]
    assert warm_start_names(records, experiment(1, 2), SCALE) == ["b1-f0"]
    assert warm_start_names(records, experiment(2, 0), SCALE) == []


def _git(repo, *args, date="2026-01-01T00:00:00"):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_warm_start_takes_only_the_lock_and_metrics_of_the_newest_matching_ref(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("run_experiments", REPO_ROOT / "scripts/run_experiments.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    _git(tmp_path, "init", "-q")
    (tmp_path / "metrics").mkdir()

    def commit(lock, code, date):
        (tmp_path / "dvc.lock").write_text(lock)
        (tmp_path / "metrics/eval_base.json").write_text(json.dumps({"lock": lock}))
        (tmp_path / "code.py").write_text(code)
        _git(tmp_path, "add", "-A")
        _git(tmp_path, "commit", "-qm", lock, date=date)
        return _git(tmp_path, "rev-parse", "HEAD")

    old = commit("old experiment", "old code", "2026-01-01T00:00:00")
    new = commit("new experiment", "old code", "2026-01-02T00:00:00")
    other = commit("other base", "old code", "2026-01-03T00:00:00")
    for sha, name in ((old, "b0-f0"), (new, "b0-f1"), (other, "b1-f0")):
        _git(tmp_path, "update-ref", f"refs/exps/ab/cdef/{name}", sha)
    commit("HEAD", "new code", "2026-01-04T00:00:00")
    monkeypatch.chdir(tmp_path)

    assert runner.warm_start(["b2-f0"]) is None
    assert (tmp_path / "dvc.lock").read_text() == "HEAD"
    # Not a DVC repository, so its `dvc checkout` fails: the runner says so and goes on.
    assert runner.warm_start(["b0-f0", "b0-f1"]) == "b0-f1"
    assert (tmp_path / "dvc.lock").read_text() == "new experiment"
    assert json.loads((tmp_path / "metrics/eval_base.json").read_text()) == {"lock": "new experiment"}
    assert (tmp_path / "code.py").read_text() == "new code"
    # The index keeps HEAD, so the runner's closing `git checkout -- dvc.lock metrics` returns to it.
    assert _git(tmp_path, "diff", "--cached", "--name-only") == ""


def test_workspace_fingerprints_are_the_tokens_tokenizer_and_the_base_tensors(tmp_path, monkeypatch):
    import torch

    from pipeline.shards import TokenMeta, write_meta
    from pipeline.weights import WEIGHTS_FILE, save_weights, tensor_fingerprint
    from study.grid import workspace_fingerprints

    monkeypatch.chdir(tmp_path)
    write_meta(layout.TOKENS_DIR, TokenMeta(grid_h=2, grid_w=2, codebook_size=8, num_classes=2,
                                            tokenizer_fingerprint="tok123"))
    weights = {"head.weight": torch.arange(6.0).reshape(2, 3), "pos": torch.ones(4)}
    save_weights(weights, layout.model_dir(layout.BASE) / WEIGHTS_FILE)
    assert workspace_fingerprints() == {"tokenizer": "tok123", "base": tensor_fingerprint(weights)}


def test_records_are_checked_when_read(tmp_path):
    from study.grid import load_records

    assert len(load_records(REPO_ROOT / "reports/study")) == 27  # the first study's, version 1
    good = json.loads((REPO_ROOT / "reports/study/b0-f0.json").read_text())
    (tmp_path / "b0-f0.json").write_text(json.dumps(good))
    assert load_records(tmp_path)[0] == good
    del good["evaluation"]["kamig"]["fid"]
    (tmp_path / "b0-f1.json").write_text(json.dumps({**good, "name": "b0-f1"}))
    with pytest.raises(ValueError, match=r"(?s)b0-f1.json is not a valid study record.*evaluation.kamig.fid"):
        load_records(tmp_path)


def test_the_long_sequence_preset_is_a_valid_196_token_scale():
    preset = REPO_ROOT / "configs/study_196.yaml"
    scale = study_scale(preset, REPO_ROOT / "params.yaml")
    from pipeline.config import config_from_dict, merge_overlay

    cfg = config_from_dict(merge_overlay(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()),
                                         yaml.safe_load(preset.read_text())))
    side = cfg.data.image_size // 2**cfg.tokenizer.downsamples
    assert side * side == 196 and scale["tokenizer.downsamples"] == 1
