"""What every stage entry point shares: validated params, logging, seeding and clear failures.

``run_stage`` loads and validates the *whole* ``params.yaml`` before any work (so a typo in any
section stops every stage), then runs the stage body. Failures a user can act on (bad params, bad
input data, a full disk, a read-only output folder) are printed as one clear line and exit non-zero
instead of a traceback from deep inside pyarrow or torch.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def ensure_writable(paths: Iterable[str | Path]) -> None:
    """Fail early, before any work, when an output location cannot be written."""
    for path in paths:
        parent = Path(path).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            probe = parent / f".write-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            reason = _DISK_ERRNOS.get(exc.errno, exc.strerror or str(exc))
            raise PipelineError(f"cannot write outputs to {parent}/: {reason}") from exc


def _disk_problem(exc: BaseException) -> str | None:
    """A readable reason when ``exc`` (or anything it wraps) is a disk or permission failure."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
            where = f" ({exc.filename})" if exc.filename else ""
            return f"{_DISK_ERRNOS[exc.errno]}{where}"
        text = str(exc).lower()
        for needle, reason in _DISK_MESSAGES.items():
            if needle in text:
                return reason
        exc = exc.__cause__ or exc.__context__
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
        problem = _disk_problem(exc)
        if problem is None:
            raise
        print(f"error: stage '{name}' could not write its outputs: {problem}. "
              "No partial output was kept; free space or fix permissions and re-run.", file=sys.stderr)
        raise SystemExit(1) from None
    log.info("stage %s done in %.1fs", name, time.perf_counter() - start)
