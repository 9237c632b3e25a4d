"""Pure translation of Adyen Checkout API v71 answers and webhooks into paystream's vocabulary.

No I/O. Adyen amounts are already integer minor units (``{"currency": "EUR", "value": 1000}``).

Modifications (capture, cancel, refund) are asynchronous at Adyen: the API answers
``status: "received"`` and the outcome arrives as a webhook (CAPTURE, CANCELLATION, REFUND with
``success`` true/false). Those answers therefore translate to PENDING.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Final

from gateway_clients.protocol import (
    ChargeNotFoundError,
    DeclineCode,
    GatewayError,
    GatewayNotification,
    GatewayResult,
    GatewayStatus,
    InvalidWebhookError,
    OutcomeUnknownError,
    PermanentGatewayError,
    RetryableGatewayError,
)

__all__ = [
    "EVENT_CODES",
    "REFUSAL_REASON_CODES",
    "RESULT_CODES",
    "MalformedPayloadError",
    "classify_error",
    "normalize_refusal",
    "notification_from_item",
    "payment_id_from_reference",
    "result_from_modification",
    "result_from_payment",
]

# resultCode of /payments -> ours. Authorised is refined by whether capture was requested.
RESULT_CODES: Final[Mapping[str, GatewayStatus]] = {
    "Authorised": GatewayStatus.AUTHORIZED,
    "Refused": GatewayStatus.DECLINED,
    "Error": GatewayStatus.DECLINED,  # processing failed; nothing was charged
    "Cancelled": GatewayStatus.CANCELED,
    "Pending": GatewayStatus.PENDING,
    "Received": GatewayStatus.PENDING,
    "RedirectShopper": GatewayStatus.REQUIRES_ACTION,
    "IdentifyShopper": GatewayStatus.REQUIRES_ACTION,
    "ChallengeShopper": GatewayStatus.REQUIRES_ACTION,
    "PresentToShopper": GatewayStatus.REQUIRES_ACTION,
    # Partial authorisation is never requested by us: leave it for reconciliation.
    "PartiallyAuthorised": GatewayStatus.PENDING,
}

# refusalReasonCode (Adyen's documented list) -> ours; unlisted codes are card_declined.
REFUSAL_REASON_CODES: Final[Mapping[str, DeclineCode]] = {
    "12": DeclineCode.INSUFFICIENT_FUNDS,  # Not enough balance
    "6": DeclineCode.EXPIRED_CARD,  # Expired Card
    "24": DeclineCode.INCORRECT_CVC,  # CVC Declined
    "14": DeclineCode.FRAUD_SUSPECTED,  # Acquirer Fraud
    "20": DeclineCode.FRAUD_SUSPECTED,  # FRAUD
    "22": DeclineCode.FRAUD_SUSPECTED,  # FRAUD-CANCELLED
    "31": DeclineCode.FRAUD_SUSPECTED,  # Issuer Suspected Fraud
    "4": DeclineCode.PROCESSING_ERROR,  # Acquirer Error
    "9": DeclineCode.PROCESSING_ERROR,  # Issuer Unavailable
    "2": DeclineCode.CARD_DECLINED,  # Refused
    "5": DeclineCode.CARD_DECLINED,  # Blocked Card
    "27": DeclineCode.CARD_DECLINED,  # Declined Non Generic
}

# Webhook eventCode -> (status if success, status if not success).
EVENT_CODES: Final[Mapping[str, tuple[GatewayStatus, GatewayStatus]]] = {
    "AUTHORISATION": (GatewayStatus.AUTHORIZED, GatewayStatus.DECLINED),
    "CAPTURE": (GatewayStatus.CAPTURED, GatewayStatus.AUTHORIZED),  # failed capture: still authorised
    "CAPTURE_FAILED": (GatewayStatus.AUTHORIZED, GatewayStatus.AUTHORIZED),
    "CANCELLATION": (GatewayStatus.CANCELED, GatewayStatus.PENDING),
    "REFUND": (GatewayStatus.REFUNDED, GatewayStatus.REFUND_FAILED),
    "REFUND_FAILED": (GatewayStatus.REFUND_FAILED, GatewayStatus.REFUND_FAILED),
    "CHARGEBACK": (GatewayStatus.CAPTURED, GatewayStatus.CAPTURED),
    "NOTIFICATION_OF_CHARGEBACK": (GatewayStatus.CAPTURED, GatewayStatus.CAPTURED),
    "CHARGEBACK_REVERSED": (GatewayStatus.CAPTURED, GatewayStatus.CAPTURED),
}
_DISPUTE_RAW: Final[Mapping[str, str]] = {
    "NOTIFICATION_OF_CHARGEBACK": "dispute_opened",
    "CHARGEBACK": "dispute_lost",
    "CHARGEBACK_REVERSED": "dispute_won",
}

_KEY_RE: Final = re.compile(r"^ps-(?P<payment_id>.+)-(?P<operation>[A-Za-z0-9_:.]+)-(?P<attempt>\d+)$")


class MalformedPayloadError(ValueError):
    """An Adyen payload does not have the shape we expect."""


def normalize_refusal(code: str | None) -> DeclineCode:
    if code is not None and code in REFUSAL_REASON_CODES:
        return REFUSAL_REASON_CODES[code]
    return DeclineCode.CARD_DECLINED


def result_from_payment(
    payment: Mapping[str, object],
    *,
    capture_requested: bool,
    amount: int,
    currency: str,
    latency_ms: float = 0.0,
    replayed: bool = False,
) -> GatewayResult:
    """A ``/payments`` response. ``amount``/``currency`` are the request's: Adyen echoes the
    amount only for some results. With immediate capture (``captureDelayHours: 0``) an
    ``Authorised`` payment is captured by Adyen without a further call, so it is CAPTURED."""
    raw = _str(payment, "resultCode")
    status = RESULT_CODES.get(raw, GatewayStatus.PENDING)
    if status is GatewayStatus.AUTHORIZED and capture_requested:
        status = GatewayStatus.CAPTURED
    echoed = _opt_mapping(payment, "amount")
    if echoed is not None:
        amount, currency = _int(echoed, "value"), _str(echoed, "currency")
    decline = None
    if status is GatewayStatus.DECLINED:
        code = payment.get("refusalReasonCode")
        decline = (
            DeclineCode.PROCESSING_ERROR
            if raw == "Error"
            else normalize_refusal(str(code) if isinstance(code, str | int) and not isinstance(code, bool) else None)
        )
    action_url = None
    if status is GatewayStatus.REQUIRES_ACTION:
        action = _opt_mapping(payment, "action")
        action_url = _opt_str(action, "url") if action is not None else None
    authorized = amount if status in (GatewayStatus.AUTHORIZED, GatewayStatus.CAPTURED) else 0
    return GatewayResult(
        status=status,
        gateway_ref=_opt_str(payment, "pspReference") or "",
        currency=currency.upper(),
        amount_authorized=authorized,
        amount_captured=amount if status is GatewayStatus.CAPTURED else 0,
        decline_code=decline,
        raw_status=raw,
        latency_ms=latency_ms,
        action_url=action_url,
        replayed=replayed,
    )


def result_from_modification(
    modification: Mapping[str, object],
    *,
    refund: bool = False,
    latency_ms: float = 0.0,
    replayed: bool = False,
) -> GatewayResult:
    """A ``/captures``, ``/cancels`` or ``/refunds`` response: accepted, outcome by webhook."""
    raw = _str(modification, "status")
    if raw != "received":
        raise MalformedPayloadError(f"unexpected modification status {raw!r}")
    amount = _opt_mapping(modification, "amount")
    currency = _str(amount, "currency").upper() if amount is not None else ""
    return GatewayResult(
        status=GatewayStatus.PENDING,
        gateway_ref=_str(modification, "paymentPspReference"),
        currency=currency,
        raw_status=raw,
        latency_ms=latency_ms,
        refund_ref=_str(modification, "pspReference") if refund else None,
        replayed=replayed,
    )


def classify_error(
    status_code: int,
    body: Mapping[str, object] | None,
    *,
    mutating: bool,
    transient: bool = False,
    idempotency_key: str | None = None,
) -> GatewayError:
    """The one place that decides what a non-2xx Adyen answer means for the caller.

    Adyen's error body: ``{"status", "errorCode", "message", "errorType", "pspReference"}``.
    """
    body = body or {}
    code_value = body.get("errorCode")
    code = code_value if isinstance(code_value, str) else None
    message_value = body.get("message")
    message = message_value if isinstance(message_value, str) else f"Adyen answered {status_code}"

    def make(cls: type[GatewayError]) -> GatewayError:
        return cls(message, http_status=status_code, gateway_code=code, idempotency_key=idempotency_key)

    if status_code == 429:
        return make(RetryableGatewayError)
    if code == "704":
        # "Request already processed or in progress": the first request's outcome is not known here.
        return make(OutcomeUnknownError if mutating else RetryableGatewayError)
    if status_code >= 500:
        # Adyen flags errors that are safe to retry with the Transient-Error header.
        return make(RetryableGatewayError if transient or not mutating else OutcomeUnknownError)
    if status_code == 404:
        return make(ChargeNotFoundError)
    if 400 <= status_code < 500:
        return make(PermanentGatewayError)
    return make(OutcomeUnknownError if mutating else RetryableGatewayError)


def payment_id_from_reference(reference: str | None) -> str | None:
    """Our payment id from a merchantReference: the payment id itself (payments) or an
    idempotency key ``ps-<payment_id>-<operation>-<attempt>`` (modifications)."""
    if not reference:
        return None
    match = _KEY_RE.match(reference)
    return match.group("payment_id") if match else reference


def notification_from_item(item: Mapping[str, object], *, event_id: str | None = None) -> GatewayNotification:
    """One verified ``NotificationRequestItem`` -> our notification."""
    try:
        event_code = _str(item, "eventCode")
        statuses = EVENT_CODES.get(event_code)
        if statuses is None:
            raise InvalidWebhookError(f"unsupported eventCode {event_code!r}", gateway_code="unsupported_event")
        success = _str(item, "success")
        if success not in ("true", "false"):
            raise MalformedPayloadError("success must be 'true' or 'false'")
        ok = success == "true"
        status = statuses[0] if ok else statuses[1]
        amount_map = _mapping(item, "amount")
        amount, currency = _int(amount_map, "value"), _str(amount_map, "currency").upper()
        psp = _str(item, "pspReference")
        original = _opt_str(item, "originalReference")
        payment_ref = original or psp
        is_refund = event_code in ("REFUND", "REFUND_FAILED")
        raw = _DISPUTE_RAW.get(event_code, f"{event_code}:{success}")
        decline = None
        if status is GatewayStatus.DECLINED:
            additional = _opt_mapping(item, "additionalData") or {}
            decline = normalize_refusal(_opt_str(additional, "refusalReasonCode"))
        result = GatewayResult(
            status=status,
            gateway_ref=payment_ref,
            currency=currency,
            amount_authorized=amount if status is GatewayStatus.AUTHORIZED and event_code == "AUTHORISATION" else 0,
            amount_captured=amount if event_code == "CAPTURE" and ok else 0,
            amount_refunded=amount if is_refund and status is GatewayStatus.REFUNDED else 0,
            decline_code=decline,
            raw_status=raw,
            refund_ref=psp if is_refund else None,
        )
        reference = _opt_str(item, "merchantReference")
        return GatewayNotification(
            event_id=event_id or f"{psp}:{event_code}:{success}",
            event_type=event_code,
            occurred_at=_event_time(_opt_str(item, "eventDate")),
            payment_id=payment_id_from_reference(reference),
            result=result,
        )
    except MalformedPayloadError as exc:
        raise InvalidWebhookError(f"malformed Adyen notification: {exc}", gateway_code="malformed_event") from exc


def _event_time(value: str | None) -> int:
    if not value:
        return 0
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError as exc:
        raise MalformedPayloadError(f"bad eventDate {value!r}") from exc


def _str(obj: Mapping[str, object], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise MalformedPayloadError(f"{key!r} must be a string")
    return value


def _opt_str(obj: Mapping[str, object], key: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise MalformedPayloadError(f"{key!r} must be a string or null")


def _int(obj: Mapping[str, object], key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedPayloadError(f"{key!r} must be an integer")
    return value


def _mapping(obj: Mapping[str, object], key: str) -> Mapping[str, object]:
    value = obj.get(key)
    if not isinstance(value, Mapping):
        raise MalformedPayloadError(f"{key!r} must be an object")
    return value


def _opt_mapping(obj: Mapping[str, object], key: str) -> Mapping[str, object] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise MalformedPayloadError(f"{key!r} must be an object")
    return value
