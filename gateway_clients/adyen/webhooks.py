"""Adyen standard-webhook HMAC verification, for EVERY notification item.

Each ``NotificationRequestItem`` carries ``additionalData.hmacSignature`` =
base64(HMAC-SHA256(bytes.fromhex(hmac_key), signing_string)) where the signing string is

    pspReference:originalReference:merchantAccountCode:merchantReference:value:currency:eventCode:success

with absent fields as empty strings and ``success`` the literal string "true"/"false" as sent.

Adyen's own Python helper verifies only ``notificationItems[0]``; an attacker could append
unsigned items to a genuine batch. We verify every item and reject the whole batch if any
fails. Several HMAC keys may be configured (key rotation); any match is accepted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from typing import Final

from gateway_clients.adyen.translator import notification_from_item
from gateway_clients.protocol import GatewayNotification, InvalidWebhookError

__all__ = ["SIGNED_FIELDS", "notification_items", "parse_verified_webhook", "sign_item", "signing_string"]

SIGNED_FIELDS: Final = (
    "pspReference",
    "originalReference",
    "merchantAccountCode",
    "merchantReference",
    "value",
    "currency",
    "eventCode",
    "success",
)


def signing_string(item: Mapping[str, object]) -> str:
    amount = item.get("amount")
    amount_map: Mapping[str, object] = amount if isinstance(amount, Mapping) else {}
    fields = {
        "pspReference": item.get("pspReference"),
        "originalReference": item.get("originalReference"),
        "merchantAccountCode": item.get("merchantAccountCode"),
        "merchantReference": item.get("merchantReference"),
        "value": amount_map.get("value"),
        "currency": amount_map.get("currency"),
        "eventCode": item.get("eventCode"),
        "success": item.get("success"),
    }
    parts: list[str] = []
    for name in SIGNED_FIELDS:
        value = fields[name]
        if value is None:
            parts.append("")
        elif isinstance(value, str):
            parts.append(value)
        elif name == "value" and isinstance(value, int) and not isinstance(value, bool):
            parts.append(str(value))
        else:
            # A JSON boolean for success, a float amount...: not what Adyen signs; refuse.
            raise InvalidWebhookError(f"field {name} has an unexpected type", gateway_code="malformed_event")
    return ":".join(parts)


def sign_item(item: Mapping[str, object], hmac_key_hex: str) -> str:
    key = _key_bytes(hmac_key_hex)
    digest = hmac.new(key, signing_string(item).encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def notification_items(body: Mapping[str, object]) -> list[Mapping[str, object]]:
    raw_items = body.get("notificationItems")
    if not isinstance(raw_items, list) or not raw_items:
        raise InvalidWebhookError("no notificationItems", gateway_code="malformed_event")
    items: list[Mapping[str, object]] = []
    for entry in raw_items:
        item = entry.get("NotificationRequestItem") if isinstance(entry, Mapping) else None
        if not isinstance(item, Mapping):
            raise InvalidWebhookError("malformed notification item", gateway_code="malformed_event")
        items.append(item)
    return items


def verify_item(item: Mapping[str, object], hmac_keys: Sequence[str]) -> None:
    additional = item.get("additionalData")
    signature = additional.get("hmacSignature") if isinstance(additional, Mapping) else None
    if not isinstance(signature, str) or not signature:
        raise InvalidWebhookError("notification item is not signed", gateway_code="missing_signature")
    matched = False
    for key in hmac_keys:
        # No early exit: timing tells nothing about which key matched.
        matched |= hmac.compare_digest(sign_item(item, key).encode("ascii"), signature.encode("utf-8"))
    if not matched:
        raise InvalidWebhookError("HMAC signature does not match", gateway_code="signature_mismatch")


def parse_verified_webhook(raw_body: bytes, hmac_keys: Sequence[str]) -> list[GatewayNotification]:
    """Verify every item of an Adyen webhook batch, then parse them all (all or nothing)."""
    if not hmac_keys:
        raise InvalidWebhookError("no HMAC key configured", gateway_code="no_secret")
    try:
        body = json.loads(raw_body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidWebhookError(f"webhook body is not JSON: {exc}", gateway_code="malformed_event") from exc
    if not isinstance(body, dict):
        raise InvalidWebhookError("webhook body is not a JSON object", gateway_code="malformed_event")
    items = notification_items(body)
    for item in items:
        verify_item(item, hmac_keys)
    return [notification_from_item(item) for item in items]


def _key_bytes(hmac_key_hex: str) -> bytes:
    try:
        return bytes.fromhex(hmac_key_hex)
    except ValueError as exc:
        raise InvalidWebhookError("HMAC key is not hex", gateway_code="no_secret") from exc
