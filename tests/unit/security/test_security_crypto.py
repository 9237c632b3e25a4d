"""Encryption at rest: AES-GCM envelopes with a key id, rotation, tamper and record binding."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from paystream.security.crypto import CryptoError, KeyRing, generate_key_entry, is_envelope, key_id_of


def _entry(kid: str, byte: int) -> str:
    return f"{kid}:{base64.b64encode(bytes([byte]) * 32).decode()}"


RING = KeyRing.load(_entry("k1", 1))
assert RING is not None


def test_round_trip_and_envelope_shape() -> None:
    sealed = RING.encrypt("pm_1MqLiJLkdIwHu7ixUEgbFdYF", aad="payment_method:pm_a")
    assert is_envelope(sealed) and sealed.startswith("v1:k1:")
    assert "pm_1MqLiJ" not in sealed
    assert RING.decrypt(sealed, aad="payment_method:pm_a") == "pm_1MqLiJLkdIwHu7ixUEgbFdYF"


def test_each_encryption_uses_a_fresh_nonce() -> None:
    assert RING.encrypt("tok", "a") != RING.encrypt("tok", "a")


def test_rotation_old_keys_decrypt_new_writes_use_the_current_key() -> None:
    old = RING.encrypt("tok_visa", "r")
    rotated = KeyRing.load(",".join([_entry("k1", 1), _entry("k2", 2)]))  # the last listed is current
    assert rotated is not None and rotated.current == "k2"
    assert rotated.decrypt(old, "r") == "tok_visa"
    fresh = rotated.encrypt("tok_visa", "r")
    assert key_id_of(fresh) == "k2"
    assert key_id_of(rotated.reencrypt(old, "r")) == "k2"
    pinned = KeyRing.load(",".join([_entry("k1", 1), _entry("k2", 2)]), current="k1")
    assert pinned is not None and key_id_of(pinned.encrypt("x", "r")) == "k1"
    with pytest.raises(CryptoError, match="unknown key id"):
        RING.decrypt(fresh, "r")  # a ring without k2


@pytest.mark.parametrize("part", [2, 3])
def test_tampered_envelope_fails(part: int) -> None:
    sealed = RING.encrypt("tok_visa", "r")
    pieces = sealed.split(":")
    raw = bytearray(base64.urlsafe_b64decode(pieces[part] + "=" * (-len(pieces[part]) % 4)))
    raw[0] ^= 1
    pieces[part] = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(CryptoError):
        RING.decrypt(":".join(pieces), "r")


def test_wrong_associated_data_fails_so_ciphertexts_cannot_be_swapped() -> None:
    sealed = RING.encrypt("tok_of_a", "payment_method:pm_a")
    with pytest.raises(CryptoError, match="does not decrypt"):
        RING.decrypt(sealed, "payment_method:pm_b")


def test_wrong_key_with_the_same_id_fails() -> None:
    other = KeyRing.load(_entry("k1", 9))
    assert other is not None
    with pytest.raises(CryptoError):
        other.decrypt(RING.encrypt("tok", "r"), "r")


def test_keys_from_a_file_with_comments(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# rotated 2026-01\n{_entry('old', 3)}\n{generate_key_entry('new')}  # current\n")
    ring = KeyRing.load(keys_file=path)
    assert ring is not None and ring.current == "new" and set(ring.keys) == {"old", "new"}
    assert ring.decrypt(ring.encrypt("tok", "x"), "x") == "tok"
    both = KeyRing.load(_entry("env", 4), keys_file=path, current="env")
    assert both is not None and set(both.keys) == {"old", "new", "env"}


def test_no_keys_is_none_and_bad_configuration_is_an_error(tmp_path: Path) -> None:
    assert KeyRing.load("") is None
    with pytest.raises(CryptoError, match="16, 24 or 32"):
        KeyRing.load("k:" + base64.b64encode(b"short").decode())
    with pytest.raises(CryptoError, match="kid:base64key"):
        KeyRing.load("no-separator")
    with pytest.raises(CryptoError, match="not among"):
        KeyRing.load(_entry("k1", 1), current="k9")
    with pytest.raises(CryptoError, match="twice"):
        KeyRing.load(f"{_entry('k1', 1)},{_entry('k1', 2)}")
    with pytest.raises(CryptoError, match="key file"):
        KeyRing.load(keys_file=tmp_path / "missing")


def test_key_material_never_shows_in_repr_or_errors() -> None:
    key_text = base64.b64encode(bytes([7]) * 32).decode()
    ring = KeyRing.load(f"k7:{key_text}")
    assert key_text not in repr(ring) and "\\x07" not in repr(ring)
    with pytest.raises(CryptoError) as info:
        KeyRing.load(f"k7:{key_text[:-4]}")
    assert key_text[:10] not in str(info.value)


@pytest.mark.parametrize("bad", ["", "v1:k1:abc", "v2:k1:a:b", "v1:k1:!!:??"])
def test_malformed_envelopes_fail_cleanly(bad: str) -> None:
    with pytest.raises(CryptoError):
        RING.decrypt(bad, "r")
