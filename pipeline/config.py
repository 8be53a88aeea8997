"""The one typed, validated configuration of the pipeline, loaded from ``params.yaml``.

DVC accepts any key in ``params.yaml`` (and ``dvc exp run -S`` with ``+key`` adds new ones), so a
typo such as ``fusion.wieght`` would otherwise be ignored silently. Every stage therefore loads the
*whole* file through :func:`load_config` before doing any work; an unknown key, a wrong type or an
out-of-range value raises :class:`ConfigError` with the dotted key, the allowed values and, for
typos, the closest valid key.

The schema is a tree of frozen dataclasses. Field constraints live in ``metadata``:
``ge``/``gt``/``le``/``lt`` bound numbers, ``Literal`` types list the allowed strings.

Presets (``configs/*.yaml``) are partial overlays merged onto ``params.yaml`` by
``python -m pipeline.config apply PRESET``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import itertools
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """A problem with ``params.yaml``: the message names the key and what is allowed."""


def _bounded(default: Any, **bounds: float) -> Any:
    return field(default=default, metadata=bounds)


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    # Which image source feeds the pipeline.
    source: Literal["fashion-mnist", "imagefolder", "synthetic"] = "fashion-mnist"
    # fashion-mnist: the folder holding the four IDX .gz files (Debian's dataset-fashion-mnist).
    fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist"
    # imagefolder: train images as root/<class>/<image>; val likewise, or held out from root.
    root: str | None = None
    val_root: str | None = None
    val_fraction: float = _bounded(0.02, gt=0.0, lt=1.0)
    # Side of the square images the tokenizer sees (fashion-mnist is natively 28).
    image_size: int = _bounded(28, ge=8)
    # imagefolder: fail when more than this fraction of files cannot be used.
    max_bad_fraction: float = _bounded(0.01, ge=0.0, le=1.0)
    # Deterministic caps on the split sizes (null: everything). Synthetic data needs them set.
    max_train: int | None = _bounded(None, ge=1)
    max_val: int | None = _bounded(None, ge=1)
    # synthetic: number of classes and image channels.
    synthetic_classes: int = _bounded(10, ge=2)
    synthetic_channels: Literal[1, 3] = 1
    # Optional file mapping class folder names (e.g. WordNet ids) to readable names.
    class_names: str | None = None
    # Worker processes for decoding images (imagefolder).
    workers: int = _bounded(2, ge=0)


@dataclass(frozen=True)
class TokenizerConfig:
    # train: fit a VQ-VAE on the train split; pretrained: load the MaskGIT VQGAN checkpoint.
    kind: Literal["train", "pretrained"] = "train"
    checkpoint: str | None = None
    codebook_size: int = _bounded(512, ge=2)
    code_dim: int = _bounded(32, ge=1)
    hidden: int = _bounded(64, ge=8)
    # Number of stride-2 stages: the token grid is image_size / 2**downsamples.
    downsamples: int = _bounded(2, ge=1, le=6)
    res_blocks: int = _bounded(1, ge=0)
    commitment: float = _bounded(0.25, ge=0.0)
    ema_decay: float = _bounded(0.99, gt=0.0, lt=1.0)
    # A code whose EMA usage falls below this many assignments per batch is restarted.
    dead_threshold: float = _bounded(1.0, ge=0.0)
    steps: int = _bounded(600, ge=1)
    batch_size: int = _bounded(128, ge=1)
    lr: float = _bounded(2e-3, gt=0.0)
    # The tokenizer has its own seed: changing the top-level `seed` (generative model) must not
    # re-train it and re-tokenise the data.
    seed: int = _bounded(0, ge=0)
    # Val images scored for recon_mse / psnr / codebook usage.
    eval_images: int = _bounded(10000, ge=1)
    num_recon_examples: int = _bounded(16, ge=1)


@dataclass(frozen=True)
class TokenizeConfig:
    shard_size: int = _bounded(10000, ge=1)
    batch_size: int = _bounded(500, ge=1)
    # Also tokenise each horizontally flipped train image (AutoNAT / KA-MIG on ImageNet).
    flip_augment: bool = False


@dataclass(frozen=True)
class CooccurrenceConfig:
    neighbourhood: Literal[4, 8] = 8
    top_ratio: float = _bounded(0.05, gt=0.0, le=1.0)


@dataclass(frozen=True)
class SimilarityConfig:
    k: int = _bounded(2, ge=1)
    candidates: int = _bounded(32, ge=1)
    alpha: float = _bounded(5.0, gt=0.0)
    # flat is exact; ivf / hnsw are approximate options for vocabularies of 16k and more.
    index: Literal["flat", "ivf", "hnsw"] = "flat"


@dataclass(frozen=True)
class GraphsConfig:
    max_images: int | None = _bounded(None, ge=1)
    device: Literal["cpu", "cuda"] = "cpu"
    num_examples: int = _bounded(6, ge=0)
    # Bound on the (label, position, token) groups polars aggregates per pass over the shards
    # (about 65 bytes each); more possible groups split the labels into several passes. Memory
    # only: the output bytes do not depend on it.
    positions_groups_per_pass: int = _bounded(16777216, ge=1)
    cooccurrence: CooccurrenceConfig = field(default_factory=CooccurrenceConfig)
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)


@dataclass(frozen=True)
class ModelConfig:
    dim: int = _bounded(128, ge=8)
    depth: int = _bounded(4, ge=1)
    heads: int = _bounded(4, ge=1)
    mlp_ratio: float = _bounded(4.0, gt=0.0)
    # 0 by default: on the small CPU preset dropout costs ~25% step time and the model underfits.
    dropout: float = _bounded(0.0, ge=0.0, lt=1.0)
    # Output head tied to the token embeddings (MaskGIT/BERT style).
    tie_head: bool = True


@dataclass(frozen=True)
class TrainConfig:
    steps: int = _bounded(2500, ge=1)
    # The global batch (split over processes and grad_accum steps).
    batch_size: int = _bounded(64, ge=1)
    grad_accum: int = _bounded(1, ge=1)
    lr: float = _bounded(1e-3, gt=0.0)
    weight_decay: float = _bounded(0.05, ge=0.0)
    warmup_steps: int = _bounded(100, ge=0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float = _bounded(1.0, gt=0.0)
    mask_schedule: Literal["cosine", "beta"] = "cosine"
    mask_beta: tuple[float, float] = (12.0, 3.0)
    label_smoothing: float = _bounded(0.1, ge=0.0, lt=1.0)
    p_uncond: float = _bounded(0.1, ge=0.0, le=1.0)
    ema_decay: float = _bounded(0.999, ge=0.0, lt=1.0)
    # auto: bf16 on CUDA GPUs that support it, no mixed precision on CPU.
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    checkpoint_every: int = _bounded(250, ge=1)
    log_every: int = _bounded(25, ge=1)
    # Validation of the final EMA weights on at most this many val images.
    val_images: int = _bounded(2000, ge=1)


@dataclass(frozen=True)
class KamigConfig:
    # Fine-tuning steps of finetune@control and finetune@kamig (the paper uses 1500).
    steps: int = _bounded(500, ge=1)
    lr: float = _bounded(1e-3, gt=0.0)
    warmup_steps: int = _bounded(30, ge=0)
    # true (paper): train the adapter and the output head; false: train everything.
    freeze_backbone: bool = True


GraphName = Literal["cooccurrence", "similarity", "incompatibility"]


@dataclass(frozen=True)
class FusionConfig:
    weight: float = _bounded(1.0, ge=0.0)
    graphs: tuple[GraphName, ...] = ("cooccurrence", "similarity", "incompatibility")
    # all: the negative term at every position (official code); masked: masked positions only (paper).
    negative_at: Literal["all", "masked"] = "all"
    gcn_layers: int = _bounded(3, ge=1)
    # A (class, position, token) seen fewer times than this in the train tokens is incompatible;
    # 1 is the paper's "never observed". The graphs stage stores raw counts, so changing this
    # re-runs only the fine-tunes.
    min_count: int = _bounded(1, ge=1)


@dataclass(frozen=True)
class SampleConfig:
    steps: int = _bounded(8, ge=1)
    schedule: Literal["cosine", "arccos", "linear"] = "cosine"
    per_class: int = _bounded(100, ge=1)
    batch_size: int = _bounded(500, ge=1)
    temperature: float = _bounded(1.0, gt=0.0)
    choice_temperature: float = _bounded(4.5, ge=0.0)
    cfg: float = _bounded(1.0, ge=0.0)
    cfg_schedule: Literal["constant", "linear"] = "constant"
    # Optional per-step arrays (AutoNAT style) replacing the schedule: keys mask_ratio,
    # temperature, choice_temperature, cfg, each a list of `steps` numbers.
    strategy: dict[str, list[float]] | None = None
    # Columns of the PNG grid (one row per class).
    grid_columns: int = _bounded(10, ge=1)
    # At most this many class rows in the grid (evenly spaced class ids; ImageNet has 1000).
    grid_classes: int = _bounded(10, ge=1)


@dataclass(frozen=True)
class ClassifierConfig:
    # 1500 x 128 (3.2 epochs of Fashion-MNIST) at lr 4e-3 one-cycle: ~92% val accuracy.
    steps: int = _bounded(1500, ge=1)
    batch_size: int = _bounded(128, ge=1)
    lr: float = _bounded(4e-3, gt=0.0)
    feature_dim: int = _bounded(128, ge=2)
    # Channels of the first conv block (doubled per stride-2 block).
    width: int = _bounded(32, ge=4)
    # Its own seed, not the top-level one: experiments that change `seed` never retrain it.
    seed: int = _bounded(0, ge=0)


@dataclass(frozen=True)
class EvalConfig:
    # Standard InceptionV3 FID / IS (a few images/s on a 2-core CPU: off there by default).
    inception: bool = False
    batch_size: int = _bounded(250, ge=1)
    pr_k: int = _bounded(3, ge=1)
    # Real train images scored by evaluate_real (the floor); null: as many as one variant samples.
    real_samples: int | None = _bounded(None, ge=1)
    # Reference statistics: the real split, or an ADM / pytorch-fid npz (mu, sigma) for Inception.
    reference_split: Literal["val", "train"] = "val"
    reference_npz: str | None = None
    # At most this many reference images (a deterministic subset; null: the whole split).
    reference_max: int | None = _bounded(None, ge=1)
    # Resize to 299 for Inception: tensorflow (the TF graph's bilinear, matches ADM's reference
    # batches) or clean (clean-fid's antialiased bicubic).
    inception_resize: Literal["tensorflow", "clean"] = "tensorflow"
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)


@dataclass(frozen=True)
class Config:
    seed: int = _bounded(0, ge=0)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    graphs: GraphsConfig = field(default_factory=GraphsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    kamig: KamigConfig = field(default_factory=KamigConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)


# --------------------------------------------------------------------------------------------
# Cross-field checks: things a single field's type cannot express.
# --------------------------------------------------------------------------------------------


def _check_consistency(cfg: Config) -> None:
    if cfg.model.dim % cfg.model.heads:
        raise ConfigError(
            f"model.dim ({cfg.model.dim}) must be divisible by model.heads ({cfg.model.heads})"
        )
    if cfg.data.source == "imagefolder" and not cfg.data.root:
        raise ConfigError("data.root must name the image folder when data.source is 'imagefolder'")
    if cfg.data.source == "synthetic" and (cfg.data.max_train is None or cfg.data.max_val is None):
        raise ConfigError("data.source 'synthetic' needs data.max_train and data.max_val (dataset sizes)")
    if cfg.tokenizer.kind == "pretrained" and not cfg.tokenizer.checkpoint:
        raise ConfigError("tokenizer.checkpoint must be set when tokenizer.kind is 'pretrained'")
    if cfg.tokenizer.kind == "train" and cfg.data.image_size % (2**cfg.tokenizer.downsamples):
        raise ConfigError(
            f"data.image_size ({cfg.data.image_size}) must be divisible by "
            f"2**tokenizer.downsamples ({2**cfg.tokenizer.downsamples})"
        )
    if len(set(cfg.fusion.graphs)) != len(cfg.fusion.graphs):
        raise ConfigError(f"fusion.graphs lists a graph twice: {list(cfg.fusion.graphs)}")
    a, b = cfg.train.mask_beta
    if a <= 0 or b <= 0:
        raise ConfigError(f"train.mask_beta must be two positive numbers (a, b), got {[a, b]}")
    strategy = cfg.sample.strategy
    if strategy is not None:
        allowed = {"mask_ratio", "temperature", "choice_temperature", "cfg"}
        unknown = set(strategy) - allowed
        if unknown:
            raise ConfigError(
                f"sample.strategy has unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
            )
        for name, values in strategy.items():
            if len(values) != cfg.sample.steps:
                raise ConfigError(
                    f"sample.strategy.{name} has {len(values)} values; sample.steps is {cfg.sample.steps}"
                )
        ratios = strategy.get("mask_ratio")
        if ratios is not None:
            if any(not 0.0 <= r <= 1.0 for r in ratios) or any(
                later > earlier for earlier, later in itertools.pairwise(ratios)
            ):
                raise ConfigError(
                    "sample.strategy.mask_ratio must be non-increasing values in [0, 1], "
                    f"got {ratios}"
                )
            if ratios[-1] != 0.0:
                raise ConfigError("sample.strategy.mask_ratio must end at 0 (nothing left masked)")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_config(path: str | Path = DEFAULT_PARAMS) -> Config:
    """Read ``params.yaml`` and return the validated :class:`Config`, or raise :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found (run from the repository root)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return config_from_dict(raw, source=str(path))


