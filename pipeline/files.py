"""Atomic output writing: write to a temporary sibling, then rename. And :func:`file_digest`.

A stage killed halfway (SIGKILL, full disk) must never leave a half-written output that DVC could
hash and cache. Every output therefore goes to a temporary name in the same directory (so the
final ``os.replace`` is an atomic rename on one filesystem) and is renamed only once complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def file_digest(path: str | Path) -> str:
    """Hex sha256 of a file, streamed: run fingerprints, and the checksums importers print."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _temp_sibling(path: Path, is_dir: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.tmp-"
    if is_dir:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
    os.close(fd)
    return Path(name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    tmp = _temp_sibling(path, is_dir=False)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs should be world-readable like any file
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces the directory ``path`` as a whole."""
    path = Path(path)
    tmp = _temp_sibling(path, is_dir=True)
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if path.exists():
            # A directory cannot be atomically replaced by rename; move the old one aside first
            # so that at every instant `path` is either the old or the new complete directory.
            old = _temp_sibling(path, is_dir=True)
            old.rmdir()
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_json(path: str | Path, payload: Any) -> None:
    """Atomically write ``payload`` as stable, sorted, indented JSON."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
