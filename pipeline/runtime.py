"""What every stage entry point shares: validated params, logging and clear failures.

Each file in ``pipeline/stages/`` is a leaf of the same shape: a ``run(cfg[, variant])`` body that
calls one library function and writes its outputs atomically, and a ``main`` that hands it to
:func:`stage_main`.

``run_stage`` loads and validates the *whole* ``params.yaml`` before any work (so a typo in any
section stops every stage), then runs the stage body. Failures a user can act on (bad params, bad
input data, a full disk, a read-only output folder) are printed as one clear line and exit non-zero
instead of a traceback from deep inside pyarrow or torch.

Disk failures are recognised along the whole exception chain: by errno (Python, PIL, pyarrow set
it), by the OS message that libraries without an errno embed in their text (safetensors, polars:
"No space left on device (os error 28)"), and for torch's C++ zip writer, which reports a full disk
only as "file write failed" / "unexpected pos", by checking whether an output's file system is
full. Every stage writes through :mod:`pipeline.files` (temporary name, then rename), so such a
failure never leaves a half-written output that DVC could cache.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from pipeline.config import Config, ConfigError, load_config
from pipeline.errors import PipelineError

log = logging.getLogger("pipeline")

_DISK_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
_DISK_MESSAGES = {
    "no space left on device": "no space left on the device",
    "read-only file system": "the file system is read-only",
    "permission denied": "permission denied",
    "disk quota exceeded": "disk quota exceeded",
}
# torch's zip writer (torch.save to a path, accelerate checkpoints) loses the errno of a failed
# write; these are the messages it raises instead.
_OPAQUE_WRITE_FAILURES = ("file write failed", "unexpected pos", "iostream error")
# A file system with less free space than this (or than 1% of its size, if smaller) counts as full.
_FULL_BELOW_BYTES = 64 << 20


def _probe(directory: Path) -> None:
    probe = directory / f".write-probe-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


def ensure_writable(paths: Iterable[str | Path]) -> None:
    """Fail early, before any work, when an output location cannot be written.

    Probes the parent of every output (where its temporary sibling is created and renamed) and,
    for an output that is an existing directory, the directory itself: persistent outputs such as
    ``checkpoints/<variant>`` are written into in place.
    """
    for path in paths:
        path = Path(path)
        targets = [path.parent] + ([path] if path.is_dir() and not path.is_symlink() else [])
        for directory in targets:
            try:
                directory.mkdir(parents=True, exist_ok=True)
                _probe(directory)
            except OSError as exc:
                reason = _DISK_ERRNOS.get(exc.errno, exc.strerror or str(exc))
                raise PipelineError(f"cannot write outputs to {directory}/: {reason}") from exc


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def full_filesystem(paths: Iterable[str | Path]) -> Path | None:
    """The first of ``paths`` (or its nearest existing ancestor) on a file system that is full."""
    for path in paths:
        where = _existing_ancestor(Path(path))
        try:
            stats = os.statvfs(where)
        except OSError:
            continue
        free, size = stats.f_bavail * stats.f_frsize, stats.f_blocks * stats.f_frsize
        if free < min(_FULL_BELOW_BYTES, max(size // 100, 1)):
            return where
    return None


def _disk_problem(exc: BaseException, outputs: Iterable[str | Path] = ()) -> str | None:
    """A readable reason when ``exc`` (or anything it wraps) is a disk or permission failure."""
    seen = set()
    opaque_write_failure = False
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        reason, where = None, None
        if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
            reason, where = _DISK_ERRNOS[exc.errno], exc.filename
        else:
            text = str(exc).lower()
            reason = next((r for needle, r in _DISK_MESSAGES.items() if needle in text), None)
            opaque_write_failure |= any(needle in text for needle in _OPAQUE_WRITE_FAILURES)
        if reason is not None:
            if where is None and reason == _DISK_ERRNOS[errno.ENOSPC]:  # say which disk is full
                where = full_filesystem([*outputs, Path.cwd()])
            return reason + (f" ({where})" if where else "")
        exc = exc.__cause__ or exc.__context__
    if opaque_write_failure:
        full = full_filesystem([*outputs, Path.cwd()])
        if full is not None:
            return f"{_DISK_ERRNOS[errno.ENOSPC]} ({full})"
    return None


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("KAMIG_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # faiss logs each CPU-feature variant it fails to load at INFO: noise, not news.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def run_stage(
    name: str,
    body: Callable[[Config], None],
    outputs: Iterable[str | Path] = (),
    params_path: str | Path = "params.yaml",
) -> None:
    """Validate params, check the outputs are writable, run ``body`` and report clearly."""
    setup_logging()
    outputs = list(outputs)
    try:
        cfg = load_config(params_path)
    except ConfigError as exc:
        print(f"error: invalid parameters, stage '{name}' did not start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    start = time.perf_counter()
    try:
        ensure_writable(outputs)
        body(cfg)
    except PipelineError as exc:
        print(f"error: stage '{name}' failed: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as exc:
        problem = _disk_problem(exc, outputs)
        if problem is None:
            raise
        log.debug("stage %s: disk failure", name, exc_info=True)  # KAMIG_LOG_LEVEL=DEBUG shows it
        print(f"error: stage '{name}' failed: {problem}. Outputs are renamed into place only when "
              "complete, so no half-written output was kept; free space or fix permissions and re-run.",
              file=sys.stderr)
        raise SystemExit(1) from None
    log.info("stage %s done in %.1fs", name, time.perf_counter() - start)


def stage_main(
    stage: str,
    run: Callable[..., None],
    outputs: Callable[..., Iterable[str | Path]],
    variants: Sequence[str] | None = None,
    argv: Sequence[str] | None = None,
    display: Callable[[str], str] | None = None,
) -> None:
    """The ``main`` of a stage: parse the variant (if the stage has variants), then :func:`run_stage`.

    ``run(cfg)`` / ``run(cfg, variant)`` is the stage body; ``outputs()`` / ``outputs(variant)``
    lists what it writes (probed for writability first). ``display(variant)`` names the stage in
    messages; by default ``stage@variant``, as ``dvc.yaml`` names a ``foreach`` stage.
    """
    if variants is None:
        run_stage(stage, run, outputs=outputs())
        return
    parser = argparse.ArgumentParser(prog=f"python -m pipeline.stages.{stage}")
    parser.add_argument("variant", choices=list(variants))
    variant = parser.parse_args(argv).variant
    name = display(variant) if display is not None else f"{stage}@{variant}"
    run_stage(name, lambda cfg: run(cfg, variant), outputs=outputs(variant))