def config_from_dict(raw: Mapping[str, Any], source: str = "params") -> Config:
    try:
        cfg = _build(Config, raw, prefix="")
        _check_consistency(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return cfg


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"'{where}' must be a mapping of keys, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise ConfigError(_unknown_key_message(prefix, str(key), list(fields)))
    values = {}
    for name, fld in fields.items():
        if name in raw:
            values[name] = _coerce(hints[name], raw[name], f"{prefix}{name}", fld.metadata)
    return cls(**values)


def _unknown_key_message(prefix: str, key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    section = f"'{prefix.rstrip('.')}'" if prefix else "the top level"
    return f"unknown key '{prefix}{key}'{hint}. Allowed keys in {section}: {', '.join(allowed)}"


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin in (tuple, list):
        args = typing.get_args(tp)
        inner = _describe(args[0]) if args else "values"
        return f"a list of {inner}"
    if origin is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, key: str, bounds: Mapping[str, float]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, key, bounds)
            except ConfigError as exc:
                errors.append(str(exc))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        raise ConfigError(f"'{key}' must be {_describe(tp)}, got {value!r}")

    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise ConfigError(f"'{key}' must be {_describe(tp)}, got {value!r}")

    if dataclasses.is_dataclass(tp):
        return _build(tp, value, prefix=f"{key}.")

    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}' must be {_describe(tp)}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]", {}) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"'{key}' must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, f"{key}[{i}]", {}) for i, (a, v) in enumerate(zip(args, value)))

    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}' must be {_describe(tp)}, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]", {}) for i, v in enumerate(value)]

    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{key}' must be a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}", {}) for k, v in value.items()}

    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return _check_bounds(value, key, bounds)
        raise ConfigError(f"'{key}' must be an integer{_bounds_text(bounds)}, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _check_bounds(float(value), key, bounds)
        raise ConfigError(f"'{key}' must be a number{_bounds_text(bounds)}, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"'{key}' must be a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # a schema bug, not a user error


_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _bounds_text(bounds: Mapping[str, float]) -> str:
    parts = [f"{_BOUND_TEXT[k]} {v}" for k, v in bounds.items() if k in _BOUND_TEXT]
    return " " + " and ".join(parts) if parts else ""


def _check_bounds(value: float, key: str, bounds: Mapping[str, float]) -> Any:
    ok = (
        ("ge" not in bounds or value >= bounds["ge"])
        and ("gt" not in bounds or value > bounds["gt"])
        and ("le" not in bounds or value <= bounds["le"])
        and ("lt" not in bounds or value < bounds["lt"])
    )
    if not ok:
        raise ConfigError(f"'{key}' must be{_bounds_text(bounds)}, got {value!r}")
    return value


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------------------------
# Presets: partial overlays merged onto params.yaml
# --------------------------------------------------------------------------------------------


def merge_overlay(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``overlay`` onto ``base`` (mappings merge, everything else replaces)."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_overlay(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_preset(preset: str | Path, params: str | Path = DEFAULT_PARAMS) -> Config:
    """Merge a preset overlay into ``params``, validate the result, then write it."""
    params = Path(params)
    base = yaml.safe_load(params.read_text()) or {}
    overlay = yaml.safe_load(Path(preset).read_text()) or {}
    merged = merge_overlay(base, overlay)
    cfg = config_from_dict(merged, source=f"{params} + {preset}")
    params.write_text(yaml.safe_dump(merged, sort_keys=False))
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.config", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate params.yaml and exit")
    check.add_argument("params", nargs="?", default=str(DEFAULT_PARAMS))
    show = sub.add_parser("show", help="print the full resolved config, defaults included")
    show.add_argument("params", nargs="?", default=str(DEFAULT_PARAMS))
    apply = sub.add_parser("apply", help="merge a preset overlay (configs/*.yaml) into params.yaml")
    apply.add_argument("preset")
    apply.add_argument("--params", default=str(DEFAULT_PARAMS))
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            load_config(args.params)
            print(f"{args.params}: ok")
        elif args.command == "show":
            print(yaml.safe_dump(load_config(args.params).to_dict(), sort_keys=False), end="")
        else:
            apply_preset(args.preset, args.params)
            print(f"applied {args.preset} to {args.params}")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
