"""Shared test setup.

Tiny models run much faster on one thread than on two contending ones (and CI has 2 cores), so
the whole suite pins torch to a single intra-op thread.

``two_reproduced_tiny_repos``: two independent ``dvc repro`` runs of the whole DAG on the tiny
preset, side by side, committed. The end-to-end tests each take their own
:func:`tests.helpers.copy_repo` of the first (``reproduced_tiny_repo``); the determinism test
compares the two. So the DAG runs once per session (twice, in parallel) instead of per module.
"""

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.helpers import dvc_env, make_repo_copy, run

torch.set_num_threads(1)


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
    base = tmp_path_factory.mktemp("reproduced")
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
