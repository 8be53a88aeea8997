"""Test fixtures shared by several test files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.config import CooccurrenceConfig, GraphsConfig, ModelConfig
from pipeline.model.transformer import GeneratorSpec
from pipeline.shards import ShardWriter, TokenMeta, write_meta
from pipeline.stages.graphs import StagePaths, write_graphs


def write_token_split(directory: Path, tokens: np.ndarray, labels: np.ndarray, meta: TokenMeta,
                      split: str = "train", shard_size: int = 1000) -> Path:
    """Write ``tokens`` (n, seq_len) as a token directory (``<directory>/<split>`` + meta.json)."""
    with ShardWriter(directory / split, meta, shard_size) as writer:
        writer.add(np.arange(len(tokens), dtype=np.int64), labels.astype(np.int32), tokens.astype(np.int32))
    write_meta(directory, meta)
    return directory


def write_graph_files(directory: Path, tokens: np.ndarray, labels: np.ndarray, codebook_size: int,
                      grid: tuple[int, int], top_ratio: float = 1.0, neighbourhood: int = 4) -> Path:
    """Real graph files for ``tokens`` (n, h*w), built by the graphs stage itself into ``directory``."""
    num_classes = int(labels.max()) + 1
    meta = TokenMeta(grid[0], grid[1], codebook_size, num_classes, "test")
    tokens_dir = write_token_split(directory.parent / f"{directory.name}-tokens", tokens, labels, meta)
    metrics = directory.parent / f"{directory.name}-metrics"
    cfg = GraphsConfig(cooccurrence=CooccurrenceConfig(neighbourhood=neighbourhood, top_ratio=top_ratio))
    write_graphs(cfg, StagePaths(tokens_dir=tokens_dir, graphs_dir=directory,
                                 metrics_file=metrics / "graphs.json", degrees_csv=metrics / "degrees.csv",
                                 picture=metrics / "neighbours.png", tokenizer_dir=None))
    return directory


# --------------------------------------------------------------------------------------------
# Temporary copies of the repository, for tests that run DVC end to end
# --------------------------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]


def repo_files() -> list[str]:
    """The repository's files as a fresh clone would have them (tracked + new, not ignored)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, check=True,
                            capture_output=True, text=True).stdout.split("\n")
    # Run outputs of this checkout (dvc.lock, metrics) are not part of a fresh project copy.
    return [f for f in listed if f and not f.startswith(("metrics/", "reports/")) and f != "dvc.lock"
            and (REPO_ROOT / f).is_file()]


def dvc_env() -> dict[str, str]:
    """Environment for DVC subprocesses: this interpreter's `python` first on PATH, quiet output."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "GIT_AUTHOR_NAME": "test",
            "GIT_AUTHOR_EMAIL": "test@example.com", "GIT_COMMITTER_NAME": "test",
            "GIT_COMMITTER_EMAIL": "test@example.com"}


def run(args: list[str], cwd: Path, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a command in ``cwd`` with :func:`dvc_env`; on failure the error shows its output."""
    result = subprocess.run(args, cwd=cwd, env=dvc_env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
    return result


def make_repo_copy(destination: Path, preset: str | None = "configs/tiny.yaml") -> Path:
    """A committed git + DVC copy of the project in ``destination``, with ``preset`` applied."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in repo_files():
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    run(["git", "init", "-q", "-b", "main"], destination)
    if preset:
        run([sys.executable, "-m", "pipeline.config", "apply", preset], destination)
    run(["git", "add", "-A"], destination)
    run(["git", "commit", "-q", "-m", "test copy"], destination)
    return destination


def copy_repo(source: Path, destination: Path) -> Path:
    """An independent copy of a project copy that has run already: git history, DVC cache,
    outputs and all, without DVC's machine-local state (``.dvc/tmp``), which it rebuilds."""
    shutil.copytree(source, destination, symlinks=True, ignore=shutil.ignore_patterns("tmp"))
    return destination


# --------------------------------------------------------------------------------------------
# Stage entry points and "nothing changed" checks (fault-tolerance tests)
# --------------------------------------------------------------------------------------------


def run_entry(module: str, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m <module> [args]`` in ``cwd`` (a stage entry point), never raising on failure."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=dvc_env(),
                          capture_output=True, text=True, timeout=timeout)


def snapshot(root: Path, *relative: str) -> dict[str, bytes]:
    """Contents of every file (hidden ones too) under ``root/<relative>``, keyed by relative path."""
    found = {}
    for name in relative:
        base = root / name
        paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        found.update({str(p.relative_to(root)): p.read_bytes() for p in paths})
    return found


def temp_leftovers(root: Path) -> list[str]:
    """Temporary names of the atomic writers (pipeline.files, checkpoints, tokenize, write probes)."""
    markers = (".tmp-", ".write-probe-", ".partial")
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*")
                  if any(marker in p.name for marker in markers) and ".git" not in p.parts
                  and ".dvc" not in p.parts)


def token_project(root: Path, splits: tuple[str, ...] = ("train",), params: str = "seed: 0\n") -> Path:
    """A scratch project for stage entry points: ``params.yaml`` and random 4x4 tokens (V=32,
    4 classes), 400 rows per split in two shards of 200 (``part-00000``, ``part-00001``)."""
    rng = np.random.default_rng(0)
    meta = TokenMeta(grid_h=4, grid_w=4, codebook_size=32, num_classes=4, tokenizer_fingerprint="test")
    for split in splits:
        write_token_split(root / "data/tokens", rng.integers(0, 32, (400, 16)), rng.integers(0, 4, 400),
                          meta, split=split, shard_size=200)
    (root / "params.yaml").write_text(params)
    return root


def generator_spec(codebook_size: int, num_classes: int, seq_len: int, **model: object) -> GeneratorSpec:
    """A MaskGIT architecture from ``model.*`` values (validated, the rest at their defaults)."""
    return GeneratorSpec.from_config(ModelConfig(**model), codebook_size, num_classes, seq_len)
