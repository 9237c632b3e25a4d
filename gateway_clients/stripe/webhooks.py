"""Stripe webhook signature verification (pure: the current time is passed in).

``Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`` where each ``v1`` is
``HMAC-SHA256(endpoint_secret, f"{t}.{raw_body}")``. During a secret rotation Stripe signs with
the old and the new secret, and we may hold both: any (secret, v1) match is accepted. The check
runs on the raw request bytes, before any JSON decoding.

Unlike stripe-python (which rejects only timestamps older than the tolerance) we also reject
timestamps further than the tolerance in the future: a signature from the future means a
wrong clock or a forged header, and either way we would rather have Stripe retry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Final

from gateway_clients._signatures import DEFAULT_TOLERANCE_S, compute_signature, sign_payload, verify_signature
from gateway_clients.protocol import GatewayNotification, InvalidWebhookError
from gateway_clients.stripe.translator import notification_from_event

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "SIGNATURE_HEADER",
    "compute_signature",
    "parse_verified_webhook",
    "sign_payload",
    "verify_signature",
]

SIGNATURE_HEADER: Final = "Stripe-Signature"


def parse_verified_webhook(
    raw_body: bytes,
    headers: Mapping[str, str],
    *,
    now: int,
    secrets: Sequence[str],
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> GatewayNotification:
    """Verify on the raw bytes first; only then decode and parse the event."""
    verify_signature(raw_body, _header(headers, SIGNATURE_HEADER), secrets, now=now, tolerance_s=tolerance_s)
    try:
        event = json.loads(raw_body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidWebhookError(f"webhook body is not JSON: {exc}", gateway_code="malformed_event") from exc
    if not isinstance(event, dict):
        raise InvalidWebhookError("webhook body is not a JSON object", gateway_code="malformed_event")
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
