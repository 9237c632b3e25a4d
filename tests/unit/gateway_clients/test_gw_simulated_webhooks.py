"""Webhook signature verification: valid, forged, stale, rotated secrets, raw-bytes only."""

from __future__ import annotations

import json

import pytest

from gateway_clients import GatewayStatus, InvalidWebhookError
from gateway_clients.simulated import InProcessSimulatedGateway, SimulatedGatewayEngine
from gateway_clients.simulated.webhooks import (
    SIGNATURE_HEADER,
    compute_signature,
    parse_verified_webhook,
    sign_payload,
    verify_signature,
)

NOW = 1_700_000_000
SECRET = "whsec_current"
OLD_SECRET = "whsec_old"
PAYLOAD = json.dumps(
    {
        "object": "event",
        "id": "simevt_1",
        "type": "payment.succeeded",
        "created": NOW,
        "data": {
            "object": {
                "object": "payment",
                "id": "simpay_1",
                "payment_id": "pay_1",
                "status": "succeeded",
                "currency": "EUR",
                "amount_authorized": 500,
                "amount_captured": 500,
                "amount_refunded": 0,
                "decline_code": None,
            }
        },
    }
).encode()


def _code(exc: pytest.ExceptionInfo[InvalidWebhookError]) -> str | None:
    return exc.value.gateway_code


def test_valid_signature_is_accepted_and_returns_the_timestamp() -> None:
    header = sign_payload(PAYLOAD, [SECRET], NOW)
    assert verify_signature(PAYLOAD, header, [SECRET], now=NOW + 10) == NOW


def test_signature_matches_the_documented_scheme() -> None:
    import hashlib
    import hmac

    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + PAYLOAD, hashlib.sha256)
    assert compute_signature(PAYLOAD, SECRET, NOW) == expected.hexdigest()
    assert sign_payload(PAYLOAD, [SECRET], NOW) == f"t={NOW},v1={expected.hexdigest()}"


def test_wrong_secret_is_rejected() -> None:
    header = sign_payload(PAYLOAD, ["whsec_attacker"], NOW)
    with pytest.raises(InvalidWebhookError) as exc:
        verify_signature(PAYLOAD, header, [SECRET], now=NOW)
    assert _code(exc) == "signature_mismatch"


def test_tampered_body_is_rejected() -> None:
    header = sign_payload(PAYLOAD, [SECRET], NOW)
    tampered = PAYLOAD.replace(b'"amount_captured": 500', b'"amount_captured": 900')
    assert tampered != PAYLOAD
    with pytest.raises(InvalidWebhookError):
        verify_signature(tampered, header, [SECRET], now=NOW)


def test_timestamp_cannot_be_swapped_for_a_fresh_one() -> None:
    old_sig = compute_signature(PAYLOAD, SECRET, NOW - 3_600)
    with pytest.raises(InvalidWebhookError) as exc:
        verify_signature(PAYLOAD, f"t={NOW},v1={old_sig}", [SECRET], now=NOW)
    assert _code(exc) == "signature_mismatch"


@pytest.mark.parametrize("skew", [301, -301, 10_000])
def test_stale_or_future_timestamps_are_rejected(skew: int) -> None:
    header = sign_payload(PAYLOAD, [SECRET], NOW)
    with pytest.raises(InvalidWebhookError) as exc:
        verify_signature(PAYLOAD, header, [SECRET], now=NOW + skew)
    assert _code(exc) == "timestamp_out_of_tolerance"


def test_tolerance_is_a_parameter() -> None:
    header = sign_payload(PAYLOAD, [SECRET], NOW)
    assert verify_signature(PAYLOAD, header, [SECRET], now=NOW + 60, tolerance_s=60) == NOW
    with pytest.raises(InvalidWebhookError):
        verify_signature(PAYLOAD, header, [SECRET], now=NOW + 61, tolerance_s=60)


def test_rotation_sender_signs_with_both_receiver_knows_only_one() -> None:
    header = sign_payload(PAYLOAD, [OLD_SECRET, SECRET], NOW)
    assert header.count("v1=") == 2
    assert verify_signature(PAYLOAD, header, [SECRET], now=NOW) == NOW
    assert verify_signature(PAYLOAD, header, [OLD_SECRET], now=NOW) == NOW


def test_rotation_receiver_accepts_old_and_new_secret() -> None:
    for signing_secret in (OLD_SECRET, SECRET):
        header = sign_payload(PAYLOAD, [signing_secret], NOW)
        assert verify_signature(PAYLOAD, header, [OLD_SECRET, SECRET], now=NOW) == NOW
    retired = sign_payload(PAYLOAD, ["whsec_retired"], NOW)
    with pytest.raises(InvalidWebhookError):
        verify_signature(PAYLOAD, retired, [OLD_SECRET, SECRET], now=NOW)


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_signature"),
        ("", "missing_signature"),
        ("v1=abc", "malformed_signature"),
        (f"t={NOW}", "malformed_signature"),
        ("t=yesterday,v1=abc", "malformed_signature"),
        (f"t={NOW},v0=abc", "malformed_signature"),
    ],
)
def test_missing_or_malformed_headers_are_rejected(header: str | None, code: str) -> None:
    with pytest.raises(InvalidWebhookError) as exc:
        verify_signature(PAYLOAD, header, [SECRET], now=NOW)
    assert _code(exc) == code


def test_no_configured_secret_rejects_everything() -> None:
    header = sign_payload(PAYLOAD, [SECRET], NOW)
    with pytest.raises(InvalidWebhookError):
        verify_signature(PAYLOAD, header, [], now=NOW)


def test_parse_verified_webhook_finds_the_header_in_any_case() -> None:
    header = sign_payload(PAYLOAD, [SECRET], NOW)
    notification = parse_verified_webhook(PAYLOAD, {SIGNATURE_HEADER.lower(): header}, now=NOW, secrets=[SECRET])
    assert notification.payment_id == "pay_1"
    assert notification.result.status is GatewayStatus.CAPTURED
    assert notification.result.amount_captured == 500


def test_signed_but_non_json_body_is_rejected() -> None:
    body = b"not json"
    header = sign_payload(body, [SECRET], NOW)
    with pytest.raises(InvalidWebhookError):
        parse_verified_webhook(body, {SIGNATURE_HEADER: header}, now=NOW, secrets=[SECRET])


def test_gateway_verify_and_parse_uses_its_configured_secrets() -> None:
    gateway = InProcessSimulatedGateway(SimulatedGatewayEngine(), webhook_secrets=[OLD_SECRET, SECRET])
    header = sign_payload(PAYLOAD, [SECRET], NOW)
    notification = gateway.verify_and_parse(PAYLOAD, {SIGNATURE_HEADER: header}, NOW)
    assert notification.event_id == "simevt_1"
    forged = sign_payload(PAYLOAD, ["nope"], NOW)
    with pytest.raises(InvalidWebhookError):
        gateway.verify_and_parse(PAYLOAD, {SIGNATURE_HEADER: forged}, NOW)
