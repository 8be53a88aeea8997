"""Checkpoints of a training run, and resuming from the newest one.

``checkpoints/<variant>/`` (a ``persist: true`` DVC output) holds ``run.json``, the fingerprint
of the run definition (params and input digests), and the newest complete checkpoint
``step-NNNNNNNN`` written by ``accelerator.save_state``. A checkpoint is written under a
temporary name and renamed when complete, so a kill mid-save leaves the previous one intact. A
directory made for other params or inputs is cleared rather than resumed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accelerate import Accelerator

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step-"
RUN_FILE = "run.json"


@dataclass
class TrainProgress:
    """Checkpointed loop state besides model/optimiser/EMA: step, logged rows, throughput."""

    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0
    # Sums since the last logged row (loss * n, correct, n) over all processes, so a checkpoint
    # between two log steps resumes the same logged averages.
    window: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])

    def advance(self, seconds: float, tokens: int) -> None:
        self.step += 1
        self.seconds += seconds
        self.tokens += tokens

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.history = int(state["step"]), list(state["history"])
        self.seconds, self.tokens = float(state["seconds"]), int(state["tokens"])
        self.window = [float(v) for v in state["window"]]


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (renamed into place), oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        suffix = path.name[len(CHECKPOINT_PREFIX):]
        if path.is_dir() and path.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit():
            found.append((int(suffix), path))
    return sorted(found)


def prepare_checkpoint_dir(directory: Path, fingerprint: dict[str, Any]) -> None:
    """Keep the checkpoints only if they were made by the same run definition; clear leftovers."""
    directory.mkdir(parents=True, exist_ok=True)
    for leftover in directory.glob(".*"):  # a checkpoint being written when the run was killed
        _remove(leftover)
    # Compare in JSON form: the fingerprint holds tuples (shard digests, graph names) that come
    # back from run.json as lists, and (1, 2) != [1, 2] would discard every checkpoint.
    text = json.dumps(fingerprint, indent=2, sort_keys=True) + "\n"
    run_file = directory / RUN_FILE
    if run_file.is_file() and json.loads(run_file.read_text()) == json.loads(text):
        return
    for path in directory.iterdir():
        log.info("discarding %s: made for other params or inputs", path)
        _remove(path)
    tmp = directory / f".{RUN_FILE}.tmp"
    tmp.write_text(text)
    os.replace(tmp, run_file)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()



class Checkpointer:
    """Saves and restores all ``accelerator`` holds (``prepare``, ``register_for_checkpointing``)."""

    def __init__(self, accelerator: Accelerator, directory: str | Path, fingerprint: dict[str, Any]):
        self.accelerator = accelerator
        self.directory = Path(directory)
        if accelerator.is_main_process:
            prepare_checkpoint_dir(self.directory, fingerprint)
        accelerator.wait_for_everyone()

    def resume(self) -> Path | None:
        """Load the newest complete checkpoint, if any; returns its path."""
        existing = list_checkpoints(self.directory)
        if not existing:
            return None
        _, path = existing[-1]
        self.accelerator.load_state(str(path))
        return path

    def save(self, step: int) -> None:
        """Write the checkpoint of ``step``, then keep only the newest complete one."""
        accelerator = self.accelerator
        tmp = self.directory / f".tmp-{checkpoint_name(step)}"
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            final = self.directory / checkpoint_name(step)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for _, old in list_checkpoints(self.directory)[:-1]:
                shutil.rmtree(old)
        accelerator.wait_for_everyone()
