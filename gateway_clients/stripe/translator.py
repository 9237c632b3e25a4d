"""Pure translation of Stripe's API objects and errors into paystream's vocabulary.

No I/O. Input is what Stripe documents and sends: decoded JSON of a PaymentIntent, Refund,
Charge, Dispute or Event, plus the SDK's error objects. Output is a ``GatewayResult`` or the
right ``GatewayError`` subclass, so errors are classified in exactly one place.

Disputes: the gateway protocol has no dispute status, so dispute notifications carry
``status=CAPTURED`` (the money was captured) and a normalised ``raw_status`` of
``dispute_opened`` / ``dispute_won`` / ``dispute_lost`` (see ``DISPUTE_STATUSES``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import httpx
import stripe

from gateway_clients.protocol import (
    ChargeNotFoundError,
    DeclineCode,
    GatewayError,
    GatewayNotification,
    GatewayResult,
    GatewayStatus,
    IdempotencyConflictError,
    InvalidWebhookError,
    OutcomeUnknownError,
    PermanentGatewayError,
    RetryableGatewayError,
)

__all__ = [
    "DECLINE_CODES",
    "DISPUTE_STATUSES",
    "METADATA_IDEMPOTENCY_KEY",
    "METADATA_PAYMENT_ID",
    "METADATA_REFUND_ID",
    "PAYMENT_INTENT_STATUSES",
    "REFUND_STATUSES",
    "SUPPORTED_EVENTS",
    "classify_error",
    "normalize_decline_code",
    "notification_from_event",
    "result_from_payment_intent",
    "result_from_refund",
]

# Metadata keys the client sets, so webhooks and lookups can find our ids again.
METADATA_PAYMENT_ID: Final = "payment_id"
METADATA_IDEMPOTENCY_KEY: Final = "paystream_idempotency_key"
METADATA_REFUND_ID: Final = "refund_id"

# requires_payment_method is handled in code: DECLINED only after a failed attempt.
PAYMENT_INTENT_STATUSES: Final[Mapping[str, GatewayStatus]] = {
    "requires_confirmation": GatewayStatus.PENDING,
    "requires_action": GatewayStatus.REQUIRES_ACTION,
    "processing": GatewayStatus.PENDING,
    "requires_capture": GatewayStatus.AUTHORIZED,
    "canceled": GatewayStatus.CANCELED,
    "succeeded": GatewayStatus.CAPTURED,
}

REFUND_STATUSES: Final[Mapping[str, GatewayStatus]] = {
    "succeeded": GatewayStatus.REFUNDED,
    "pending": GatewayStatus.PENDING,
    "requires_action": GatewayStatus.PENDING,
    "failed": GatewayStatus.REFUND_FAILED,
    "canceled": GatewayStatus.REFUND_FAILED,
}

# Stripe decline_code / error code -> ours. Unknown codes are still declines: card_declined.
DECLINE_CODES: Final[Mapping[str, DeclineCode]] = {
    "insufficient_funds": DeclineCode.INSUFFICIENT_FUNDS,
    "card_declined": DeclineCode.CARD_DECLINED,
    "generic_decline": DeclineCode.CARD_DECLINED,
    "do_not_honor": DeclineCode.CARD_DECLINED,
    "expired_card": DeclineCode.EXPIRED_CARD,
    "incorrect_cvc": DeclineCode.INCORRECT_CVC,
    "invalid_cvc": DeclineCode.INCORRECT_CVC,
    "fraudulent": DeclineCode.FRAUD_SUSPECTED,
    "stolen_card": DeclineCode.FRAUD_SUSPECTED,
    "lost_card": DeclineCode.FRAUD_SUSPECTED,
    "pickup_card": DeclineCode.FRAUD_SUSPECTED,
    "merchant_blacklist": DeclineCode.FRAUD_SUSPECTED,
    "security_violation": DeclineCode.FRAUD_SUSPECTED,
    "processing_error": DeclineCode.PROCESSING_ERROR,
    "issuer_not_available": DeclineCode.PROCESSING_ERROR,
    "try_again_later": DeclineCode.PROCESSING_ERROR,
    "reenter_transaction": DeclineCode.PROCESSING_ERROR,
}

# Dispute.status -> normalised raw_status of a dispute notification.
DISPUTE_STATUSES: Final[Mapping[str, str]] = {
    "warning_needs_response": "dispute_opened",
    "warning_under_review": "dispute_opened",
    "needs_response": "dispute_opened",
    "under_review": "dispute_opened",
    "won": "dispute_won",
    "warning_closed": "dispute_won",  # an inquiry closed without a chargeback
    "lost": "dispute_lost",
}

SUPPORTED_EVENTS: Final = frozenset(
    {
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.requires_action",
        "payment_intent.amount_capturable_updated",
        "charge.refunded",
        "charge.refund.updated",
        "charge.dispute.created",
        "charge.dispute.closed",
    }
)

# httpx errors raised before any byte of the request was sent: nothing can have happened.
_NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def normalize_decline_code(decline_code: str | None, code: str | None = None) -> DeclineCode:
    """Stripe's ``decline_code`` wins over the error ``code``; anything unknown is card_declined."""
    for raw in (decline_code, code):
        if raw is not None and raw in DECLINE_CODES:
            return DECLINE_CODES[raw]
    return DeclineCode.CARD_DECLINED


