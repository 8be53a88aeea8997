"""Draw images from any generator directory, trained, fine-tuned or imported, outside the DAG.

Usage::

    python -m pipeline.generate models/kamig --class 0 --per-class 8 -o grid.png
    python -m pipeline.generate models/kamig --class 3 --class "Ankle boot" --out-dir samples/
    python -m pipeline.generate models/kamig --strategy configs/autonat_l_t8.yaml --cfg 2.0 -o grid.png

The sampling settings start from ``params.yaml``'s ``sample`` section (``--params``; the schema's
defaults when there is no such file), then ``--strategy FILE`` (a preset with a ``sample`` section,
such as ``configs/autonat_l_t8.yaml``), then the flags. Samples come in batches of ``--batch-size``
(default ``sample.batch_size``), batch ``b`` drawing from the generator of (``--seed``, b): with the
sample stage's settings, every class and ``sample.per_class`` samples each, the images are exactly
the decoded ``data/samples/<variant>`` (``tests/test_generate.py``).

The tokenizer (``models/tokenizer``, or ``--tokenizer DIR``) must be the one the model was trained
on: its fingerprint is checked against the one recorded with the model. Class names come from the
prepare stage's ``data/prepared/classes.json`` when it exists; classes are given by index or name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
import yaml
from PIL import Image

from pipeline import layout
from pipeline.config import (
    DEFAULT_PARAMS,
    ConfigError,
    SampleConfig,
    SamplingPrecision,
    TokenDraw,
    load_config,
    replace,
)
from pipeline.errors import DataSourceError, PipelineError
from pipeline.images import render_grid, save_png
from pipeline.model.generators import load_generator
from pipeline.sampling.generate import decode_images, generate_tokens, model_logits
from pipeline.shards import TokenMeta
from pipeline.tokenizer.registry import load_tokenizer


def sample_settings(params: Path, strategy: Path | None, overrides: dict[str, Any]) -> SampleConfig:
    """``params``' sample section (defaults without the file), a preset's, then ``overrides``."""
    settings = load_config(params).sample if params.is_file() else SampleConfig()
    if strategy is not None:
        if not strategy.is_file():
            raise PipelineError(f"strategy file {strategy} not found")
        preset = (yaml.safe_load(strategy.read_text()) or {}).get("sample")
        if not isinstance(preset, dict):
            raise PipelineError(f"{strategy} has no 'sample' section (see configs/autonat_l_t8.yaml)")
        settings = replace(settings, **preset)
    try:
        return replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        hint = "; --steps must match the strategy" if settings.strategy is not None else ""
        raise PipelineError(f"{exc}{hint}") from None


def class_names(meta: TokenMeta) -> list[str]:
    """The names the model recorded with its tokens; else the prepare stage's, when it left as many;
    else the class ids."""
    from pipeline.data import read_class_names

    if meta.class_names:
        return list(meta.class_names)
    try:
        names = read_class_names()
    except DataSourceError:
        return [str(i) for i in range(meta.num_classes)]
    return names if len(names) == meta.num_classes else [str(i) for i in range(meta.num_classes)]


def resolve_class(value: str, names: list[str]) -> int:
    """A class index from ``value``: an index, or a name (case-insensitive)."""
    if value.isdigit() and int(value) < len(names):
        return int(value)
    lowered = [name.lower() for name in names]
    if value.lower() in lowered:
        return lowered.index(value.lower())
    shown = ", ".join(f"{i} {name}" if name != str(i) else name for i, name in enumerate(names[:20]))
    more = f", ... ({len(names)} in all)" if len(names) > 20 else ""
    raise PipelineError(f"no class {value!r}: give an index below {len(names)} or a name ({shown}{more})")


def checked_tokenizer(directory: Path, recorded: str, device: torch.device) -> torch.nn.Module:
    """The tokenizer in ``directory``, which must be the one the model's tokens came from."""
    if not (directory / "config.json").is_file():
        raise PipelineError(f"no tokenizer at {directory}: run `dvc repro tokenizer` or pass --tokenizer")
    return load_tokenizer(directory, device, expected_fingerprint=recorded, hint=(
        "this model was trained on the other one; pass --tokenizer with the right one (an imported model "
        "records its tokens' fingerprint only when converted with --tokens-meta)"))


