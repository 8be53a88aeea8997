"""tokenize, reference, sample and evaluate on 2 CPU processes write what 1 process writes.

A temporary copy of the project (tiny preset, with batch and shard sizes that give every process
several batches and a ragged last one) first runs the whole chain in this process through
``python -m pipeline.launch STAGE`` with ``KAMIG_LAUNCH`` unset (the default DVC path). Then the
multi-process stages run again exactly as ``dvc repro`` would run them with
``KAMIG_LAUNCH="torchrun --standalone --nproc_per_node 2"`` and ``ACCELERATE_USE_CPU=true`` (gloo):
token shards, sample shards and the sample grid must be byte-identical, the reference features
identical, and the metrics equal.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from pipeline import launch
from pipeline.config import apply_preset
from tests.helpers import dvc_env, make_repo_copy

# Sizes on top of the tiny preset (512 train / 128 val images, 4 classes): 3 train shards of 200
# (dealt round-robin: process 0 encodes shards 0 and 2), 32 samples in 6 batches (5 x 6 + 2),
# evaluation in 4 batches of 10 (3 x 10 + 2) and the 128 reference images in 13.
SPLIT_SIZES = {
    "tokenize": {"shard_size": 200, "batch_size": 64},
    "sample": {"per_class": 8, "batch_size": 6},
    "eval": {"batch_size": 10},
}
# evaluate_real shares evaluate's code path (reference's batches of a dataset): left out for time.
SHARED_STAGES = [["tokenize"], ["reference"], ["sample", "base"], ["evaluate", "base"]]
CHAIN = [["prepare"], ["tokenizer"], ["tokenize"], ["train_base"], ["classifier"], *SHARED_STAGES[1:]]
BYTE_OUTPUTS = ["data/tokens", "data/samples/base", "metrics/plots/samples_base.png"]
EVAL_FILES = ["metrics/eval_base.json"]
TIMING_KEYS = {"sampling_images_per_s"}
TWO_CPU_PROCESSES = {"KAMIG_LAUNCH": "torchrun --standalone --nproc_per_node 2", "ACCELERATE_USE_CPU": "true"}


def snapshot_bytes(root: Path, outputs: list[str]) -> dict[str, bytes]:
    """Relative path -> bytes of every file under the given outputs."""
    files = {}
    for output in outputs:
        path = root / output
        for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            files[str(file.relative_to(root))] = file.read_bytes()
    return files


def reference_arrays(root: Path) -> dict[str, np.ndarray]:
    with np.load(root / "data/reference/domain.npz") as data:
        return {key: data[key] for key in data.files}


def read_metrics(root: Path) -> dict[str, dict]:
    return {name: json.loads((root / name).read_text()) for name in EVAL_FILES}


def run_launched(stage: list[str], cwd: Path, extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "pipeline.launch", *stage], cwd=cwd,
                            env={**dvc_env(), **extra_env}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{stage} exited {result.returncode}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory: pytest.TempPathFactory):
    """A project copy after the whole chain ran in one process, and its outputs."""
    path = make_repo_copy(tmp_path_factory.mktemp("multiprocess") / "repo")
    overlay = path.parent / "split-sizes.yaml"
    overlay.write_text(yaml.safe_dump(SPLIT_SIZES))
    apply_preset(overlay, path / "params.yaml")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(path)
        patch.delenv(launch.LAUNCH_ENV, raising=False)
        with warnings.catch_warnings():
            # runpy's "found in sys.modules" note: stage modules import each other in one process.
            warnings.simplefilter("ignore", RuntimeWarning)
            for stage in CHAIN:
                launch.main(stage)  # in this process: no KAMIG_LAUNCH
    return path, snapshot_bytes(path, BYTE_OUTPUTS), reference_arrays(path), read_metrics(path)


def test_two_cpu_processes_write_the_single_process_outputs(single_process_run):
    path, files, reference, metrics = single_process_run
    for output in [*BYTE_OUTPUTS, "data/reference", *EVAL_FILES, "metrics/sample_base.json"]:
        target = path / output
        if target.is_dir():  # every output is written afresh by the launched stages
            shutil.rmtree(target)
        else:
            target.unlink()

    for stage in SHARED_STAGES:
        result = run_launched(stage, path, TWO_CPU_PROCESSES)
        # Both workers joined one gloo group (not two lone processes doing everything twice).
        assert "process 0 of 2" in result.stderr and "process 1 of 2" in result.stderr, stage

    assert snapshot_bytes(path, BYTE_OUTPUTS).keys() == files.keys()
    assert len([name for name in files if name.startswith("data/tokens/train/")]) == 3
    for name, content in snapshot_bytes(path, BYTE_OUTPUTS).items():
        assert content == files[name], f"{name} differs from the single-process run"
    for key, array in reference_arrays(path).items():
        assert np.array_equal(array, reference[key]), f"data/reference/domain.npz[{key}] differs"
    for name, launched in read_metrics(path).items():
        assert launched.keys() == metrics[name].keys()
        for key, value in launched.items():
            if isinstance(value, float) and key not in TIMING_KEYS:
                assert value == pytest.approx(metrics[name][key], rel=1e-12, abs=1e-12), (name, key)
            elif key not in TIMING_KEYS:
                assert value == metrics[name][key], (name, key)
    assert json.loads((path / "metrics/sample_base.json").read_text())["processes"] == 2


# --------------------------------------------------------------------------------------------
# The splitting and launching helpers themselves (no processes started)
# --------------------------------------------------------------------------------------------


def fake_state(rank: int, world: int) -> SimpleNamespace:
    return SimpleNamespace(process_index=rank, num_processes=world)


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_process_shares_are_contiguous_disjoint_and_balanced(world):
    for count in range(13):
        shares = [launch.process_share(count, fake_state(rank, world)) for rank in range(world)]
        assert [i for share in shares for i in share] == list(range(count))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_batch_shares_are_whole_single_process_batches():
    count, size, world = 23, 5, 2  # batches [0-4] [5-9] [10-14] [15-19] [20-22]
    shares = [launch.batch_share(count, size, fake_state(rank, world)) for rank in range(world)]
    assert shares == [(range(0, 2), range(0, 10)), (range(2, 5), range(10, 23))]
    batches, items = launch.batch_share(3, 5, fake_state(1, 2))  # fewer batches than processes
    assert len(batches) == 1 and items == range(0, 3)
    assert launch.batch_share(3, 5, fake_state(0, 2))[1] == range(0, 0)


def test_gather_with_one_process_is_the_part_itself():
    part = object()
    assert launch.gather_parts(part, fake_state(0, 1)) == [part]


def test_launch_command_honours_the_environment_variable(monkeypatch):
    for name in ("LOCAL_RANK", "RANK"):
        monkeypatch.delenv(name, raising=False)
    assert launch.launch_command("sample", ["base"], None) is None
    assert launch.launch_command("sample", ["base"], "  ") is None
    assert launch.launch_command("sample", ["base"], "accelerate launch --num_processes 8") == [
        "accelerate", "launch", "--num_processes", "8", "-m", "pipeline.stages.sample", "base"]
    monkeypatch.setenv("LOCAL_RANK", "0")  # already a launched worker: never launch again
    assert launch.launch_command("sample", ["base"], "torchrun --nproc_per_node 2") is None


def test_launcher_refuses_an_unknown_stage(capsys):
    with pytest.raises(SystemExit) as info:
        launch.main(["smaple", "base"])
    assert info.value.code == 2
    assert "no stage module pipeline.stages.smaple" in capsys.readouterr().err


def test_a_launcher_that_cannot_start_is_a_clear_error(tmp_path):
    env = {**os.environ, "KAMIG_LAUNCH": "no-such-launcher --n 2"}
    result = subprocess.run([sys.executable, "-m", "pipeline.launch", "sample", "base"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "KAMIG_LAUNCH='no-such-launcher --n 2' cannot be started" in result.stderr
