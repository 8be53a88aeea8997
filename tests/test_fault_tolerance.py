"""Fault tolerance of the whole DVC pipeline, on the tiny preset in temporary copies of the repo.

One module fixture runs ``dvc repro`` twice, in two independent copies at the same time (the
stages are single-threaded here, so two runs share 2 cores well). Every test starts from a copy
of those finished repositories:

- determinism: the two clean runs are byte-identical (token shards, graph files, models,
  samples) and their metrics are equal except for the timing keys listed in TIMING_KEYS;
- interrupted training: ``train_base`` SIGKILLed after its first checkpoint, then ``dvc repro``
  resumes and ends with the very same weights (DVC sees the same hash, so nothing downstream
  re-runs and ``dvc status`` is clean);
- bad params through ``dvc exp run -S``: refused before any stage does work, with a clear message;
  a typo added with ``+`` is caught once ``finetune@kamig`` (and its null control) lists
  ``fusion`` whole (the change to dvc.yaml this module applies to its copies where needed);
- mismatched artefacts: a generator whose vocabulary no longer matches the token shards.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.training.checkpoints import prepare_checkpoint_dir
from tests.helpers import REPO_ROOT, dvc_env, run, snapshot, temp_leftovers

pytestmark = pytest.mark.e2e

# Metric keys that measure time or throughput; everything else must match exactly across runs.
TIMING_KEYS = frozenset({"seconds", "train_seconds", "images_per_s", "tokens_per_s", "sampling_images_per_s"})
# Outputs that legitimately differ between identical runs: the checkpoints pickle the wall time
# spent and Python's unseeded `random` state (nothing in the loop draws from it).
TIMING_OUTPUTS = ("checkpoints/",)
UP_TO_DATE = "Data and pipelines are up to date."
# The fine-tunes that read fusion.weight: the KA-MIG model and its null control.
FUSION_READERS = ("permuted", "kamig")


def training_outputs(variant: str) -> tuple[str, ...]:
    return (f"models/{variant}", f"checkpoints/{variant}", f"metrics/train_{variant}.json",
            f"metrics/live/train_{variant}")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def stop_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started with ``start_new_session`` and its children, if still running."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def output_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def copy_repo(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination, symlinks=True)
    return destination


def lock_outputs(repo: Path) -> dict[str, str]:
    """path -> md5 of every stage output recorded in dvc.lock."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def without_timing(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING_KEYS}
    return value


def timing_keys_in(value: Any) -> set[str]:
    if not isinstance(value, dict):
        return set()
    return {k for k in value if k in TIMING_KEYS}.union(*(timing_keys_in(v) for v in value.values()))


def workspace(repo: Path) -> dict[str, bytes]:
    return snapshot(repo, "params.yaml", "data", "models", "metrics", "checkpoints")


# --------------------------------------------------------------------------------------------
# Two clean runs
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clean_runs(two_reproduced_tiny_repos) -> tuple[Path, Path]:
    """Two copies of the repository, each with a complete, committed ``dvc repro`` of the tiny preset
    (the session's, :mod:`tests.conftest`); read only: tests copy them before changing anything."""
    first, second = two_reproduced_tiny_repos
    return first.path, second.path


def test_two_clean_runs_are_identical(clean_runs) -> None:
    first, second = clean_runs
    for directory in ("data/tokens", "data/graphs"):
        files = snapshot(first, directory)
        assert any(name.endswith(".parquet") for name in files)
        assert files == snapshot(second, directory), f"{directory} differs between two clean runs"

    # Every other output too: models, samples, reference features, plots, DVCLive curves.
    outputs = {path: md5 for path, md5 in lock_outputs(first).items()
               if not path.startswith(TIMING_OUTPUTS) and not path.endswith(".json")}
    assert {"models/base", "models/kamig", "data/samples/kamig"} <= set(outputs)
    assert outputs == {path: lock_outputs(second)[path] for path in outputs}

    metrics = sorted(p.name for p in (first / "metrics").glob("*.json"))
    assert "eval_kamig.json" in metrics
    assert metrics == sorted(p.name for p in (second / "metrics").glob("*.json"))
    found_timing: set[str] = set()
    for name in metrics:
        a, b = (json.loads((repo / "metrics" / name).read_text()) for repo in (first, second))
        found_timing |= timing_keys_in(a)
        assert without_timing(a) == without_timing(b), f"metrics/{name} differs beyond timing keys"
    assert found_timing == TIMING_KEYS  # the list above is exactly what the stages time