def draw(model: torch.nn.Module, tokenizer: torch.nn.Module, labels: torch.Tensor, settings: SampleConfig,
         seed: int, device: torch.device) -> np.ndarray:
    """uint8 images (N, C, H, W), one per label: the library call behind the command."""
    model.precompute()
    samples = generate_tokens(model_logits(model, device, settings.mixed_precision), labels,
                              seq_len=model.seq_len, mask_id=model.mask_id, null_class=model.null_class,
                              sample_cfg=settings, seed=seed, device=device, desc="generating")
    return decode_images(tokenizer, samples.tokens, device, settings.batch_size)


def write_images(images: np.ndarray, labels: list[int], names: list[str], per_class: int,
                 output: Path | None, out_dir: Path | None) -> list[Path]:
    """A grid (one row per requested class) and/or one PNG per image; the paths written."""
    written = []
    if output is not None:
        rows = images.reshape(len(images) // per_class, per_class, *images.shape[1:])
        save_png(output, render_grid(rows, [names[c] for c in labels[::per_class]]))
        written.append(output)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            pixels = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
            path = out_dir / f"{index:05d}-class{label}.png"
            save_png(path, Image.fromarray(pixels))
            written.append(path)
    return written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.generate",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path,
                        help="a generator directory (models/<variant>, or an import)")
    parser.add_argument("-o", "--output", type=Path, help="a PNG grid, one row per class")
    parser.add_argument("--out-dir", type=Path, help="one PNG per image, named <index>-class<c>.png")
    parser.add_argument("--class", dest="classes", action="append", default=[], metavar="CLASS",
                        help="a class index or name (repeatable; default: every class)")
    parser.add_argument("--per-class", type=int, default=8, help="images per class (default 8)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default sample.seed)")
    parser.add_argument("--steps", type=int, help="decoding steps (default sample.steps)")
    parser.add_argument("--cfg", type=float, help="classifier-free guidance scale (default sample.cfg)")
    parser.add_argument("--temperature", type=float, help="sampling temperature (default sample.temperature)")
    parser.add_argument("--strategy", type=Path,
                        help="a preset with a sample section, e.g. configs/autonat_l_t8.yaml")
    parser.add_argument("--tokenizer", type=Path, default=layout.TOKENIZER_DIR, help="tokenizer directory")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS,
                        help="where the sample defaults come from (params.yaml)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, help="images decoded at once (default sample.batch_size)")
    parser.add_argument("--mixed-precision", choices=get_args(SamplingPrecision),
                        help="bf16: faster on CPUs with native bf16, other samples "
                             "(default sample.mixed_precision)")
    parser.add_argument("--token-draw", choices=get_args(TokenDraw),
                        help="inverse_cdf: faster on a CPU, the same distribution, other samples "
                             "(default sample.token_draw)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.output is None and args.out_dir is None:
        parser.error("give -o GRID.png, --out-dir DIR, or both")
    device = torch.device(args.device)
    try:
        settings = sample_settings(args.params, args.strategy, {
            "steps": args.steps, "cfg": args.cfg, "temperature": args.temperature,
            "batch_size": args.batch_size, "per_class": args.per_class,
            "mixed_precision": args.mixed_precision, "token_draw": args.token_draw})
        if not (args.model_dir / "config.json").is_file():
            raise PipelineError(f"{args.model_dir} is not a generator directory (no config.json): "
                                "give models/<variant> or a directory written by pipeline.model.convert")
        model = load_generator(args.model_dir, device)
        tokenizer = checked_tokenizer(args.tokenizer, model.token_meta.tokenizer_fingerprint, device)
        names = class_names(model.token_meta)
        classes = [resolve_class(c, names) for c in args.classes] or list(range(model.num_classes))
        labels = torch.tensor(classes).repeat_interleave(settings.per_class)
        seed = settings.seed if args.seed is None else args.seed
        images = draw(model, tokenizer, labels, settings, seed, device)
        written = write_images(images, labels.tolist(), names, settings.per_class, args.output, args.out_dir)
    except (PipelineError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(images)} images of {len(classes)} class(es) from {args.model_dir}: "
          f"{written[0] if args.output else args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
