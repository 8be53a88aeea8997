"""The study behind ``reports/fashion_mnist.md``: which experiments, in which order, and their records.

Each experiment is one ``dvc exp run`` with every grid param set explicitly (a workspace
experiment starts from the previous one's params). All four generator variants and both floors are
scored in every experiment, so each one is a complete paired replicate:

* ``b<base>-f<ft>``: base model seed ``seed = base``, fine-tune seed ``kamig.seed = ft``, all three
  graphs. The fine-tune seeds on base 0 are the main comparison (the paper's protocol: one
  pretrained backbone, fine-tuned); a second base seed shows whether the conclusion hinges on it.
* ``b<base>-f<ft>-negmasked``: ``fusion.negative_at: masked`` (the paper's text) instead of ``all``.
* ``b<base>-f<ft>-<graph>``: one graph alone, against the null control on the same graph.
* ``b<base>-f<ft>-official``: ``fusion.adapter: official`` (the published graph layer) instead of
  this pipeline's; its null is the official layer on the permuted graphs. The base model and the
  control do not depend on the adapter, so the pair with ``b<base>-f<ft>`` shares them.

Every experiment runs at the study's scale, ``configs/study.yaml``: longer training than the
15-minute default DAG and 5,000 samples per variant. Its keys are set on every experiment beside
the grid's, so the study's models do not change when the default is trimmed, and DVC's run-cache
serves the stages shared between experiments.

The sampling seed stays fixed: every variant of a replicate draws the same Gumbel noise (common
random numbers), and the base model's samples are re-used across fine-tune seeds.

A finished experiment leaves ``<results>/<name>.json`` (:func:`collect_record`): its settings, the
evaluation and training metrics of every variant and floor, its wall time, and the fingerprints of
the tokenizer and the base model it ran on. The runner skips names whose record exists, so an
interrupted study resumes where it stopped; the records are committed, and the report is rendered
from them alone.

Fingerprints. A base model trained again on another CPU comes out different (other float
rounding), so records are comparable only where their tokenizer and base model are the same
tensors. :func:`fingerprint_conflicts` finds records of one base seed that disagree; the runner
refuses to add such a record to a series, and the report refuses to pair them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml

from pipeline import layout
from pipeline.config import DEFAULT_PARAMS, AdapterName, GraphName, config_from_dict, merge_overlay
from study.records import RECORD_VERSION, checked, read_record

GRAPH_NAMES: tuple[str, ...] = get_args(GraphName)
ADAPTERS: tuple[str, ...] = get_args(AdapterName)
STUDY_PRESET = Path("configs/study.yaml")


def dotted(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``: the keys ``dvc exp run -S`` takes."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def study_scale(preset: str | Path = STUDY_PRESET, params: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """The preset's settings as dotted keys, after checking that they are valid on ``params``."""
    overlay = yaml.safe_load(Path(preset).read_text()) or {}
    base = yaml.safe_load(Path(params).read_text()) or {}
    config_from_dict(merge_overlay(base, overlay), source=f"{params} + {preset}")
    scale = dotted(overlay)
    # The params the grid varies (any experiment's, with no scale) are left to it.
    clashing = sorted(set(scale) & set(experiment(0, 0).overrides({})))
    if clashing:
        raise ValueError(f"{preset} sets {', '.join(clashing)}, which the study's grid varies")
    return scale


@dataclass(frozen=True)
class Experiment:
    name: str
    base_seed: int
    finetune_seed: int
    graphs: tuple[str, ...] = GRAPH_NAMES
    negative_at: str = "all"
    adapter: str = "pipeline"

    def overrides(self, scale: Mapping[str, Any]) -> dict[str, Any]:
        """The scale's settings and every grid param, explicitly, as ``dvc exp run -S`` values."""
        overrides = {**scale, "seed": self.base_seed, "kamig.seed": self.finetune_seed,
                     "fusion.graphs": list(self.graphs), "fusion.negative_at": self.negative_at,
                     "fusion.adapter": self.adapter}
        if self.adapter == "official":  # the published layer has no class-marginal null term
            overrides["fusion.null_negative"] = "zero"
        return overrides


def experiment(base: int, ft: int, graphs: Sequence[str] = GRAPH_NAMES,
               negative_at: str = "all", adapter: str = "pipeline") -> Experiment:
    name = f"b{base}-f{ft}"
    if tuple(graphs) != GRAPH_NAMES:
        name += "-" + "+".join(graphs)
    if negative_at != "all":
        name += f"-neg{negative_at}"
    if adapter != "pipeline":
        name += f"-{adapter}"
    return Experiment(name, base, ft, tuple(graphs), negative_at, adapter)


