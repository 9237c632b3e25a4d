"""Result events on ``payment.events``, mirroring ``avro/payment_event.avsc`` field for field.

The state machine returns event *bodies*; the agent wraps each into a ``PaymentEvent``
envelope (sequence, ids, status and totals from the new state). The envelope's union field is
``event`` in Avro and ``body`` here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Final

from paystream.core._avro import RecordDecodeError, decode_record, encode_record, split_union
from paystream.core.rejections import Rejection

__all__ = [
    "EVENT_NAMESPACE",
    "EVENT_TYPES",
    "TERMINAL_EVENTS",
    "CommandRejected",
    "DisputeClosed",
    "DisputeOpened",
    "DisputeOutcome",
    "EventBody",
    "EventDecodeError",
    "FraudDecision",
    "FraudOutcome",
    "OrphanChargeDetected",
    "OrphanChargeResolved",
    "PaymentAuthorized",
    "PaymentCanceled",
    "PaymentCaptured",
    "PaymentCreated",
    "PaymentEvent",
    "PaymentFailed",
    "PaymentMethodAdded",
    "PaymentMethodRemoved",
    "PaymentOutcomeUnknown",
    "PaymentRequiresAction",
    "PaymentSucceeded",
    "PaymentTotals",
    "RefundFailed",
    "RefundProcessed",
    "command_rejected",
    "event_id",
    "event_type",
    "from_avro",
    "is_terminal",
    "to_avro",
]

EVENT_NAMESPACE: Final = "io.paystream.events"
# Fixed namespace for event ids: uuid5(NAMESPACE_URL, "https://paystream.io/ns/payment-event").
_EVENT_ID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://paystream.io/ns/payment-event")
_EVENT_ID_PREFIX: Final = _EVENT_ID_NAMESPACE.bytes


class EventDecodeError(RecordDecodeError):
    """An event record that does not match the contract."""


class DisputeOutcome(StrEnum):
    WON = "won"
    LOST = "lost"


class FraudOutcome(StrEnum):
    ALLOW = "allow"
    REVIEW = "review"
    BLOCK = "block"


@dataclass(frozen=True, slots=True)
class PaymentTotals:
    currency: str
    amount: int
    authorized: int
    captured: int
    refunded: int


@dataclass(frozen=True, slots=True)
class PaymentCreated:
    AVRO_NAME: ClassVar[str] = "PaymentCreated"

    customer_id: str
    amount: int
    currency: str
    capture_method: str
    gateway: str


@dataclass(frozen=True, slots=True)
class PaymentRequiresAction:
    AVRO_NAME: ClassVar[str] = "PaymentRequiresAction"

    gateway_ref: str | None = None
    action_url: str | None = None


@dataclass(frozen=True, slots=True)
class PaymentAuthorized:
    AVRO_NAME: ClassVar[str] = "PaymentAuthorized"

    amount: int
    currency: str
    gateway: str
    gateway_ref: str


@dataclass(frozen=True, slots=True)
class PaymentCaptured:
    AVRO_NAME: ClassVar[str] = "PaymentCaptured"

    amount: int  # captured by this capture
    currency: str
    released: int = 0  # authorized amount released by a partial capture


@dataclass(frozen=True, slots=True)
class PaymentSucceeded:
    AVRO_NAME: ClassVar[str] = "PaymentSucceeded"

    amount: int  # total captured
    currency: str
    gateway: str
    gateway_ref: str | None = None


@dataclass(frozen=True, slots=True)
class PaymentFailed:
    AVRO_NAME: ClassVar[str] = "PaymentFailed"

    decline_code: str
    message: str | None = None
    gateway: str | None = None


@dataclass(frozen=True, slots=True)
class PaymentCanceled:
    AVRO_NAME: ClassVar[str] = "PaymentCanceled"

    reason: str | None = None
    released: int = 0


@dataclass(frozen=True, slots=True)
class PaymentOutcomeUnknown:
    AVRO_NAME: ClassVar[str] = "PaymentOutcomeUnknown"

    operation: str
    gateway: str
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class RefundProcessed:
    AVRO_NAME: ClassVar[str] = "RefundProcessed"

    refund_id: str
    amount: int
    currency: str


@dataclass(frozen=True, slots=True)
class RefundFailed:
    AVRO_NAME: ClassVar[str] = "RefundFailed"

    refund_id: str
    amount: int
    currency: str
    reason: str


@dataclass(frozen=True, slots=True)
class DisputeOpened:
    AVRO_NAME: ClassVar[str] = "DisputeOpened"

    dispute_id: str
    amount: int
    currency: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class DisputeClosed:
    AVRO_NAME: ClassVar[str] = "DisputeClosed"

    dispute_id: str
    outcome: DisputeOutcome


@dataclass(frozen=True, slots=True)
class PaymentMethodAdded:
    AVRO_NAME: ClassVar[str] = "PaymentMethodAdded"

    customer_id: str
    gateway: str
    brand: str | None = None
    last4: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None


@dataclass(frozen=True, slots=True)
class PaymentMethodRemoved:
    AVRO_NAME: ClassVar[str] = "PaymentMethodRemoved"

    customer_id: str
    erased: bool = False  # removed by a customer erasure: token and card details forgotten


@dataclass(frozen=True, slots=True)
class FraudDecision:
    AVRO_NAME: ClassVar[str] = "FraudDecision"

    decision: FraudOutcome
    rules: tuple[str, ...] = ()
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class CommandRejected:
    AVRO_NAME: ClassVar[str] = "CommandRejected"

    reason: str
    detail: str | None = None
    command_type: str | None = None


@dataclass(frozen=True, slots=True)
class OrphanChargeDetected:
    """Money found under an authorization key the payment gave up on (an orphan charge);
    paystream is voiding (``action`` ``void``) or refunding (``refund``) it. The payment's own
    status and totals are unchanged. Fields are named ``orphan_*`` so nobody mistakes them for
    the payment's own gateway reference."""

    AVRO_NAME: ClassVar[str] = "OrphanChargeDetected"

    orphan_key: str  # the superseded idempotency key
    orphan_gateway: str
    orphan_gateway_ref: str
    amount: int  # what the void releases or the refund returns
    currency: str
    action: str  # "void" | "refund"


