"""The table codec, compiled per type, against a plain walk over the type hints (its reference).

Payment states are decoded and encoded several times per input, so ``tables.codec`` builds one
encoder per type and one decoder per hint; these tests hold it to exactly what a straightforward
walk over the same hints produces, for every shape the core stores.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin

import pytest

from paystream.core.machine import (
    CaptureMethod,
    DisputeInfo,
    DisputeStatus,
    FraudHold,
    FraudHoldStatus,
    GatewayOperation,
    OrphanCall,
    OrphanStatus,
    PaymentState,
    PaymentStatus,
    PendingOperation,
    RefundRecord,
    RefundStatus,
)
from tables import codec


def reference_to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: reference_to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [reference_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: reference_to_plain(v) for k, v in obj.items()}
    return obj


def reference_from_plain(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if len(options) == 1:
            return reference_from_plain(options[0], value)
        if isinstance(value, dict) and "__type__" in value:
            for opt in options:
                if getattr(opt, "__name__", None) == value["__type__"]:
                    return reference_from_plain(opt, {k: v for k, v in value.items() if k != "__type__"})
        for opt in options:
            if opt in (str, int, bool) and isinstance(value, opt):
                return value
        raise TypeError(f"cannot decode {value!r} as {hint}")
    if origin is tuple:
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(reference_from_plain(args[0], v) for v in value)
        return tuple(reference_from_plain(a, v) for a, v in zip(args, value, strict=True))
    if origin is list:
        return [reference_from_plain(get_args(hint)[0], v) for v in value]
    if origin is dict:
        return {k: reference_from_plain(get_args(hint)[1], v) for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(**{f.name: reference_from_plain(hints[f.name], value[f.name])
                       for f in dataclasses.fields(hint) if f.name in value})
    return value


def _state(**changes: Any) -> PaymentState:
    base = PaymentState(
        payment_id="pay_1", order_id="ord_1", customer_id="cus_1", status=PaymentStatus.PROCESSING,
        amount=1999, currency="EUR", capture_method=CaptureMethod.AUTOMATIC, gateway="simulated",
        gateway_ref=None, payment_method_token="tok_visa",
    )
    return dataclasses.replace(base, **changes)


STATES = [
    _state(),
    _state(status=PaymentStatus.PARTIALLY_REFUNDED, gateway_ref="ch_1", authorized=1999, captured=1999, refunded=500,
           refunds=(RefundRecord("re_1", 500, RefundStatus.SUCCEEDED, "k1", 1, "requested_by_customer"),
                    RefundRecord("re_2", 100, RefundStatus.PENDING, "k2", 2)),
           seen_notifications=("n1", "n2"), route=("simulated", "stripe")),
    _state(pending=PendingOperation(GatewayOperation.CAPTURE, 2, "pay_1:capture:2", "cmd_9", 1999,
                                    PaymentStatus.REQUIRES_CAPTURE, outcome_unknown=True)),
    _state(status=PaymentStatus.DISPUTED, dispute=DisputeInfo("dp_1", 1999, DisputeStatus.OPEN, "fraudulent")),
    _state(fraud=FraudHold(FraudHoldStatus.REVIEW, "cmd_1", 1_700_000_000_000),
           orphans=(OrphanCall("pay_1:authorize:1", "stripe", 1, OrphanStatus.RELEASING, "ch_9", 1999,
                               GatewayOperation.CANCEL, "pay_1:orphan:1", 1, 0),)),
]


@pytest.mark.parametrize("state", STATES, ids=lambda s: s.status.value)
def test_payment_states_encode_as_the_plain_walk_does_and_come_back_equal(state: PaymentState) -> None:
    plain = codec.to_plain(state)
    assert plain == reference_to_plain(state)
    assert json.loads(json.dumps(plain)) == plain  # JSON-ready: no enums, no tuples left
    stored = json.loads(json.dumps(plain))  # as a table value comes back (tuples are lists)
    assert codec.from_plain(PaymentState, stored) == reference_from_plain(PaymentState, stored) == state


def test_a_record_written_before_a_field_existed_decodes_with_its_default() -> None:
    plain = codec.to_plain(_state())
    del plain["orphans"], plain["fraud"], plain["route"]
    decoded = codec.from_plain(PaymentState, plain)
    assert decoded == reference_from_plain(PaymentState, plain)
    assert decoded.orphans == () and decoded.fraud is None and decoded.route == ()


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Leaf:
    name: str
    colour: Colour


@dataclass(frozen=True)
class Other:
    weight: int


@dataclass(frozen=True)
class Shapes:
    either: Leaf | Other | None
    scalar_or_leaf: str | int | Leaf
    pair: tuple[str, int]
    many: tuple[Leaf, ...]
    listed: list[Colour]
    mapped: dict[str, Leaf]
    anything: Any = None


def _shapes(either: Any, scalar: Any) -> Shapes:
    return Shapes(either=either, scalar_or_leaf=scalar, pair=("a", 1), many=(Leaf("x", Colour.RED),),
                  listed=[Colour.BLUE, Colour.RED], mapped={"k": Leaf("y", Colour.BLUE)}, anything={"free": [1, 2]})


@pytest.mark.parametrize("scalar", ["text", 7])
def test_every_hint_shape_matches_the_plain_walk(scalar: Any) -> None:
    value = _shapes(Leaf("z", Colour.RED), scalar)
    plain = json.loads(json.dumps(codec.to_plain(value)))
    assert codec.to_plain(value) == reference_to_plain(value)
    # A union of dataclasses is stored with its type name (by its writer), which picks the branch.
    plain["either"] = {"__type__": "Leaf", **plain["either"]}
    assert codec.from_plain(Shapes, plain) == reference_from_plain(Shapes, plain) == value
    plain["either"] = {"__type__": "Other", "weight": 3}
    assert codec.from_plain(Shapes, plain).either == Other(3) == reference_from_plain(Shapes, plain).either


def test_a_value_no_union_branch_takes_is_a_type_error_as_before() -> None:
    plain = json.loads(json.dumps(codec.to_plain(_shapes(None, "text"))))
    plain["scalar_or_leaf"] = 2.5
    with pytest.raises(TypeError, match="cannot decode"):
        reference_from_plain(Shapes, plain)
    with pytest.raises(TypeError, match="cannot decode"):
        codec.from_plain(Shapes, plain)


def test_classes_and_unknown_objects_pass_through_unchanged() -> None:
    marker = object()
    assert codec.to_plain(Leaf) is Leaf  # a dataclass *class* is not encoded
    assert codec.to_plain(marker) is marker
    assert codec.from_plain(Any, marker) is marker
    assert codec.from_plain(Leaf, None) is None
