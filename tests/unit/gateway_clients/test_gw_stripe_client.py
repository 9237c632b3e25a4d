"""StripeGatewayClient through the real SDK on a scripted httpx transport: what is sent
(idempotency key, params) and how answers and failures are classified."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from gateway_clients import (
    ChargeNotFoundError,
    DeclineCode,
    GatewayResult,
    GatewayStatus,
    IdempotencyConflictError,
    OutcomeUnknownError,
    PaymentGateway,
    PermanentGatewayError,
    RetryableGatewayError,
    idempotency_key,
)
from gateway_clients.stripe import StripeGatewayClient

KEY = idempotency_key("pay_1", "authorize", 0)
INTENT = {
    "id": "pi_1",
    "object": "payment_intent",
    "amount": 1500,
    "amount_capturable": 1500,
    "amount_received": 0,
    "currency": "eur",
    "metadata": {"payment_id": "pay_1"},
    "status": "requires_capture",
}

Handler = Callable[[httpx.Request], httpx.Response]


def _run(handler: Handler, scenario: Callable[[StripeGatewayClient], Any]) -> list[httpx.Request]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    async def main() -> None:
        async with StripeGatewayClient(
            "sk_test_123", api_base="http://stripe.test", transport=httpx.MockTransport(record)
        ) as client:
            await scenario(client)

    asyncio.run(main())
    return seen


def _form(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(request.content.decode())


async def _authorize(client: StripeGatewayClient, **overrides: Any) -> GatewayResult:
    kwargs: dict[str, Any] = {
        "payment_id": "pay_1",
        "amount": 1500,
        "currency": "EUR",
        "payment_method_token": "pm_card_visa",
        "capture": False,
        "idempotency_key": KEY,
    }
    kwargs.update(overrides)
    return await client.authorize(**kwargs)


def test_client_satisfies_the_protocol() -> None:
    assert isinstance(StripeGatewayClient("sk_test_123"), PaymentGateway)


def test_authorize_sends_our_key_and_params_and_no_sdk_retry() -> None:
    results: list[GatewayResult] = []

    async def scenario(client: StripeGatewayClient) -> None:
        results.append(await _authorize(client))

    seen = _run(lambda r: httpx.Response(200, json=INTENT), scenario)
    assert len(seen) == 1
    request = seen[0]
    assert request.url.path == "/v1/payment_intents"
    assert request.headers["Idempotency-Key"] == KEY
    form = _form(request)
    assert form["amount"] == ["1500"] and form["currency"] == ["eur"]
    assert form["confirm"] == ["true"] and form["capture_method"] == ["manual"]
    assert form["payment_method"] == ["pm_card_visa"]
    assert form["metadata[payment_id]"] == ["pay_1"]
    assert form["metadata[paystream_idempotency_key]"] == [KEY]
    assert results[0].status is GatewayStatus.AUTHORIZED
    assert results[0].amount_authorized == 1500


def test_replay_header_is_reported() -> None:
    results: list[GatewayResult] = []

    async def scenario(client: StripeGatewayClient) -> None:
        results.append(await _authorize(client, capture=True))

    succeeded = {**INTENT, "status": "succeeded", "amount_received": 1500, "amount_capturable": 0}
    seen = _run(lambda r: httpx.Response(200, json=succeeded, headers={"Idempotent-Replayed": "true"}), scenario)
    assert _form(seen[0])["capture_method"] == ["automatic"]
    assert results[0].replayed is True
    assert results[0].status is GatewayStatus.CAPTURED


def test_card_decline_402_is_a_result() -> None:
    body = {
        "error": {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": "insufficient_funds",
            "message": "Your card has insufficient funds.",
            "payment_intent": {
                **INTENT,
                "status": "requires_payment_method",
                "amount_capturable": 0,
                "last_payment_error": {
                    "type": "card_error",
                    "code": "card_declined",
                    "decline_code": "insufficient_funds",
                },
            },
        }
    }
    results: list[GatewayResult] = []

    async def scenario(client: StripeGatewayClient) -> None:
        results.append(await _authorize(client))

    _run(lambda r: httpx.Response(402, json=body), scenario)
    assert results[0].status is GatewayStatus.DECLINED
    assert results[0].decline_code is DeclineCode.INSUFFICIENT_FUNDS


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (httpx.Response(500, json={"error": {"type": "api_error", "message": "boom"}}), OutcomeUnknownError),
        (
            httpx.Response(503, json={"error": {"type": "api_error"}}, headers={"Stripe-Should-Retry": "true"}),
            RetryableGatewayError,
        ),
        (
            httpx.Response(429, json={"error": {"type": "invalid_request_error", "code": "rate_limit"}}),
            RetryableGatewayError,
        ),
        (
            httpx.Response(
                400, json={"error": {"type": "idempotency_error", "message": "Keys for idempotent requests"}}
            ),
            IdempotencyConflictError,
        ),
        (
            httpx.Response(400, json={"error": {"type": "invalid_request_error", "code": "parameter_invalid_integer"}}),
            PermanentGatewayError,
        ),
        (httpx.Response(200, content=b"not json"), OutcomeUnknownError),
    ],
)
def test_failures_are_classified_once_and_never_retried_by_the_sdk(
    response: httpx.Response, expected: type[Exception]
) -> None:
    async def scenario(client: StripeGatewayClient) -> None:
        with pytest.raises(expected) as info:
            await _authorize(client)
        assert type(info.value) is expected

    seen = _run(lambda r: response, scenario)
    assert len(seen) == 1  # max_network_retries=0: the SDK did not retry on its own


def test_timeout_after_send_is_outcome_unknown_and_connect_error_is_retryable() -> None:
    def read_timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async def expect_unknown(client: StripeGatewayClient) -> None:
        with pytest.raises(OutcomeUnknownError):
            await _authorize(client)

    async def expect_retryable(client: StripeGatewayClient) -> None:
        with pytest.raises(RetryableGatewayError):
            await _authorize(client)

    assert len(_run(read_timeout, expect_unknown)) == 1
    assert len(_run(refused, expect_retryable)) == 1


def test_capture_cancel_refund_send_their_own_keys() -> None:
    refund = {
        "id": "re_1",
        "object": "refund",
        "amount": 500,
        "currency": "eur",
        "payment_intent": "pi_1",
        "status": "succeeded",
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/refunds":
            return httpx.Response(200, json=refund)
        if request.url.path.endswith("/cancel"):
            return httpx.Response(200, json={**INTENT, "status": "canceled"})
        return httpx.Response(200, json={**INTENT, "status": "succeeded", "amount_received": 1000})

    results: list[GatewayResult] = []

    async def scenario(client: StripeGatewayClient) -> None:
        results.append(
            await client.capture(
                gateway_ref="pi_1", amount=1000, currency="EUR", idempotency_key=idempotency_key("pay_1", "capture", 0)
            )
        )
        results.append(await client.cancel(gateway_ref="pi_1", idempotency_key=idempotency_key("pay_1", "cancel", 0)))
        results.append(
            await client.refund(
                gateway_ref="pi_1",
                refund_id="ref_1",
                amount=500,
                currency="EUR",
                idempotency_key=idempotency_key("pay_1", "refund:ref_1", 0),
            )
        )

    seen = _run(handler, scenario)
    assert [r.url.path for r in seen] == [
        "/v1/payment_intents/pi_1/capture",
        "/v1/payment_intents/pi_1/cancel",
        "/v1/refunds",
    ]
    assert [r.headers["Idempotency-Key"] for r in seen] == [
        "ps-pay_1-capture-0",
        "ps-pay_1-cancel-0",
        "ps-pay_1-refund:ref_1-0",
    ]
    assert _form(seen[0])["amount_to_capture"] == ["1000"]
    refund_form = _form(seen[2])
    assert refund_form["metadata[refund_id]"] == ["ref_1"] and refund_form["metadata[payment_id]"] == ["pay_1"]
    assert [r.status for r in results] == [GatewayStatus.CAPTURED, GatewayStatus.CANCELED, GatewayStatus.REFUNDED]
    assert results[2].refund_ref == "re_1"


def test_retrieve_by_reference_and_not_found() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/payment_intents/pi_1":
            return httpx.Response(200, json=INTENT)
        return httpx.Response(404, json={"error": {"type": "invalid_request_error", "code": "resource_missing"}})

    async def scenario(client: StripeGatewayClient) -> None:
        assert (await client.retrieve(gateway_ref="pi_1")).status is GatewayStatus.AUTHORIZED
        with pytest.raises(ChargeNotFoundError):
            await client.retrieve(gateway_ref="pi_missing")

    seen = _run(handler, scenario)
    assert all("Idempotency-Key" not in r.headers for r in seen)  # GETs carry no key


def test_retrieve_by_key_matches_metadata_and_treats_absence_as_unknown() -> None:
    other = {**INTENT, "id": "pi_other", "metadata": {"paystream_idempotency_key": "ps-someone-else-0"}}
    mine = {**INTENT, "metadata": {"paystream_idempotency_key": KEY}}
    pages = [[other, mine], [other]]

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/payment_intents/search"
        assert KEY in request.url.params["query"]
        return httpx.Response(
            200,
            json={
                "object": "search_result",
                "data": pages.pop(0),
                "has_more": False,
                "url": "/v1/payment_intents/search",
            },
        )

    async def scenario(client: StripeGatewayClient) -> None:
        assert (await client.retrieve(idempotency_key=KEY)).gateway_ref == "pi_1"
        with pytest.raises(OutcomeUnknownError) as info:  # search lags: never "not charged"
            await client.retrieve(idempotency_key=KEY)
        assert info.value.gateway_code == "not_found_in_search"

    _run(handler, scenario)


def test_refund_lookup_by_key_uses_the_consistent_list() -> None:
    refund_key = idempotency_key("pay_1", "refund:ref_1", 0)
    listed = {
        "id": "re_1",
        "object": "refund",
        "amount": 500,
        "currency": "eur",
        "payment_intent": "pi_1",
        "status": "succeeded",
        "metadata": {"paystream_idempotency_key": refund_key},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/refunds"
        assert request.url.params["payment_intent"] == "pi_1"
        return httpx.Response(200, json={"object": "list", "data": [listed], "has_more": False, "url": "/v1/refunds"})

    async def scenario(client: StripeGatewayClient) -> None:
        assert (await client.retrieve(gateway_ref="pi_1", idempotency_key=refund_key)).refund_ref == "re_1"
        with pytest.raises(ChargeNotFoundError):
            await client.retrieve(gateway_ref="pi_1", idempotency_key=idempotency_key("pay_1", "refund:ref_2", 0))

    _run(handler, scenario)


@pytest.mark.parametrize("amount", [15.0, True, "1500", 0, -5])
def test_bad_amounts_are_refused_before_any_request(amount: Any) -> None:
    async def scenario(client: StripeGatewayClient) -> None:
        with pytest.raises(PermanentGatewayError) as info:
            await _authorize(client, amount=amount)
        assert info.value.gateway_code == "invalid_amount"

    assert _run(lambda r: httpx.Response(200, json=INTENT), scenario) == []


def test_empty_key_is_refused_so_the_sdk_cannot_invent_one() -> None:
    async def scenario(client: StripeGatewayClient) -> None:
        with pytest.raises(PermanentGatewayError):
            await _authorize(client, idempotency_key="")

    assert _run(lambda r: httpx.Response(200, json=INTENT), scenario) == []


@pytest.mark.parametrize("ref", ["../v1/charges", "pi_1/capture", "pi?x=1", ""])
def test_references_cannot_change_the_path(ref: str) -> None:
    async def scenario(client: StripeGatewayClient) -> None:
        with pytest.raises(PermanentGatewayError):
            await client.cancel(gateway_ref=ref, idempotency_key="ps-p-cancel-0")

    assert _run(lambda r: httpx.Response(200, json=INTENT), scenario) == []