# --------------------------------------------------------------------------------------------
# Interrupted training
# --------------------------------------------------------------------------------------------


def complete_checkpoints(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    return sorted(int(p.name[len("step-"):]) for p in directory.glob("step-*") if p.is_dir())


def test_killed_training_resumes_to_the_same_weights(clean_runs, tmp_path: Path) -> None:
    first, _ = clean_runs
    repo = copy_repo(first, tmp_path / "repo")
    uninterrupted = (first / "models/base/model.safetensors").read_bytes()
    steps = yaml.safe_load((repo / "params.yaml").read_text())["train"]["steps"]
    # A fresh training run: no checkpoint, no model.
    shutil.rmtree(repo / "checkpoints/base")
    shutil.rmtree(repo / "models/base")

    log = tmp_path / "killed.log"
    proc = subprocess.Popen(["dvc", "repro", "train_base"], cwd=repo, env=dvc_env(), stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not complete_checkpoints(repo / "checkpoints/base") and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.005)
    finally:
        with contextlib.suppress(ProcessLookupError):  # dvc and the stage process, wherever they are
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_output = log.read_text()
    assert proc.returncode == -signal.SIGKILL, killed_output[-3000:]
    saved = complete_checkpoints(repo / "checkpoints/base")
    assert saved and saved[-1] < steps, f"the kill landed after training finished: {saved}"
    assert not (repo / "models/base").exists()

    result = run(["dvc", "repro"], repo)

    assert stages_run(result.stdout) == ["train_base"]  # same weights: nothing downstream re-runs
    resumed = re.search(r"base: resumed from checkpoints/base/step-(\d+) \(step (\d+) of (\d+)\)",
                        output_of(result))
    assert resumed, output_of(result)[-3000:]
    assert int(resumed.group(2)) == saved[-1] and int(resumed.group(3)) == steps
    assert (repo / "models/base/model.safetensors").read_bytes() == uninterrupted
    assert run(["dvc", "status"], repo).stdout.strip() == UP_TO_DATE
    assert temp_leftovers(repo) == []


def test_checkpoint_fingerprints_survive_their_json_round_trip(tmp_path: Path) -> None:
    """The stages' fingerprints hold tuples (shard digests); run.json gives lists back. The
    comparison once treated them as different and discarded every checkpoint on resume."""
    fingerprint = {"train_shards": [("part-00000.parquet", "ab12")], "graphs": ("cooccurrence",)}
    prepare_checkpoint_dir(tmp_path, fingerprint)
    (tmp_path / "step-00000010").mkdir()
    prepare_checkpoint_dir(tmp_path, fingerprint)
    assert (tmp_path / "step-00000010").is_dir()
    prepare_checkpoint_dir(tmp_path, {**fingerprint, "graphs": ("similarity",)})
    assert not (tmp_path / "step-00000010").exists()


# --------------------------------------------------------------------------------------------
# Bad params through `dvc exp run -S`
# --------------------------------------------------------------------------------------------


@pytest.fixture
def repo(clean_runs, tmp_path: Path) -> Path:
    return copy_repo(clean_runs[0], tmp_path / "repo")


def test_typo_in_set_param_is_refused_by_dvc(repo: Path) -> None:
    before = workspace(repo)
    result = run(["dvc", "exp", "run", "-S", "fusion.wieght=0.5"], repo, check=False)
    assert result.returncode != 0
    assert "Could not override 'fusion.wieght'" in output_of(result)
    assert stages_run(result.stdout) == []
    assert workspace(repo) == before


def assert_refused_before_work(repo: Path, result: subprocess.CompletedProcess, before: dict[str, bytes],
                               message: str) -> None:
    """Only one fine-tune that reads fusion.weight started, its loader refused the params, and
    nothing was written.

    DVC itself deletes a stage's outputs before running its command (they stay in the cache):
    the refused stage's outputs may be missing, but never changed or half-written, and
    every other output is untouched. `git checkout` + `dvc checkout` restore the workspace.
    """
    out = output_of(result)
    assert result.returncode != 0
    started = stages_run(result.stdout)
    assert len(started) == 1 and started[0] in {f"finetune@{v}" for v in FUSION_READERS}, out[-3000:]
    assert f"error: invalid parameters, stage '{started[0]}' did not start: params.yaml: {message}" in out
    assert "Traceback" not in out
    after = workspace(repo)
    changed = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
    outputs = training_outputs(started[0].split("@")[1])
    assert changed - {"params.yaml"} <= {name for name in before if name.startswith(outputs)}
    assert all(name not in after for name in changed - {"params.yaml"})  # deleted by DVC, not rewritten
    assert temp_leftovers(repo) == []
    run(["git", "checkout", "--", "."], repo)
    run(["dvc", "checkout"], repo)
    assert run(["dvc", "status"], repo).stdout.strip() == UP_TO_DATE
    assert workspace(repo) == before


@pytest.mark.parametrize(
    ("value", "message"),
    [("-1", "'fusion.weight' must be >= 0.0, got -1.0"),
     ("abc", "'fusion.weight' must be a number >= 0.0, got 'abc'")],
    ids=["negative", "not-a-number"],
)
def test_bad_fusion_weight_is_refused_before_any_work(repo: Path, value: str, message: str) -> None:
    before = workspace(repo)
    result = run(["dvc", "exp", "run", "-S", f"fusion.weight={value}"], repo, check=False)
    assert_refused_before_work(repo, result, before, message)


def test_added_typo_key_is_refused_because_kamig_lists_all_of_fusion(repo: Path) -> None:
    assert run(["dvc", "status"], repo).stdout.strip() == UP_TO_DATE
    before = workspace(repo)

    result = run(["dvc", "exp", "run", "-S", "+fusion.wieght=0.5"], repo, check=False)
    assert_refused_before_work(
        repo, result, before, "unknown key 'fusion.wieght' (did you mean 'fusion.weight'?)"
    )
    # Listing fusion whole keeps the point of per-stage params: a fusion experiment still re-runs
    # only the branches that read it (tests/test_e2e.py, the fusion.weight experiment).


def fusion_params_of(dvc_yaml: dict[str, Any], variant: str) -> list[str]:
    finetune = dvc_yaml["stages"]["finetune"]
    item = finetune["foreach"][variant]
    return [p.replace("${item.fusion}", item["fusion"]) for p in finetune["do"]["params"]]


def test_dvc_yaml_kamig_lists_the_whole_fusion_section() -> None:
    """Without it, `dvc exp run -S +fusion.wieght=0.5` re-runs nothing and the typo goes unnoticed."""
    dvc_yaml = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    for variant in FUSION_READERS:
        assert "fusion" in fusion_params_of(dvc_yaml, variant)
    # The head-only control has no adapter: it reads no fusion param at all.
    control = fusion_params_of(dvc_yaml, "control")
    assert not [p for p in control if p == "fusion" or p.startswith("fusion.")], control


# --------------------------------------------------------------------------------------------
# Mismatched artefacts
# --------------------------------------------------------------------------------------------


def test_model_vocabulary_that_no_longer_matches_the_tokens(repo: Path) -> None:
    """Re-tokenise with another codebook size, then run a downstream stage alone (``-s``), as
    one does to re-sample without re-training: the stale models/base is refused clearly."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    old = params["tokenizer"]["codebook_size"]
    params["tokenizer"]["codebook_size"] = old // 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "tokenize"], repo)
    expected = (f"models/base was trained on different tokens than data/tokens "
                f"(codebook_size: model {old} vs tokens {old // 2}; tokenizer_fingerprint: ")

    for stage in ("sample@base", "finetune@kamig"):
        result = run(["dvc", "repro", "-s", stage], repo, check=False)
        out = output_of(result)
        assert result.returncode != 0
        assert stages_run(result.stdout) == [stage]
        assert f"error: stage '{stage}' failed: {expected}" in out, out[-3000:]
        assert "Traceback" not in out
    assert temp_leftovers(repo) == []
