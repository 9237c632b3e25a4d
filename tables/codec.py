"""JSON encoding of the pure core's frozen dataclasses for table values and internal topics.

Driven by the dataclasses' type hints, so a field added to the core is stored without a
change here: enums by value, tuples as lists, nested dataclasses as objects, optionals as null.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from functools import cache
from typing import Any, TypeVar, Union, get_args, get_origin

T = TypeVar("T")


def to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_plain(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if len(options) == 1:
            return from_plain(options[0], value)
        # A union of dataclasses is stored with its type name.
        if isinstance(value, dict) and "__type__" in value:
            for opt in options:
                if getattr(opt, "__name__", None) == value["__type__"]:
                    return from_plain(opt, {k: v for k, v in value.items() if k != "__type__"})
        for opt in options:
            if opt in (str, int, bool) and isinstance(value, opt):
                return value
        raise TypeError(f"cannot decode {value!r} as {hint}")
    if origin is tuple:
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_plain(args[0], v) for v in value)
        return tuple(from_plain(a, v) for a, v in zip(args, value, strict=True))
    if origin is list:
        return [from_plain(get_args(hint)[0], v) for v in value]
    if origin is dict:
        _, vt = get_args(hint)
        return {k: from_plain(vt, v) for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = _hints(hint)
        kwargs = {f.name: from_plain(hints[f.name], value[f.name]) for f in dataclasses.fields(hint) if f.name in value}
        return hint(**kwargs)
    return value


def encode(obj: Any) -> bytes:
    return json.dumps(to_plain(obj), separators=(",", ":"), sort_keys=True).encode()


def decode(cls: type[T], data: bytes | str | dict[str, Any]) -> T:
    value = json.loads(data) if isinstance(data, (bytes, str)) else data
    result: T = from_plain(cls, value)
    return result
