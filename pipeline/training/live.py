"""The training curves: one small DVCLive logger per run, in ``metrics/live/train_<variant>/``."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

CURVES = ("loss", "masked_accuracy", "lr")


class LiveLog:
    """Logs each row ``{"step", "loss", "masked_accuracy", "lr"}`` as ``train/<curve>`` at its step.

    DVCLive looks for the DVC repository around the working directory, and when it finds a git
    repository *without* DVC it runs ``dvc init`` there (and stages it in git). Refuse instead:
    the stages run from the DVC project root, tests from a temporary directory outside git. The
    lead's ``dvc.yaml`` declares the plots, so DVCLive writes only inside ``directory``.
    """

    def __init__(self, directory: str | Path, replay: Iterable[dict[str, float]] = ()):
        here = Path.cwd().resolve()
        for parent in (here, *here.parents):
            if (parent / ".dvc").is_dir():
                break
            if (parent / ".git").exists():
                raise PipelineError(
                    f"{parent} is a git repository without DVC: DVCLive would run `dvc init` there. "
                    "Run the stage from the DVC project root (dvc repro)."
                )
        from dvclive import Live

        try:
            self._live: Any = Live(dir=str(directory), dvcyaml=None, save_dvc_exp=False)
        except Exception as exc:  # e.g. a git repository without any commit
            raise PipelineError(f"DVCLive cannot log to {directory}: {exc}") from exc
        for row in replay:  # what was logged before an interruption
            self.log(row)

    def log(self, row: dict[str, float]) -> None:
        self._live.step = int(row["step"])
        for key in CURVES:
            self._live.log_metric(f"train/{key}", row[key])
        self._live.next_step()

    def end(self) -> None:
        self._live.end()
