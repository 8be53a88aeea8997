"""The study's experiment records, typed: what ``reports/study/**/<name>.json`` holds, checked when a
record is written and when it is read, so that a report is never rendered from a malformed one.

Versions: records without a ``version`` key are 1 (the first study's carry no fingerprints; the
first records of part two, written before the key existed, do); 2 always carries the fingerprints
of the tokenizer and the base model the experiment ran on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

RECORD_VERSION = 2


class Fingerprints(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokenizer: str
    base: str


class Scores(BaseModel):
    """One variant's (or floor's) ``metrics/eval_*.json``; the report reads these keys."""

    model_config = ConfigDict(extra="allow")

    fid: float
    fid_se: float | None = None
    precision: float
    recall: float
    class_accuracy: float | None
    n_samples: int = Field(ge=1)


class StudyRecord(BaseModel):
    """One finished experiment: its settings, every variant's and floor's scores, its cost."""

    model_config = ConfigDict(extra="forbid")

    version: int = 1
    name: str
    overrides: dict[str, Any]
    code_commit: str
    fingerprints: Fingerprints | None = None
    machine: dict[str, Any] | None = None  # cpus, processor, gpu: what ``seconds`` was measured on
    seconds: float = Field(ge=0)
    stages_run: list[str]
    # Each stage's share of ``seconds``; recorded from part two's 14 x 14 series on.
    stage_seconds: dict[str, float] | None = None
    evaluation: dict[str, Scores]
    training: dict[str, dict[str, Any]]
    sampling: dict[str, dict[str, Any]]
    graphs: dict[str, Any]

    @model_validator(mode="after")
    def _fingerprinted_from_version_2(self) -> StudyRecord:
        if self.version >= 2 and self.fingerprints is None:
            raise ValueError(f"a version {self.version} record carries the fingerprints of its tokenizer "
                             "and base model")
        return self


def checked(record: dict[str, Any], where: str = "record") -> dict[str, Any]:
    """``record`` validated against :class:`StudyRecord`, as plain JSON data, unchanged."""
    try:
        StudyRecord.model_validate(record)
    except ValidationError as exc:
        raise ValueError(f"{where} is not a valid study record: {exc}") from None
    return record


def read_record(path: str | Path) -> dict[str, Any]:
    return checked(json.loads(Path(path).read_text()), str(path))
