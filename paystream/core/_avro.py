"""Shared plumbing: frozen dataclasses <-> the plain dicts fastavro/confluent read and write.

Field names of the dataclasses are the Avro field names. Supported field types: str, int,
bool, ``X | None``, StrEnum subclasses, ``tuple[str, ...]`` (Avro array of string) and
``tuple[tuple[str, str], ...]`` (Avro map of string, kept sorted so records stay hashable).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["RecordDecodeError", "decode_record", "encode_record", "split_union"]

T = TypeVar("T")

TYPE_KEY = "-type"  # fastavro's marker for the union branch of a dict record


class RecordDecodeError(ValueError):
    """An Avro record does not have the shape the contract says; dead-letter it."""


def encode_record(obj: object) -> dict[str, object]:
    """The dataclass as an Avro-ready dict (enums as symbols, tuples as lists/maps)."""
    cls: type = type(obj)
    plan = _ENCODE_PLANS.get(cls)
    if plan is None:
        plan = _encode_plan(cls)
    if plan is None:
        raise TypeError(f"not a dataclass instance: {type(obj).__name__}")
    out: dict[str, object] = {}
    for name, is_map in plan:
        value = getattr(obj, name)
        if isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, tuple):
            value = {str(k): str(v) for k, v in value} if is_map else list(value)
        out[name] = value
    return out


_ENCODE_PLANS: dict[type, tuple[tuple[str, bool], ...]] = {}
_DECODE_PLANS: dict[type, tuple[tuple[str, Any, bool], ...]] = {}


def _encode_plan(cls: type) -> tuple[tuple[str, bool], ...] | None:
    """(field name, whether it is a map field) per field of a dataclass; ``None`` for anything
    else. Once per class: ``dataclasses.fields`` and the hints cost more than the encoding."""
    if not dataclasses.is_dataclass(cls) or issubclass(cls, type):
        return None
    plan = _ENCODE_PLANS[cls] = tuple((field.name, _is_map_field(cls, field.name))
                                      for field in dataclasses.fields(cls))
    return plan


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # Resolving string annotations costs more than the rest of a decode: once per class.
    return typing.get_type_hints(cls)


def _is_map_field(cls: type, name: str) -> bool:
    hint = _hints(cls).get(name)
    return typing.get_origin(hint) is tuple and typing.get_args(hint)[:1] == (tuple[str, str],)


def decode_record(cls: type[T], data: object, where: str) -> T:
    """Build ``cls`` from a decoded Avro record, checking every field's type strictly."""
    if not isinstance(data, Mapping):
        raise RecordDecodeError(f"{where}: expected a record, got {type(data).__name__}")
    kwargs: dict[str, object] = {}
    plan = _DECODE_PLANS.get(cls)
    for name, hint, optional in plan if plan is not None else _decode_plan(cls):
        if name not in data:
            if optional:
                continue
            raise RecordDecodeError(f"{where}.{name}: missing")
        value = data[name]
        # The common cases first, without building the field's path (only an error names it).
        if (hint is str and type(value) is str) or (hint is int and type(value) is int):
            kwargs[name] = value
        else:
            kwargs[name] = _decode_value(hint, value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise RecordDecodeError(f"{where}: {exc}") from exc


def _decode_plan(cls: type) -> tuple[tuple[str, Any, bool], ...]:
    """(field name, type hint, whether it may be left out) per field of a dataclass, once per class."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"not a dataclass: {cls!r}")
    hints = _hints(cls)
    plan = _DECODE_PLANS[cls] = tuple(
        (field.name, hints[field.name],
         field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING)
        for field in dataclasses.fields(cls)
    )
    return plan


def _decode_value(hint: Any, value: object, where: str) -> object:
    origin = typing.get_origin(hint)
    if origin is types.UnionType or origin is typing.Union:
        options = typing.get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            raise RecordDecodeError(f"{where}: must not be null")
        (inner,) = [option for option in options if option is not type(None)]
        return _decode_value(inner, value, where)
    if origin is tuple:
        args = typing.get_args(hint)
        if args[:1] == (tuple[str, str],):
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise RecordDecodeError(f"{where}: expected a map of strings")
            return tuple(sorted(value.items()))
        if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
            raise RecordDecodeError(f"{where}: expected an array of strings")
        return tuple(value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise RecordDecodeError(f"{where}: not a {hint.__name__} symbol: {value!r}") from None
    if hint is bool:
        if not isinstance(value, bool):
            raise RecordDecodeError(f"{where}: expected a boolean")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecordDecodeError(f"{where}: expected an integer")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise RecordDecodeError(f"{where}: expected a string")
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return decode_record(hint, value, where)
    raise TypeError(f"{where}: unsupported field type {hint!r}")  # a bug in the dataclass


def split_union(value: object, namespace: str, where: str) -> tuple[str | None, Mapping[str, object]]:
    """The (short record name or None, record dict) of a decoded Avro union value.

    Accepts confluent/fastavro ``return_record_name=True`` tuples ``(name, record)`` and
    fastavro dicts carrying the branch in ``"-type"``. Names may be full or short.
    Returns ``None`` as the name when the record carries no branch marker.
    """
    name: object
    if isinstance(value, tuple):
        if len(value) != 2:
            raise RecordDecodeError(f"{where}: a union tuple must be (name, record)")
        name, record = value
    elif isinstance(value, Mapping):
        name, record = value.get(TYPE_KEY), {k: v for k, v in value.items() if k != TYPE_KEY}
    else:
        raise RecordDecodeError(f"{where}: expected a union record, got {type(value).__name__}")
    if not isinstance(record, Mapping):
        raise RecordDecodeError(f"{where}: union branch is not a record")
    if name is None:
        return None, record
    if not isinstance(name, str):
        raise RecordDecodeError(f"{where}: union branch name must be a string")
    prefix = namespace + "."
    if name.startswith(prefix):
        name = name[len(prefix):]
    elif "." in name:
        raise RecordDecodeError(f"{where}: record {name!r} is not in namespace {namespace}")
    return name, record
