"""API keys: configuration parsing, Bearer header parsing, digest comparison."""

from __future__ import annotations

import pytest

from paystream.web.auth import ApiKeyError, authenticate, bearer_token, hash_key, parse_api_keys


def test_parse_and_authenticate() -> None:
    keys = parse_api_keys(f"shop:{hash_key('k-shop')}, ops:{hash_key('k-ops')}")
    assert set(keys) == {"shop", "ops"}
    assert authenticate("Bearer k-shop", keys) == "shop"
    assert authenticate("bearer k-ops", keys) == "ops"
    assert authenticate("Bearer k-other", keys) is None


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
    assert authenticate("Bearer anything", {}) is None


@pytest.mark.parametrize("spec", ["shop", "shop:abc", ":" + "a" * 64, "sh op:" + "a" * 64,
                                  f"a:{'a' * 64},a:{'b' * 64}"])
def test_malformed_configuration_is_refused(spec: str) -> None:
    with pytest.raises(ApiKeyError) as info:
        parse_api_keys(spec)
    assert "a" * 64 not in str(info.value)


def test_digest_is_case_insensitive_hex() -> None:
    keys = parse_api_keys(f"shop:{hash_key('k').upper()}")
    assert authenticate("Bearer k", keys) == "shop"
