"""Adyen: translator (documented shapes), REST client against a local aiohttp server, and
HMAC verification of EVERY notification item."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from gw_fake_server import FakeServer, Reply, fixture, serve

from gateway_clients import (
    ChargeNotFoundError,
    DeclineCode,
    GatewayStatus,
    IdempotencyConflictError,
    InvalidWebhookError,
    OutcomeUnknownError,
    PaymentGateway,
    PermanentGatewayError,
    RetryableGatewayError,
    idempotency_key,
)
from gateway_clients.adyen import AdyenGatewayClient
from gateway_clients.adyen.client import adyen_idempotency_key
from gateway_clients.adyen.translator import (
    classify_error,
    normalize_refusal,
    payment_id_from_reference,
    result_from_modification,
    result_from_payment,
)
from gateway_clients.adyen.webhooks import parse_verified_webhook, sign_item, signing_string

KEY = idempotency_key("pay_123", "authorize", 0)
HMAC_KEY = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"
OTHER_KEY = "11" * 32

# -- translator --------------------------------------------------------------------------------


def _payment(name: str, *, capture: bool = False) -> Any:
    return result_from_payment(fixture(f"adyen/{name}.json"), capture_requested=capture, amount=1000, currency="EUR")


def test_authorised_manual_capture_is_authorized() -> None:
    result = _payment("payment_authorised")
    assert result.status is GatewayStatus.AUTHORIZED
    assert (result.gateway_ref, result.amount_authorized, result.amount_captured) == ("993617895204576J", 1000, 0)


def test_authorised_with_immediate_capture_is_captured() -> None:
    result = _payment("payment_authorised", capture=True)
    assert result.status is GatewayStatus.CAPTURED
    assert result.amount_captured == 1000


def test_refused_maps_the_refusal_reason_code() -> None:
    result = _payment("payment_refused")
    assert result.status is GatewayStatus.DECLINED
    assert result.decline_code is DeclineCode.INSUFFICIENT_FUNDS
    assert result.amount_authorized == 0


def test_redirect_shopper_carries_the_url() -> None:
    result = _payment("payment_redirect")
    assert result.status is GatewayStatus.REQUIRES_ACTION
    assert result.action_url is not None and result.action_url.startswith("https://checkoutshopper-test.adyen.com/")


@pytest.mark.parametrize(
    ("result_code", "expected"),
    [
        ("IdentifyShopper", GatewayStatus.REQUIRES_ACTION),
        ("ChallengeShopper", GatewayStatus.REQUIRES_ACTION),
        ("Pending", GatewayStatus.PENDING),
        ("Received", GatewayStatus.PENDING),
        ("Cancelled", GatewayStatus.CANCELED),
        ("Error", GatewayStatus.DECLINED),
        ("SomethingNew", GatewayStatus.PENDING),
    ],
)
def test_result_codes(result_code: str, expected: GatewayStatus) -> None:
    payload = {**fixture("adyen/payment_challenge.json"), "resultCode": result_code}
    result = result_from_payment(payload, capture_requested=False, amount=1000, currency="EUR")
    assert result.status is expected
    if result_code == "ChallengeShopper":
        assert result.action_url is None  # native 3DS2: no URL, the client SDK handles the token
    if result_code == "Error":
        assert result.decline_code is DeclineCode.PROCESSING_ERROR


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("12", DeclineCode.INSUFFICIENT_FUNDS),
        ("6", DeclineCode.EXPIRED_CARD),
        ("24", DeclineCode.INCORRECT_CVC),
        ("20", DeclineCode.FRAUD_SUSPECTED),
        ("31", DeclineCode.FRAUD_SUSPECTED),
        ("9", DeclineCode.PROCESSING_ERROR),
        ("2", DeclineCode.CARD_DECLINED),
        ("999", DeclineCode.CARD_DECLINED),
        (None, DeclineCode.CARD_DECLINED),
    ],
)
def test_refusal_reason_codes(code: str | None, expected: DeclineCode) -> None:
    assert normalize_refusal(code) is expected


def test_modifications_are_pending_until_the_webhook() -> None:
    capture = result_from_modification(fixture("adyen/capture_received.json"))
    assert capture.status is GatewayStatus.PENDING and capture.gateway_ref == "993617895204576J"
    refund = result_from_modification(fixture("adyen/refund_received.json"), refund=True)
    assert refund.refund_ref == "LDD8LKT8MBLZNN86"
    with pytest.raises(ValueError):
        result_from_modification({**fixture("adyen/cancel_received.json"), "status": "weird"})


@pytest.mark.parametrize(
    ("status", "body", "transient", "expected"),
    [
        (422, fixture("adyen/error_validation.json"), False, PermanentGatewayError),
        (401, {"status": 401, "errorCode": "000", "errorType": "security"}, False, PermanentGatewayError),
        (404, None, False, ChargeNotFoundError),
        (429, None, False, RetryableGatewayError),
        (500, {"status": 500, "errorCode": "905"}, False, OutcomeUnknownError),
        (500, {"status": 500, "errorCode": "905"}, True, RetryableGatewayError),
        (422, {"status": 422, "errorCode": "704", "errorType": "validation"}, False, OutcomeUnknownError),
    ],
)
def test_error_classification(status: int, body: dict[str, Any] | None, transient: bool, expected: type) -> None:
    error = classify_error(status, body, mutating=True, transient=transient)
    assert type(error) is expected
    assert not isinstance(error, IdempotencyConflictError)


def test_payment_id_from_reference() -> None:
    assert payment_id_from_reference("pay_123") == "pay_123"
    assert payment_id_from_reference("ps-pay-with-dashes-refund:r1-2") == "pay-with-dashes"
    assert payment_id_from_reference(None) is None


# -- client ------------------------------------------------------------------------------------

Scenario = Callable[[FakeServer, AdyenGatewayClient], Awaitable[None]]


def _run(routes: dict[tuple[str, str], list[Reply]], scenario: Scenario) -> None:
    async def main() -> None:
        async with (
            serve(routes) as server,
            AdyenGatewayClient(
                "AQE_test_key", "YOUR_MERCHANT_ACCOUNT", api_base=server.url + "/v71", hmac_keys=[HMAC_KEY]
            ) as client,
        ):
            await scenario(server, client)

    asyncio.run(main())


def test_client_satisfies_the_protocol() -> None:
    assert isinstance(AdyenGatewayClient("k", "m"), PaymentGateway)


@pytest.mark.parametrize("capture", [True, False])
def test_authorize_sends_our_key_and_documented_body(capture: bool) -> None:
    async def scenario(server: FakeServer, client: AdyenGatewayClient) -> None:
        result = await client.authorize(
            payment_id="pay_123", amount=1000, currency="EUR", payment_method_token="8415718415172204",
            capture=capture, idempotency_key=KEY, metadata={"customer_id": "cus_1"},
        )  # fmt: skip
        assert result.status is (GatewayStatus.CAPTURED if capture else GatewayStatus.AUTHORIZED)
        [sent] = server.calls("POST", "/v71/payments")
        assert sent.headers["Idempotency-Key"] == KEY
        assert sent.headers["X-API-Key"] == "AQE_test_key"
        body = sent.json()
        assert body["amount"] == {"currency": "EUR", "value": 1000}
        assert body["reference"] == "pay_123"
        assert body["merchantAccount"] == "YOUR_MERCHANT_ACCOUNT"
        assert body["paymentMethod"] == {"type": "scheme", "storedPaymentMethodId": "8415718415172204"}
        assert body["shopperReference"] == "cus_1"
        if capture:
            assert body["captureDelayHours"] == 0 and "additionalData" not in body
        else:
            assert body["additionalData"] == {"manualCapture": "true"}

    _run({("POST", "/v71/payments"): [Reply(200, fixture("adyen/payment_authorised.json"))]}, scenario)


def test_refused_payment_is_a_result() -> None:
    async def scenario(server: FakeServer, client: AdyenGatewayClient) -> None:
        result = await client.authorize(
            payment_id="pay_123", amount=1000, currency="EUR", payment_method_token="x", capture=True,
            idempotency_key=KEY,
        )  # fmt: skip
        assert result.status is GatewayStatus.DECLINED
        assert result.decline_code is DeclineCode.INSUFFICIENT_FUNDS

    _run({("POST", "/v71/payments"): [Reply(200, fixture("adyen/payment_refused.json"))]}, scenario)


def test_modifications_use_the_psp_reference_path_and_our_keys() -> None:
    psp = "993617895204576J"

    async def scenario(server: FakeServer, client: AdyenGatewayClient) -> None:
        capture_key = idempotency_key("pay_123", "capture", 0)
        capture = await client.capture(gateway_ref=psp, amount=600, currency="EUR", idempotency_key=capture_key)
        assert capture.status is GatewayStatus.PENDING and capture.raw_status == "received"
        cancel = await client.cancel(gateway_ref=psp, idempotency_key=idempotency_key("pay_123", "cancel", 0))
        assert cancel.gateway_ref == psp
        refund_key = idempotency_key("pay_123", "refund:ref_1", 0)
        refund = await client.refund(gateway_ref=psp, refund_id="ref_1", amount=300, currency="EUR",
                                     idempotency_key=refund_key)  # fmt: skip
        assert refund.refund_ref == "LDD8LKT8MBLZNN86"
        [c] = server.calls("POST", f"/v71/payments/{psp}/captures")
        assert c.headers["Idempotency-Key"] == capture_key
        assert c.json() == {"merchantAccount": "YOUR_MERCHANT_ACCOUNT", "reference": capture_key,
                            "amount": {"currency": "EUR", "value": 600}}  # fmt: skip
        [r] = server.calls("POST", f"/v71/payments/{psp}/refunds")
        assert r.headers["Idempotency-Key"] == refund_key and r.json()["reference"] == refund_key
        assert len(server.calls("POST", f"/v71/payments/{psp}/cancels")) == 1

    _run(
        {
            ("POST", f"/v71/payments/{psp}/captures"): [Reply(201, fixture("adyen/capture_received.json"))],
            ("POST", f"/v71/payments/{psp}/cancels"): [Reply(201, fixture("adyen/cancel_received.json"))],
            ("POST", f"/v71/payments/{psp}/refunds"): [Reply(201, fixture("adyen/refund_received.json"))],
        },
        scenario,
    )


def test_long_keys_are_hashed_to_adyens_limit_deterministically() -> None:
    long_key = idempotency_key("a" * 40, "refund:" + "b" * 36, 0)
    assert len(long_key) > 64
    assert adyen_idempotency_key(long_key) == adyen_idempotency_key(long_key)
    assert len(adyen_idempotency_key(long_key)) <= 64
    assert adyen_idempotency_key(KEY) == KEY


def test_server_errors_and_lookup() -> None:
    async def scenario(server: FakeServer, client: AdyenGatewayClient) -> None:
        kwargs: dict[str, Any] = dict(payment_id="p", amount=100, currency="EUR", payment_method_token="x",
                                      capture=True, idempotency_key=KEY)  # fmt: skip
        with pytest.raises(OutcomeUnknownError):
            await client.authorize(**kwargs)
        with pytest.raises(RetryableGatewayError):
            await client.authorize(**kwargs)
        with pytest.raises(OutcomeUnknownError) as info:
            await client.retrieve(idempotency_key=KEY)
        assert info.value.gateway_code == "lookup_unsupported"

    _run(
        {
            ("POST", "/v71/payments"): [
                Reply(500, {"status": 500, "errorCode": "905", "message": "Payment details are not supported"}),
                Reply(503, {"status": 503}, headers={"Transient-Error": "true"}),
            ]
        },
        scenario,
    )


@pytest.mark.parametrize("amount", [10.0, False, -1])
def test_bad_amount_is_refused_before_any_request(amount: Any) -> None:
    async def scenario(server: FakeServer, client: AdyenGatewayClient) -> None:
        with pytest.raises(PermanentGatewayError):
            await client.capture(gateway_ref="psp", amount=amount, currency="EUR", idempotency_key=KEY)
        assert server.requests == []

    _run({}, scenario)


# -- webhooks ------------------------------------------------------------------------------------


def _signed_batch(key: str = HMAC_KEY) -> dict[str, Any]:
    batch = copy.deepcopy(fixture("adyen/webhook_batch.json"))
    for entry in batch["notificationItems"]:
        item = entry["NotificationRequestItem"]
        item["additionalData"]["hmacSignature"] = sign_item(item, key)
    return batch


def _bytes(batch: dict[str, Any]) -> bytes:
    return json.dumps(batch).encode()


def test_signing_string_follows_the_documented_field_order() -> None:
    item = fixture("adyen/webhook_batch.json")["notificationItems"][1]["NotificationRequestItem"]
    assert signing_string(item) == (
        "LDD8LKT8MBLZNN86:993617895204576J:YOUR_MERCHANT_ACCOUNT:ps-pay_123-refund:ref_1-0:300:EUR:REFUND:true"
    )
    first = fixture("adyen/webhook_batch.json")["notificationItems"][0]["NotificationRequestItem"]
    assert signing_string(first) == "993617895204576J::YOUR_MERCHANT_ACCOUNT:pay_123:1000:EUR:AUTHORISATION:true"


def test_valid_batch_verifies_every_item_and_parses_all() -> None:
    notifications = parse_verified_webhook(_bytes(_signed_batch()), [HMAC_KEY])
    auth, refund = notifications
    assert auth.result.status is GatewayStatus.AUTHORIZED and auth.payment_id == "pay_123"
    assert auth.result.amount_authorized == 1000
    assert refund.result.status is GatewayStatus.REFUNDED and refund.payment_id == "pay_123"
    assert refund.result.gateway_ref == "993617895204576J" and refund.result.refund_ref == "LDD8LKT8MBLZNN86"
    assert auth.occurred_at == 1704067200  # 2024-01-01T01:00:00+01:00
    assert auth.event_id != refund.event_id


def test_forged_signature_is_rejected() -> None:
    with pytest.raises(InvalidWebhookError) as info:
        parse_verified_webhook(_bytes(_signed_batch(OTHER_KEY)), [HMAC_KEY])
    assert info.value.gateway_code == "signature_mismatch"


def test_every_item_is_checked_not_only_the_first() -> None:
    """Adyen's own helper checks item 0 only; an appended unsigned/forged item must fail all."""
    batch = _signed_batch()
    batch["notificationItems"][1]["NotificationRequestItem"]["amount"]["value"] = 30000  # tampered after signing
    with pytest.raises(InvalidWebhookError):
        parse_verified_webhook(_bytes(batch), [HMAC_KEY])
    unsigned = _signed_batch()
    del unsigned["notificationItems"][1]["NotificationRequestItem"]["additionalData"]["hmacSignature"]
    with pytest.raises(InvalidWebhookError) as info:
        parse_verified_webhook(_bytes(unsigned), [HMAC_KEY])
    assert info.value.gateway_code == "missing_signature"


