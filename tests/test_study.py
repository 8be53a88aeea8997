"""The study's grid, its records and the resumable runner (pipeline.study, scripts/run_experiments.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from pipeline import layout
from pipeline.study import GRAPH_NAMES, collect_record, dvc_set_arguments, experiment, study_grid
from tests.helpers import REPO_ROOT


def test_grid_order_names_and_overrides():
    runs = study_grid([0, 1], second_base_seeds=[0], ablation_seeds=[0], negative_seeds=[1])
    names = [run.name for run in runs]
    assert names == ["b0-f0", "b0-f1", "b0-f1-negmasked", "b0-f0-cooccurrence", "b0-f0-similarity",
                     "b0-f0-incompatibility", "b1-f0"]
    assert len(set(names)) == len(names)
    assert runs[-1].overrides(500) == {"seed": 1, "kamig.seed": 0, "sample.per_class": 500,
                                       "fusion.graphs": list(GRAPH_NAMES), "fusion.negative_at": "all"}
    assert experiment(0, 2, graphs=("similarity",)).overrides(7)["fusion.graphs"] == ["similarity"]


def test_dvc_arguments_set_every_key_with_lists_in_yaml_form():
    arguments = dvc_set_arguments(experiment(0, 3, negative_at="masked").overrides(100))
    assert arguments[::2] == ["-S"] * 5
    assert "fusion.graphs=[cooccurrence,similarity,incompatibility]" in arguments
    assert "fusion.negative_at=masked" in arguments and "kamig.seed=3" in arguments


def test_a_record_holds_every_variant_and_floor(tmp_path):
    for name in (*layout.GENERATOR_VARIANTS, *layout.FLOORS):
        (tmp_path / f"eval_{name}.json").write_text(json.dumps({"fid": len(name)}))
    for name in layout.GENERATOR_VARIANTS:
        (tmp_path / f"train_{name}.json").write_text("{}")
        (tmp_path / f"sample_{name}.json").write_text(json.dumps({"seconds": 1.0}))
    (tmp_path / "graphs.json").write_text("{}")
    record = collect_record(experiment(0, 1), 500, 12.34, ["finetune@kamig"], "abc", metrics_dir=tmp_path)
    assert record["evaluation"]["recon"] == {"fid": 5} and record["evaluation"]["permuted"] == {"fid": 8}
    assert record["seconds"] == 12.3 and record["overrides"]["kamig.seed"] == 1


def test_the_runner_skips_experiments_that_have_a_record(tmp_path):
    (tmp_path / "b0-f0.json").write_text("{}")
    result = subprocess.run(
        [sys.executable, "scripts/run_experiments.py", "--dry-run", "--results", str(tmp_path),
         "--finetune-seeds", "0", "1", "--second-base", "--ablation", "--negative"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )
    lines = [line.split()[:2] for line in result.stdout.splitlines()]
    assert lines == [["done", "b0-f0"], ["todo", "b0-f1"]]
