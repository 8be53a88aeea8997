"""Shared test setup.

Tiny models run much faster on one thread than on two contending ones (and CI has 2 cores), so
the whole suite pins torch to a single intra-op thread.

``reproduced_tiny_repo``: one ``dvc repro`` of the whole DAG on the tiny preset, committed, for
the end-to-end tests; each takes its own :func:`tests.helpers.copy_repo` of it, so the DAG runs
once per session instead of once per module.
"""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.helpers import make_repo_copy, run

torch.set_num_threads(1)


@dataclass(frozen=True)
class ReproducedRepo:
    path: Path
    output: str  # what the first `dvc repro` printed


@pytest.fixture(scope="session")
def reproduced_tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> ReproducedRepo:
    """A copy of the project after one full `dvc repro` on the tiny preset, committed as the
    baseline. Copy it (``copy_repo``) before changing anything."""
    path = make_repo_copy(tmp_path_factory.mktemp("reproduced") / "repo")
    result = run(["dvc", "repro"], path)
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-q", "-m", "baseline run"], path)
    return ReproducedRepo(path, result.stdout)
