"""YAML values in, error messages out: a thin layer over pydantic.

:func:`prepare_yaml_value` adapts a YAML value to a field's type before strict validation;
:func:`error_message` turns pydantic's first error into this package's message: the dotted key,
what is allowed and, for an unknown key, the closest valid one.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError


class ConfigError(ValueError):
    """A problem with ``params.yaml``: the message names the key and what is allowed."""


# --------------------------------------------------------------------------------------------
# YAML input and error messages: a thin layer over pydantic
# --------------------------------------------------------------------------------------------


def prepare_yaml_value(tp: Any, value: Any) -> Any:
    """Adapt a YAML value to a field's type before strict validation: lists become tuples for tuple
    fields, an empty section (null) takes its defaults, mapping keys become strings, and a Literal
    value must have the type of the allowed values (pydantic would take true or 1.0 for 1)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        tp = _optional_inner(tp)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is None and isinstance(tp, type) and issubclass(tp, BaseModel):
        return {} if value is None else value
    if origin is Literal and type(value) not in {type(a) for a in args}:
        raise PydanticCustomError("literal_error", "Input should be one of {expected}", {"expected": args})
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if origin is list and isinstance(value, tuple):
        return list(value)
    if origin is dict and isinstance(value, Mapping):
        return {str(k): prepare_yaml_value(args[1], v) for k, v in value.items()}
    return value


def _optional_inner(tp: Any) -> Any:
    options = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(options) != 1:
        raise TypeError(f"unsupported config type {tp!r}")  # a schema bug: only `X | None` is used
    return options[0]


def _unwrap(tp: Any) -> Any:
    return _optional_inner(tp) if typing.get_origin(tp) in (Union, types.UnionType) else tp


def _is_section(tp: Any) -> bool:
    return typing.get_origin(tp) is None and isinstance(tp, type) and issubclass(tp, BaseModel)


def _item_type(tp: Any, part: Any) -> Any:
    """The declared type one step below ``tp`` (a tuple/list index or a dict key)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is dict:
        return args[1]
    if typing.get_origin(tp) is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        return args[part] if isinstance(part, int) and part < len(args) else args[0]
    return args[0]


def _order(model: type[BaseModel], loc: tuple[Any, ...]) -> list[int]:
    """Sort key reproducing the order keys are checked in: a section's unknown keys first, then
    its fields in schema order, depth first."""
    rank: list[int] = []
    tp: Any = model
    for part in loc:
        tp = _unwrap(tp)
        if _is_section(tp):
            if part not in tp.model_fields:
                rank.append(0)
                break
            rank.append(list(tp.model_fields).index(part) + 1)
            tp = tp.model_fields[part].annotation
        else:
            rank.append(part if isinstance(part, int) else 0)
            tp = _item_type(tp, part)
    return rank


_MISSING = object()


def _child(value: Any, part: Any) -> Any:
    if isinstance(value, Mapping):
        return value.get(part, _MISSING)
    if isinstance(value, (list, tuple)) and isinstance(part, int) and 0 <= part < len(value):
        return value[part]
    if isinstance(value, BaseModel):
        return getattr(value, str(part), _MISSING)
    return _MISSING


_BOUND_TEXT = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _bounds(field: Any) -> dict[str, float]:
    """A field's ``Field(gt=, ge=, lt=, le=)`` bounds, lower bound first."""
    found = {}
    for meta in field.metadata:  # pydantic keeps each bound as an annotated_types Gt/Ge/Lt/Le
        for name in _BOUND_TEXT:
            if getattr(meta, name, None) is not None:
                found[name] = getattr(meta, name)
    return {name: found[name] for name in _BOUND_TEXT if name in found}


def _bounds_text(bounds: Mapping[str, float]) -> str:
    return "".join(f"{' and' if i else ''} {_BOUND_TEXT[k]} {v}" for i, (k, v) in enumerate(bounds.items()))


def _name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _expected(tp: Any, bounds: Mapping[str, float]) -> str:
    tp = _unwrap(tp)
    origin = typing.get_origin(tp)
    if _is_section(tp):
        return "a mapping of keys"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer" + _bounds_text(bounds)
    if tp is float:
        return "a number" + _bounds_text(bounds)
    if tp is str:
        return "a string"
    if origin in (tuple, list):
        return f"a list of {_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return _name(tp)


def _unknown_key_message(prefix: str, key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    section = f"'{prefix.rstrip('.')}'" if prefix else "the top level"
    return f"unknown key '{prefix}{key}'{hint}. Allowed keys in {section}: {', '.join(allowed)}"


def error_message(exc: ValidationError, model: type[BaseModel], raw: Any) -> str:
    """The message for the first of pydantic's errors, naming the dotted key and what is allowed."""
    error = min(exc.errors(include_url=False), key=lambda e: _order(model, e["loc"]))
    loc, kind = error["loc"], error["type"]
    if kind == "value_error":  # a cross-field check: its message is complete
        return str(error["ctx"]["error"])
    tp: Any = model
    key, value, bounds = "", raw, {}
    for i, part in enumerate(loc):
        tp = _unwrap(tp)
        if _is_section(tp):
            if part not in tp.model_fields:  # extra_forbidden, or a key that is not a string
                return _unknown_key_message(f"{key}." if key else "", str(part), list(tp.model_fields))
            field = tp.model_fields[part]
            tp, bounds, key = field.annotation, _bounds(field), f"{key}.{part}" if key else part
        else:
            if typing.get_origin(tp) is tuple and kind == "missing" and i == len(loc) - 1:
                break  # a fixed-length tuple given too few values
            item = f"[{part}]" if isinstance(part, int) else f".{part}"
            tp, bounds, key = _item_type(tp, part), {}, f"{key}{item}"
        child = _child(value, part)
        value = error["input"] if child is _MISSING else child
    tp = _unwrap(tp)
    args = typing.get_args(tp)
    fixed_tuple = typing.get_origin(tp) is tuple and args[-1] is not Ellipsis
    if fixed_tuple and kind in {"missing", "too_short", "too_long"}:
        return f"'{key}' must be a list of {len(args)} values, got {value!r}"
    if kind in _BOUND_ERRORS:
        shown = float(value) if tp is float else value
        return f"'{key}' must be{_bounds_text(bounds)}, got {shown!r}"
    return f"'{key or 'the top level'}' must be {_expected(tp, bounds)}, got {value!r}"


def plain(obj: Any) -> Any:
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    return obj
