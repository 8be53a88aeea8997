"""End to end: the whole DAG through DVC on the tiny preset, in a temporary copy of the repository.

This is what a researcher does: `dvc repro`, a second `dvc repro` that does nothing, then
`dvc exp run -S fusion.weight=0.5`, which must re-run only the branches that read the weight, and
`dvc metrics diff` / `dvc exp show` to compare.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from tests.helpers import copy_repo, run

pytestmark = pytest.mark.e2e

ALL_STAGES = {
    "prepare", "tokenizer", "tokenize", "graphs", "train_base", "finetune@control", "finetune@permuted",
    "finetune@kamig", "classifier", "reference", "sample@base", "sample@control", "sample@permuted",
    "sample@kamig", "evaluate@base", "evaluate@control", "evaluate@permuted", "evaluate@kamig",
    "evaluate_real", "evaluate_recon",
}
EVAL_KEYS = {"fid", "fid_se", "fid_inception", "inception_score", "precision", "recall", "class_accuracy",
             "n_samples", "fid_small_sample", "fid_subsets", "sampling_images_per_s"}


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, reproduced_tiny_repo) -> tuple[Path, str]:
    """A copy of the project after one full `dvc repro`, committed as the baseline."""
    path = copy_repo(reproduced_tiny_repo.path, tmp_path_factory.mktemp("e2e") / "repo")
    return path, reproduced_tiny_repo.output


def test_repro_runs_every_stage_and_writes_the_contract(repo):
    path, output = repo
    assert stages_run(output) == ALL_STAGES
    train = pl.scan_parquet(str(path / "data/tokens/train/*.parquet")).collect()
    meta = json.loads((path / "data/tokens/meta.json").read_text())
    assert train.height == 512  # data.max_train of the tiny preset
    flat = train["tokens"].explode()
    assert flat.min() >= 0 and flat.max() < meta["codebook_size"]
    assert pl.scan_parquet(str(path / "data/tokens/val/*.parquet")).collect().height == 128
    # The class names travel with the tokens into every model, for `python -m pipeline.generate`.
    names = json.loads((path / "data/prepared/classes.json").read_text())
    assert meta["class_names"] == names and len(names) == meta["num_classes"]
    for model in ("base", "kamig"):
        config = json.loads((path / f"models/{model}/config.json").read_text())
        assert config["tokens"]["class_names"] == names
    for variant in ("base", "control", "permuted", "kamig", "real", "recon"):
        metrics = json.loads((path / f"metrics/eval_{variant}.json").read_text())
        assert set(metrics) == EVAL_KEYS
        assert metrics["fid"] >= 0
    for picture in ("tokenizer_recon", "graph_neighbours", "samples_base", "samples_kamig"):
        assert (path / f"metrics/plots/{picture}.png").stat().st_size > 0


def test_second_repro_does_nothing(repo):
    path, _ = repo
    again = run(["dvc", "repro"], path)
    assert stages_run(again.stdout) == set()
    status = run(["dvc", "status"], path)
    assert "Data and pipelines are up to date" in status.stdout


def test_bytecode_and_kernel_caches_do_not_change_code_dependencies(repo):
    # Stages depend on code directories (pipeline/graphs, pipeline/model, ...). Python writes
    # bytecode into them and numba its compiled kernels, both machine-local: if DVC hashed them,
    # a clone's `dvc status` would call the code modified after its first run.
    path, _ = repo
    run([sys.executable, "-m", "compileall", "-q", "pipeline"], path)
    (path / "pipeline/graphs/__pycache__/kernels.add_forward_pairs-1.py311.nbi").write_bytes(b"x")
    status = run(["dvc", "status"], path)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout


def test_fusion_weight_experiment_reruns_only_the_branches_that_read_it(repo):
    path, _ = repo
    result = run(["dvc", "exp", "run", "-S", "fusion.weight=0.5"], path)
    # KA-MIG and its null control (the same adapter and weight on permuted graphs); never the
    # base model or the head-only control.
    assert stages_run(result.stdout) == {f"{stage}@{variant}" for stage in ("finetune", "sample", "evaluate")
                                         for variant in ("kamig", "permuted")}

    diff = run(["dvc", "metrics", "diff", "--json"], path)
    changed = json.loads(diff.stdout)
    assert "fid" in changed["metrics/eval_kamig.json"]
    assert "metrics/eval_base.json" not in changed  # the baseline did not move
    table = run(["dvc", "metrics", "diff"], path).stdout
    assert "metrics/eval_kamig.json" in table and "fid" in table

    rows = experiment_rows(json.loads(run(["dvc", "exp", "show", "--json"], path).stdout))
    weights = {row["fusion.weight"] for row in rows}
    assert {0.5, 1.0} <= weights  # the experiment and its baseline
    assert all(isinstance(row["kamig fid"], float) for row in rows)


def test_graph_ablation_reuses_the_control(repo):
    """The head-only control reads no fusion param and no graph: a graph ablation re-runs only
    KA-MIG and its null control, and the control's stages stay cached."""
    path, _ = repo
    result = run(["dvc", "exp", "run", "-S", "fusion.graphs=[similarity]", "-S", "fusion.weight=1.0"], path)
    ran = stages_run(result.stdout)
    assert ran == {f"{stage}@{variant}" for stage in ("finetune", "sample", "evaluate")
                   for variant in ("kamig", "permuted")}, ran
    assert "finetune@control" not in ran and "sample@control" not in ran


def test_a_queued_grid_runs(repo):
    """Two queued points, run by a queue worker. One is the baseline's weight (1.0), whose stages
    the queued run restores from the shared run-cache, so the grid costs one fine-tune."""
    path, _ = repo
    run(["dvc", "exp", "run", "--queue", "-S", "fusion.weight=1.0,0.25"], path)
    run(["dvc", "queue", "start", "--jobs", "1"], path)
    deadline = time.monotonic() + 600
    while True:
        status = run(["dvc", "queue", "status"], path).stdout
        if not re.search(r"\b(Queued|Running)\b", status) or time.monotonic() > deadline:
            break
        time.sleep(5)  # each `dvc queue status` costs over a second of the CPU the queued runs need
    assert len(re.findall(r"\bSuccess\b", status)) == 2, status
    weights = {row["fusion.weight"] for row in experiment_rows(
        json.loads(run(["dvc", "exp", "show", "--json"], path).stdout))}
    assert {1.0, 0.25} <= weights


def experiment_rows(shown) -> list[dict]:
    """(fusion.weight, kamig fid) of every revision and experiment in `dvc exp show --json`."""
    rows, stack = [], list(shown)
    while stack:
        node = stack.pop()
        data = node.get("data") or {}
        if data.get("params") and data.get("metrics"):
            params = data["params"]["params.yaml"]["data"]
            fid = data["metrics"]["metrics/eval_kamig.json"]["data"]["fid"]
            rows.append({"rev": data.get("rev"), "fusion.weight": params["fusion"]["weight"],
                         "kamig fid": fid})
        for child in node.get("experiments") or []:
            stack.extend(child.get("revs") or [])
    return rows