@dataclass(frozen=True, slots=True)
class OrphanChargeResolved:
    """The end of an orphan charge: ``outcome`` ``voided`` or ``refunded`` (the gateway did it),
    or ``failed`` (paystream gave up after repeated failures; a human must act)."""

    AVRO_NAME: ClassVar[str] = "OrphanChargeResolved"

    orphan_key: str
    orphan_gateway: str
    orphan_gateway_ref: str
    amount: int
    currency: str
    action: str  # "void" | "refund"
    outcome: str  # "voided" | "refunded" | "failed"
    reason: str | None = None  # why it failed


EventBody = (
    PaymentCreated
    | PaymentRequiresAction
    | PaymentAuthorized
    | PaymentCaptured
    | PaymentSucceeded
    | PaymentFailed
    | PaymentCanceled
    | PaymentOutcomeUnknown
    | RefundProcessed
    | RefundFailed
    | DisputeOpened
    | DisputeClosed
    | PaymentMethodAdded
    | PaymentMethodRemoved
    | FraudDecision
    | CommandRejected
    | OrphanChargeDetected
    | OrphanChargeResolved
)

EVENT_TYPES: Final[dict[str, type[EventBody]]] = {
    cls.AVRO_NAME: cls
    for cls in (
        PaymentCreated,
        PaymentRequiresAction,
        PaymentAuthorized,
        PaymentCaptured,
        PaymentSucceeded,
        PaymentFailed,
        PaymentCanceled,
        PaymentOutcomeUnknown,
        RefundProcessed,
        RefundFailed,
        DisputeOpened,
        DisputeClosed,
        PaymentMethodAdded,
        PaymentMethodRemoved,
        FraudDecision,
        CommandRejected,
        OrphanChargeDetected,
        OrphanChargeResolved,
    )
}


def _names(*classes: type[EventBody]) -> frozenset[str]:
    return frozenset(cls.AVRO_NAME for cls in classes)


