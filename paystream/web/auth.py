"""API keys: ``Authorization: Bearer <key>`` checked against SHA-256 digests, with scopes.

``PAYSTREAM_API_KEYS`` holds only digests, one entry per key, comma-separated::

    key_id:sha256hex[:scopes][@customer_id]

* ``scopes`` is ``read``, ``write`` or ``admin``, or a ``+``-joined list of them
  (``read+write``). Scopes are ordered: ``admin`` includes ``write``, which includes ``read``,
  so a key holds the highest scope it lists. An entry without scopes is ``admin``: every key
  configured before scopes existed keeps the access it had.
* ``@customer_id`` binds the key to one customer: it sees and commands only that customer's
  payments and payment methods. A bound key must name its scopes and cannot be ``admin``.

The presented key is hashed and compared with every configured digest in constant time,
without an early exit, so timing tells nothing about which key (if any) matched. Error
messages name the entry and key id, never a digest.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = ["ApiKey", "ApiKeyError", "Scope", "authenticate", "bearer_token", "hash_key", "parse_api_keys"]

_KEY_ID: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HEX64: Final = re.compile(r"^[0-9a-fA-F]{64}$")
_CUSTOMER_ID: Final = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")  # the edge's path-id syntax
_MAX_TOKEN_LENGTH: Final = 512


class ApiKeyError(ValueError):
    """``PAYSTREAM_API_KEYS`` is malformed (the message never contains a digest)."""


class Scope(enum.IntEnum):
    """What a key may do; a higher scope includes the lower ones."""

    READ = 1
    WRITE = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One configured key: its id, the SHA-256 of the key, its scope and optional customer."""

    key_id: str
    digest: bytes = field(repr=False)
    scope: Scope = Scope.ADMIN
    customer_id: str | None = None

    def allows(self, required: Scope) -> bool:
        return self.scope >= required


def hash_key(key: str) -> str:
    """The hex SHA-256 of an API key, as configured in ``PAYSTREAM_API_KEYS``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _scope(spec: str, where: str) -> Scope:
    names = [name.strip().lower() for name in spec.split("+")]
    scopes: list[Scope] = []
    for name in names:
        try:
            scope = Scope[name.upper()] if name else None
        except KeyError:
            scope = None
        if scope is None:
            raise ApiKeyError(f"{where}: unknown scope {name!r} (use read, write or admin, joined by '+')")
        if scope in scopes:
            raise ApiKeyError(f"{where}: scope {name!r} given twice")
        scopes.append(scope)
    return max(scopes)


def _entry(index: int, part: str) -> ApiKey:
    body, at, customer = part.partition("@")
    fields = [f.strip() for f in body.split(":")]
    key_id = fields[0]
    if len(fields) < 2 or not _KEY_ID.match(key_id):
        raise ApiKeyError(f"API key entry {index}: expected key_id:sha256hex[:scopes][@customer_id] "
                          "with a simple key id (letters, digits, '_', '.', '-')")
    where = f"API key {key_id!r}"
    if len(fields) > 3:
        raise ApiKeyError(f"{where}: too many ':'-separated fields (key_id:sha256hex[:scopes][@customer_id])")
    if not _HEX64.match(fields[1]):
        raise ApiKeyError(f"{where}: the digest must be 64 hex characters")
    scope = _scope(fields[2], where) if len(fields) == 3 else None
    customer_id: str | None = None
    if at:
        customer_id = customer.strip()
        if not _CUSTOMER_ID.match(customer_id):
            raise ApiKeyError(f"{where}: the customer id after '@' must be 1-128 of A-Z a-z 0-9 _ . : -")
        if scope is None:
            raise ApiKeyError(f"{where}: a customer-bound key must name its scope (read or write)")
        if scope is Scope.ADMIN:
            raise ApiKeyError(f"{where}: a customer-bound key cannot have the admin scope")
    return ApiKey(key_id, bytes.fromhex(fields[1]), scope or Scope.ADMIN, customer_id)


def parse_api_keys(spec: str) -> dict[str, ApiKey]:
    """``"id1:hex:read,id2:hex"`` → {key_id: ApiKey}. Empty spec → no keys (everything is 401)."""
    keys: dict[str, ApiKey] = {}
    for index, part in enumerate(p.strip() for p in spec.split(",")):
        if not part:
            continue
        key = _entry(index, part)
        if key.key_id in keys:
            raise ApiKeyError(f"API key id {key.key_id!r} given twice")
        keys[key.key_id] = key
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


def authenticate(header: str | None, keys: Mapping[str, ApiKey]) -> ApiKey | None:
    """The key the header authenticates, or ``None``.

    Every configured digest is compared (``hmac.compare_digest``), also after a match.
    """
    token = bearer_token(header)
    if token is None:
        return None
    presented = hashlib.sha256(token.encode("utf-8")).digest()
    found: ApiKey | None = None
    for key in keys.values():
        if hmac.compare_digest(presented, key.digest) and found is None:
            found = key
    return found