def result_from_payment_intent(
    intent: Mapping[str, object], *, latency_ms: float = 0.0, replayed: bool = False
) -> GatewayResult:
    """A PaymentIntent (as JSON) -> our result. Unknown statuses are PENDING (reconcile)."""
    if _opt_str(intent, "object") not in (None, "payment_intent"):
        raise _MalformedError(f"expected a payment_intent, got {intent.get('object')!r}")
    raw_status = _str(intent, "status")
    error = _opt_mapping(intent, "last_payment_error")
    if raw_status == "requires_payment_method":
        # Back to requires_payment_method after a confirm means the attempt failed.
        status = GatewayStatus.DECLINED if error is not None else GatewayStatus.PENDING
    else:
        status = PAYMENT_INTENT_STATUSES.get(raw_status, GatewayStatus.PENDING)
    amount = _int(intent, "amount")
    received = _opt_int(intent, "amount_received") or 0
    capturable = _opt_int(intent, "amount_capturable") or 0
    if status is GatewayStatus.AUTHORIZED:
        authorized = capturable
    elif status is GatewayStatus.CAPTURED:
        authorized = amount
    else:
        authorized = received
    refunded = 0
    latest_charge = _opt_mapping(intent, "latest_charge")  # only when expanded
    if latest_charge is not None:
        refunded = _opt_int(latest_charge, "amount_refunded") or 0
    decline_code = None
    if status is GatewayStatus.DECLINED:
        assert error is not None
        decline_code = normalize_decline_code(_opt_str(error, "decline_code"), _opt_str(error, "code"))
    return GatewayResult(
        status=status,
        gateway_ref=_str(intent, "id"),
        currency=_str(intent, "currency").upper(),
        amount_authorized=authorized,
        amount_captured=received,
        amount_refunded=refunded,
        decline_code=decline_code,
        raw_status=raw_status,
        latency_ms=latency_ms,
        action_url=_action_url(intent) if status is GatewayStatus.REQUIRES_ACTION else None,
        replayed=replayed,
    )


def result_from_refund(
    refund: Mapping[str, object], *, latency_ms: float = 0.0, replayed: bool = False
) -> GatewayResult:
    """A Refund -> our result; totals come from the refund's charge when it was expanded."""
    if _opt_str(refund, "object") not in (None, "refund"):
        raise _MalformedError(f"expected a refund, got {refund.get('object')!r}")
    raw_status = _str(refund, "status")
    amount = _int(refund, "amount")
    charge = _opt_mapping(refund, "charge")
    if charge is not None:
        captured = _opt_int(charge, "amount_captured") or 0
        refunded = _opt_int(charge, "amount_refunded") or 0
        authorized = _opt_int(charge, "amount") or captured
    else:
        captured, refunded, authorized = 0, 0, 0
    status = REFUND_STATUSES.get(raw_status, GatewayStatus.PENDING)
    return GatewayResult(
        status=status,
        gateway_ref=_ref(refund, "payment_intent") or "",
        currency=_str(refund, "currency").upper(),
        amount_authorized=authorized,
        amount_captured=captured,
        amount_refunded=refunded if charge is not None else (amount if status is GatewayStatus.REFUNDED else 0),
        raw_status=raw_status,
        latency_ms=latency_ms,
        refund_ref=_str(refund, "id"),
        refund_id=_opt_str(_opt_mapping(refund, "metadata") or {}, METADATA_REFUND_ID),
        refund_amount=amount,
        replayed=replayed,
    )


