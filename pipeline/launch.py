"""Running stages on several processes (GPUs, nodes) with accelerate, and the launcher DVC calls.

Two halves:

1. **The launcher**, ``python -m pipeline.launch STAGE [ARGS]``: the ``cmd`` of the stages that
   can split their work over processes (tokenize, train_base, finetune, reference, sample,
   evaluate, evaluate_real). By default it runs ``python -m pipeline.stages.STAGE ARGS`` in this
   interpreter. When the environment variable ``KAMIG_LAUNCH`` holds a launcher command, it execs
   ``$KAMIG_LAUNCH -m pipeline.stages.STAGE ARGS`` instead, e.g.::

       KAMIG_LAUNCH="accelerate launch --multi_gpu --num_processes 8" dvc repro
       KAMIG_LAUNCH="torchrun --standalone --nproc_per_node 8" dvc repro sample@kamig

   The variable is not a DVC param on purpose: these stages write the same bytes whatever the
   number of processes (training: the same global batches), so launching them differently must
   not invalidate their outputs.

2. **Work splitting** for the stage bodies: :func:`shared_stage` (the accelerate state, also on
   CPU, and a clean end), :func:`process_share` / :func:`batch_share` (the contiguous block of
   work a process takes) and :func:`gather_parts` (every process's result, in process order).
   With one process the share is everything and the gather is ``[part]``: a single-process run
   takes the same code path. Contiguous blocks concatenated in process order reproduce the
   single-process order exactly, which is what makes multi-process outputs byte-identical.

CPU runs: ``accelerate launch --cpu`` starts one process only (several need MPI), so several CPU
processes are started with ``torchrun`` and ``ACCELERATE_USE_CPU=true``, which
:func:`process_state` honours like ``accelerate.Accelerator`` does (gloo backend).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import runpy
import shlex
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # accelerate (and torch) load only when a stage asks for the state
    import torch
    from accelerate import PartialState

LAUNCH_ENV = "KAMIG_LAUNCH"
STAGES_PACKAGE = "pipeline.stages"
# Set by torchrun / accelerate launch in every worker: a worker never launches again.
_WORKER_ENV = ("LOCAL_RANK", "RANK")

T = TypeVar("T")
log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Work splitting inside a stage
# --------------------------------------------------------------------------------------------


def single_process_device() -> torch.device:
    """The device of a stage that always runs in one process (the classifier, the tokenizer)."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def process_state() -> PartialState:
    """This process's accelerate state; ``ACCELERATE_USE_CPU=true`` gives gloo CPU processes.

    ``PartialState()`` alone ignores that variable (only ``Accelerator`` reads it), so on a
    machine without GPUs every torchrun worker would believe it runs alone.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if state.num_processes > 1:
        log.info("process %d of %d (%s, %s backend)", state.process_index, state.num_processes,
                 state.device, state.backend)
    return state


@contextlib.contextmanager
def shared_stage() -> Iterator[PartialState]:
    """The process state of a stage body that splits its work, and its clean end.

    When the body returns, every process waits for the others (the main one is writing the
    outputs) and then leaves the process group: a worker that exits while gloo's threads still
    run can abort ("terminate called without an active exception") and fail the whole launch.
    When the body raises, nothing waits: the launcher stops the other processes.
    """
    state = process_state()
    yield state
    if state.num_processes > 1:
        state.wait_for_everyone()
        state.destroy_process_group()


def process_share(count: int, state: PartialState) -> range:
    """The contiguous block of ``range(count)`` this process works on (balanced to within one)."""
    rank, world = state.process_index, state.num_processes
    return range(count * rank // world, count * (rank + 1) // world)


def gather_parts(part: T, state: PartialState) -> list[T]:
    """Every process's ``part`` in process order (on every process); ``[part]`` with one process."""
    if state.num_processes == 1:
        return [part]
    from accelerate.utils import gather_object

    return gather_object([part])


def batch_share(count: int, batch_size: int, state: PartialState) -> tuple[range, range]:
    """(global batch indices, item indices) of this process's whole batches of ``count`` items.

    Batches stay exactly those of a single-process run (batch ``b`` is items
    ``[b * batch_size, (b + 1) * batch_size)``), so per-batch seeds and per-batch numerics match.
    """
    batches = process_share(-(-count // batch_size), state)
    items = range(min(count, batches.start * batch_size), min(count, batches.stop * batch_size))
    return batches, items


# --------------------------------------------------------------------------------------------
# The launcher
# --------------------------------------------------------------------------------------------


def launch_command(stage: str, args: Sequence[str], launcher: str | None) -> list[str] | None:
    """The command that runs ``stage`` under ``launcher``; None: run it in this process."""
    if not launcher or not launcher.strip() or any(name in os.environ for name in _WORKER_ENV):
        return None
    return [*shlex.split(launcher), "-m", f"{STAGES_PACKAGE}.{stage}", *args]


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        print(f"usage: python -m pipeline.launch STAGE [ARGS...]\n\n{__doc__}", file=sys.stderr)
        raise SystemExit(2)
    stage, args = argv[0], argv[1:]
    module = f"{STAGES_PACKAGE}.{stage}"
    if not stage.isidentifier() or importlib.util.find_spec(module) is None:
        print(f"error: no stage module {module} (pipeline/stages/{stage}.py)", file=sys.stderr)
        raise SystemExit(2)
    command = launch_command(stage, args, os.environ.get(LAUNCH_ENV))
    if command is None:  # as `python -m pipeline.stages.STAGE ARGS`, in this interpreter
        saved, sys.argv = sys.argv, [module, *args]
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        finally:
            sys.argv = saved
        return
    print(f"{LAUNCH_ENV}: {shlex.join(command)}", file=sys.stderr, flush=True)
    try:
        os.execvp(command[0], command)  # replaces this process: exit code and signals pass through
    except OSError as exc:
        print(f"error: {LAUNCH_ENV}={os.environ[LAUNCH_ENV]!r} cannot be started: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
