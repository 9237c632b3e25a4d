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

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from typing import Final

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
DEFAULT_TOLERANCE_S: Final = 300


def compute_signature(payload: bytes, secret: str, timestamp: int) -> str:
    signed = str(timestamp).encode("ascii") + b"." + payload
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def sign_payload(payload: bytes, secrets: Sequence[str], timestamp: int) -> str:
    """A ``Stripe-Signature`` value signing ``payload`` with every secret (tests, tooling)."""
    if not secrets:
        raise ValueError("at least one secret is required")
    return ",".join([f"t={timestamp}", *(f"v1={compute_signature(payload, s, timestamp)}" for s in secrets)])


def verify_signature(
    payload: bytes,
    header: str | None,
    secrets: Sequence[str],
    *,
    now: int,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> int:
    """Check ``header`` against the raw ``payload``; return the signed timestamp.

    Raises ``InvalidWebhookError`` (with a stable ``gateway_code``) when no secret is configured,
    the header is missing or malformed, the timestamp is outside ``tolerance_s`` of ``now``, or
    no ``v1`` value matches any secret.
    """
    if not secrets:
        raise InvalidWebhookError("no webhook secret configured", gateway_code="no_secret")
    if not header:
        raise InvalidWebhookError("missing Stripe-Signature header", gateway_code="missing_signature")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if name == "t":
            if not value.isdigit():
                raise InvalidWebhookError("malformed timestamp", gateway_code="malformed_signature")
            timestamp = int(value)
        elif name == "v1":
            candidates.append(value)
        # v0 and other schemes are ignored, as Stripe documents.
    if timestamp is None or not candidates:
        raise InvalidWebhookError("signature header lacks t or v1", gateway_code="malformed_signature")
    if tolerance_s > 0 and abs(now - timestamp) > tolerance_s:
        raise InvalidWebhookError("timestamp outside the tolerance", gateway_code="timestamp_out_of_tolerance")
    matched = False
    for secret in secrets:
        expected = compute_signature(payload, secret, timestamp)
        for candidate in candidates:
            # No early exit: timing tells nothing about which pair matched.
            matched |= hmac.compare_digest(expected.encode("ascii"), candidate.encode("utf-8"))
    if not matched:
        raise InvalidWebhookError("no matching signature", gateway_code="signature_mismatch")
    return timestamp


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
