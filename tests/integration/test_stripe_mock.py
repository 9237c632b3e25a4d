"""StripeGatewayClient against a real stripe-mock (official Stripe API mock).

stripe-mock validates every request against Stripe's OpenAPI spec and answers with fixtures:
it does not simulate declines, idempotent replays or state. So these tests pin down what it
really checks: that our requests are valid Stripe API calls (a wrong parameter is a 400 here),
that the SDK path works end to end, that the idempotency key we pass is the one on the wire
(seen through an httpx transport wrapping the real one), and how fixture answers translate.

Skipped when stripe-mock is unreachable, except in CI (env ``CI`` set), where that fails.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from gateway_clients import GatewayStatus, PermanentGatewayError, idempotency_key
from gateway_clients.stripe import StripeGatewayClient
from gateway_clients.stripe.translator import PAYMENT_INTENT_STATUSES

pytestmark = pytest.mark.integration

API_BASE = os.environ.get("PAYSTREAM_STRIPE_API_BASE", "http://127.0.0.1:12111")
API_KEY = os.environ.get("PAYSTREAM_STRIPE_API_KEY", "sk_test_123")


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module", autouse=True)
def _stripe_mock() -> None:
    if _reachable(API_BASE):
        return
    if os.environ.get("CI"):
        pytest.fail(f"stripe-mock is not reachable at {API_BASE} (CI must run it)")
    pytest.skip(f"stripe-mock is not reachable at {API_BASE}")


class RecordingTransport(httpx.AsyncBaseTransport):
    """Wraps the real transport and keeps every request that went on the wire."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.requests: list[httpx.Request] = []
        self.responses: list[httpx.Response] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = await self._inner.handle_async_request(request)
        self.responses.append(response)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


Scenario = Callable[[StripeGatewayClient, RecordingTransport], Awaitable[None]]


def _run(scenario: Scenario) -> RecordingTransport:
    transport = RecordingTransport()

    async def main() -> None:
        async with StripeGatewayClient(API_KEY, api_base=API_BASE, transport=transport, timeout_s=10.0) as client:
            await scenario(client, transport)

    asyncio.run(main())
    return transport


def _form(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(request.content.decode())


def _expected_status(raw: str) -> GatewayStatus:
    if raw == "requires_payment_method":  # stripe-mock's fixture carries a last_payment_error
        return GatewayStatus.DECLINED
    return PAYMENT_INTENT_STATUSES.get(raw, GatewayStatus.PENDING)


@pytest.mark.parametrize("capture", [True, False])
def test_authorize_sends_our_key_and_a_valid_request(capture: bool) -> None:
    key = idempotency_key("pay_it_1", "authorize", 0)

    async def scenario(client: StripeGatewayClient, transport: RecordingTransport) -> None:
        result = await client.authorize(
            payment_id="pay_it_1",
            amount=1234,
            currency="EUR",
            payment_method_token="pm_card_visa",
            capture=capture,
            idempotency_key=key,
            metadata={"order_id": "ord_1"},
        )
        assert result.gateway_ref.startswith("pi_")
        assert result.currency == "EUR"
        assert result.status is _expected_status(result.raw_status)

    transport = _run(scenario)
    assert len(transport.requests) == 1  # no SDK retry
    request, response = transport.requests[0], transport.responses[0]
    assert request.method == "POST" and request.url.path == "/v1/payment_intents"
    assert request.headers["Idempotency-Key"] == key
    assert response.status_code == 200  # stripe-mock validated the parameters against the spec
    assert response.headers.get("Idempotency-Key") == key  # and saw the same key
    form = _form(request)
    assert form["capture_method"] == ["automatic" if capture else "manual"]
    assert form["confirm"] == ["true"]
    assert form["amount"] == ["1234"]
    assert form["metadata[payment_id]"] == ["pay_it_1"]
    assert form["metadata[order_id]"] == ["ord_1"]


def test_capture_cancel_refund_retrieve() -> None:
    keys = {
        "capture": idempotency_key("pay_it_2", "capture", 0),
        "cancel": idempotency_key("pay_it_2", "cancel", 0),
        "refund": idempotency_key("pay_it_2", "refund:ref_1", 0),
    }

    async def scenario(client: StripeGatewayClient, transport: RecordingTransport) -> None:
        captured = await client.capture(
            gateway_ref="pi_it_2", amount=600, currency="EUR", idempotency_key=keys["capture"]
        )
        assert captured.gateway_ref == "pi_it_2"  # stripe-mock echoes the path id
        canceled = await client.cancel(gateway_ref="pi_it_2", idempotency_key=keys["cancel"])
        assert canceled.gateway_ref == "pi_it_2"
        refund = await client.refund(
            gateway_ref="pi_it_2", refund_id="ref_1", amount=300, currency="EUR", idempotency_key=keys["refund"]
        )
        assert refund.refund_ref is not None and refund.refund_ref.startswith("re_")
        assert refund.status is GatewayStatus.REFUNDED  # the fixture refund is "succeeded"
        retrieved = await client.retrieve(gateway_ref="pi_it_2")
        assert retrieved.gateway_ref == "pi_it_2"
        assert retrieved.status is _expected_status(retrieved.raw_status)

    transport = _run(scenario)
    sent = [(r.method, r.url.path, r.headers.get("Idempotency-Key")) for r in transport.requests]
    assert sent == [
        ("POST", "/v1/payment_intents/pi_it_2/capture", keys["capture"]),
        ("POST", "/v1/payment_intents/pi_it_2/cancel", keys["cancel"]),
        ("POST", "/v1/refunds", keys["refund"]),
        ("GET", "/v1/payment_intents/pi_it_2", None),
    ]
    assert all(r.status_code == 200 for r in transport.responses)
    assert _form(transport.requests[0])["amount_to_capture"] == ["600"]
    refund_form = _form(transport.requests[2])
    assert refund_form["payment_intent"] == ["pi_it_2"] and refund_form["amount"] == ["300"]


def test_rejected_credentials_are_permanent() -> None:
    """stripe-mock refuses keys that do not look like test secret keys (401), as Stripe does."""
    transport = RecordingTransport()

    async def main() -> None:
        async with StripeGatewayClient("not_a_key", api_base=API_BASE, transport=transport) as client:
            with pytest.raises(PermanentGatewayError) as info:
                await client.retrieve(gateway_ref="pi_it_4")
            assert info.value.http_status == 401

    asyncio.run(main())
    assert len(transport.requests) == 1


def test_detach_payment_method_is_a_valid_stripe_call() -> None:
    """Removing a saved method detaches it at Stripe: POST /v1/payment_methods/{id}/detach under
    our deterministic key (stripe-mock validates the call against Stripe's OpenAPI spec)."""
    key = "ps-pm_it_1-detach"

    async def scenario(client: StripeGatewayClient, transport: RecordingTransport) -> None:
        await client.detach_payment_method(payment_method_token="pm_card_visa", idempotency_key=key)

    transport = _run(scenario)
    assert [(r.method, r.url.path, r.headers.get("Idempotency-Key")) for r in transport.requests] == [
        ("POST", "/v1/payment_methods/pm_card_visa/detach", key)]
    assert [r.status_code for r in transport.responses] == [200]


def test_detach_with_rejected_credentials_is_permanent() -> None:
    async def main() -> None:
        async with StripeGatewayClient("not_a_key", api_base=API_BASE, timeout_s=10.0) as client:
            with pytest.raises(PermanentGatewayError) as info:
                await client.detach_payment_method(payment_method_token="pm_card_visa",
                                                   idempotency_key="ps-pm_it_2-detach")
            assert info.value.http_status == 401

    asyncio.run(main())
