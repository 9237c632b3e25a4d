"""Events: Avro round trip (fastavro, against the .avsc), event ids, terminal-event table."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import fastavro
import pytest

from paystream.core.commands import COMMAND_TYPES
from paystream.core.events import (
    EVENT_TYPES,
    TERMINAL_EVENTS,
    CommandRejected,
    DisputeClosed,
    DisputeOpened,
    DisputeOutcome,
    EventBody,
    EventDecodeError,
    FraudDecision,
    FraudOutcome,
    OrphanChargeDetected,
    OrphanChargeResolved,
    PaymentAuthorized,
    PaymentCanceled,
    PaymentCaptured,
    PaymentCreated,
    PaymentEvent,
    PaymentFailed,
    PaymentMethodAdded,
    PaymentMethodRemoved,
    PaymentOutcomeUnknown,
    PaymentRequiresAction,
    PaymentSucceeded,
    PaymentTotals,
    RefundFailed,
    RefundProcessed,
    command_rejected,
    event_id,
    from_avro,
    is_terminal,
    to_avro,
)
from paystream.core.rejections import Rejection, RejectionReason

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "avro" / "payment_event.avsc"
SCHEMA_JSON = json.loads(SCHEMA_PATH.read_text())
SCHEMA = fastavro.parse_schema(SCHEMA_JSON)

BODIES: list[EventBody] = [
    PaymentCreated("cus_1", 1234, "USD", "manual", "stripe"),
    PaymentRequiresAction("gw_1", "https://gw.test/3ds"),
    PaymentRequiresAction(),
    PaymentAuthorized(1234, "USD", "stripe", "gw_1"),
    PaymentCaptured(1000, "USD", released=234),
    PaymentSucceeded(1000, "USD", "stripe", "gw_1"),
    PaymentFailed("insufficient_funds", "Your card has insufficient funds.", "stripe"),
    PaymentCanceled("customer_request", 1234),
    PaymentOutcomeUnknown("authorize", "stripe", "ps-pay_1-authorize-0"),
    RefundProcessed("r1", 500, "USD"),
    RefundFailed("r1", 500, "USD", "declined_by_issuer"),
    DisputeOpened("dp_1", 1000, "USD", "fraudulent"),
    DisputeClosed("dp_1", DisputeOutcome.LOST),
    PaymentMethodAdded("cus_1", "stripe", "visa", "4242", 12, 2030),
    PaymentMethodRemoved("cus_1"),
    FraudDecision(FraudOutcome.REVIEW, ("velocity", "geo"), shadow=True),
    CommandRejected("refund_exceeds_captured", "amount exceeds what is left", "RefundPayment"),
    OrphanChargeDetected("ps-pay_1-authorize-0", "simulated", "simpay_1", 1234, "USD", "refund"),
    OrphanChargeResolved("ps-pay_1-authorize-0", "simulated", "simpay_1", 1234, "USD", "refund", "refunded"),
    OrphanChargeResolved("ps-pay_1-authorize-0", "simulated", "simpay_1", 1234, "USD", "void", "failed",
                         "payment_unexpected_state"),
]

# Same field names in the avsc: a reader must ask for record names to tell them apart.
AMBIGUOUS_WITHOUT_NAMES = {"PaymentAuthorized", "PaymentSucceeded"}

TOTALS = PaymentTotals(currency="USD", amount=1234, authorized=1234, captured=1000, refunded=500)


def _event(body: EventBody, totals: PaymentTotals | None = TOTALS) -> PaymentEvent:
    return PaymentEvent(
        event_id=event_id("pay_1", 7), payment_id="pay_1", order_id="ord_1", sequence=7, occurred_at=1_700_000_000_000,
        causation_command_id="cmd_1", status="partially_refunded", totals=totals, body=body,
    )


def _round_trip(event: PaymentEvent, *, names: bool) -> dict[str, object]:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, SCHEMA, to_avro(event))
    buffer.seek(0)
    result = fastavro.schemaless_reader(buffer, SCHEMA, return_record_name=names)
    assert isinstance(result, dict)
    return result


def test_every_event_record_type_is_covered() -> None:
    union = next(f for f in SCHEMA_JSON["fields"] if f["name"] == "event")["type"]
    assert {branch["name"] for branch in union} == set(EVENT_TYPES) == {b.AVRO_NAME for b in BODIES}


@pytest.mark.parametrize("body", BODIES, ids=lambda b: b.AVRO_NAME)
def test_dataclass_fields_mirror_the_avsc(body: EventBody) -> None:
    union = next(f for f in SCHEMA_JSON["fields"] if f["name"] == "event")["type"]
    branch = next(b for b in union if b["name"] == body.AVRO_NAME)
    written: dict[str, Any] = to_avro(_event(body))
    name, record = written["event"]
    assert name == f"{SCHEMA_JSON['namespace']}.{body.AVRO_NAME}"
    assert list(record) == [f["name"] for f in branch["fields"]]


@pytest.mark.parametrize("body", BODIES, ids=lambda b: b.AVRO_NAME)
@pytest.mark.parametrize("names", [True, False])
def test_round_trip_through_fastavro(body: EventBody, names: bool) -> None:
    event = _event(body)
    if not names and body.AVRO_NAME in AMBIGUOUS_WITHOUT_NAMES:
        with pytest.raises(EventDecodeError, match="cannot tell the event type"):
            from_avro(_round_trip(event, names=names))
    else:
        assert from_avro(_round_trip(event, names=names)) == event


def test_only_authorized_and_succeeded_share_a_field_set() -> None:
    union = next(f for f in SCHEMA_JSON["fields"] if f["name"] == "event")["type"]
    field_sets = [frozenset(f["name"] for f in branch["fields"]) for branch in union]
    shared = {b["name"] for b, fs in zip(union, field_sets, strict=True) if field_sets.count(fs) > 1}
    assert shared == AMBIGUOUS_WITHOUT_NAMES


def test_round_trip_without_totals_or_order() -> None:
    event = PaymentEvent(event_id("pm_1", 1), "pm_1", None, 1, 5, None, None, None, PaymentMethodRemoved("cus_1"))
    assert from_avro(_round_trip(event, names=True)) == event
    assert from_avro(_round_trip(event, names=False)) == event


@pytest.mark.parametrize(
    "record",
    [
        {"event_id": "e", "payment_id": "p", "sequence": 1, "occurred_at": 1, "event": ("Nope", {})},
        {"event_id": "e", "payment_id": "p", "sequence": "1", "occurred_at": 1,
         "event": ("PaymentMethodRemoved", {"customer_id": "c"})},
        {"event_id": "e", "payment_id": "p", "sequence": 1, "occurred_at": 1,
         "event": ("DisputeClosed", {"dispute_id": "d", "outcome": "draw"})},
        {"payment_id": "p", "sequence": 1, "occurred_at": 1, "event": ("PaymentMethodRemoved", {"customer_id": "c"})},
    ],
)
def test_malformed_event_records_raise(record: dict[str, object]) -> None:
    with pytest.raises(EventDecodeError):
        from_avro(record)


def test_event_id_is_deterministic_and_distinct() -> None:
    assert event_id("pay_1", 1) == event_id("pay_1", 1)
    ids = {event_id(p, s) for p in ("pay_1", "pay_11", "pay_1:1") for s in (1, 11, 2)}
    assert len(ids) == 9


def test_terminal_events_cover_every_command_and_name_real_events() -> None:
    assert set(TERMINAL_EVENTS) == set(COMMAND_TYPES)
    for names in TERMINAL_EVENTS.values():
        assert names <= set(EVENT_TYPES)
        assert "CommandRejected" in names


def test_progress_events_never_end_a_command() -> None:
    for names in TERMINAL_EVENTS.values():
        assert not names & {"PaymentCreated", "PaymentCaptured", "DisputeOpened", "DisputeClosed", "FraudDecision"}


def test_is_terminal() -> None:
    assert is_terminal("CreatePayment", PaymentSucceeded(1, "USD", "stripe"))
    assert not is_terminal("CapturePayment", PaymentAuthorized(1, "USD", "stripe", "gw"))
    assert is_terminal("RefundPayment", RefundFailed("r", 1, "USD", "x"))


def test_command_rejected_from_a_rejection() -> None:
    rejection = Rejection(RejectionReason.PAYMENT_NOT_FOUND, "no payment with this id")
    assert command_rejected(rejection, "CapturePayment") == CommandRejected(
        "payment_not_found", "no payment with this id", "CapturePayment"
    )


@pytest.mark.parametrize("payment_id", ["pay_1", "", "pay_é€😀", "x" * 300, "a:b:c"])
@pytest.mark.parametrize("sequence", [0, 1, 7, 10**12])
def test_event_id_is_the_rfc_4122_uuid5_of_the_payment_and_sequence(payment_id: str, sequence: int) -> None:
    # Event ids are published and deduplicated on: the fast path must give uuid5's exact text.
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, "https://paystream.io/ns/payment-event")
    expected = uuid.uuid5(namespace, f"{len(payment_id)}:{payment_id}:{sequence}")
    assert event_id(payment_id, sequence) == str(expected)
    assert uuid.UUID(event_id(payment_id, sequence)).version == 5