def result_from_charge_refunded(charge: Mapping[str, object]) -> GatewayResult:
    """``charge.refunded``: the charge with its new refund total."""
    refunded = _int(charge, "amount_refunded")
    captured = _opt_int(charge, "amount_captured") or 0
    refunds = _opt_mapping(charge, "refunds")  # only present on older API versions / expanded
    refund_ref = None
    if refunds is not None:
        data = refunds.get("data")
        if isinstance(data, list) and data and isinstance(data[0], Mapping):
            refund_ref = _opt_str(data[0], "id")
    return GatewayResult(
        status=GatewayStatus.REFUNDED,
        gateway_ref=_ref(charge, "payment_intent") or _str(charge, "id"),
        currency=_str(charge, "currency").upper(),
        amount_authorized=_opt_int(charge, "amount") or captured,
        amount_captured=captured,
        amount_refunded=refunded,
        raw_status="refunded" if _opt_bool(charge, "refunded") else "partially_refunded",
        refund_ref=refund_ref,
    )


def result_from_dispute(dispute: Mapping[str, object]) -> GatewayResult:
    raw = _str(dispute, "status")
    normalised = DISPUTE_STATUSES.get(raw)
    if normalised is None:
        raise _MalformedError(f"unknown dispute status {raw!r}")
    return GatewayResult(
        status=GatewayStatus.CAPTURED,
        gateway_ref=_ref(dispute, "payment_intent") or _ref(dispute, "charge") or "",
        currency=_str(dispute, "currency").upper(),
        amount_captured=_int(dispute, "amount"),
        raw_status=normalised,
    )


def notification_from_event(event: Mapping[str, object]) -> GatewayNotification:
    """Parse a signature-verified Stripe Event (snapshot payload)."""
    try:
        event_type = _str(event, "type")
        if event_type not in SUPPORTED_EVENTS:
            raise InvalidWebhookError(f"unsupported event type {event_type!r}", gateway_code="unsupported_event")
        obj = _mapping(_mapping(event, "data"), "object")
        metadata = _opt_mapping(obj, "metadata") or {}
        payment_id = _opt_str(metadata, METADATA_PAYMENT_ID)
        if event_type.startswith("payment_intent."):
            result = result_from_payment_intent(obj)
        elif event_type == "charge.refunded":
            result = result_from_charge_refunded(obj)
        elif event_type == "charge.refund.updated":
            result = result_from_refund(obj)
        else:  # charge.dispute.*
            result = result_from_dispute(obj)
            payment_id = None  # disputes carry no metadata of ours; look up by gateway_ref
        return GatewayNotification(
            event_id=_str(event, "id"),
            event_type=event_type,
            occurred_at=_int(event, "created"),
            payment_id=payment_id,
            result=result,
        )
    except _MalformedError as exc:
        raise InvalidWebhookError(f"malformed Stripe event: {exc}", gateway_code="malformed_event") from exc


