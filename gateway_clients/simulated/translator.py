"""Pure translation of the simulated gateway's responses into paystream's vocabulary.

No I/O: given an HTTP status, a few headers' worth of facts and the decoded JSON body, return a
``GatewayResult`` or raise the right ``GatewayError`` subclass. Both the HTTP client and the
in-process adapter go through here, so errors are classified in exactly one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

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
    "PAYMENT_STATUSES",
    "REFUND_STATUSES",
    "REPLAYED_HEADER",
    "SHOULD_RETRY_HEADER",
    "classify_error",
    "normalize_decline_code",
    "notification_from_event",
    "result_from_lookup",
    "result_from_payment",
    "result_from_refund",
    "translate_response",
]

# Wire headers of the simulated gateway.
SHOULD_RETRY_HEADER: Final = "Simgw-Should-Retry"  # on 5xx: "true" only if nothing was done
REPLAYED_HEADER: Final = "Idempotent-Replayed"  # "true" when answered from the key store

PAYMENT_STATUSES: Final[Mapping[str, GatewayStatus]] = {
    "processing": GatewayStatus.PENDING,
    "requires_action": GatewayStatus.REQUIRES_ACTION,
    "authorized": GatewayStatus.AUTHORIZED,
    "succeeded": GatewayStatus.CAPTURED,
    "partially_refunded": GatewayStatus.CAPTURED,  # amount_refunded tells how much
    "refunded": GatewayStatus.REFUNDED,
    "declined": GatewayStatus.DECLINED,
    "canceled": GatewayStatus.CANCELED,
}

REFUND_STATUSES: Final[Mapping[str, GatewayStatus]] = {
    "succeeded": GatewayStatus.REFUNDED,
    "failed": GatewayStatus.REFUND_FAILED,
    "pending": GatewayStatus.PENDING,
}

DECLINE_CODES: Final[Mapping[str, DeclineCode]] = {
    "insufficient_funds": DeclineCode.INSUFFICIENT_FUNDS,
    "generic_decline": DeclineCode.CARD_DECLINED,
    "card_declined": DeclineCode.CARD_DECLINED,
    "authentication_failed": DeclineCode.CARD_DECLINED,
    "expired_card": DeclineCode.EXPIRED_CARD,
    "incorrect_cvc": DeclineCode.INCORRECT_CVC,
    "fraudulent": DeclineCode.FRAUD_SUSPECTED,
    "processing_error": DeclineCode.PROCESSING_ERROR,
}


def normalize_decline_code(raw: str | None) -> DeclineCode | None:
    """Map a raw decline code; an unknown one is still a decline, so it becomes card_declined."""
    if raw is None:
        return None
    return DECLINE_CODES.get(raw, DeclineCode.CARD_DECLINED)


def result_from_payment(
    payment: Mapping[str, object], *, latency_ms: float = 0.0, replayed: bool = False
) -> GatewayResult:
    raw_status = _str(payment, "status")
    # An unknown status is neither success nor failure: PENDING makes the caller reconcile.
    status = PAYMENT_STATUSES.get(raw_status, GatewayStatus.PENDING)
    next_action = payment.get("next_action")
    action_url = None
    if isinstance(next_action, Mapping):
        url = next_action.get("url")
        action_url = url if isinstance(url, str) else None
    decline_code = normalize_decline_code(_opt_str(payment, "decline_code"))
    if status is GatewayStatus.DECLINED and decline_code is None:
        decline_code = DeclineCode.CARD_DECLINED
    return GatewayResult(
        status=status,
        gateway_ref=_str(payment, "id"),
        currency=_str(payment, "currency"),
        amount_authorized=_int(payment, "amount_authorized"),
        amount_captured=_int(payment, "amount_captured"),
        amount_refunded=_int(payment, "amount_refunded"),
        decline_code=decline_code if status is GatewayStatus.DECLINED else None,
        raw_status=raw_status,
        latency_ms=latency_ms,
        action_url=action_url,
        replayed=replayed,
    )


def result_from_refund(
    refund: Mapping[str, object], *, latency_ms: float = 0.0, replayed: bool = False
) -> GatewayResult:
    raw_status = _str(refund, "status")
    payment = _mapping(refund, "payment")
    base = result_from_payment(payment, latency_ms=latency_ms, replayed=replayed)
    return GatewayResult(
        status=REFUND_STATUSES.get(raw_status, GatewayStatus.PENDING),
        gateway_ref=_str(refund, "payment_ref"),
        currency=_str(refund, "currency"),
        amount_authorized=base.amount_authorized,
        amount_captured=base.amount_captured,
        amount_refunded=base.amount_refunded,
        raw_status=raw_status,
        latency_ms=latency_ms,
        refund_ref=_str(refund, "id"),
        refund_id=_opt_str(refund, "refund_id"),
        refund_amount=_int(refund, "amount") if "amount" in refund else None,
        replayed=replayed,
    )


def result_from_lookup(record: Mapping[str, object], *, latency_ms: float = 0.0) -> GatewayResult:
    """The payment behind an idempotency record; ChargeNotFoundError if nothing was charged."""
    payment = record.get("payment")
    if not isinstance(payment, Mapping):
        raise ChargeNotFoundError(
            "no charge was made under this idempotency key",
            gateway_code="no_charge",
            idempotency_key=_opt_str(record, "idempotency_key"),
        )
    return result_from_payment(payment, latency_ms=latency_ms)


def classify_error(
    status_code: int,
    body: Mapping[str, object] | None,
    *,
    should_retry: bool,
    mutating: bool,
    idempotency_key: str | None = None,
    replayed: bool = False,
) -> GatewayError:
    """The one place that decides what a non-success HTTP answer means for the caller."""
    error = body.get("error") if body is not None else None
    error_map: Mapping[str, object] = error if isinstance(error, Mapping) else {}
    raw_code, raw_message = error_map.get("code"), error_map.get("message")
    code = raw_code if isinstance(raw_code, str) else None
    message = raw_message if isinstance(raw_message, str) else f"gateway answered {status_code}"

    def make(cls: type[GatewayError]) -> GatewayError:
        return cls(message, http_status=status_code, gateway_code=code, idempotency_key=idempotency_key,
                   replayed=replayed)

    if status_code == 429 or (status_code == 409 and code == "idempotency_request_in_progress"):
        return make(RetryableGatewayError)
    if status_code >= 500:
        # Reads change nothing, and a flagged 5xx guarantees nothing was done: safe to retry.
        # Any other 5xx on a write may have happened after the charge: outcome unknown.
        if should_retry or not mutating:
            return make(RetryableGatewayError)
        return make(OutcomeUnknownError)
    if code == "idempotency_key_reused":
        return make(IdempotencyConflictError)
    if status_code == 404:
        return make(ChargeNotFoundError)
    if 400 <= status_code < 500:
        return make(PermanentGatewayError)
    # 1xx/3xx should never reach us; we cannot know what happened.
    return make(OutcomeUnknownError if mutating else RetryableGatewayError)


def translate_response(
    status_code: int,
    body: Mapping[str, object] | None,
    *,
    should_retry: bool = False,
    mutating: bool,
    latency_ms: float = 0.0,
    replayed: bool = False,
    idempotency_key: str | None = None,
) -> GatewayResult:
    """Turn one gateway answer into a result, or raise its classified error."""
    if status_code == 402 and body is not None:
        # A decline is an answer, not an error: the payment object rides inside the error.
        error = body.get("error")
        if isinstance(error, Mapping) and isinstance(error.get("payment"), Mapping):
            try:
                return result_from_payment(_mapping(error, "payment"), latency_ms=latency_ms, replayed=replayed)
            except ValueError as exc:
                raise _malformed(exc, status_code, mutating, idempotency_key) from exc
    if not 200 <= status_code < 300:
        raise classify_error(
            status_code, body, should_retry=should_retry, mutating=mutating, idempotency_key=idempotency_key,
            replayed=replayed,
        )
    if body is None:
        raise _malformed(ValueError("empty body"), status_code, mutating, idempotency_key)
    try:
        kind = body.get("object")
        if kind == "payment":
            return result_from_payment(body, latency_ms=latency_ms, replayed=replayed)
        if kind == "refund":
            return result_from_refund(body, latency_ms=latency_ms, replayed=replayed)
        if kind == "idempotency_record":
            return result_from_lookup(body, latency_ms=latency_ms)
        raise ValueError(f"unexpected object {kind!r}")
    except ValueError as exc:
        raise _malformed(exc, status_code, mutating, idempotency_key) from exc


def notification_from_event(event: Mapping[str, object]) -> GatewayNotification:
    """Parse a (signature-verified) webhook event body."""
    try:
        data = _mapping(event, "data")
        obj = _mapping(data, "object")
        kind = obj.get("object")
        if kind == "payment":
            result = result_from_payment(obj)
            payment_id = _opt_str(obj, "payment_id")
        elif kind == "refund":
            result = result_from_refund(obj)
            payment_id = _opt_str(_mapping(obj, "payment"), "payment_id")
        else:
            raise ValueError(f"unexpected object {kind!r}")
        return GatewayNotification(
            event_id=_str(event, "id"),
            event_type=_str(event, "type"),
            occurred_at=_int(event, "created"),
            payment_id=payment_id,
            result=result,
        )
    except ValueError as exc:
        raise InvalidWebhookError(f"malformed webhook event: {exc}") from exc


def _malformed(exc: ValueError, status_code: int, mutating: bool, idempotency_key: str | None) -> GatewayError:
    # We cannot read the answer, so for a write we do not know what happened.
    cls = OutcomeUnknownError if mutating else RetryableGatewayError
    return cls(f"malformed gateway response: {exc}", http_status=status_code, idempotency_key=idempotency_key)


class _MalformedError(ValueError):
    """A gateway payload does not have the shape we expect."""


def _str(obj: Mapping[str, object], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise _MalformedError(f"{key!r} must be a string")
    return value


def _opt_str(obj: Mapping[str, object], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _MalformedError(f"{key!r} must be a string or null")
    return value


def _int(obj: Mapping[str, object], key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _MalformedError(f"{key!r} must be an integer")
    return value


def _mapping(obj: Mapping[str, object], key: str) -> Mapping[str, object]:
    value = obj.get(key)
    if not isinstance(value, Mapping):
        raise _MalformedError(f"{key!r} must be an object")
    return value
