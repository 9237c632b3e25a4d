"""Commands on ``payment.requests``, mirroring ``avro/payment_command.avsc`` field for field.

``from_avro``/``to_avro`` convert between these dataclasses and the dicts fastavro and
confluent's (de)serializers use. The envelope's union field is called ``command`` in Avro and
``body`` here. ``validate`` checks what can be checked without state; ``fingerprint`` hashes
the parameters for idempotency.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Final

import orjson

from paystream.core._avro import TYPE_KEY, RecordDecodeError, decode_record, encode_record, split_union
from paystream.core.money import is_known_currency, is_valid_minor_amount
from paystream.core.rejections import Rejection, RejectionReason
from paystream.core.sensitive import find_pan, looks_like_cvv_field, scan

__all__ = [
    "COMMAND_NAMESPACE",
    "COMMAND_TYPES",
    "KNOWN_GATEWAYS",
    "AddPaymentMethod",
    "CancelPayment",
    "CaptureMethod",
    "CapturePayment",
    "Command",
    "CommandBody",
    "CommandDecodeError",
    "CreatePayment",
    "ErasePaymentMethod",
    "MethodCommandBody",
    "RefundPayment",
    "RejectPayment",
    "ReleasePayment",
    "RemovePaymentMethod",
    "command_type",
    "fingerprint",
    "from_avro",
    "to_avro",
    "unpublishable_ids",
    "validate",
]

COMMAND_NAMESPACE: Final = "io.paystream.commands"
KNOWN_GATEWAYS: Final = frozenset({"simulated", "stripe", "paypal", "adyen"})


class CommandDecodeError(RecordDecodeError):
    """A command record that does not match the contract (dead-letter it)."""


class CaptureMethod(StrEnum):
    AUTOMATIC = "automatic"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class CreatePayment:
    AVRO_NAME: ClassVar[str] = "CreatePayment"

    order_id: str
    customer_id: str
    amount: int
    currency: str
    payment_method_token: str | None = None
    saved_method_id: str | None = None
    capture_method: CaptureMethod = CaptureMethod.AUTOMATIC
    gateway: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()  # Avro map<string>, kept as sorted pairs
    customer_ip: str | None = None
    customer_email: str | None = None
    shipping_country: str | None = None


@dataclass(frozen=True, slots=True)
class CapturePayment:
    AVRO_NAME: ClassVar[str] = "CapturePayment"

    amount: int | None = None
    currency: str | None = None


@dataclass(frozen=True, slots=True)
class CancelPayment:
    AVRO_NAME: ClassVar[str] = "CancelPayment"

    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RefundPayment:
    AVRO_NAME: ClassVar[str] = "RefundPayment"

    refund_id: str
    amount: int | None = None
    currency: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class AddPaymentMethod:
    AVRO_NAME: ClassVar[str] = "AddPaymentMethod"

    customer_id: str
    gateway: str
    gateway_token: str
    brand: str | None = None
    last4: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None
    fingerprint: str | None = None


@dataclass(frozen=True, slots=True)
class RemovePaymentMethod:
    AVRO_NAME: ClassVar[str] = "RemovePaymentMethod"

    customer_id: str


@dataclass(frozen=True, slots=True)
class ErasePaymentMethod:
    """Admin command of a customer erasure: remove the method and forget token and card details."""

    AVRO_NAME: ClassVar[str] = "ErasePaymentMethod"

    customer_id: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ReleasePayment:
    """Manual fraud review: release a payment held for review; it goes on to authorization."""

    AVRO_NAME: ClassVar[str] = "ReleasePayment"

    released_by: str
    note: str | None = None


@dataclass(frozen=True, slots=True)
class RejectPayment:
    """Manual fraud review: reject a payment held for review (fails with ``fraud_suspected``)."""

    AVRO_NAME: ClassVar[str] = "RejectPayment"

    rejected_by: str
    reason: str | None = None


CommandBody = (
    CreatePayment
    | CapturePayment
    | CancelPayment
    | RefundPayment
    | AddPaymentMethod
    | RemovePaymentMethod
    | ErasePaymentMethod
    | ReleasePayment
    | RejectPayment
)
MethodCommandBody = AddPaymentMethod | RemovePaymentMethod | ErasePaymentMethod

COMMAND_TYPES: Final[dict[str, type[CommandBody]]] = {
    cls.AVRO_NAME: cls
    for cls in (
        CreatePayment,
        CapturePayment,
        CancelPayment,
        RefundPayment,
        AddPaymentMethod,
        RemovePaymentMethod,
        ErasePaymentMethod,
        ReleasePayment,
        RejectPayment,
    )
}


@dataclass(frozen=True, slots=True)
class Command:
    """The ``PaymentCommand`` envelope; ``body`` is the Avro field ``command``."""

    command_id: str
    payment_id: str
    issued_at: int  # epoch ms UTC
    origin: str
    body: CommandBody


def command_type(command: Command | CommandBody) -> str:
    """Short record name, e.g. ``"CreatePayment"``."""
    body = command.body if isinstance(command, Command) else command
    return body.AVRO_NAME


# --- Avro -----------------------------------------------------------------------------------


def _branch_by_fields(record: Mapping[str, object]) -> str:
    """Infer the union branch of a record read without record names (exact field set)."""
    keys = set(record)
    matches = [name for name, cls in COMMAND_TYPES.items() if {f.name for f in dataclasses.fields(cls)} == keys]
    if len(matches) != 1:
        raise CommandDecodeError("command: cannot tell the command type (no record name given)")
    return matches[0]


def from_avro(record: Mapping[str, object]) -> Command:
    """Decode a ``PaymentCommand`` read by fastavro or confluent's AvroDeserializer.

    The union may be a ``(name, record)`` tuple (``return_record_name=True``), a dict with a
    ``"-type"`` key, or a plain dict (branch inferred from its exact field set).
    Raises ``CommandDecodeError`` when the record does not match the contract.
    """
    if not isinstance(record, Mapping):
        raise CommandDecodeError(f"expected a record, got {type(record).__name__}")
    try:
        name, body_record = split_union(record.get("command"), COMMAND_NAMESPACE, "command")
        if name is None:
            name = _branch_by_fields(body_record)
        cls = COMMAND_TYPES.get(name)
        if cls is None:
            raise CommandDecodeError(f"command: unknown command type {name!r}")
        body = decode_record(cls, body_record, name)
        envelope = {key: record.get(key) for key in ("command_id", "payment_id", "issued_at")}
        origin = record.get("origin", "unknown")
        for key in ("command_id", "payment_id"):
            if not isinstance(envelope[key], str):
                raise CommandDecodeError(f"{key}: expected a string")
        issued_at = envelope["issued_at"]
        if isinstance(issued_at, bool) or not isinstance(issued_at, int):
            raise CommandDecodeError("issued_at: expected an integer")
        if not isinstance(origin, str):
            raise CommandDecodeError("origin: expected a string")
    except CommandDecodeError:
        raise
    except RecordDecodeError as exc:
        raise CommandDecodeError(str(exc)) from exc
    return Command(
        command_id=str(envelope["command_id"]),
        payment_id=str(envelope["payment_id"]),
        issued_at=issued_at,
        origin=origin,
        body=body,
    )


def to_avro(command: Command) -> dict[str, object]:
    """The ``PaymentCommand`` dict for fastavro (union branch named in ``"-type"``)."""
    body = encode_record(command.body)
    body[TYPE_KEY] = f"{COMMAND_NAMESPACE}.{command.body.AVRO_NAME}"
    return {
        "command_id": command.command_id,
        "payment_id": command.payment_id,
        "issued_at": command.issued_at,
        "origin": command.origin,
        "command": body,
    }


# --- Validation -----------------------------------------------------------------------------


def _reject(reason: RejectionReason, detail: str) -> Rejection:
    return Rejection(reason=reason, detail=detail)


MAX_TEXT_LENGTH: Final = 255  # ids and short text; metadata values are bounded separately
MAX_METADATA_VALUE_LENGTH: Final = 1024


_CONTROL_CHARACTER: Final = re.compile("[\x00-\x1f\x7f]")


def _bad_text(value: str, limit: int) -> bool:
    """Too long, or control characters (NUL cannot even be stored in Postgres text)."""
    return len(value) > limit or _CONTROL_CHARACTER.search(value) is not None


def _unprintable_fields(command: Command) -> list[str]:
    """Names of the text fields that are too long or carry control characters."""
    bad = [name for name in ("command_id", "payment_id", "origin")
           if _bad_text(getattr(command, name), MAX_TEXT_LENGTH)]
    body = command.body
    for field in dataclasses.fields(body):
        value = getattr(body, field.name)
        if isinstance(value, str) and _bad_text(value, MAX_TEXT_LENGTH):
            bad.append(field.name)
    if isinstance(body, CreatePayment):
        for key, value in body.metadata:
            if _bad_text(key, MAX_TEXT_LENGTH) or _bad_text(value, MAX_METADATA_VALUE_LENGTH):
                bad.append("metadata")
                break
    return bad


def unpublishable_ids(command: Command) -> list[str]:
    """Which of ``payment_id`` and ``command_id`` cannot go on any event.

    Every event of a payment is keyed by its payment_id and names its causation command_id,
    so an id holding a card number (I6), control characters (NUL cannot be stored in Postgres)
    or more than ``MAX_TEXT_LENGTH`` characters cannot even be echoed in a CommandRejected:
    such a command can only be dead-lettered (its card number redacted there).
    """
    return [name for name in ("payment_id", "command_id")
            if _bad_text(value := getattr(command, name), MAX_TEXT_LENGTH) or find_pan(value)]


def _blank(value: str | None) -> bool:
    return value is not None and not value.strip()


def _check_amount(amount: object, *, optional: bool) -> Rejection | None:
    if amount is None and optional:
        return None
    if not is_valid_minor_amount(amount, allow_zero=False):
        return _reject(RejectionReason.INVALID_AMOUNT, "amount must be a positive integer of minor units in range")
    return None


def _check_currency(currency: object, *, optional: bool) -> Rejection | None:
    if currency is None and optional:
        return None
    if not is_known_currency(currency):
        return _reject(RejectionReason.UNKNOWN_CURRENCY, "currency must be an upper-case ISO-4217 code")
    return None


def _check_card_data(body: CommandBody) -> Rejection | None:
    # Tokens and free text must never carry a card number or CVV (I6). Only paths are named.
    # Integer fields are left out: a large amount is not a card number.
    text_fields: dict[str, object] = {
        field.name: value
        for field in dataclasses.fields(body)
        if isinstance(value := getattr(body, field.name), str | tuple)
    }
    if isinstance(body, CreatePayment):
        text_fields["metadata"] = dict(body.metadata)  # scanned as a map, so keys name fields
    offending = scan(text_fields)
    if offending:
        return _reject(RejectionReason.SENSITIVE_DATA_REJECTED, "card data found in: " + ", ".join(offending))
    return None


def _validate_create(body: CreatePayment) -> Rejection | None:
    for name in ("order_id", "customer_id"):
        if not getattr(body, name).strip():
            return _reject(RejectionReason.INVALID_FIELD, f"{name} must not be empty")
    if (rejection := _check_amount(body.amount, optional=False)) is not None:
        return rejection
    if (rejection := _check_currency(body.currency, optional=False)) is not None:
        return rejection
    if _blank(body.payment_method_token) or _blank(body.saved_method_id):
        return _reject(RejectionReason.INVALID_FIELD, "payment method reference must not be empty")
    if body.payment_method_token is None and body.saved_method_id is None:
        return _reject(RejectionReason.MISSING_PAYMENT_METHOD, "give payment_method_token or saved_method_id")
    if body.payment_method_token is not None and body.saved_method_id is not None:
        return _reject(
            RejectionReason.AMBIGUOUS_PAYMENT_METHOD, "give only one of payment_method_token and saved_method_id"
        )
    if body.gateway is not None and body.gateway not in KNOWN_GATEWAYS:
        return _reject(RejectionReason.UNKNOWN_GATEWAY, "gateway must be one of " + ", ".join(sorted(KNOWN_GATEWAYS)))
    return None


def _validate_add_method(body: AddPaymentMethod) -> Rejection | None:
    for name in ("customer_id", "gateway", "gateway_token"):
        if not getattr(body, name).strip():
            return _reject(RejectionReason.INVALID_FIELD, f"{name} must not be empty")
    if body.gateway not in KNOWN_GATEWAYS:
        return _reject(RejectionReason.UNKNOWN_GATEWAY, "gateway must be one of " + ", ".join(sorted(KNOWN_GATEWAYS)))
    if body.last4 is not None and not (len(body.last4) == 4 and body.last4.isascii() and body.last4.isdigit()):
        return _reject(RejectionReason.INVALID_FIELD, "last4 must be four digits")
    if body.exp_month is not None and not 1 <= body.exp_month <= 12:
        return _reject(RejectionReason.INVALID_FIELD, "exp_month must be 1..12")
    if body.exp_year is not None and not 2000 <= body.exp_year <= 2199:
        return _reject(RejectionReason.INVALID_FIELD, "exp_year must be a four-digit year")
    return None


# The last command validated and its verdict: the processor validates a CreatePayment before
# routing it and ``decide`` validates it again (the pure core never trusts its caller); a
# command is immutable all the way down (frozen dataclasses, tuples, text, numbers), so the
# same object gets the same answer, and the second walk over its fields and texts (a card-data
# scan among them, ~20 µs) is skipped. Identity, not equality: cheap, and never a stale answer.
_last_validated: tuple[Command, Rejection | None] | None = None


def validate(command: Command) -> Rejection | None:
    """What is wrong with ``command`` on its own (no state needed), or ``None``.

    Reason codes: invalid_field (empty ids, malformed method details), invalid_amount,
    unknown_currency, unknown_gateway, missing_payment_method, ambiguous_payment_method,
    sensitive_data_rejected.
    """
    global _last_validated
    last = _last_validated
    if last is not None and last[0] is command:
        return last[1]
    rejection = _validate(command)
    _last_validated = (command, rejection)
    return rejection


def _validate(command: Command) -> Rejection | None:
    for name in ("command_id", "payment_id"):
        if not getattr(command, name).strip():
            return _reject(RejectionReason.INVALID_FIELD, f"{name} must not be empty")
    if (bad := _unprintable_fields(command)):
        return _reject(RejectionReason.INVALID_FIELD, "too long or control characters in: " + ", ".join(bad))
    if command.issued_at < 0:
        return _reject(RejectionReason.INVALID_FIELD, "issued_at must not be negative")
    body = command.body
    rejection: Rejection | None = None
    if isinstance(body, CreatePayment):
        rejection = _validate_create(body)
    elif isinstance(body, CapturePayment):
        rejection = _check_amount(body.amount, optional=True) or _check_currency(body.currency, optional=True)
    elif isinstance(body, RefundPayment):
        if not body.refund_id.strip():
            rejection = _reject(RejectionReason.INVALID_FIELD, "refund_id must not be empty")
        else:
            rejection = _check_amount(body.amount, optional=True) or _check_currency(body.currency, optional=True)
    elif isinstance(body, AddPaymentMethod):
        rejection = _validate_add_method(body)
    elif isinstance(body, RemovePaymentMethod | ErasePaymentMethod) and not body.customer_id.strip():
        rejection = _reject(RejectionReason.INVALID_FIELD, "customer_id must not be empty")
    elif isinstance(body, ReleasePayment) and not body.released_by.strip():
        rejection = _reject(RejectionReason.INVALID_FIELD, "released_by must not be empty")
    elif isinstance(body, RejectPayment) and not body.rejected_by.strip():
        rejection = _reject(RejectionReason.INVALID_FIELD, "rejected_by must not be empty")
    if rejection is None:
        rejection = _check_card_data(body)
    if rejection is None and (find_pan(command.origin) or looks_like_cvv_field("origin", command.origin)):
        rejection = _reject(RejectionReason.SENSITIVE_DATA_REJECTED, "card data found in: origin")
    return rejection


# --- Fingerprint ----------------------------------------------------------------------------


def fingerprint(command: Command) -> str:
    """sha256 (hex) of the command's parameters in canonical JSON, for idempotency.

    Covers payment_id, the command type and every body field; excludes command_id,
    issued_at and origin, which may differ between honest retries.
    """
    canonical = {
        "payment_id": command.payment_id,
        "type": command.body.AVRO_NAME,
        "body": encode_record(command.body),
    }
    return hashlib.sha256(_canonical_json(canonical)).hexdigest()


def _canonical_json(value: Mapping[str, object]) -> bytes:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``, byte for
    byte (fingerprints already stored must still match), made by orjson when that is the same
    text: its output differs only where json escapes a character orjson writes as is (anything
    beyond ASCII, and DEL); integers beyond 64 bits it refuses. Either way, json decides."""
    try:
        out = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError
        out = None
    if out is None or not out.isascii() or b"\x7f" in out:
        out = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return out
