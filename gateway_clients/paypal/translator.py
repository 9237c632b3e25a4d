"""Pure translation of PayPal Orders v2 / Payments v2 objects into paystream's vocabulary.

No I/O. Inputs are decoded JSON as PayPal documents it: an Order (``/v2/checkout/orders``), an
Authorization, a Capture, a Refund (``/v2/payments/...``), an error body, a webhook event.

PayPal amounts are decimal strings (``{"currency_code": "USD", "value": "10.99"}``); ours are
integer minor units. Conversion is exact (``Decimal``) and refuses anything that would round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
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
    "AUTHORIZATION_STATUSES",
    "CAPTURE_STATUSES",
    "DECLINE_ISSUES",
    "ORDER_STATUSES",
    "PROCESSOR_RESPONSE_CODES",
    "REFUND_STATUSES",
    "SUPPORTED_EVENTS",
    "amount_to_minor",
    "classify_error",
    "minor_to_value",
    "normalize_decline_code",
    "notification_from_event",
    "result_from_authorization",
    "result_from_capture",
    "result_from_order",
    "result_from_refund",
]

# ISO-4217 exponent of the currencies PayPal supports (others are refused).
_EXPONENTS: Final[Mapping[str, int]] = {
    **dict.fromkeys(
        [
            "AUD",
            "BRL",
            "CAD",
            "CNY",
            "CZK",
            "DKK",
            "EUR",
            "HKD",
            "HUF",
            "ILS",
            "MYR",
            "MXN",
            "TWD",
            "NZD",
            "NOK",
            "PHP",
            "PLN",
            "GBP",
            "SGD",
            "SEK",
            "CHF",
            "THB",
            "USD",
        ],
        2,
    ),
    "JPY": 0,
}
# PayPal accepts no decimals for these although ISO gives them two.
_NO_DECIMALS: Final = frozenset({"HUF", "TWD", "JPY"})

# Order.status (without payments yet) -> ours. COMPLETED is decided by its payments.
ORDER_STATUSES: Final[Mapping[str, GatewayStatus]] = {
    "CREATED": GatewayStatus.REQUIRES_ACTION,  # the payer must approve first
    "SAVED": GatewayStatus.PENDING,
    "APPROVED": GatewayStatus.PENDING,  # approved, not yet authorized/captured
    "PAYER_ACTION_REQUIRED": GatewayStatus.REQUIRES_ACTION,
    "VOIDED": GatewayStatus.CANCELED,
}

AUTHORIZATION_STATUSES: Final[Mapping[str, GatewayStatus]] = {
    "CREATED": GatewayStatus.AUTHORIZED,
    "CAPTURED": GatewayStatus.CAPTURED,
    "PARTIALLY_CAPTURED": GatewayStatus.CAPTURED,
    "DENIED": GatewayStatus.DECLINED,
    "VOIDED": GatewayStatus.CANCELED,
    "EXPIRED": GatewayStatus.CANCELED,
    "PENDING": GatewayStatus.PENDING,
}

CAPTURE_STATUSES: Final[Mapping[str, GatewayStatus]] = {
    "COMPLETED": GatewayStatus.CAPTURED,
    "PARTIALLY_REFUNDED": GatewayStatus.CAPTURED,
    "REFUNDED": GatewayStatus.CAPTURED,  # a capture that was refunded still moved money once
    "PENDING": GatewayStatus.PENDING,
    "DECLINED": GatewayStatus.DECLINED,
    "FAILED": GatewayStatus.DECLINED,
}

REFUND_STATUSES: Final[Mapping[str, GatewayStatus]] = {
    "COMPLETED": GatewayStatus.REFUNDED,
    "PENDING": GatewayStatus.PENDING,
    "FAILED": GatewayStatus.REFUND_FAILED,
    "CANCELLED": GatewayStatus.REFUND_FAILED,
}

# processor_response.response_code -> ours (PayPal's documented processor response codes).
PROCESSOR_RESPONSE_CODES: Final[Mapping[str, DeclineCode]] = {
    "5120": DeclineCode.INSUFFICIENT_FUNDS,
    "5400": DeclineCode.EXPIRED_CARD,
    "1380": DeclineCode.EXPIRED_CARD,  # INVALID_EXPIRATION
    "5110": DeclineCode.INCORRECT_CVC,  # CVV2_FAILURE
    "1382": DeclineCode.INCORRECT_CVC,  # INVALID_CARD_VERIFICATION_VALUE
    "00N7": DeclineCode.INCORRECT_CVC,  # CVV2_FAILURE_POSSIBLE_RETRY_WITH_CVV
    "9500": DeclineCode.FRAUD_SUSPECTED,  # SUSPECTED_FRAUD
    "9510": DeclineCode.FRAUD_SUSPECTED,  # SECURITY_VIOLATION
    "9520": DeclineCode.FRAUD_SUSPECTED,  # LOST_OR_STOLEN
    "5150": DeclineCode.FRAUD_SUSPECTED,  # PICKUP_CARD_SPECIAL_CONDITIONS
    "0960": DeclineCode.PROCESSING_ERROR,  # SYSTEM_MALFUNCTION
    "5910": DeclineCode.PROCESSING_ERROR,  # ISSUER_NOT_AVAILABLE_NOT_RETRIABLE
    "5920": DeclineCode.PROCESSING_ERROR,  # ISSUER_NOT_AVAILABLE_RETRIABLE
    "8000": DeclineCode.PROCESSING_ERROR,  # PROCESSOR_SYSTEM_ERROR
    "8100": DeclineCode.PROCESSING_ERROR,  # FATAL_COMMUNICATION_ERROR
    "8110": DeclineCode.PROCESSING_ERROR,  # RETRIABLE_COMMUNICATION_ERROR
    "8220": DeclineCode.PROCESSING_ERROR,  # SYSTEM_UNAVAILABLE
}

# 422 error ``details[].issue`` values that are a decline of the payment, not a bad request.
DECLINE_ISSUES: Final[Mapping[str, DeclineCode]] = {
    "INSTRUMENT_DECLINED": DeclineCode.CARD_DECLINED,
    "TRANSACTION_REFUSED": DeclineCode.CARD_DECLINED,
    "CARD_EXPIRED": DeclineCode.EXPIRED_CARD,
    "PAYER_CANNOT_PAY": DeclineCode.CARD_DECLINED,
    "COMPLIANCE_VIOLATION": DeclineCode.FRAUD_SUSPECTED,
    "MAX_NUMBER_OF_PAYMENT_ATTEMPTS_EXCEEDED": DeclineCode.CARD_DECLINED,
}

SUPPORTED_EVENTS: Final = frozenset(
    {
        "PAYMENT.AUTHORIZATION.CREATED",
        "PAYMENT.AUTHORIZATION.VOIDED",
        "PAYMENT.CAPTURE.COMPLETED",
        "PAYMENT.CAPTURE.PENDING",
        "PAYMENT.CAPTURE.DENIED",
        "PAYMENT.CAPTURE.DECLINED",
        "PAYMENT.CAPTURE.REFUNDED",
        "PAYMENT.CAPTURE.REVERSED",
        "CUSTOMER.DISPUTE.CREATED",
        "CUSTOMER.DISPUTE.RESOLVED",
    }
)


class MalformedPayloadError(ValueError):
    """A PayPal payload does not have the shape we expect."""


# -- money ------------------------------------------------------------------------------------


def minor_to_value(amount: int, currency: str) -> str:
    """Integer minor units -> PayPal's decimal string, exactly (``1099, "USD"`` -> ``"10.99"``)."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise PermanentGatewayError("amount must be int minor units", gateway_code="invalid_amount")
    exponent = _exponent(currency)
    if currency.upper() in _NO_DECIMALS and exponent > 0:
        if amount % 10**exponent:
            raise PermanentGatewayError(f"PayPal takes no decimals for {currency}", gateway_code="invalid_amount")
        return str(amount // 10**exponent)
    if exponent == 0:
        return str(amount)
    units, cents = divmod(amount, 10**exponent)
    return f"{units}.{cents:0{exponent}d}"


def amount_to_minor(amount: Mapping[str, object]) -> tuple[int, str]:
    """PayPal's ``{"currency_code", "value"}`` -> (minor units, currency); never rounds."""
    currency = _str(amount, "currency_code").upper()
    try:
        value = Decimal(_str(amount, "value"))
        exponent = _exponent(currency)
    except (InvalidOperation, PermanentGatewayError) as exc:
        raise MalformedPayloadError(f"bad amount {amount!r}") from exc
    minor = value.scaleb(exponent)
    if minor != minor.to_integral_value() or minor < 0:
        raise MalformedPayloadError(f"amount {value} {currency} is not a whole number of minor units")
    return int(minor), currency


def _exponent(currency: str) -> int:
    exponent = _EXPONENTS.get(currency.upper())
    if exponent is None:
        raise PermanentGatewayError(f"currency {currency!r} not supported by PayPal", gateway_code="invalid_currency")
    return exponent


# -- results ----------------------------------------------------------------------------------


def normalize_decline_code(processor_response: Mapping[str, object] | None) -> DeclineCode:
    if processor_response is not None:
        code = processor_response.get("response_code")
        if isinstance(code, str) and code in PROCESSOR_RESPONSE_CODES:
            return PROCESSOR_RESPONSE_CODES[code]
    return DeclineCode.CARD_DECLINED


def result_from_order(order: Mapping[str, object], *, latency_ms: float = 0.0) -> GatewayResult:
    """An Order -> our result. A COMPLETED order is judged by its authorization/captures."""
    order_id = _str(order, "id")
    raw_status = _str(order, "status")
    payments = _order_payments(order)
    captures = _list(payments, "captures")
    authorizations = _list(payments, "authorizations")
    refunds = _list(payments, "refunds")
    currency = _order_currency(order)
    refunded = sum(_money(r)[0] for r in refunds if _opt_str(r, "status") == "COMPLETED")
    captured = sum(
        _money(c)[0] for c in captures if _opt_str(c, "status") in ("COMPLETED", "PARTIALLY_REFUNDED", "REFUNDED")
    )
    action_url = None
    decline: DeclineCode | None = None
    authorized = 0
    if raw_status == "COMPLETED" and (captures or authorizations):
        if authorizations:
            auth = authorizations[-1]
            auth_status = AUTHORIZATION_STATUSES.get(_str(auth, "status"), GatewayStatus.PENDING)
            authorized = _money(auth)[0] if auth_status is not GatewayStatus.DECLINED else 0
            status = auth_status
        else:
            status = GatewayStatus.PENDING
        if captures:
            capture = captures[-1]
            status = CAPTURE_STATUSES.get(_str(capture, "status"), GatewayStatus.PENDING)
            if captured:
                status = GatewayStatus.CAPTURED  # an earlier capture moved money
            if status is GatewayStatus.DECLINED:
                decline = normalize_decline_code(_opt_mapping(capture, "processor_response"))
            authorized = max(authorized, captured)
        if status is GatewayStatus.DECLINED and decline is None:
            decline = DeclineCode.CARD_DECLINED
    elif raw_status == "COMPLETED":
        status = GatewayStatus.PENDING  # completed without payment details: ask again
    else:
        status = ORDER_STATUSES.get(raw_status, GatewayStatus.PENDING)
        if status is GatewayStatus.REQUIRES_ACTION:
            action_url = _link(order, "payer-action") or _link(order, "approve")
    return GatewayResult(
        status=status,
        gateway_ref=order_id,
        currency=currency,
        amount_authorized=authorized,
        amount_captured=captured,
        amount_refunded=refunded,
        decline_code=decline,
        raw_status=raw_status,
        latency_ms=latency_ms,
        action_url=action_url,
    )


def result_from_authorization(auth: Mapping[str, object], *, order_id: str, latency_ms: float = 0.0) -> GatewayResult:
    raw_status = _str(auth, "status")
    status = AUTHORIZATION_STATUSES.get(raw_status, GatewayStatus.PENDING)
    amount, currency = _money(auth)
    return GatewayResult(
        status=status,
        gateway_ref=_related_order_id(auth) or order_id,
        currency=currency,
        amount_authorized=amount if status is not GatewayStatus.DECLINED else 0,
        decline_code=DeclineCode.CARD_DECLINED if status is GatewayStatus.DECLINED else None,
        raw_status=raw_status,
        latency_ms=latency_ms,
    )


def result_from_capture(capture: Mapping[str, object], *, order_id: str, latency_ms: float = 0.0) -> GatewayResult:
    """A Capture (of an authorization) -> our result; amounts are this capture's."""
    raw_status = _str(capture, "status")
    status = CAPTURE_STATUSES.get(raw_status, GatewayStatus.PENDING)
    amount, currency = _money(capture)
    declined = status is GatewayStatus.DECLINED
    return GatewayResult(
        status=status,
        gateway_ref=_related_order_id(capture) or order_id,
        currency=currency,
        amount_authorized=amount if not declined else 0,
        amount_captured=amount if status is GatewayStatus.CAPTURED else 0,
        decline_code=normalize_decline_code(_opt_mapping(capture, "processor_response")) if declined else None,
        raw_status=raw_status,
        latency_ms=latency_ms,
    )


def result_from_refund(refund: Mapping[str, object], *, order_id: str, latency_ms: float = 0.0) -> GatewayResult:
    """A Refund -> our result; ``amount_refunded`` is the capture's total when PayPal states it."""
    raw_status = _str(refund, "status")
    amount, currency = _money(refund)
    total = amount
    breakdown = _opt_mapping(refund, "seller_payable_breakdown")
    if breakdown is not None:
        total_refunded = _opt_mapping(breakdown, "total_refunded_amount")
        if total_refunded is not None:
            total = amount_to_minor(total_refunded)[0]
    status = REFUND_STATUSES.get(raw_status, GatewayStatus.PENDING)
    return GatewayResult(
        status=status,
        gateway_ref=_related_order_id(refund) or order_id,
        currency=currency,
        amount_refunded=total if status is GatewayStatus.REFUNDED else 0,
        raw_status=raw_status,
        latency_ms=latency_ms,
        refund_ref=_str(refund, "id"),
    )


def voided_result(order_id: str, *, currency: str = "", latency_ms: float = 0.0) -> GatewayResult:
    """``204 No Content`` from a void: PayPal voided the authorization."""
    return GatewayResult(
        status=GatewayStatus.CANCELED, gateway_ref=order_id, currency=currency, raw_status="VOIDED",
        latency_ms=latency_ms,
    )  # fmt: skip


# -- errors -----------------------------------------------------------------------------------


def classify_error(
    status_code: int,
    body: Mapping[str, object] | None,
    *,
    mutating: bool,
    idempotency_key: str | None = None,
    latency_ms: float = 0.0,
) -> GatewayResult | GatewayError:
    """The one place that decides what a non-2xx PayPal answer means. Declines are results."""
    body = body or {}
    name = _opt_str_lenient(body, "name") or _opt_str_lenient(body, "error")
    message = _opt_str_lenient(body, "message") or _opt_str_lenient(body, "error_description")
    issues = [issue for d in _list_lenient(body, "details") if isinstance(issue := d.get("issue"), str)]
    code = issues[0] if issues else name
    text = message or f"PayPal answered {status_code}"

    def make(cls: type[GatewayError]) -> GatewayError:
        return cls(text, http_status=status_code, gateway_code=code, idempotency_key=idempotency_key)

    if status_code == 422:
        for issue in issues:
            if issue in DECLINE_ISSUES:
                return GatewayResult(
                    status=GatewayStatus.DECLINED,
                    gateway_ref="",
                    currency="",
                    decline_code=DECLINE_ISSUES[issue],
                    raw_status=issue,
                    latency_ms=latency_ms,
                )
        if "DUPLICATE_REQUEST_ID" in issues:
            return make(IdempotencyConflictError)
    if status_code == 429:
        return make(RetryableGatewayError)
    if status_code >= 500 or status_code == 409:
        # A write may have been carried out; a read can simply be asked again.
        return make(OutcomeUnknownError if mutating else RetryableGatewayError)
    if status_code == 404:
        return make(ChargeNotFoundError)
    if 400 <= status_code < 500:
        return make(PermanentGatewayError)
    return make(OutcomeUnknownError if mutating else RetryableGatewayError)


# -- webhooks ---------------------------------------------------------------------------------


def notification_from_event(event: Mapping[str, object]) -> GatewayNotification:
    """Parse a signature-verified PayPal webhook event."""
    try:
        event_type = _str(event, "event_type")
        if event_type not in SUPPORTED_EVENTS:
            raise InvalidWebhookError(f"unsupported event type {event_type!r}", gateway_code="unsupported_event")
        resource = _mapping(event, "resource")
        payment_id = _opt_str(resource, "custom_id")
        if event_type.startswith("PAYMENT.AUTHORIZATION."):
            result = result_from_authorization(resource, order_id=_str(resource, "id"))
        elif event_type in ("PAYMENT.CAPTURE.REFUNDED", "PAYMENT.CAPTURE.REVERSED"):
            result = result_from_refund(resource, order_id=_capture_id_of_refund(resource) or "")
        elif event_type.startswith("PAYMENT.CAPTURE."):
            result = result_from_capture(resource, order_id=_str(resource, "id"))
        else:
            result = _result_from_dispute(event_type, resource)
            payment_id = None
        return GatewayNotification(
            event_id=_str(event, "id"),
            event_type=event_type,
            occurred_at=_unix(_str(event, "create_time")),
            payment_id=payment_id,
            result=result,
        )
    except MalformedPayloadError as exc:
        raise InvalidWebhookError(f"malformed PayPal event: {exc}", gateway_code="malformed_event") from exc


def _result_from_dispute(event_type: str, dispute: Mapping[str, object]) -> GatewayResult:
    if event_type == "CUSTOMER.DISPUTE.CREATED":
        raw = "dispute_opened"
    else:
        outcome = _opt_mapping(dispute, "dispute_outcome") or {}
        code = _opt_str(outcome, "outcome_code")
        raw = "dispute_won" if code == "RESOLVED_SELLER_FAVOUR" else "dispute_lost"
    amount = _opt_mapping(dispute, "dispute_amount")
    value, currency = amount_to_minor(amount) if amount is not None else (0, "")
    transactions = _list(dispute, "disputed_transactions")
    ref = _opt_str(transactions[0], "seller_transaction_id") if transactions else None
    return GatewayResult(
        status=GatewayStatus.CAPTURED, gateway_ref=ref or _str(dispute, "dispute_id"), currency=currency,
        amount_captured=value, raw_status=raw,
    )  # fmt: skip


def _unix(timestamp: str) -> int:
    try:
        return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp())
    except ValueError as exc:
        raise MalformedPayloadError(f"bad timestamp {timestamp!r}") from exc