def test_success_must_stay_the_literal_string() -> None:
    batch = _signed_batch()
    batch["notificationItems"][0]["NotificationRequestItem"]["success"] = True  # JSON boolean
    with pytest.raises(InvalidWebhookError):
        parse_verified_webhook(_bytes(batch), [HMAC_KEY])


def test_failed_authorisation_is_a_decline() -> None:
    batch = copy.deepcopy(fixture("adyen/webhook_batch.json"))
    item = batch["notificationItems"][0]["NotificationRequestItem"]
    item.update(success="false", reason="Not enough balance")
    item["additionalData"] = {"refusalReasonCode": "12"}
    batch["notificationItems"] = batch["notificationItems"][:1]
    item["additionalData"]["hmacSignature"] = sign_item(item, HMAC_KEY)
    [n] = parse_verified_webhook(_bytes(batch), [HMAC_KEY])
    assert n.result.status is GatewayStatus.DECLINED
    assert n.result.decline_code is DeclineCode.INSUFFICIENT_FUNDS


def test_rotated_keys_and_client_entry_points() -> None:
    client = AdyenGatewayClient("k", "m", hmac_keys=[OTHER_KEY, HMAC_KEY])
    assert len(client.verify_and_parse_all(_bytes(_signed_batch()))) == 2
    with pytest.raises(InvalidWebhookError) as info:
        client.verify_and_parse(_bytes(_signed_batch()), {}, 0)  # two items: needs the batch API
    assert info.value.gateway_code == "batch_webhook"
    single = _signed_batch()
    single["notificationItems"] = single["notificationItems"][:1]
    assert client.verify_and_parse(_bytes(single), {}, 0).event_type == "AUTHORISATION"
    with pytest.raises(InvalidWebhookError):
        AdyenGatewayClient("k", "m").verify_and_parse(_bytes(single), {}, 0)  # no key configured
