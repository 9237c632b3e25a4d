"""JSON encoding of the pure core's frozen dataclasses for table values and internal topics.

Driven by the dataclasses' type hints, so a field added to the core is stored without a
change here: enums by value, tuples as lists, nested dataclasses as objects, optionals as null.

Every payment is decoded from and encoded to its table value several times per input, so the
walk over the type hints is done once per type: ``to_plain`` keeps one encoder per runtime
type, ``from_plain`` one decoder per hint (py-spy, 2026-11-27: the interpreted walk, with its
``get_origin``/``get_args``/``dataclasses.fields`` on every value, was about 8 % of a worker).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar, Union, get_args, get_origin

T = TypeVar("T")

Encoder = Callable[[Any], Any]
Decoder = Callable[[Any], Any]


def _identity(value: Any) -> Any:
    return value


def _enum_value(value: enum.Enum) -> Any:
    return value.value


def _sequence_to_plain(value: list[Any] | tuple[Any, ...]) -> list[Any]:
    return [to_plain(v) for v in value]


def _dict_to_plain(value: dict[Any, Any]) -> dict[Any, Any]:
    return {k: to_plain(v) for k, v in value.items()}


def _dataclass_encoder(cls: type) -> Encoder:
    names = tuple(f.name for f in dataclasses.fields(cls))

    def encode_dataclass(obj: Any) -> dict[str, Any]:
        return {name: to_plain(getattr(obj, name)) for name in names}

    return encode_dataclass


def _encoder_for(cls: type) -> Encoder:
    # The same order of checks as a plain walk: dataclass, enum, list/tuple, dict, anything else.
    if dataclasses.is_dataclass(cls) and not issubclass(cls, type):
        return _dataclass_encoder(cls)
    if issubclass(cls, enum.Enum):
        return _enum_value
    if issubclass(cls, (list, tuple)):
        return _sequence_to_plain
    if issubclass(cls, dict):
        return _dict_to_plain
    return _identity


_ENCODERS: dict[type, Encoder] = {str: _identity, int: _identity, bool: _identity, float: _identity,
                                  type(None): _identity}


def to_plain(obj: Any) -> Any:
    """``obj`` as JSON-ready values (dataclasses as dicts, enums by value, tuples as lists)."""
    cls = type(obj)
    encoder = _ENCODERS.get(cls)
    if encoder is None:
        encoder = _ENCODERS[cls] = _encoder_for(cls)
    return encoder(obj)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional(inner: Decoder) -> Decoder:
    def decode_optional(value: Any) -> Any:
        return None if value is None else inner(value)

    return decode_optional


def _union_decoder(hint: Any, options: list[Any]) -> Decoder:
    by_name = {getattr(opt, "__name__", None): opt for opt in options}
    scalars = [opt for opt in options if opt in (str, int, bool)]

    def decode_union(value: Any) -> Any:
        if value is None:
            return None
        # A union of dataclasses is stored with its type name.
        if isinstance(value, dict) and "__type__" in value and value["__type__"] in by_name:
            return from_plain(by_name[value["__type__"]], {k: v for k, v in value.items() if k != "__type__"})
        for opt in scalars:
            if isinstance(value, opt):
                return value
        raise TypeError(f"cannot decode {value!r} as {hint}")

    return decode_union


def _dataclass_decoder(cls: type) -> Decoder:
    hints = _hints(cls)
    plan = tuple((f.name, _decoder(hints[f.name])) for f in dataclasses.fields(cls))

    def decode_dataclass(value: Any) -> Any:
        if value is None:
            return None
        return cls(**{name: decode(value[name]) for name, decode in plan if name in value})

    return decode_dataclass


def _compile(hint: Any) -> Decoder:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if len(options) == 1:
            return _optional(_decoder(options[0]))
        return _union_decoder(hint, options)
    if origin is tuple:
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            item = _decoder(args[0])
            return _optional(lambda value: tuple(item(v) for v in value))
        items = tuple(_decoder(a) for a in args)
        return _optional(lambda value: tuple(d(v) for d, v in zip(items, value, strict=True)))
    if origin is list:
        element = _decoder(get_args(hint)[0])
        return _optional(lambda value: [element(v) for v in value])
    if origin is dict:
        mapped = _decoder(get_args(hint)[1])
        return _optional(lambda value: {k: mapped(v) for k, v in value.items()})
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _optional(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _dataclass_decoder(hint)
    return _identity


_DECODERS: dict[Any, Decoder] = {}
_BUILDING: dict[Any, Decoder] = {}


def _decoder(hint: Any) -> Decoder:
    decoder = _DECODERS.get(hint)
    if decoder is not None:
        return decoder
    building = _BUILDING.get(hint)
    if building is not None:  # a recursive type: decode through the table once it is built
        return lambda value: _DECODERS[hint](value)
    _BUILDING[hint] = _identity
    try:
        decoder = _DECODERS[hint] = _compile(hint)
    finally:
        del _BUILDING[hint]
    return decoder


def from_plain(hint: Any, value: Any) -> Any:
    """``value`` (as ``to_plain`` made it) decoded back to ``hint``'s type."""
    if value is None:
        return None
    try:
        decoder = _DECODERS.get(hint) or _decoder(hint)
    except TypeError:  # an unhashable hint: never one of the core's own, decode it without a cache
        return _compile(hint)(value)
    return decoder(value)


def encode(obj: Any) -> bytes:
    return json.dumps(to_plain(obj), separators=(",", ":"), sort_keys=True).encode()


def decode(cls: type[T], data: bytes | str | dict[str, Any]) -> T:
    value = json.loads(data) if isinstance(data, (bytes, str)) else data
    result: T = from_plain(cls, value)
    return result
