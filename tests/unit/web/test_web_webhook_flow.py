"""A simulated-gateway webhook as the engine emits it → verified by the real client → our record."""

from __future__ import annotations

import json

import pytest

from gateway_clients.protocol import InvalidWebhookError
from gateway_clients.simulated.client import SimulatedGatewayClient
from gateway_clients.simulated.webhooks import sign_payload
from paystream.web import mapping
from paystream.web.edge import verify_webhook

NOW = 1_800_000_000


def event(kind: str, obj: dict[str, object]) -> bytes:
    return json.dumps({"object": "event", "id": "simevt_1", "type": kind, "created": NOW - 5,
                       "data": {"object": obj}}).encode()


PAYMENT = {"object": "payment", "id": "simpay_1", "payment_id": "pay_1", "status": "succeeded", "amount": 1999,
           "currency": "USD", "capture_method": "automatic", "amount_authorized": 1999, "amount_captured": 1999,
           "amount_refunded": 0, "decline_code": None, "next_action": None, "metadata": {}, "created": NOW,
           "refunds": []}


@pytest.fixture
def gateway() -> SimulatedGatewayClient:
    return SimulatedGatewayClient("http://127.0.0.1:1", webhook_secrets=["whsec_a"])


def test_verified_payment_event_becomes_a_record(gateway: SimulatedGatewayClient) -> None:
    raw = event("payment.succeeded", PAYMENT)
    [n] = verify_webhook(gateway, raw, {"Simgw-Signature": sign_payload(raw, ["whsec_a"], NOW)}, NOW)
    record = mapping.notification_record("simulated", n, payment_id=n.payment_id or "", received_at=NOW * 1000)
    assert isinstance(record, dict)
    assert (record["kind"], record["payment_id"], record["amount"], record["gateway_ref"]) == (
        "payment_succeeded", "pay_1", 1999, "simpay_1")
    assert record["occurred_at"] == (NOW - 5) * 1000


def test_declined_event_carries_the_normalised_code(gateway: SimulatedGatewayClient) -> None:
    raw = event("payment.declined", {**PAYMENT, "status": "declined", "amount_captured": 0, "amount_authorized": 0,
                                     "decline_code": "insufficient_funds"})
    [n] = verify_webhook(gateway, raw, {"simgw-signature": sign_payload(raw, ["whsec_a"], NOW)}, NOW)
    record = mapping.notification_record("simulated", n, payment_id="pay_1", received_at=1)
    assert isinstance(record, dict) and record["kind"] == "payment_failed"
    assert record["decline_code"] == "insufficient_funds"


@pytest.mark.parametrize("header", [
    None, "t=1,v1=00", f"t={NOW},v1=" + "0" * 64,
])
def test_forged_or_stale_webhooks_raise(gateway: SimulatedGatewayClient, header: str | None) -> None:
    raw = event("payment.succeeded", PAYMENT)
    headers = {"Simgw-Signature": header} if header else {}
    with pytest.raises(InvalidWebhookError):
        verify_webhook(gateway, raw, headers, NOW)


def test_old_signature_is_stale(gateway: SimulatedGatewayClient) -> None:
    raw = event("payment.succeeded", PAYMENT)
    with pytest.raises(InvalidWebhookError) as info:
        verify_webhook(gateway, raw, {"Simgw-Signature": sign_payload(raw, ["whsec_a"], NOW - 3600)}, NOW)
    assert info.value.gateway_code == "timestamp_out_of_tolerance"