TERMINAL_EVENTS: Final[dict[str, frozenset[str]]] = {
    "CreatePayment": _names(
        PaymentSucceeded,  # automatic capture: money moved
        PaymentAuthorized,  # manual capture (or an automatic capture the gateway refused)
        PaymentRequiresAction,  # 3-D Secure etc.; later progress is caused by the notification
        PaymentFailed,  # declined, or the gateway refused the request
        PaymentCanceled,  # the gateway answered the authorization with "canceled"
        PaymentOutcomeUnknown,  # timeout / lost response; the reconciler resolves it later
        CommandRejected,
    ),
    "CapturePayment": _names(
        PaymentSucceeded,
        PaymentCanceled,  # the authorization was already voided or expired at the gateway
        PaymentOutcomeUnknown,
        CommandRejected,  # rejected up front, or the gateway refused the capture
    ),
    "CancelPayment": _names(
        PaymentCanceled,
        PaymentSucceeded,  # the cancel lost a race with a capture the gateway already made
        PaymentFailed,  # the cancel lost a race with a failed customer action (3-D Secure)
        PaymentOutcomeUnknown,
        CommandRejected,  # rejected up front, or the gateway refused the cancel
    ),
    "RefundPayment": _names(RefundProcessed, RefundFailed, PaymentOutcomeUnknown, CommandRejected),
    "AddPaymentMethod": _names(PaymentMethodAdded, CommandRejected),
    "RemovePaymentMethod": _names(PaymentMethodRemoved, CommandRejected),
    "ErasePaymentMethod": _names(PaymentMethodRemoved, CommandRejected),
    # Fraud review: a release's results are those of an authorization; a reject fails the payment.
    "ReleasePayment": _names(
        PaymentSucceeded, PaymentAuthorized, PaymentRequiresAction, PaymentFailed, PaymentCanceled,
        PaymentOutcomeUnknown, CommandRejected,
    ),
    "RejectPayment": _names(PaymentFailed, CommandRejected),
}
"""Which event types end each command type (invariant I2).

Precisely: for every command, exactly one event whose ``causation_command_id`` is that
command's id has a type in ``TERMINAL_EVENTS[command type]``. Other events with the same
causation are progress (``PaymentCreated`` on acceptance, ``PaymentCaptured`` just before
``PaymentSucceeded``). A rejected command's one terminal event is its ``CommandRejected``.

After ``PaymentOutcomeUnknown`` the command is finished; the later resolution (reconciler or
webhook) is caused by that reconciliation or notification id, never by the command again.
Likewise, progress after ``PaymentRequiresAction`` is caused by the gateway notification.
``DisputeOpened`` and ``DisputeClosed`` never end a command, nor do ``OrphanChargeDetected``
and ``OrphanChargeResolved`` (caused by the reconciliation or gateway reply that found or
settled the orphan charge, never by a command).

``FraudDecision`` is the one field-aware case (``is_terminal``): for a ``CreatePayment`` an
active (``shadow=false``) ``review`` decision is terminal, like ``PaymentRequiresAction``: the
payment waits for a human and later progress is caused by the ``ReleasePayment``,
``RejectPayment`` or ``CancelPayment`` command. ``allow``/``block`` decisions and every shadow
decision are progress (an allowed payment ends with its authorization's result, a blocked one
with ``PaymentFailed``). It is therefore not listed in ``TERMINAL_EVENTS``.
"""


def is_terminal(command_type: str, body: EventBody) -> bool:
    """True when ``body`` is a terminal result event for a command of ``command_type``."""
    if isinstance(body, FraudDecision):
        return command_type == "CreatePayment" and body.decision is FraudOutcome.REVIEW and not body.shadow
    return body.AVRO_NAME in TERMINAL_EVENTS.get(command_type, frozenset())


def event_type(body: EventBody) -> str:
    """Short record name, e.g. ``"PaymentSucceeded"``."""
    return body.AVRO_NAME


def command_rejected(rejection: Rejection, command_type: str | None) -> CommandRejected:
    """The ``CommandRejected`` body the agent publishes for a rejection."""
    return CommandRejected(reason=rejection.reason.value, detail=rejection.detail, command_type=command_type)


