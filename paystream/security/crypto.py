"""Encryption at rest: AES-256-GCM envelopes with a key id, keys from settings or a secret file.

An envelope is ``v1:<kid>:<nonce b64>:<ciphertext+tag b64>`` (URL-safe base64, no padding).
The key id says which key decrypts it, so keys can be rotated: every key of the ring still
decrypts, new envelopes use the current key. Associated data binds an envelope to its record
(e.g. ``payment_method:<id>``): the same envelope copied to another record does not decrypt.

Keys never come from code: ``PAYSTREAM_ENCRYPTION_KEYS`` (``kid:base64key,...``) and/or
``PAYSTREAM_ENCRYPTION_KEYS_FILE`` (same entries, one per line or comma-separated, ``#``
comments), ``PAYSTREAM_ENCRYPTION_CURRENT_KEY_ID`` (default: the last key listed, so a
rotation appends a key). Keys are 16, 24 or 32 bytes (AES-128/192/256).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["ENVELOPE_VERSION", "CryptoError", "KeyRing", "generate_key_entry", "is_envelope", "key_id_of"]

ENVELOPE_VERSION: Final = "v1"
_NONCE_BYTES: Final = 12
_KEY_ID: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_KEY_SIZES: Final = frozenset({16, 24, 32})


class CryptoError(Exception):
    """Bad key configuration, or an envelope that does not decrypt (tampered, wrong record,
    unknown key). Messages never contain key material or plaintext."""


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise CryptoError("malformed base64") from None


def _decode_key(kid: str, text: str) -> bytes:
    text = text.strip()
    try:  # standard or URL-safe alphabet, padding optional
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise CryptoError(f"key {kid!r}: not base64") from None
    if len(raw) not in _KEY_SIZES:
        raise CryptoError(f"key {kid!r}: must be 16, 24 or 32 bytes, got {len(raw)}")
    return raw


def parse_key_entries(text: str) -> list[tuple[str, bytes]]:
    """``kid:base64key`` entries separated by commas or newlines; ``#`` starts a comment."""
    entries: list[tuple[str, bytes]] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        for item in line.split(","):
            item = item.strip()
            if not item:
                continue
            kid, sep, key = item.partition(":")
            kid = kid.strip()
            if not sep or not _KEY_ID.match(kid):
                raise CryptoError("key entries must look like kid:base64key (kid: letters, digits, _ . -)")
            entries.append((kid, _decode_key(kid, key)))
    return entries


def generate_key_entry(kid: str) -> str:
    """A fresh ``kid:base64key`` entry with a random 256-bit key (for a key file)."""
    if not _KEY_ID.match(kid):
        raise CryptoError("invalid key id")
    return f"{kid}:{base64.b64encode(os.urandom(32)).decode('ascii')}"


def is_envelope(text: str) -> bool:
    return text.startswith(ENVELOPE_VERSION + ":") and text.count(":") == 3


def key_id_of(envelope: str) -> str:
    """The key id an envelope was written with (for re-encryption after a rotation)."""
    parts = envelope.split(":")
    if len(parts) != 4 or parts[0] != ENVELOPE_VERSION:
        raise CryptoError("not an encryption envelope")
    return parts[1]


@dataclass(frozen=True)
class KeyRing:
    """The keys this process may use; ``current`` encrypts, all of them decrypt."""

    keys: Mapping[str, bytes] = field(repr=False)
    current: str
    _ciphers: dict[str, AESGCM] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise CryptoError("no encryption keys")
        if self.current not in self.keys:
            raise CryptoError(f"current key id {self.current!r} is not among the keys")
        for kid, key in self.keys.items():
            if not _KEY_ID.match(kid) or len(key) not in _KEY_SIZES:
                raise CryptoError(f"invalid key {kid!r}")
        # One cipher object per key: building it (the key schedule) costs 4x an encryption.
        object.__setattr__(self, "_ciphers", {kid: AESGCM(key) for kid, key in self.keys.items()})

    @classmethod
    def load(cls, keys: str = "", current: str | None = None, keys_file: str | Path | None = None) -> KeyRing | None:
        """The ring from settings values; ``None`` when no key is configured at all."""
        entries: list[tuple[str, bytes]] = []
        if keys_file:
            try:
                entries += parse_key_entries(Path(keys_file).read_text())
            except OSError as exc:
                raise CryptoError(f"cannot read the key file: {type(exc).__name__}") from None
        if keys.strip():
            entries += parse_key_entries(keys)
        if not entries:
            return None
        ring: dict[str, bytes] = {}
        for kid, key in entries:
            if kid in ring and ring[kid] != key:
                raise CryptoError(f"key id {kid!r} is given twice with different keys")
            ring[kid] = key
        return cls(keys=ring, current=current or entries[-1][0])

    def encrypt(self, plaintext: str, aad: str) -> str:
        """An envelope of ``plaintext`` under the current key, bound to ``aad``."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[self.current].encrypt(nonce, plaintext.encode("utf-8"), aad.encode("utf-8"))
        return f"{ENVELOPE_VERSION}:{self.current}:{_b64e(nonce)}:{_b64e(sealed)}"

    def decrypt(self, envelope: str, aad: str) -> str:
        """The plaintext of ``envelope``; ``CryptoError`` when it was altered, belongs to
        another record (other ``aad``) or was written with a key this ring does not have."""
        kid = key_id_of(envelope)
        _, _, nonce_text, sealed_text = envelope.split(":")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise CryptoError(f"unknown key id {kid!r}")
        nonce = _b64d(nonce_text)
        if len(nonce) != _NONCE_BYTES:
            raise CryptoError("malformed envelope")
        try:
            plain = cipher.decrypt(nonce, _b64d(sealed_text), aad.encode("utf-8"))
        except InvalidTag:
            raise CryptoError("envelope does not decrypt: tampered, wrong record or wrong key") from None
        return plain.decode("utf-8")

    def reencrypt(self, envelope: str, aad: str) -> str:
        """Same plaintext under the current key (rotation); unchanged when already current."""
        if key_id_of(envelope) == self.current:
            return envelope
        return self.encrypt(self.decrypt(envelope, aad), aad)
