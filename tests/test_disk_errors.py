"""Disk errors: a full disk and a read-only output directory give one clear line, not a traceback.

The real thing first: as root (here and in CI) a tiny ``tmpfs`` is a real full file system, and a
read-only bind mount is a directory even root cannot write (``chmod 0555`` does not stop root).
Those tests run the stage entry points and skip, with the reason, where ``mount`` is not allowed.
The same paths are then covered in-process by injecting the errors the libraries raise
(``ENOSPC`` from pyarrow, errno-less messages from safetensors / polars / torch), so they are
tested everywhere.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline import runtime as common
from pipeline.errors import PipelineError
from pipeline.stages import graphs as graphs_stage
from tests.helpers import run_entry, snapshot, temp_leftovers, token_project

DISK_FULL_LINE = "no space left on the device"
TRAIN_PARAMS = """\
model: {dim: 32, depth: 2, heads: 2}
train: {steps: 12, batch_size: 32, warmup_steps: 2, checkpoint_every: 6, log_every: 3, val_images: 64}
"""


def assert_one_line_failure(result: subprocess.CompletedProcess, stage: str, *says: str) -> str:
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith(f"error: stage '{stage}' failed:"), errors[0]
    for text in says:
        assert text in errors[0], errors[0]
    return errors[0]


# --------------------------------------------------------------------------------------------
# Real file systems (root with CAP_SYS_ADMIN: here and in CI)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def mount() -> Iterator[Callable[..., Path]]:
    """``mount(target, *args)`` runs ``mount *args target`` (args end with the source: ``tmpfs`` or
    the directory to bind); everything is unmounted afterwards."""
    mounted: list[Path] = []

    def _mount(target: Path, *args: str) -> Path:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("needs root and mount(8) to build a full / read-only file system")
        target.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"mount {' '.join(args)} is not permitted here: {result.stderr.strip()}")
        mounted.append(target)
        return target

    yield _mount
    for target in reversed(mounted):
        if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


def fill(directory: Path) -> None:
    """Write a filler file until the file system holding ``directory`` is completely full."""
    chunk = b"\0" * (1 << 16)
    with open(directory / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    with open(directory / "filler-tail", "wb", buffering=0) as handle:  # the last partial page
        try:
            while True:
                handle.write(b"\0" * 512)
        except OSError:
            pass


def read_only_bind(mount: Callable[..., Path], directory: Path) -> None:
    """Make ``directory`` (with its contents) read-only, even for root."""
    mount(directory, "--bind", str(directory))
    result = subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"read-only remount is not permitted here: {result.stderr.strip()}")


def test_full_disk_while_graphs_writes_parquet(tmp_path: Path, mount) -> None:
    """data/ is a full tmpfs: pyarrow's ENOSPC becomes one line, and no graph file is left."""
    mount(tmp_path / "data", "-t", "tmpfs", "-o", "size=1m", "tmpfs")
    token_project(tmp_path)
    fill(tmp_path / "data")
    before = snapshot(tmp_path, "data/tokens")

    result = run_entry("pipeline.stages.graphs", tmp_path)

    assert_one_line_failure(result, "graphs", f"{DISK_FULL_LINE} ({tmp_path / 'data'})",
                            "no half-written output was kept")
    assert not (tmp_path / "data/graphs").exists()
    assert not (tmp_path / "metrics/graphs.json").exists()
    assert temp_leftovers(tmp_path) == []
    assert snapshot(tmp_path, "data/tokens") == before


def test_full_disk_while_saving_a_checkpoint(tmp_path: Path, mount) -> None:
    """torch's zip writer reports a full disk as 'unexpected pos': still one clear line.

    The checkpoint half-written when the disk filled up keeps its temporary name (so it is
    never resumed from) and the next run, with space freed, removes it and trains to the end.
    """
    token_project(tmp_path, splits=("train", "val"), params=TRAIN_PARAMS)
    checkpoints = mount(tmp_path / "checkpoints", "-t", "tmpfs", "-o", "size=128k", "tmpfs")

    result = run_entry("pipeline.stages.train_base", tmp_path)

    assert_one_line_failure(result, "train_base", DISK_FULL_LINE, str(checkpoints / "base"))
    assert not (tmp_path / "models/base").exists()
    assert not (tmp_path / "metrics/train_base.json").exists()
    assert not list((checkpoints / "base").glob("step-*"))  # no checkpoint that looks complete

    subprocess.run(["mount", "-o", "remount,size=16m", str(checkpoints)], check=True)
    again = run_entry("pipeline.stages.train_base", tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "models/base/model.safetensors").is_file()
    assert [p.name for p in (checkpoints / "base").iterdir() if p.name.startswith(".")] == []


