"""PayPal: translator (documented shapes), REST client against a local aiohttp server, and
webhook verification with a locally generated certificate."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from gw_fake_server import FakeServer, Reply, fixture, serve

from gateway_clients import (
    ChargeNotFoundError,
    DeclineCode,
    GatewayResult,
    GatewayStatus,
    InvalidWebhookError,
    OutcomeUnknownError,
    PaymentGateway,
    PermanentGatewayError,
    RetryableGatewayError,
    idempotency_key,
)
from gateway_clients.paypal import PayPalGatewayClient, PayPalWebhookVerifier
from gateway_clients.paypal.client import request_id
from gateway_clients.paypal.translator import (
    amount_to_minor,
    classify_error,
    minor_to_value,
    notification_from_event,
    result_from_capture,
    result_from_order,
    result_from_refund,
)
from gateway_clients.paypal.webhooks import check_cert_url, signed_message

KEY = idempotency_key("pay_123", "authorize", 0)

# -- money -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minor", "currency", "value"),
    [
        (1099, "USD", "10.99"),
        (5, "EUR", "0.05"),
        (100000, "USD", "1000.00"),
        (500, "JPY", "500"),
        (150000, "HUF", "1500"),
    ],
)
def test_minor_units_round_trip(minor: int, currency: str, value: str) -> None:
    assert minor_to_value(minor, currency) == value
    assert amount_to_minor({"currency_code": currency, "value": value}) == (minor, currency)


def test_amounts_that_would_round_are_refused() -> None:
    with pytest.raises(PermanentGatewayError):
        minor_to_value(150050, "HUF")  # PayPal takes no decimals for HUF
    with pytest.raises(PermanentGatewayError):
        minor_to_value(100, "XYZ")
    with pytest.raises(PermanentGatewayError):
        minor_to_value(10.5, "USD")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        amount_to_minor({"currency_code": "USD", "value": "10.999"})


# -- translator --------------------------------------------------------------------------------


def test_completed_capture_order() -> None:
    result = result_from_order(fixture("paypal/order_completed_capture.json"))
    assert result.status is GatewayStatus.CAPTURED
    assert (result.amount_authorized, result.amount_captured, result.amount_refunded) == (10000, 10000, 0)
    assert result.gateway_ref == "5O190127TN364715T"
    assert result.currency == "USD"
    assert "7704" not in repr(result)


def test_completed_authorize_order() -> None:
    result = result_from_order(fixture("paypal/order_completed_authorize.json"))
    assert result.status is GatewayStatus.AUTHORIZED
    assert (result.amount_authorized, result.amount_captured) == (10000, 0)


def test_payer_action_required_order() -> None:
    result = result_from_order(fixture("paypal/order_payer_action_required.json"))
    assert result.status is GatewayStatus.REQUIRES_ACTION
    assert result.action_url == "https://www.paypal.com/checkoutnow?token=5O190127TN364715T"


def test_declined_capture_maps_the_processor_code() -> None:
    order = fixture("paypal/order_completed_capture.json")
    capture = order["purchase_units"][0]["payments"]["captures"][0]
    capture.update(status="DECLINED", processor_response={"response_code": "5120"})
    result = result_from_order(order)
    assert result.status is GatewayStatus.DECLINED
    assert result.decline_code is DeclineCode.INSUFFICIENT_FUNDS
    assert result.amount_captured == 0


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("5120", DeclineCode.INSUFFICIENT_FUNDS),
        ("5400", DeclineCode.EXPIRED_CARD),
        ("5110", DeclineCode.INCORRECT_CVC),
        ("9500", DeclineCode.FRAUD_SUSPECTED),
        ("9520", DeclineCode.FRAUD_SUSPECTED),
        ("8220", DeclineCode.PROCESSING_ERROR),
        ("5100", DeclineCode.CARD_DECLINED),
        ("ZZZZ", DeclineCode.CARD_DECLINED),
    ],
)
def test_processor_response_codes(code: str, expected: DeclineCode) -> None:
    capture = {**fixture("paypal/capture_declined.json"), "processor_response": {"response_code": code}}
    assert result_from_capture(capture, order_id="o").decline_code is expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("COMPLETED", GatewayStatus.CAPTURED), ("PENDING", GatewayStatus.PENDING), ("DECLINED", GatewayStatus.DECLINED)],
)
def test_capture_statuses(raw: str, expected: GatewayStatus) -> None:
    result = result_from_capture({**fixture("paypal/capture_completed.json"), "status": raw}, order_id="fallback")
    assert result.status is expected
    assert result.gateway_ref == "8PT597110X687430LKGECATA"  # from supplementary_data.related_ids


def test_refund_uses_the_total_refunded() -> None:
    result = result_from_refund(fixture("paypal/refund_completed.json"), order_id="o1")
    assert result.status is GatewayStatus.REFUNDED
    assert result.refund_ref == "1JU08902781691411"
    assert result.amount_refunded == 1599


def test_instrument_declined_422_is_a_decline() -> None:
    outcome = classify_error(422, fixture("paypal/error_instrument_declined.json"), mutating=True)
    assert isinstance(outcome, GatewayResult)
    assert outcome.status is GatewayStatus.DECLINED and outcome.decline_code is DeclineCode.CARD_DECLINED


@pytest.mark.parametrize(
    ("status", "body", "mutating", "expected"),
    [
        (400, fixture("paypal/error_invalid_request.json"), True, PermanentGatewayError),
        (404, {"name": "RESOURCE_NOT_FOUND"}, False, ChargeNotFoundError),
        (429, {"name": "RATE_LIMIT_REACHED"}, True, RetryableGatewayError),
        (500, {"name": "INTERNAL_SERVER_ERROR"}, True, OutcomeUnknownError),
        (503, None, False, RetryableGatewayError),
        (
            422,
            {"name": "UNPROCESSABLE_ENTITY", "details": [{"issue": "AUTHORIZATION_VOIDED"}]},
            True,
            PermanentGatewayError,
        ),
    ],
)
def test_error_classification(status: int, body: dict[str, Any] | None, mutating: bool, expected: type) -> None:
    outcome = classify_error(status, body, mutating=mutating)
    assert type(outcome) is expected


def test_webhook_event_translation() -> None:
    n = notification_from_event(fixture("paypal/webhook_capture_completed.json"))
    assert n.event_type == "PAYMENT.CAPTURE.COMPLETED"
    assert n.payment_id == "pay_123"
    assert n.result.status is GatewayStatus.CAPTURED
    assert n.result.gateway_ref == "1AB234567A1234567"
    assert n.result.amount_captured == 251
    assert n.occurred_at == int(dt.datetime(2019, 2, 14, 21, 50, 7, tzinfo=dt.UTC).timestamp())


def test_request_id_is_deterministic_and_fits_paypal() -> None:
    long_key = idempotency_key("p" * 150, "authorize", 0)
    assert request_id(KEY) == KEY
    assert request_id(KEY, "capture") == f"{KEY}:capture"
    assert request_id(long_key) == request_id(long_key) and len(request_id(long_key)) <= 108
    assert request_id(long_key) != request_id(idempotency_key("p" * 150, "authorize", 1))


# -- client against a local server -------------------------------------------------------------

Scenario = Callable[[FakeServer, PayPalGatewayClient], Awaitable[None]]
TOKEN = Reply(200, fixture("paypal/oauth_token.json"))


def _run(routes: dict[tuple[str, str], list[Reply]], scenario: Scenario) -> None:
    async def main() -> None:
        token_route = {("POST", "/v1/oauth2/token"): [TOKEN]}
        async with (
            serve({**token_route, **routes}) as server,
            PayPalGatewayClient("client-id", "secret", api_base=server.url) as client,
        ):
            await scenario(server, client)

    asyncio.run(main())


def test_client_satisfies_the_protocol() -> None:
    assert isinstance(PayPalGatewayClient("a", "b"), PaymentGateway)


def test_purchase_creates_a_completed_order_with_our_request_id() -> None:
    async def scenario(server: FakeServer, client: PayPalGatewayClient) -> None:
        result = await client.authorize(
            payment_id="pay_123", amount=10000, currency="USD", payment_method_token="vault_1",
            capture=True, idempotency_key=KEY,
        )  # fmt: skip
        assert result.status is GatewayStatus.CAPTURED and result.amount_captured == 10000
        [create] = server.calls("POST", "/v2/checkout/orders")
        assert create.headers["PayPal-Request-Id"] == KEY
        assert create.headers["Authorization"].startswith("Bearer A21AAF")
        assert create.headers["Prefer"] == "return=representation"
        body = create.json()
        assert body["intent"] == "CAPTURE"
        assert body["purchase_units"][0]["amount"] == {"currency_code": "USD", "value": "100.00"}
        assert body["purchase_units"][0]["custom_id"] == "pay_123"
        assert body["payment_source"] == {"card": {"vault_id": "vault_1"}}
        [token] = server.calls("POST", "/v1/oauth2/token")
        assert token.body == b"grant_type=client_credentials"
        assert token.headers["Authorization"].startswith("Basic ")

    _run({("POST", "/v2/checkout/orders"): [Reply(201, fixture("paypal/order_completed_capture.json"))]}, scenario)


def test_approved_order_is_completed_with_a_derived_request_id() -> None:
    approved = {"id": "8PT597110X687430LKGECATA", "status": "APPROVED", "links": []}

    async def scenario(server: FakeServer, client: PayPalGatewayClient) -> None:
        result = await client.authorize(
            payment_id="pay_123", amount=10000, currency="USD", payment_method_token="vault_1",
            capture=False, idempotency_key=KEY,
        )  # fmt: skip
        assert result.status is GatewayStatus.AUTHORIZED
        [step] = server.calls("POST", "/v2/checkout/orders/8PT597110X687430LKGECATA/authorize")
        assert step.headers["PayPal-Request-Id"] == f"{KEY}:authorize"
        assert len(server.calls("POST", "/v1/oauth2/token")) == 1  # the token is cached

    _run(
        {
            ("POST", "/v2/checkout/orders"): [Reply(201, approved)],
            ("POST", "/v2/checkout/orders/8PT597110X687430LKGECATA/authorize"): [
                Reply(201, fixture("paypal/order_completed_authorize.json"))
            ],
        },
        scenario,
    )


def test_capture_void_refund_resolve_ids_from_the_order() -> None:
    order_path = "/v2/checkout/orders/8PT597110X687430LKGECATA"
    captured_order = fixture("paypal/order_completed_authorize.json")
    captured_order["purchase_units"][0]["payments"]["captures"] = [fixture("paypal/capture_completed.json")]

    async def scenario(server: FakeServer, client: PayPalGatewayClient) -> None:
        ref = "8PT597110X687430LKGECATA"
        capture = await client.capture(gateway_ref=ref, amount=6000, currency="USD",
                                       idempotency_key=idempotency_key("pay_123", "capture", 0))  # fmt: skip
        assert capture.status is GatewayStatus.CAPTURED and capture.amount_captured == 6000
        [sent] = server.calls("POST", "/v2/payments/authorizations/0AW2184448108334S/capture")
        assert sent.json() == {"amount": {"currency_code": "USD", "value": "60.00"}, "final_capture": True}
        assert sent.headers["PayPal-Request-Id"] == "ps-pay_123-capture-0"

        void = await client.cancel(gateway_ref=ref, idempotency_key=idempotency_key("pay_123", "cancel", 0))
        assert void.status is GatewayStatus.CANCELED and void.gateway_ref == ref

        refund = await client.refund(gateway_ref=ref, refund_id="ref_1", amount=1099, currency="USD",
                                     idempotency_key=idempotency_key("pay_123", "refund:ref_1", 0))  # fmt: skip
        assert refund.status is GatewayStatus.REFUNDED and refund.refund_ref == "1JU08902781691411"
        [sent_refund] = server.calls("POST", "/v2/payments/captures/2GG279541U471931P/refund")
        assert sent_refund.json()["amount"] == {"currency_code": "USD", "value": "10.99"}
        assert sent_refund.json()["custom_id"] == "pay_123"
        assert sent_refund.headers["PayPal-Request-Id"] == "ps-pay_123-refund:ref_1-0"

    _run(
        {
            ("GET", order_path): [Reply(200, captured_order)],
            ("POST", "/v2/payments/authorizations/0AW2184448108334S/capture"): [
                Reply(201, fixture("paypal/capture_completed.json"))
            ],
            ("POST", "/v2/payments/authorizations/0AW2184448108334S/void"): [Reply(204)],
            ("POST", "/v2/payments/captures/2GG279541U471931P/refund"): [
                Reply(201, fixture("paypal/refund_completed.json"))
            ],
        },
        scenario,
    )


def test_decline_on_create_is_a_result() -> None:
    async def scenario(server: FakeServer, client: PayPalGatewayClient) -> None:
        result = await client.authorize(
            payment_id="pay_123", amount=100, currency="USD", payment_method_token="vault_1",
            capture=True, idempotency_key=KEY,
        )  # fmt: skip
        assert result.status is GatewayStatus.DECLINED

    _run({("POST", "/v2/checkout/orders"): [Reply(422, fixture("paypal/error_instrument_declined.json"))]}, scenario)


def test_expired_token_is_refreshed_once_and_the_same_request_id_resent() -> None:
    async def scenario(server: FakeServer, client: PayPalGatewayClient) -> None:
        result = await client.retrieve(gateway_ref="5O190127TN364715T")
        assert result.status is GatewayStatus.CAPTURED
        assert len(server.calls("POST", "/v1/oauth2/token")) == 2
        assert len(server.calls("GET", "/v2/checkout/orders/5O190127TN364715T")) == 2

    _run(
        {
            ("GET", "/v2/checkout/orders/5O190127TN364715T"): [
                Reply(401, {"error": "invalid_token"}),
                Reply(200, fixture("paypal/order_completed_capture.json")),
            ]
        },
        scenario,
    )


def test_server_error_on_create_is_outcome_unknown() -> None:
    async def scenario(server: FakeServer, client: PayPalGatewayClient) -> None:
        with pytest.raises(OutcomeUnknownError):
            await client.authorize(
                payment_id="pay_123", amount=100, currency="USD", payment_method_token="vault_1",
                capture=True, idempotency_key=KEY,
            )  # fmt: skip
        with pytest.raises(OutcomeUnknownError) as info:
            await client.retrieve(idempotency_key=KEY)
        assert info.value.gateway_code == "lookup_by_key_unsupported"

    _run({("POST", "/v2/checkout/orders"): [Reply(500, {"name": "INTERNAL_SERVER_ERROR"})]}, scenario)


def test_unreachable_gateway_is_retryable() -> None:
    async def main() -> None:
        async with PayPalGatewayClient("a", "b", api_base="http://127.0.0.1:9") as client:
            with pytest.raises(RetryableGatewayError):
                await client.retrieve(gateway_ref="X")

    asyncio.run(main())


@pytest.mark.parametrize("amount", [1.5, True, 0])
def test_bad_amount_is_refused_before_any_request(amount: Any) -> None:
    async def scenario(server: FakeServer, client: PayPalGatewayClient) -> None:
        with pytest.raises(PermanentGatewayError):
            await client.authorize(
                payment_id="p", amount=amount, currency="USD", payment_method_token="v", capture=True,
                idempotency_key=KEY,
            )  # fmt: skip
        assert server.requests == []

    _run({}, scenario)


# -- webhooks ------------------------------------------------------------------------------------

CERT_URL = "https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-a5cafa77"
WEBHOOK_ID = "1JE4291016473214C"
NOW = int(dt.datetime(2024, 6, 1, tzinfo=dt.UTC).timestamp())


@pytest.fixture(scope="module")
def signing_key() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "messageverificationcerts.paypal.com")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


def _headers(
    key: rsa.RSAPrivateKey, body: bytes, *, cert_url: str = CERT_URL, webhook_id: str = WEBHOOK_ID
) -> dict[str, str]:
    transmission_id, transmission_time = "69cd13f0-d67a-11e5-baa3-778b53f4ae55", "2024-06-01T00:00:00Z"
    signature = key.sign(
        signed_message(transmission_id, transmission_time, webhook_id, body), padding.PKCS1v15(), hashes.SHA256()
    )
    return {
        "PAYPAL-TRANSMISSION-ID": transmission_id,
        "PAYPAL-TRANSMISSION-TIME": transmission_time,
        "PAYPAL-TRANSMISSION-SIG": base64.b64encode(signature).decode(),
        "PAYPAL-CERT-URL": cert_url,
        "PAYPAL-AUTH-ALGO": "SHA256withRSA",
    }


class Fetcher:
    def __init__(self, pem: bytes) -> None:
        self.pem = pem
        self.urls: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        return self.pem


BODY = json.dumps(fixture("paypal/webhook_capture_completed.json")).encode()


def test_valid_webhook_verifies_and_parses(signing_key: tuple[rsa.RSAPrivateKey, bytes]) -> None:
    key, pem = signing_key
    fetcher = Fetcher(pem)
    verifier = PayPalWebhookVerifier(WEBHOOK_ID, fetch_cert=fetcher)
    n = verifier.verify_and_parse(BODY, _headers(key, BODY), now=NOW)
    assert n.payment_id == "pay_123" and n.result.status is GatewayStatus.CAPTURED
    verifier.verify_and_parse(BODY, _headers(key, BODY), now=NOW)
    assert fetcher.urls == [CERT_URL]  # fetched once, then cached


def test_client_verify_and_parse(signing_key: tuple[rsa.RSAPrivateKey, bytes]) -> None:
    key, pem = signing_key
    client = PayPalGatewayClient("a", "b", webhook_id=WEBHOOK_ID, fetch_cert=Fetcher(pem))
    assert client.verify_and_parse(BODY, _headers(key, BODY), NOW).event_id.startswith("WH-")


def test_forged_body_or_foreign_key_is_rejected(signing_key: tuple[rsa.RSAPrivateKey, bytes]) -> None:
    key, pem = signing_key
    verifier = PayPalWebhookVerifier(WEBHOOK_ID, fetch_cert=Fetcher(pem))
    tampered = BODY.replace(b'"2.51"', b'"9.51"')
    with pytest.raises(InvalidWebhookError) as info:
        verifier.verify(tampered, _headers(key, BODY), now=NOW)
    assert info.value.gateway_code == "signature_mismatch"
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(InvalidWebhookError):
        verifier.verify(BODY, _headers(attacker, BODY), now=NOW)


def test_signature_for_another_webhook_id_is_rejected(signing_key: tuple[rsa.RSAPrivateKey, bytes]) -> None:
    key, pem = signing_key
    verifier = PayPalWebhookVerifier(WEBHOOK_ID, fetch_cert=Fetcher(pem))
    with pytest.raises(InvalidWebhookError):
        verifier.verify(BODY, _headers(key, BODY, webhook_id="OTHER"), now=NOW)


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/cert.pem",
        "https://evilpaypal.com/cert.pem",
        "https://api.paypal.com.evil.example/cert.pem",
        "https://api.paypal.com@evil.example/cert.pem",
        "http://api.paypal.com/v1/notifications/certs/CERT-1",
        "https://api.paypal.com:8443/v1/notifications/certs/CERT-1",
        "file:///etc/passwd",
    ],
)
def test_wrong_cert_host_is_rejected_before_fetching(signing_key: tuple[rsa.RSAPrivateKey, bytes], url: str) -> None:
    key, pem = signing_key
    fetcher = Fetcher(pem)
    verifier = PayPalWebhookVerifier(WEBHOOK_ID, fetch_cert=fetcher)
    with pytest.raises(InvalidWebhookError) as info:
        verifier.verify(BODY, _headers(key, BODY, cert_url=url), now=NOW)
    assert info.value.gateway_code == "bad_cert_url"
    assert fetcher.urls == []


@pytest.mark.parametrize(
    "url", ["https://api.paypal.com/x", "https://api.sandbox.paypal.com/x", "https://paypal.com/x"]
)
def test_paypal_hosts_are_allowed(url: str) -> None:
    assert check_cert_url(url) == url


def test_expired_certificate_and_missing_headers_are_rejected(signing_key: tuple[rsa.RSAPrivateKey, bytes]) -> None:
    key, pem = signing_key
    verifier = PayPalWebhookVerifier(WEBHOOK_ID, fetch_cert=Fetcher(pem))
    later = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp())
    with pytest.raises(InvalidWebhookError) as info:
        verifier.verify(BODY, _headers(key, BODY), now=later)
    assert info.value.gateway_code == "bad_certificate"
    headers = _headers(key, BODY)
    del headers["PAYPAL-TRANSMISSION-SIG"]
    with pytest.raises(InvalidWebhookError):
        verifier.verify(BODY, headers, now=NOW)
