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


# What pydantic's error type says was expected, in this package's words.
_EXPECTED = {"int_type": "an integer", "int_from_float": "an integer", "float_type": "a number",
             "bool_type": "true or false", "string_type": "a string", "tuple_type": "a list",
             "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping"}
_BOUND_TEXT = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[int], Any, bool, type[BaseModel], str]:
    """Along pydantic's error location: a sort key (a section's unknown keys first, then its fields
    in schema order), the last field met, whether the location goes on into its items, the last
    section and the dotted key."""
    rank: list[int] = []
    field, in_item, section, key, tp = None, False, model, "", model
    for part in loc:
        tp = _unwrap(tp)
        if _is_section(tp) and part in tp.model_fields:
            section, field, in_item = tp, tp.model_fields[part], False
            rank.append(list(tp.model_fields).index(part) + 1)
            key, tp = f"{key}.{part}" if key else part, field.annotation
            continue
        rank.append(part if isinstance(part, int) else 0)
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
        if _is_section(tp):  # an unknown key of this section
            section, field = tp, None
            break
        in_item = True
        tp = typing.get_args(tp)[0] if typing.get_args(tp) else tp
    return rank, field, in_item, section, key


def _bounds(field: Any) -> str:
    """`` > 0.0 and < 1.0``: a field's ``Field(gt=, ge=, lt=, le=)`` bounds, lower bound first."""
    found = {name: getattr(meta, name) for meta in (field.metadata if field else ())
             for name in _BOUND_TEXT if getattr(meta, name, None) is not None}
    return " and".join(f" {_BOUND_TEXT[name]} {found[name]}" for name in _BOUND_TEXT if name in found)


def error_message(exc: ValidationError, model: type[BaseModel], raw: Any) -> str:
    """The message for the first of pydantic's errors (in the order the keys are checked), naming
    the dotted key and what is allowed, or the closest valid key for an unknown one."""
    error = min(exc.errors(include_url=False), key=lambda e: _walk(model, e["loc"])[0])
    kind, value = error["type"], error.get("input")
    if kind == "value_error":  # a cross-field check: its message is complete
        return str(error["ctx"]["error"])
    _, field, in_item, section, key = _walk(model, error["loc"])
    if kind == "extra_forbidden":
        prefix, name = key.rpartition(".")[0], key.rpartition(".")[2]
        allowed = list(section.model_fields)
        close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
        hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else ""
        return (f"unknown key '{key}'{hint}. Allowed keys in {repr(prefix) if prefix else 'the top level'}: "
                f"{', '.join(allowed)}")
    annotation = _unwrap(field.annotation) if field else None
    if kind in {"missing", "too_short", "too_long"} and typing.get_origin(annotation) is tuple:
        length = len(typing.get_args(annotation))
        return f"'{key.partition('[')[0]}' must be a list of {length} values, got {list(value)!r}"
    if in_item:  # an item of a list: its own type, no bounds
        field, annotation = None, None
    if kind in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        return f"'{key}' must be{_bounds(field)}, got {float(value) if annotation is float else value!r}"
    if kind == "literal_error":
        expected = error["ctx"]["expected"]  # pydantic's "'a', 'b' or 'c'", or our own tuple
        shown = (expected.replace(" or ", ", ") if isinstance(expected, str)
                 else ", ".join(map(repr, expected)))
        return f"'{key}' must be one of {shown}, got {value!r}"
    expected = _EXPECTED.get(kind, error["msg"].removeprefix("Input should be ").lower())
    if expected == "a list" and typing.get_args(annotation):
        item = typing.get_args(annotation)[0]
        allowed = ", ".join(map(repr, typing.get_args(item)))
        expected = f"a list of {f'one of {allowed}' if typing.get_origin(item) is Literal else item.__name__}"
    return f"'{key or 'the top level'}' must be {expected}{_bounds(field)}, got {value!r}"


def plain(obj: Any) -> Any:
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    return obj