def test_read_only_output_directory_stops_graphs_before_any_work(tmp_path: Path, mount) -> None:
    token_project(tmp_path)
    read_only_bind(mount, tmp_path / "data")
    before = snapshot(tmp_path, "data")

    result = run_entry("pipeline.stages.graphs", tmp_path)

    assert_one_line_failure(result, "graphs", "cannot write outputs to data/: the file system is read-only")
    assert "graphs: " not in result.stderr  # not even the first log line of the work
    assert snapshot(tmp_path, "data") == before
    assert not (tmp_path / "metrics/graphs.json").exists()


def test_read_only_checkpoint_directory_stops_training_before_any_step(tmp_path: Path, mount) -> None:
    """checkpoints/<variant> is written in place (a persist output): it is probed too."""
    token_project(tmp_path, splits=("train", "val"), params=TRAIN_PARAMS)
    (tmp_path / "checkpoints/base").mkdir(parents=True)
    read_only_bind(mount, tmp_path / "checkpoints/base")

    result = run_entry("pipeline.stages.train_base", tmp_path)

    assert_one_line_failure(result, "train_base", "cannot write outputs to checkpoints/base/",
                            "the file system is read-only")
    assert "step/s" not in result.stderr  # no training step ran
    assert not (tmp_path / "models/base").exists()


# --------------------------------------------------------------------------------------------
# Injected errors (everywhere, mount or not)
# --------------------------------------------------------------------------------------------


def test_injected_enospc_in_parquet_writer(tmp_path: Path, monkeypatch, capsys) -> None:
    """The graphs stage in-process, pyarrow failing like it does on a full disk."""
    token_project(tmp_path)
    monkeypatch.chdir(tmp_path)

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    with pytest.raises(SystemExit) as stopped:
        graphs_stage.main()

    assert stopped.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: stage 'graphs' failed: no space left on the device"), line
    assert not (tmp_path / "data/graphs").exists()
    assert not (tmp_path / "metrics/graphs.json").exists()
    assert temp_leftovers(tmp_path) == []


def test_injected_read_only_probe(tmp_path: Path, monkeypatch) -> None:
    def read_only(directory: Path) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(directory))

    monkeypatch.setattr(common, "_probe", read_only)
    with pytest.raises(PipelineError, match=r"cannot write outputs to .*out/: the file system is read-only"):
        common.ensure_writable([tmp_path / "out" / "graphs.json"])


def test_existing_output_directory_is_probed_inside(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "checkpoints/base").mkdir(parents=True)
    probed = []
    monkeypatch.setattr(common, "_probe", probed.append)
    common.ensure_writable([tmp_path / "checkpoints/base", tmp_path / "metrics/x.json"])
    assert probed == [tmp_path / "checkpoints", tmp_path / "checkpoints/base", tmp_path / "metrics"]


def _chain(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as caught:
        return caught


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "data/graphs/x.parquet"),
         "no space left on the device (data/graphs/x.parquet)"),
        (OSError(errno.EROFS, "Read-only file system"), "the file system is read-only"),
        # safetensors and polars keep the OS message but no errno
        (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),
         "no space left on the device"),
        (RuntimeError("parquet: File out of specification: underlying IO error: No space left on device"),
         "no space left on the device"),
        # wrapped: found along __cause__
        (_chain(RuntimeError("checkpoint failed"), OSError(errno.EDQUOT, "Disk quota exceeded")),
         "disk quota exceeded"),
        (ValueError("tokens must lie in [0, 32)"), None),  # a bug: keep its traceback
    ],
    ids=["enospc", "erofs", "safetensors", "polars", "wrapped-edquot", "not-a-disk-error"],
)
def test_disk_problem_recognises_library_errors(exc: BaseException, reason: str | None, monkeypatch) -> None:
    monkeypatch.setattr(common, "full_filesystem", lambda paths: None)  # whatever this machine's disk
    assert common._disk_problem(exc) == reason


class _Statvfs:
    def __init__(self, free_blocks: int, blocks: int = 1 << 20, size: int = 4096):
        self.f_bavail, self.f_blocks, self.f_frsize = free_blocks, blocks, size


def test_torch_write_failure_is_a_full_disk_only_when_the_disk_is_full(tmp_path: Path, monkeypatch) -> None:
    """torch.save to a path loses the errno ('unexpected pos'): the file system decides."""
    torch_error = _chain(
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),
        RuntimeError("basic_ios::clear: iostream error"),
    )
    monkeypatch.setattr(os, "statvfs", lambda path: _Statvfs(free_blocks=3))
    reason = common._disk_problem(torch_error, [tmp_path / "checkpoints/base"])
    assert reason == f"no space left on the device ({tmp_path})"

    monkeypatch.setattr(os, "statvfs", lambda path: _Statvfs(free_blocks=1 << 19))  # half free
    assert common._disk_problem(torch_error, [tmp_path / "checkpoints/base"]) is None
