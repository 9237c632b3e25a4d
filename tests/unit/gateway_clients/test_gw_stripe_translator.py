"""Stripe translator: documented PaymentIntent / Refund / Event shapes -> our vocabulary."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest
import stripe

from gateway_clients import (
    ChargeNotFoundError,
    DeclineCode,
    GatewayResult,
    GatewayStatus,
    IdempotencyConflictError,
    InvalidWebhookError,
    OutcomeUnknownError,
    PermanentGatewayError,
    RetryableGatewayError,
)
from gateway_clients.stripe.translator import (
    classify_error,
    normalize_decline_code,
    notification_from_event,
    result_from_payment_intent,
    result_from_refund,
)

# Shapes follow Stripe's API reference for the PaymentIntent object (trimmed to what matters).
BASE_INTENT: dict[str, Any] = {
    "id": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
    "object": "payment_intent",
    "amount": 2000,
    "amount_capturable": 0,
    "amount_received": 0,
    "capture_method": "automatic",
    "currency": "usd",
    "last_payment_error": None,
    "latest_charge": None,
    "metadata": {"payment_id": "pay_123"},
    "next_action": None,
    "payment_method": "pm_1MtwBwLkdIwHu7ixXvBDV5vd",
    "status": "requires_payment_method",
}


def intent(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE_INTENT)
    data.update(changes)
    return data


DECLINED_INSUFFICIENT = intent(
    last_payment_error={
        "code": "card_declined",
        "decline_code": "insufficient_funds",
        "doc_url": "https://stripe.com/docs/error-codes/card-declined",
        "message": "Your card has insufficient funds.",
        "payment_method": {"id": "pm_1", "object": "payment_method", "card": {"brand": "visa", "last4": "9995"}},
        "type": "card_error",
    },
)


def test_declined_intent_with_insufficient_funds() -> None:
    result = result_from_payment_intent(DECLINED_INSUFFICIENT)
    assert result.status is GatewayStatus.DECLINED
    assert result.decline_code is DeclineCode.INSUFFICIENT_FUNDS
    assert result.gateway_ref == "pi_3MtwBwLkdIwHu7ix28a3tqPa"
    assert result.currency == "USD"
    assert (result.amount_authorized, result.amount_captured) == (0, 0)
    assert "9995" not in repr(result)  # card data from last_payment_error never leaks into results


def test_requires_action_carries_the_redirect_url() -> None:
    data = intent(
        status="requires_action",
        next_action={
            "type": "redirect_to_url",
            "redirect_to_url": {
                "return_url": "https://shop.example/return",
                "url": "https://hooks.stripe.com/3d_secure/x",
            },
        },
    )
    result = result_from_payment_intent(data)
    assert result.status is GatewayStatus.REQUIRES_ACTION
    assert result.action_url == "https://hooks.stripe.com/3d_secure/x"
    assert result.decline_code is None


def test_requires_action_via_stripe_sdk_has_no_url() -> None:
    data = intent(status="requires_action", next_action={"type": "use_stripe_sdk", "use_stripe_sdk": {}})
    assert result_from_payment_intent(data).action_url is None


def test_succeeded_intent_is_captured_with_refund_total_from_expanded_charge() -> None:
    data = intent(
        status="succeeded",
        amount_received=2000,
        latest_charge={"id": "ch_1", "object": "charge", "amount": 2000, "amount_refunded": 500},
    )
    result = result_from_payment_intent(data, latency_ms=12.5, replayed=True)
    assert result.status is GatewayStatus.CAPTURED
    assert (result.amount_authorized, result.amount_captured, result.amount_refunded) == (2000, 2000, 500)
    assert result.replayed is True
    assert result.latency_ms == 12.5


def test_requires_capture_is_authorized_for_the_capturable_amount() -> None:
    data = intent(status="requires_capture", capture_method="manual", amount_capturable=2000)
    result = result_from_payment_intent(data)
    assert result.status is GatewayStatus.AUTHORIZED
    assert (result.amount_authorized, result.amount_captured) == (2000, 0)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("requires_confirmation", GatewayStatus.PENDING),
        ("processing", GatewayStatus.PENDING),
        ("canceled", GatewayStatus.CANCELED),
        ("requires_payment_method", GatewayStatus.PENDING),  # no attempt made yet
        ("some_future_status", GatewayStatus.PENDING),  # unknown: reconcile, never fail
    ],
)
def test_other_statuses(raw: str, expected: GatewayStatus) -> None:
    assert result_from_payment_intent(intent(status=raw)).status is expected


@pytest.mark.parametrize(
    ("decline_code", "code", "expected"),
    [
        ("insufficient_funds", "card_declined", DeclineCode.INSUFFICIENT_FUNDS),
        ("generic_decline", "card_declined", DeclineCode.CARD_DECLINED),
        (None, "expired_card", DeclineCode.EXPIRED_CARD),
        (None, "incorrect_cvc", DeclineCode.INCORRECT_CVC),
        ("fraudulent", "card_declined", DeclineCode.FRAUD_SUSPECTED),
        ("stolen_card", "card_declined", DeclineCode.FRAUD_SUSPECTED),
        (None, "processing_error", DeclineCode.PROCESSING_ERROR),
        ("brand_new_code", "card_declined", DeclineCode.CARD_DECLINED),
        (None, None, DeclineCode.CARD_DECLINED),
    ],
)
def test_decline_code_mapping(decline_code: str | None, code: str | None, expected: DeclineCode) -> None:
    assert normalize_decline_code(decline_code, code) is expected


REFUND = {
    "id": "re_1Nispe2eZvKYlo2Cd31jOCgZ",
    "object": "refund",
    "amount": 1000,
    "charge": "ch_1NirD82eZvKYlo2CIvbtLWuY",
    "currency": "usd",
    "metadata": {"refund_id": "ref_1", "payment_id": "pay_123"},
    "payment_intent": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
    "reason": None,
    "status": "succeeded",
}


def test_refund_succeeded() -> None:
    result = result_from_refund(REFUND)
    assert result.status is GatewayStatus.REFUNDED
    assert result.refund_ref == "re_1Nispe2eZvKYlo2Cd31jOCgZ"
    assert result.gateway_ref == "pi_3MtwBwLkdIwHu7ix28a3tqPa"
    assert result.amount_refunded == 1000


def test_refund_with_expanded_charge_reports_the_charge_totals() -> None:
    data = {**REFUND, "charge": {"id": "ch_1", "amount": 2000, "amount_captured": 2000, "amount_refunded": 1500}}
    result = result_from_refund(data)
    assert (result.amount_authorized, result.amount_captured, result.amount_refunded) == (2000, 2000, 1500)


@pytest.mark.parametrize(
    ("raw", "expected"), [("failed", GatewayStatus.REFUND_FAILED), ("pending", GatewayStatus.PENDING)]
)
def test_refund_other_statuses(raw: str, expected: GatewayStatus) -> None:
    result = result_from_refund({**REFUND, "status": raw})
    assert result.status is expected
    assert result.amount_refunded == 0


def test_malformed_intent_is_rejected() -> None:
    with pytest.raises(ValueError):
        result_from_payment_intent({"id": "pi_1", "status": "succeeded"})  # no amount/currency


# -- error classification ------------------------------------------------------------------


def _card_error() -> stripe.CardError:
    body = {
        "error": {
            "code": "card_declined",
            "decline_code": "expired_card",
            "message": "Your card has expired.",
            "type": "card_error",
            "payment_intent": {
                **DECLINED_INSUFFICIENT,
                "last_payment_error": {"code": "expired_card", "type": "card_error"},
            },
        }
    }
    return stripe.CardError("Your card has expired.", None, "card_declined", http_status=402, json_body=body)


def test_card_error_is_a_declined_result_not_an_error() -> None:
    outcome = classify_error(_card_error(), mutating=True, idempotency_key="k")
    assert isinstance(outcome, GatewayResult)
    assert outcome.status is GatewayStatus.DECLINED
    assert outcome.decline_code is DeclineCode.EXPIRED_CARD
    assert outcome.gateway_ref == "pi_3MtwBwLkdIwHu7ix28a3tqPa"


def test_card_error_without_payment_intent_uses_the_error_codes() -> None:
    body = {"error": {"code": "card_declined", "decline_code": "fraudulent", "type": "card_error"}}
    exc = stripe.CardError("declined", None, "card_declined", http_status=402, json_body=body)
    outcome = classify_error(exc, mutating=True)
    assert isinstance(outcome, GatewayResult)
    assert outcome.decline_code is DeclineCode.FRAUD_SUSPECTED
    assert outcome.gateway_ref == ""


def _connection_error(cause: Exception) -> stripe.APIConnectionError:
    try:
        raise stripe.APIConnectionError("network", should_retry=True) from cause
    except stripe.APIConnectionError as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "mutating", "expected"),
    [
        (_connection_error(httpx.ConnectError("refused")), True, RetryableGatewayError),  # never sent
        (_connection_error(httpx.ReadTimeout("slow")), True, OutcomeUnknownError),  # sent, no answer
        (_connection_error(httpx.ReadTimeout("slow")), False, RetryableGatewayError),  # a read: ask again
        (stripe.RateLimitError("slow down", http_status=429), True, RetryableGatewayError),
        (stripe.APIError("boom", http_status=500), True, OutcomeUnknownError),
        (
            stripe.APIError("boom", http_status=500, headers={"Stripe-Should-Retry": "true"}),
            True,
            RetryableGatewayError,
        ),
        (stripe.APIError("boom", http_status=500), False, RetryableGatewayError),
        (stripe.APIError("conflict", http_status=409), True, OutcomeUnknownError),
        (
            stripe.InvalidRequestError("bad", "amount", "parameter_invalid_integer", http_status=400),
            True,
            PermanentGatewayError,
        ),
        (stripe.InvalidRequestError("gone", "id", "resource_missing", http_status=404), False, ChargeNotFoundError),
        (
            stripe.IdempotencyError(
                "Keys for idempotent requests can only be used with the same parameters", http_status=400
            ),
            True,
            IdempotencyConflictError,
        ),
        (stripe.AuthenticationError("bad key", http_status=401), True, PermanentGatewayError),
    ],
)
def test_error_classification(exc: stripe.StripeError, mutating: bool, expected: type[Exception]) -> None:
    outcome = classify_error(exc, mutating=mutating, idempotency_key="ps-p-authorize-0")
    assert type(outcome) is expected
    assert isinstance(outcome, Exception) and getattr(outcome, "idempotency_key", None) == "ps-p-authorize-0"


# -- events --------------------------------------------------------------------------------


def _event(event_type: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "evt_1NG8Du2eZvKYlo2CUI79vXWy",
        "object": "event",
        "api_version": "2023-10-16",
        "created": 1686089970,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "type": event_type,
    }


def test_payment_intent_succeeded_event() -> None:
    n = notification_from_event(_event("payment_intent.succeeded", intent(status="succeeded", amount_received=2000)))
    assert n.event_id == "evt_1NG8Du2eZvKYlo2CUI79vXWy"
    assert n.occurred_at == 1686089970
    assert n.payment_id == "pay_123"
    assert n.result.status is GatewayStatus.CAPTURED


def test_payment_failed_event_carries_the_decline() -> None:
    n = notification_from_event(_event("payment_intent.payment_failed", DECLINED_INSUFFICIENT))
    assert n.result.status is GatewayStatus.DECLINED
    assert n.result.decline_code is DeclineCode.INSUFFICIENT_FUNDS


def test_amount_capturable_updated_event_is_authorized() -> None:
    n = notification_from_event(
        _event("payment_intent.amount_capturable_updated", intent(status="requires_capture", amount_capturable=2000))
    )
    assert n.result.status is GatewayStatus.AUTHORIZED
    assert n.result.amount_authorized == 2000


def test_charge_refunded_event() -> None:
    charge = {
        "id": "ch_1",
        "object": "charge",
        "amount": 2000,
        "amount_captured": 2000,
        "amount_refunded": 2000,
        "currency": "usd",
        "metadata": {"payment_id": "pay_123"},
        "payment_intent": "pi_1",
        "refunded": True,
        "status": "succeeded",
    }
    n = notification_from_event(_event("charge.refunded", charge))
    assert n.result.status is GatewayStatus.REFUNDED
    assert (n.result.gateway_ref, n.result.amount_refunded, n.result.raw_status) == ("pi_1", 2000, "refunded")
    assert n.payment_id == "pay_123"


def test_refund_updated_event() -> None:
    n = notification_from_event(_event("charge.refund.updated", {**REFUND, "status": "failed"}))
    assert n.result.status is GatewayStatus.REFUND_FAILED
    assert n.result.refund_ref == "re_1Nispe2eZvKYlo2Cd31jOCgZ"
    assert n.payment_id == "pay_123"


@pytest.mark.parametrize(
    ("event_type", "status", "raw"),
    [
        ("charge.dispute.created", "needs_response", "dispute_opened"),
        ("charge.dispute.closed", "won", "dispute_won"),
        ("charge.dispute.closed", "lost", "dispute_lost"),
    ],
)
def test_dispute_events(event_type: str, status: str, raw: str) -> None:
    dispute = {
        "id": "dp_1",
        "object": "dispute",
        "amount": 1000,
        "charge": "ch_1",
        "currency": "usd",
        "payment_intent": "pi_1",
        "reason": "fraudulent",
        "status": status,
    }
    n = notification_from_event(_event(event_type, dispute))
    assert n.result.raw_status == raw
    assert n.result.gateway_ref == "pi_1"


def test_unsupported_event_type_is_rejected() -> None:
    with pytest.raises(InvalidWebhookError) as info:
        notification_from_event(_event("customer.created", {"id": "cus_1"}))
    assert info.value.gateway_code == "unsupported_event"


def test_malformed_event_is_rejected() -> None:
    with pytest.raises(InvalidWebhookError):
        notification_from_event(_event("payment_intent.succeeded", {"object": "payment_intent", "status": 3}))
