"""The timestamped HMAC signature scheme of Stripe webhooks, which our simulated gateway uses
too (under its own header): ``t=<unix seconds>,v1=<hex>[,v1=<hex>...]`` where each ``v1`` is
``HMAC-SHA256(secret, f"{t}.{raw_body}")``. Any ``v1`` may match any of several secrets (rotation),
compared in constant time; the timestamp must be within the tolerance either way. Pure: the
current time is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Final

from gateway_clients.protocol import InvalidWebhookError

__all__ = ["DEFAULT_TOLERANCE_S", "compute_signature", "sign_payload", "verify_signature"]

DEFAULT_TOLERANCE_S: Final = 300


def compute_signature(payload: bytes, secret: str, timestamp: int) -> str:
    signed = str(timestamp).encode("ascii") + b"." + payload
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def sign_payload(payload: bytes, secrets: Sequence[str], timestamp: int) -> str:
    """A signature header value signing ``payload`` with every secret (tests, tooling)."""
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