def event_id(payment_id: str, sequence: int) -> str:
    """Deterministic event id: uuid5 over (payment_id, sequence); a replay carries the same id.

    The text of ``uuid.uuid5(namespace, name)``, computed without building a ``UUID`` object
    (three ids per payment; the object and its ``__str__`` cost four times the SHA-1)."""
    digest = bytearray(hashlib.sha1(_EVENT_ID_PREFIX + f"{len(payment_id)}:{payment_id}:{sequence}".encode()).digest())
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest[:16].hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    """The ``PaymentEvent`` envelope; ``body`` is the Avro field ``event``."""

    event_id: str
    payment_id: str
    order_id: str | None
    sequence: int
    occurred_at: int  # epoch ms UTC
    causation_command_id: str | None
    status: str | None
    totals: PaymentTotals | None
    body: EventBody


_ENVELOPE_FIELDS: Final = ("event_id", "payment_id", "order_id", "sequence", "occurred_at",
                           "causation_command_id", "status", "totals")


@dataclass(frozen=True, slots=True)
class _Envelope:
    """Decoding helper: the envelope without its union."""

    event_id: str
    payment_id: str
    sequence: int
    occurred_at: int
    order_id: str | None = None
    causation_command_id: str | None = None
    status: str | None = None
    totals: PaymentTotals | None = None


def _branch_by_fields(record: Mapping[str, object]) -> str:
    keys = set(record)
    matches = [name for name, cls in EVENT_TYPES.items() if {f.name for f in dataclasses.fields(cls)} == keys]
    if len(matches) != 1:
        raise EventDecodeError("event: cannot tell the event type (no record name given)")
    return matches[0]


def from_avro(record: Mapping[str, object]) -> PaymentEvent:
    """Decode a ``PaymentEvent`` (union as ``(name, record)`` tuple, ``"-type"`` dict or plain).

    Read with record names (``return_record_name=True``): ``PaymentAuthorized`` and
    ``PaymentSucceeded`` have the same field names, so a plain dict of either is ambiguous
    and raises ``EventDecodeError``.
    """
    if not isinstance(record, Mapping):
        raise EventDecodeError(f"expected a record, got {type(record).__name__}")
    try:
        name, body_record = split_union(record.get("event"), EVENT_NAMESPACE, "event")
        if name is None:
            name = _branch_by_fields(body_record)
        cls = EVENT_TYPES.get(name)
        if cls is None:
            raise EventDecodeError(f"event: unknown event type {name!r}")
        body = decode_record(cls, body_record, name)
        totals = record.get("totals")
        if totals is not None:
            _, totals = split_union(totals, EVENT_NAMESPACE, "totals")
        envelope_record = {key: record[key] for key in _ENVELOPE_FIELDS if key in record}
        envelope_record["totals"] = totals
        envelope = decode_record(_Envelope, envelope_record, "PaymentEvent")
    except EventDecodeError:
        raise
    except RecordDecodeError as exc:
        raise EventDecodeError(str(exc)) from exc
    return PaymentEvent(
        event_id=envelope.event_id,
        payment_id=envelope.payment_id,
        order_id=envelope.order_id,
        sequence=envelope.sequence,
        occurred_at=envelope.occurred_at,
        causation_command_id=envelope.causation_command_id,
        status=envelope.status,
        totals=envelope.totals,
        body=body,
    )


def to_avro(event: PaymentEvent) -> dict[str, object]:
    """The ``PaymentEvent`` dict for fastavro, union branches in its tuple notation
    ``(full name, record)``: fastavro writes a tuple's branch at once, while a dict marked with
    ``"-type"`` is validated against every branch of the union first (4x slower per event)."""
    body = (f"{EVENT_NAMESPACE}.{event.body.AVRO_NAME}", encode_record(event.body))
    totals: tuple[str, dict[str, object]] | None = None
    if event.totals is not None:
        totals = (f"{EVENT_NAMESPACE}.PaymentTotals", encode_record(event.totals))
    return {
        "event_id": event.event_id,
        "payment_id": event.payment_id,
        "order_id": event.order_id,
        "sequence": event.sequence,
        "occurred_at": event.occurred_at,
        "causation_command_id": event.causation_command_id,
        "status": event.status,
        "totals": totals,
        "event": body,
    }