def classify_error(
    exc: stripe.StripeError, *, mutating: bool, idempotency_key: str | None = None, latency_ms: float = 0.0
) -> GatewayResult | GatewayError:
    """The one place that decides what a Stripe SDK error means for the caller.

    A card decline is not an error: it comes back as a DECLINED ``GatewayResult``.
    """
    status = exc.http_status
    code = exc.code
    message = exc.user_message or type(exc).__name__

    replayed = _header(exc.headers or {}, "idempotent-replayed") == "true"

    def make(cls: type[GatewayError], msg: str = message) -> GatewayError:
        return cls(msg, http_status=status, gateway_code=code, idempotency_key=idempotency_key, replayed=replayed)

    if isinstance(exc, stripe.CardError):
        return _declined_from_card_error(exc, latency_ms=latency_ms)
    if isinstance(exc, stripe.APIConnectionError):
        cause = exc.__cause__
        if isinstance(cause, _NOT_SENT):
            return make(RetryableGatewayError, f"request not sent: {type(cause).__name__}")
        # Sent, at least partly, without a usable answer: Stripe may have acted on it.
        return make(OutcomeUnknownError if mutating else RetryableGatewayError, f"no response: {message}")
    if isinstance(exc, stripe.RateLimitError):
        return make(RetryableGatewayError)  # Stripe stores nothing for a rate-limited request
    if isinstance(exc, stripe.IdempotencyError):
        return make(IdempotencyConflictError)
    if isinstance(exc, stripe.InvalidRequestError):
        if status == 404 or code == "resource_missing":
            return make(ChargeNotFoundError)
        return make(PermanentGatewayError)
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return make(PermanentGatewayError)
    # APIError and anything else: 5xx, 409 (same key in flight), unexpected codes.
    should_retry = _header(exc.headers or {}, "stripe-should-retry")
    if should_retry == "true" or not mutating:
        # Stripe says nothing was done (or it was a read): safe to try again.
        return make(RetryableGatewayError)
    # Stripe replays a stored 5xx for the same key: do not retry, ask the gateway.
    return make(OutcomeUnknownError)


def _declined_from_card_error(exc: stripe.CardError, *, latency_ms: float) -> GatewayResult:
    body = exc.json_body if isinstance(exc.json_body, Mapping) else {}
    error = body.get("error") if isinstance(body.get("error"), Mapping) else None
    error_map: Mapping[str, object] = error if isinstance(error, Mapping) else {}
    intent = error_map.get("payment_intent")
    if isinstance(intent, Mapping):
        try:
            result = result_from_payment_intent(intent, latency_ms=latency_ms)
        except _MalformedError:
            pass
        else:
            if result.status is GatewayStatus.DECLINED:
                return result
    decline = normalize_decline_code(_opt_str_lenient(error_map, "decline_code"), exc.code)
    ref = intent.get("id") if isinstance(intent, Mapping) else None
    currency = intent.get("currency") if isinstance(intent, Mapping) else None
    return GatewayResult(
        status=GatewayStatus.DECLINED,
        gateway_ref=ref if isinstance(ref, str) else "",
        currency=currency.upper() if isinstance(currency, str) else "",
        decline_code=decline,
        raw_status="card_error",
        latency_ms=latency_ms,
    )


def _action_url(intent: Mapping[str, object]) -> str | None:
    next_action = _opt_mapping(intent, "next_action")
    if next_action is None:
        return None
    redirect = _opt_mapping(next_action, "redirect_to_url")
    if redirect is None:
        return None  # e.g. use_stripe_sdk: the client SDK handles it, there is no URL
    return _opt_str(redirect, "url")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value.lower()
    return None


class _MalformedError(ValueError):
    """A Stripe payload does not have the shape we expect."""


def _ref(obj: Mapping[str, object], key: str) -> str | None:
    """An expandable field: either an id string or the expanded object with an ``id``."""
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return _str(value, "id")
    raise _MalformedError(f"{key!r} must be an id or an object")


def _str(obj: Mapping[str, object], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise _MalformedError(f"{key!r} must be a string")
    return value


def _opt_str(obj: Mapping[str, object], key: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _MalformedError(f"{key!r} must be a string or null")


def _opt_str_lenient(obj: Mapping[str, object], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) else None


def _opt_bool(obj: Mapping[str, object], key: str) -> bool:
    return obj.get(key) is True


def _int(obj: Mapping[str, object], key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _MalformedError(f"{key!r} must be an integer")
    return value


def _opt_int(obj: Mapping[str, object], key: str) -> int | None:
    if obj.get(key) is None:
        return None
    return _int(obj, key)


def _mapping(obj: Mapping[str, object], key: str) -> Mapping[str, object]:
    value = obj.get(key)
    if not isinstance(value, Mapping):
        raise _MalformedError(f"{key!r} must be an object")
    return value


def _opt_mapping(obj: Mapping[str, object], key: str) -> Mapping[str, object] | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):  # unexpanded references are ids
        return None
    if not isinstance(value, Mapping):
        raise _MalformedError(f"{key!r} must be an object")
    return value
