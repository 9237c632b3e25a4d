"""Stripe webhook signatures: valid, forged, stale, rotated secrets, several v1 values."""

from __future__ import annotations

import json

import pytest
import stripe

from gateway_clients import GatewayStatus, InvalidWebhookError
from gateway_clients.stripe import StripeGatewayClient
from gateway_clients.stripe.webhooks import (
    SIGNATURE_HEADER,
    compute_signature,
    parse_verified_webhook,
    sign_payload,
    verify_signature,
)

NOW = 1_700_000_000
OLD, NEW = "whsec_old_secret", "whsec_new_secret"
BODY = json.dumps(
    {
        "id": "evt_1",
        "object": "event",
        "created": NOW - 5,
        "type": "payment_intent.succeeded",
        "data": {
            "object": {
                "id": "pi_1",
                "object": "payment_intent",
                "amount": 500,
                "amount_received": 500,
                "currency": "eur",
                "metadata": {"payment_id": "pay_9"},
                "status": "succeeded",
            }
        },
    }
).encode()


def _code(exc: pytest.ExceptionInfo[InvalidWebhookError]) -> str | None:
    return exc.value.gateway_code


def test_valid_signature_parses() -> None:
    header = sign_payload(BODY, [NEW], NOW)
    n = parse_verified_webhook(BODY, {"stripe-signature": header}, now=NOW, secrets=[NEW])
    assert n.payment_id == "pay_9"
    assert n.result.status is GatewayStatus.CAPTURED


def test_matches_stripe_sdks_own_signing() -> None:
    """Our verifier accepts what stripe-python generates, and vice versa."""
    header = stripe.WebhookSignature.generate_signature_header(BODY.decode(), NEW, timestamp=NOW)
    assert verify_signature(BODY, header, [NEW], now=NOW) == NOW
    assert stripe.WebhookSignature.verify_header(BODY.decode(), sign_payload(BODY, [NEW], NOW), NEW, tolerance=None)


def test_forged_signature_is_rejected() -> None:
    header = f"t={NOW},v1={compute_signature(BODY, 'whsec_attacker', NOW)}"
    with pytest.raises(InvalidWebhookError) as info:
        verify_signature(BODY, header, [NEW], now=NOW)
    assert _code(info) == "signature_mismatch"


def test_tampered_body_is_rejected() -> None:
    header = sign_payload(BODY, [NEW], NOW)
    with pytest.raises(InvalidWebhookError):
        verify_signature(BODY.replace(b"500", b"900"), header, [NEW], now=NOW)


@pytest.mark.parametrize("skew", [301, -301, 10_000])
def test_stale_or_future_timestamp_is_rejected(skew: int) -> None:
    header = sign_payload(BODY, [NEW], NOW - skew)
    with pytest.raises(InvalidWebhookError) as info:
        verify_signature(BODY, header, [NEW], now=NOW)
    assert _code(info) == "timestamp_out_of_tolerance"


def test_timestamp_at_the_tolerance_edge_is_accepted() -> None:
    assert verify_signature(BODY, sign_payload(BODY, [NEW], NOW - 300), [NEW], now=NOW) == NOW - 300


def test_rotated_secret_receiver_holds_both() -> None:
    """Sender already signs with the new secret only; the receiver still holds old and new."""
    header = sign_payload(BODY, [NEW], NOW)
    assert verify_signature(BODY, header, [OLD, NEW], now=NOW) == NOW


def test_multiple_v1_values_any_match_is_accepted() -> None:
    """During a rotation Stripe sends one v1 per secret; we hold only the old one."""
    header = sign_payload(BODY, [NEW, OLD], NOW)
    assert header.count("v1=") == 2
    assert verify_signature(BODY, header, [OLD], now=NOW) == NOW


def test_v0_signatures_are_ignored() -> None:
    v0 = compute_signature(BODY, NEW, NOW)
    with pytest.raises(InvalidWebhookError) as info:
        verify_signature(BODY, f"t={NOW},v0={v0}", [NEW], now=NOW)
    assert _code(info) == "malformed_signature"


@pytest.mark.parametrize("header", [None, "", "garbage", f"t={NOW}", "v1=abc", "t=abc,v1=00"])
def test_missing_or_malformed_header_is_rejected(header: str | None) -> None:
    with pytest.raises(InvalidWebhookError):
        verify_signature(BODY, header, [NEW], now=NOW)


def test_no_configured_secret_rejects_everything() -> None:
    with pytest.raises(InvalidWebhookError) as info:
        verify_signature(BODY, sign_payload(BODY, [NEW], NOW), [], now=NOW)
    assert _code(info) == "no_secret"


def test_client_verify_and_parse_uses_configured_secrets() -> None:
    client = StripeGatewayClient("sk_test_123", webhook_secrets=[OLD, NEW])
    header = sign_payload(BODY, [OLD], NOW)
    n = client.verify_and_parse(BODY, {SIGNATURE_HEADER: header}, NOW)
    assert n.event_id == "evt_1"
    with pytest.raises(InvalidWebhookError):
        client.verify_and_parse(BODY, {SIGNATURE_HEADER: header}, NOW + 301)
