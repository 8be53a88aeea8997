"""Shared test setup.

Tiny models run much faster on one thread than on two contending ones (and CI has 2 cores), so
the whole suite pins torch to a single intra-op thread.

``two_reproduced_tiny_repos``: two independent ``dvc repro`` runs of the whole DAG on the tiny
preset, side by side, committed. The end-to-end tests each take their own
:func:`tests.helpers.copy_repo` of the first (``reproduced_tiny_repo``); the determinism test
compares the two. So the DAG runs once per session (twice, in parallel) instead of per module.

``make test`` runs the suite in pytest-xdist workers, one per core, each with its own session: the
first worker that needs the reproduced repositories builds them in the directory all workers share,
and the others wait for them and read their record, so the DAG still runs once. The files that
run DVC end to end (marked ``e2e``) are collected first, so that they start as soon as the DAG is
there and the short files fill the end of the run on both workers; ``make test`` keeps that order
with ``--no-loadscope-reorder`` (xdist's default hands out the files with the most tests first,
which put the longest chain of DVC runs last, on one worker).
"""

import json
import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from tests.helpers import dvc_env, make_repo_copy, run

torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """End-to-end files first (a stable sort: each group keeps its files' order)."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)


@dataclass(frozen=True)
class ReproducedRepo:
    path: Path
    output: str  # what the first `dvc repro` printed


@pytest.fixture(scope="session")
def two_reproduced_tiny_repos(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[ReproducedRepo, ReproducedRepo]:
    """Two independent copies of the project, each after its own full ``dvc repro`` of the tiny
    preset, run at the same time (the stages are single-threaded here, so two runs share 2 cores
    well) and committed as the baseline. The end-to-end tests copy the first; the determinism test
    compares the two. Copy one (``copy_repo``) before changing anything."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return reproduce_two_tiny_repos(tmp_path_factory.mktemp("reproduced"))
    # Every xdist worker has its own session; their base directories share this run's parent.
    shared = tmp_path_factory.getbasetemp().parent
    record = shared / "reproduced.json"
    with FileLock(shared / "reproduced.lock"):
        if not record.exists():
            repos = reproduce_two_tiny_repos(Path(tempfile.mkdtemp(prefix="reproduced", dir=shared)))
            record.write_text(json.dumps([[str(repo.path), repo.output] for repo in repos]))
        recorded = json.loads(record.read_text())
    first, second = (ReproducedRepo(Path(path), output) for path, output in recorded)
    return first, second


def reproduce_two_tiny_repos(base: Path) -> tuple[ReproducedRepo, ReproducedRepo]:
    """Run ``dvc repro`` of the tiny preset in two fresh copies under ``base`` side by side."""
    paths = [make_repo_copy(base / name) for name in ("repo", "second")]
    procs = [subprocess.Popen(["dvc", "repro"], cwd=path, env=dvc_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for path in paths]
    try:
        outputs = [proc.communicate(timeout=900)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, f"dvc repro failed:\n{output[-4000:]}"
    for path in paths:
        run(["git", "add", "-A"], path)
        run(["git", "commit", "-q", "-m", "baseline run"], path)
    first, second = (ReproducedRepo(path, output) for path, output in zip(paths, outputs, strict=True))
    return first, second


@pytest.fixture(scope="session")
def reproduced_tiny_repo(two_reproduced_tiny_repos: tuple[ReproducedRepo, ReproducedRepo]) -> ReproducedRepo:
    """A copy of the project after one full ``dvc repro`` on the tiny preset, committed."""
    return two_reproduced_tiny_repos[0]
