"""The pure translator: simulated gateway JSON → GatewayResult or a classified error."""

from __future__ import annotations

import pytest

from gateway_clients import (
    ChargeNotFoundError,
    DeclineCode,
    GatewayError,
    GatewayStatus,
    IdempotencyConflictError,
    InvalidWebhookError,
    OutcomeUnknownError,
    PermanentGatewayError,
    RetryableGatewayError,
)
from gateway_clients.simulated.translator import (
    normalize_decline_code,
    notification_from_event,
    translate_response,
)


def _payment(**overrides: object) -> dict[str, object]:
    payment: dict[str, object] = {
        "object": "payment",
        "id": "simpay_1",
        "payment_id": "pay_1",
        "status": "succeeded",
        "amount": 1_000,
        "currency": "EUR",
        "amount_authorized": 1_000,
        "amount_captured": 1_000,
        "amount_refunded": 0,
        "decline_code": None,
        "next_action": None,
    }
    payment.update(overrides)
    return payment


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("processing", GatewayStatus.PENDING),
        ("requires_action", GatewayStatus.REQUIRES_ACTION),
        ("authorized", GatewayStatus.AUTHORIZED),
        ("succeeded", GatewayStatus.CAPTURED),
        ("partially_refunded", GatewayStatus.CAPTURED),
        ("refunded", GatewayStatus.REFUNDED),
        ("declined", GatewayStatus.DECLINED),
        ("canceled", GatewayStatus.CANCELED),
        ("something_new", GatewayStatus.PENDING),  # never guessed as success or failure
    ],
)
def test_payment_statuses_are_normalised(raw: str, expected: GatewayStatus) -> None:
    result = translate_response(200, _payment(status=raw), mutating=True)
    assert result.status is expected
    assert result.raw_status == raw


def test_payment_fields_are_carried_over() -> None:
    body = _payment(
        status="requires_action",
        amount_captured=0,
        next_action={"type": "redirect_to_url", "url": "http://gw/3ds"},
    )
    result = translate_response(200, body, mutating=True, latency_ms=12.5, replayed=True)
    assert result.gateway_ref == "simpay_1"
    assert result.currency == "EUR"
    assert (result.amount_authorized, result.amount_captured) == (1_000, 0)
    assert result.action_url == "http://gw/3ds"
    assert result.latency_ms == 12.5
    assert result.replayed


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("insufficient_funds", DeclineCode.INSUFFICIENT_FUNDS),
        ("generic_decline", DeclineCode.CARD_DECLINED),
        ("expired_card", DeclineCode.EXPIRED_CARD),
        ("incorrect_cvc", DeclineCode.INCORRECT_CVC),
        ("fraudulent", DeclineCode.FRAUD_SUSPECTED),
        ("processing_error", DeclineCode.PROCESSING_ERROR),
        ("brand_new_reason", DeclineCode.CARD_DECLINED),
        (None, None),
    ],
)
def test_decline_codes_are_normalised(raw: str | None, expected: DeclineCode | None) -> None:
    assert normalize_decline_code(raw) is expected


def test_402_decline_is_a_result_not_an_error() -> None:
    payment = _payment(status="declined", amount_authorized=0, amount_captured=0, decline_code="fraudulent")
    body = {"error": {"type": "card_error", "code": "card_declined", "payment": payment}}
    result = translate_response(402, body, mutating=True)
    assert result.status is GatewayStatus.DECLINED
    assert result.decline_code is DeclineCode.FRAUD_SUSPECTED


def test_refund_response_maps_to_refunded_or_refund_failed() -> None:
    payment = _payment(status="partially_refunded", amount_refunded=300)
    body: dict[str, object] = {
        "object": "refund",
        "id": "simre_1",
        "refund_id": "re_1",
        "payment_ref": "simpay_1",
        "amount": 300,
        "currency": "EUR",
        "status": "succeeded",
        "payment": payment,
    }
    result = translate_response(200, body, mutating=True)
    assert result.status is GatewayStatus.REFUNDED
    assert result.refund_ref == "simre_1"
    assert result.amount_refunded == 300
    failed = translate_response(200, body | {"status": "failed"}, mutating=True)
    assert failed.status is GatewayStatus.REFUND_FAILED


def test_lookup_without_a_payment_means_nothing_was_charged() -> None:
    body = {"object": "idempotency_record", "idempotency_key": "k", "payment": None}
    with pytest.raises(ChargeNotFoundError):
        translate_response(200, body, mutating=False)
    found = translate_response(200, body | {"payment": _payment()}, mutating=False)
    assert found.status is GatewayStatus.CAPTURED


def _err(code: str) -> dict[str, object]:
    return {"error": {"type": "x", "code": code, "message": "m"}}


@pytest.mark.parametrize(
    ("status", "body", "should_retry", "mutating", "expected"),
    [
        (429, _err("rate_limited"), False, True, RetryableGatewayError),
        (500, _err("internal_error"), True, True, RetryableGatewayError),
        (500, _err("internal_error"), False, True, OutcomeUnknownError),
        (502, None, False, True, OutcomeUnknownError),
        (503, None, False, False, RetryableGatewayError),  # a read changes nothing
        (400, _err("idempotency_key_reused"), False, True, IdempotencyConflictError),
        (400, _err("amount_too_large"), False, True, PermanentGatewayError),
        (404, _err("resource_missing"), False, False, ChargeNotFoundError),
        (409, _err("idempotency_request_in_progress"), False, True, RetryableGatewayError),
    ],
)
def test_errors_are_classified_once(
    status: int,
    body: dict[str, object] | None,
    should_retry: bool,
    mutating: bool,
    expected: type[GatewayError],
) -> None:
    with pytest.raises(GatewayError) as info:
        translate_response(status, body, should_retry=should_retry, mutating=mutating, idempotency_key="k")
    assert type(info.value) is expected
    assert info.value.http_status == status
    assert info.value.idempotency_key == "k"


def test_unreadable_success_on_a_write_is_outcome_unknown() -> None:
    with pytest.raises(OutcomeUnknownError):
        translate_response(200, {"object": "payment", "id": 5}, mutating=True)
    with pytest.raises(OutcomeUnknownError):
        translate_response(200, None, mutating=True)
    with pytest.raises(RetryableGatewayError):
        translate_response(200, {"object": "mystery"}, mutating=False)


def test_amounts_must_be_integers() -> None:
    with pytest.raises(OutcomeUnknownError):
        translate_response(200, _payment(amount_captured=10.5), mutating=True)
    with pytest.raises(OutcomeUnknownError):
        translate_response(200, _payment(amount_captured=True), mutating=True)


def test_webhook_event_is_parsed_into_a_notification() -> None:
    event = {"id": "simevt_1", "type": "payment.succeeded", "created": 1_700_000_000, "data": {"object": _payment()}}
    notification = notification_from_event(event)
    assert notification.event_id == "simevt_1"
    assert notification.payment_id == "pay_1"
    assert notification.occurred_at == 1_700_000_000
    assert notification.result.status is GatewayStatus.CAPTURED
    with pytest.raises(InvalidWebhookError):
        notification_from_event({"id": "e", "type": "t", "created": 1, "data": {}})