def study_grid(finetune_seeds: Sequence[int], second_base_seeds: Sequence[int] = (),
               ablation_seeds: Sequence[int] = (), negative_seeds: Sequence[int] = (),
               adapters: Sequence[str] = ("pipeline",)) -> list[Experiment]:
    """The experiments in running order: the main comparison first, so a partial study is useful.
    Each of its seeds, and each seed on the second base model, runs once per adapter in
    ``adapters``, one after the other, so that the second re-uses the first's control (which does
    not depend on the adapter)."""
    unknown = sorted(set(adapters) - set(ADAPTERS))
    if unknown:
        raise ValueError(f"unknown adapter(s) {unknown}; choose from {list(ADAPTERS)}")
    runs = [experiment(0, ft, adapter=adapter) for ft in finetune_seeds for adapter in adapters]
    runs += [experiment(0, ft, negative_at="masked") for ft in negative_seeds]
    runs += [experiment(0, ft, graphs=(graph,)) for ft in ablation_seeds for graph in GRAPH_NAMES]
    runs += [experiment(1, ft, adapter=adapter) for ft in second_base_seeds for adapter in adapters]
    return runs


def dvc_set_arguments(overrides: dict[str, Any]) -> list[str]:
    arguments = []
    for key, value in overrides.items():
        text = f"[{','.join(map(str, value))}]" if isinstance(value, list) else str(value)
        arguments += ["-S", f"{key}={text}"]
    return arguments


def workspace_fingerprints() -> dict[str, str]:
    """The tokenizer and the base model in the workspace, by their tensors' contents."""
    from pipeline.shards import read_meta
    from pipeline.weights import WEIGHTS_FILE, load_weights, tensor_fingerprint

    return {"tokenizer": read_meta(layout.TOKENS_DIR).tokenizer_fingerprint,
            "base": tensor_fingerprint(load_weights(layout.model_dir(layout.BASE) / WEIGHTS_FILE))}


def machine() -> dict[str, Any]:
    """What a record's times were measured on: the CPU count and model (a GPU's name when torch
    sees one)."""
    import os
    import platform

    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpus": os.cpu_count(), "processor": cpu_model() or platform.machine(), "gpu": gpu}


def cpu_model() -> str | None:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def fingerprint_conflicts(record: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of ``records`` on ``record``'s base seed whose tokenizer or base model differs from its
    own (a record without fingerprints differs from every record with them)."""
    seed = record["overrides"].get("seed")
    return [other["name"] for other in records
            if other["name"] != record["name"] and other["overrides"].get("seed") == seed
            and other.get("fingerprints") != record.get("fingerprints")]


def stage_durations(starts: Sequence[tuple[float, str]], end: float) -> dict[str, float]:
    """Each stage's seconds, from when it started until the next one did (or ``end``, the whole
    experiment's seconds): DVC's bookkeeping between stages counts to the stage before it."""
    ends = [at for at, _ in starts[1:]] + [end]
    return {stage: round(stop - at, 1) for (at, stage), stop in zip(starts, ends, strict=True)}


def collect_record(run: Experiment, scale: Mapping[str, Any], seconds: float, stages_run: list[str],
                   commit: str, metrics_dir: Path = layout.METRICS_DIR,
                   fingerprints: Mapping[str, str] | None = None,
                   stage_seconds: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The record of a finished experiment, from the metrics files it left in the workspace
    (``fingerprints``: :func:`workspace_fingerprints` unless given; ``stage_seconds``:
    :func:`stage_durations`)."""
    def read(name: str) -> dict[str, Any]:
        return json.loads((metrics_dir / f"{name}.json").read_text())

    evaluated = (*layout.GENERATOR_VARIANTS, *layout.FLOORS)
    return checked({
        "version": RECORD_VERSION,
        "name": run.name,
        "overrides": run.overrides(scale),
        "code_commit": commit,
        "fingerprints": dict(fingerprints if fingerprints is not None else workspace_fingerprints()),
        "machine": machine(),
        "seconds": round(seconds, 1),
        "stages_run": stages_run,
        **({"stage_seconds": dict(stage_seconds)} if stage_seconds is not None else {}),
        "evaluation": {name: read(f"eval_{name}") for name in evaluated},
        "training": {name: read(f"train_{name}") for name in layout.GENERATOR_VARIANTS},
        "sampling": {name: read(f"sample_{name}") for name in layout.GENERATOR_VARIANTS},
        "graphs": read("graphs"),
    }, run.name)


def warm_start_names(records: Sequence[Mapping[str, Any]], run: Experiment,
                     scale: Mapping[str, Any]) -> list[str]:
    """Finished experiments whose upstream outputs ``run`` can re-use: same base seed, same scale.

    Their ``dvc.lock`` lets the runner check out their tokenizer, graphs and base model from the
    cache instead of training them again (``train_base``'s persistent checkpoints keep the
    run-cache from restoring it). DVC still compares every dependency hash in that lock with the
    workspace, so a stage whose code or params changed since is re-run, never served stale: the
    choice only decides how much is re-used. A scale key a record does not set is not held against
    it (records from before the preset set only the grid's keys and ``sample.per_class``).
    """
    return [record["name"] for record in records
            if record["overrides"].get("seed") == run.base_seed
            and all(record["overrides"].get(key, value) == value for key, value in scale.items())]


def load_records(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every record in ``results_dir``, sorted by name, each checked (:mod:`study.records`)."""
    return [read_record(path) for path in sorted(Path(results_dir).glob("*.json"))]
