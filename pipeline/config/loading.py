"""``params.yaml`` in, a validated :class:`Config` out; presets merged onto it; the command line
``python -m pipeline.config check | show | apply PRESET``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.config.messages import ConfigError, error_message
from pipeline.config.schema import Config

DEFAULT_PARAMS = Path("params.yaml")


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
    raw = {} if raw is None else raw
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {error_message(exc, Config, raw)}") from None


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
