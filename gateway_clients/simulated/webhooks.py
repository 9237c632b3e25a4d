"""Webhook signing and verification for the simulated gateway (Stripe's scheme, own header).

Header: ``Simgw-Signature: t=<unix seconds>,v1=<hex hmac>[,v1=<hex hmac>...]`` where each
``v1`` is ``HMAC-SHA256(secret, f"{t}.{raw_body}")``. While a secret is being rotated the
sender signs with both secrets and the receiver may hold both; any match is accepted.
Verification is pure: the current time is passed in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from gateway_clients._signatures import DEFAULT_TOLERANCE_S, compute_signature, sign_payload, verify_signature
from gateway_clients.protocol import GatewayNotification, InvalidWebhookError
from gateway_clients.simulated.translator import notification_from_event

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "SIGNATURE_HEADER",
    "compute_signature",
    "parse_verified_webhook",
    "sign_payload",
    "verify_signature",
]

SIGNATURE_HEADER = "Simgw-Signature"


def parse_verified_webhook(
    raw_body: bytes,
    headers: Mapping[str, str],
    *,
    now: int,
    secrets: Sequence[str],
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> GatewayNotification:
    """Verify on the raw bytes first, only then decode and parse."""
    header = _header(headers, SIGNATURE_HEADER)
    verify_signature(raw_body, header, secrets, now=now, tolerance_s=tolerance_s)
    try:
        event = json.loads(raw_body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidWebhookError(f"webhook body is not JSON: {exc}") from exc
    if not isinstance(event, dict):
        raise InvalidWebhookError("webhook body is not a JSON object")
    return notification_from_event(event)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None
