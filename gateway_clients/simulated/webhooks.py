"""Webhook signing and verification for the simulated gateway (Stripe's scheme, own header).

Header: ``Simgw-Signature: t=<unix seconds>,v1=<hex hmac>[,v1=<hex hmac>...]`` where each
``v1`` is ``HMAC-SHA256(secret, f"{t}.{raw_body}")``. While a secret is being rotated the
sender signs with both secrets and the receiver may hold both; any match is accepted.
Verification is pure: the current time is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence

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
DEFAULT_TOLERANCE_S = 300


def compute_signature(payload: bytes, secret: str, timestamp: int) -> str:
    signed = str(timestamp).encode("ascii") + b"." + payload
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def sign_payload(payload: bytes, secrets: Sequence[str], timestamp: int) -> str:
    """Header value signing ``payload`` with every secret (several during a rotation)."""
    if not secrets:
        raise ValueError("at least one secret is required")
    parts = [f"t={timestamp}"]
    parts.extend(f"v1={compute_signature(payload, s, timestamp)}" for s in secrets)
    return ",".join(parts)


def verify_signature(
    payload: bytes,
    header: str | None,
    secrets: Sequence[str],
    *,
    now: int,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> int:
    """Check ``header`` against the raw ``payload``; return the signed timestamp.

    Raises ``InvalidWebhookError`` when the header is missing or malformed, the timestamp is
    further than ``tolerance_s`` from ``now`` (either way: replays and clock skew), or no
    ``v1`` signature matches any of ``secrets``.
    """
    if not secrets:
        raise InvalidWebhookError("no webhook secret configured", gateway_code="no_secret")
    if not header:
        raise InvalidWebhookError("missing signature header", gateway_code="missing_signature")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise InvalidWebhookError("malformed timestamp", gateway_code="malformed_signature") from None
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise InvalidWebhookError("signature header lacks t or v1", gateway_code="malformed_signature")
    if tolerance_s > 0 and abs(now - timestamp) > tolerance_s:
        raise InvalidWebhookError("timestamp outside the tolerance", gateway_code="timestamp_out_of_tolerance")
    # Compare every pair without an early exit so timing leaks nothing about which matched.
    matched = False
    for secret in secrets:
        expected = compute_signature(payload, secret, timestamp)
        for candidate in candidates:
            matched |= hmac.compare_digest(expected, candidate)
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