# -- field helpers ----------------------------------------------------------------------------


def _order_payments(order: Mapping[str, object]) -> Mapping[str, object]:
    units = _list(order, "purchase_units")
    if not units:
        return {}
    return _opt_mapping(units[0], "payments") or {}


def _order_currency(order: Mapping[str, object]) -> str:
    units = _list(order, "purchase_units")
    if units:
        amount = _opt_mapping(units[0], "amount")
        if amount is not None:
            return _str(amount, "currency_code").upper()
    return ""


def _money(obj: Mapping[str, object]) -> tuple[int, str]:
    return amount_to_minor(_mapping(obj, "amount"))


def _related_order_id(obj: Mapping[str, object]) -> str | None:
    supplementary = _opt_mapping(obj, "supplementary_data")
    related = _opt_mapping(supplementary, "related_ids") if supplementary is not None else None
    return _opt_str(related, "order_id") if related is not None else None


def _capture_id_of_refund(refund: Mapping[str, object]) -> str | None:
    for link in _list(refund, "links"):
        if _opt_str(link, "rel") == "up":
            href = _opt_str(link, "href") or ""
            return href.rstrip("/").rsplit("/", 1)[-1] or None
    return None


def _link(obj: Mapping[str, object], rel: str) -> str | None:
    for link in _list(obj, "links"):
        if _opt_str(link, "rel") == rel:
            return _opt_str(link, "href")
    return None


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


def _opt_str_lenient(obj: Mapping[str, object], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) else None


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


def _list(obj: Mapping[str, object], key: str) -> Sequence[Mapping[str, object]]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise MalformedPayloadError(f"{key!r} must be a list of objects")
    return value


def _list_lenient(obj: Mapping[str, object], key: str) -> Sequence[Mapping[str, object]]:
    value = obj.get(key)
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, Mapping)]
