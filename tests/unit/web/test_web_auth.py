"""API keys: configuration parsing (scopes, customer binding), Bearer header parsing, digest
comparison, and what each scope allows."""

from __future__ import annotations

import pytest

from paystream.web.auth import ApiKey, ApiKeyError, Scope, authenticate, bearer_token, hash_key, parse_api_keys

DIGEST = hash_key("k-shop")


def test_parse_and_authenticate() -> None:
    keys = parse_api_keys(f"shop:{hash_key('k-shop')}, ops:{hash_key('k-ops')}")
    assert set(keys) == {"shop", "ops"}
    assert authenticate("Bearer k-shop", keys) == keys["shop"]
    assert authenticate("bearer k-ops", keys) == keys["ops"]
    assert authenticate("Bearer k-other", keys) is None


def test_entry_without_scope_keeps_full_access() -> None:
    """Keys configured before scopes existed (key_id:sha256hex) stay admin: nothing they did breaks."""
    [key] = parse_api_keys(f"legacy:{DIGEST}").values()
    assert key == ApiKey("legacy", bytes.fromhex(DIGEST), Scope.ADMIN, None)
    assert all(key.allows(s) for s in Scope)


@pytest.mark.parametrize(("scopes", "granted"), [
    ("read", Scope.READ), ("write", Scope.WRITE), ("admin", Scope.ADMIN),
    ("read+write", Scope.WRITE), ("write+read", Scope.WRITE), ("read+admin", Scope.ADMIN),
    ("READ", Scope.READ), (" write ", Scope.WRITE),
])
def test_scope_lists_grant_their_highest_scope(scopes: str, granted: Scope) -> None:
    assert parse_api_keys(f"k:{DIGEST}:{scopes}")["k"].scope is granted


@pytest.mark.parametrize(("held", "required", "allowed"), [
    (Scope.READ, Scope.READ, True), (Scope.READ, Scope.WRITE, False), (Scope.READ, Scope.ADMIN, False),
    (Scope.WRITE, Scope.READ, True), (Scope.WRITE, Scope.WRITE, True), (Scope.WRITE, Scope.ADMIN, False),
    (Scope.ADMIN, Scope.READ, True), (Scope.ADMIN, Scope.WRITE, True), (Scope.ADMIN, Scope.ADMIN, True),
])
def test_admin_includes_write_includes_read(held: Scope, required: Scope, allowed: bool) -> None:
    assert ApiKey("k", b"", held).allows(required) is allowed


def test_customer_bound_keys() -> None:
    keys = parse_api_keys(f"web:{hash_key('k-web')}:read@cus_123, app:{hash_key('k-app')}:read+write@cus:9.x-y_z")
    assert (keys["web"].scope, keys["web"].customer_id) == (Scope.READ, "cus_123")
    assert (keys["app"].scope, keys["app"].customer_id) == (Scope.WRITE, "cus:9.x-y_z")
    assert authenticate("Bearer k-app", keys) == keys["app"]


def test_labels() -> None:
    assert [s.label for s in Scope] == ["read", "write", "admin"]


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic abc", "Token k", "Bearer a b", "k-shop"])
def test_malformed_headers_authenticate_nobody(header: str | None) -> None:
    keys = parse_api_keys(f"shop:{hash_key('k-shop')}")
    assert authenticate(header, keys) is None


def test_bearer_token() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("  Bearer   abc  ") == "abc"
    assert bearer_token("Bearer " + "x" * 600) is None


def test_empty_configuration_means_no_keys() -> None:
    assert parse_api_keys("") == {}
    assert parse_api_keys(" , ") == {}
    assert authenticate("Bearer anything", {}) is None


@pytest.mark.parametrize(("spec", "message"), [
    ("shop", "entry 0: expected key_id:sha256hex"),
    (f"ok:{DIGEST}, shop", "entry 1: expected key_id:sha256hex"),
    ("shop:abc", "'shop': the digest must be 64 hex characters"),
    (":" + DIGEST, "entry 0"),
    ("sh op:" + DIGEST, "entry 0"),
    (f"a:{DIGEST},a:{hash_key('other')}", "'a' given twice"),
    (f"shop:{DIGEST}:reed", "'shop': unknown scope 'reed'"),
    (f"shop:{DIGEST}:", "'shop': unknown scope ''"),
    (f"shop:{DIGEST}:read+", "'shop': unknown scope ''"),
    (f"shop:{DIGEST}:read+read", "'shop': scope 'read' given twice"),
    (f"shop:{DIGEST}:read:write", "'shop': too many ':'-separated fields"),
    (f"shop:{DIGEST}@cus_1", "'shop': a customer-bound key must name its scope"),
    (f"shop:{DIGEST}:admin@cus_1", "'shop': a customer-bound key cannot have the admin scope"),
    (f"shop:{DIGEST}:read@", "'shop': the customer id after '@'"),
    (f"shop:{DIGEST}:read@cus 1", "'shop': the customer id after '@'"),
    (f"shop:{DIGEST}:read@a@b", "'shop': the customer id after '@'"),
])
def test_malformed_configuration_is_refused_without_the_digest(spec: str, message: str) -> None:
    with pytest.raises(ApiKeyError) as info:
        parse_api_keys(spec)
    assert message in str(info.value)
    assert DIGEST not in str(info.value) and DIGEST.lower() not in str(info.value).lower()


def test_digest_never_in_repr() -> None:
    keys = parse_api_keys(f"shop:{DIGEST}:write")
    assert DIGEST not in repr(keys) and bytes.fromhex(DIGEST).hex() not in repr(keys)


def test_digest_is_case_insensitive_hex() -> None:
    keys = parse_api_keys(f"shop:{hash_key('k').upper()}")
    assert authenticate("Bearer k", keys) == keys["shop"]


def test_every_digest_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: the comparison count does not depend on which key (if any) matched."""
    import paystream.web.auth as auth

    calls: list[int] = []
    real = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    keys = parse_api_keys(",".join(f"k{i}:{hash_key(f'key-{i}')}" for i in range(5)))
    for header in ("Bearer key-0", "Bearer key-4", "Bearer nobody"):
        calls.clear()
        authenticate(header, keys)
        assert len(calls) == 5
