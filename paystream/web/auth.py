"""API-key authentication: ``Authorization: Bearer <key>`` checked against SHA-256 digests.

Only digests are configured (``key_id:sha256hex,...``); the presented key is hashed and
compared with every configured digest in constant time, without an early exit, so timing
tells nothing about which key (if any) matched.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Final

__all__ = ["ApiKeyError", "authenticate", "bearer_token", "hash_key", "parse_api_keys"]

_KEY_ID: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HEX64: Final = re.compile(r"^[0-9a-fA-F]{64}$")
_MAX_TOKEN_LENGTH: Final = 512


class ApiKeyError(ValueError):
    """``PAYSTREAM_API_KEYS`` is malformed (the message never contains a digest)."""


def hash_key(key: str) -> str:
    """The hex SHA-256 of an API key, as configured in ``PAYSTREAM_API_KEYS``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_api_keys(spec: str) -> dict[str, bytes]:
    """``"id1:hex,id2:hex"`` → {key_id: digest bytes}. Empty spec → no keys (everything is 401)."""
    keys: dict[str, bytes] = {}
    for index, part in enumerate(p.strip() for p in spec.split(",")):
        if not part:
            continue
        key_id, sep, digest = part.partition(":")
        key_id, digest = key_id.strip(), digest.strip()
        if not sep or not _KEY_ID.match(key_id):
            raise ApiKeyError(f"API key entry {index}: expected key_id:sha256hex with a simple key id")
        if not _HEX64.match(digest):
            raise ApiKeyError(f"API key {key_id!r}: the digest must be 64 hex characters")
        if key_id in keys:
            raise ApiKeyError(f"API key id {key_id!r} given twice")
        keys[key_id] = bytes.fromhex(digest)
    return keys


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None``."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > _MAX_TOKEN_LENGTH or " " in token:
        return None
    return token


def authenticate(header: str | None, keys: Mapping[str, bytes]) -> str | None:
    """The key id the header authenticates, or ``None``."""
    token = bearer_token(header)
    if token is None:
        return None
    presented = hashlib.sha256(token.encode("utf-8")).digest()
    found: str | None = None
    for key_id, digest in keys.items():
        if hmac.compare_digest(presented, digest) and found is None:
            found = key_id
    return found
