"""Card-data guard: PANs (Luhn, 13-19 digits, grouped) and CVVs are found; paths, not values."""

from __future__ import annotations

import pytest

from paystream.core.sensitive import REDACTED_PAN, find_pan, looks_like_cvv_field, luhn_valid, redact, scan


@pytest.mark.parametrize(
    "text",
    [
        "4242424242424242",
        "4242 4242 4242 4242",
        "4242-4242-4242-4242",
        "card: 4000 0566 5566 5556 exp 12/30",
        "5555555555554444",
        "378282246310005",  # Amex, 15 digits
        "3782 822463 10005",  # Amex grouping 4-6-5
        "4222222222222",  # 13 digits
        "6011111111111117",
        "tok_4242424242424242",
        "4242424242424242 1234",  # followed by another number
        "cmd-3530111333300000-02c4d8",  # an id built around a card number (chaos poison run)
        "deadbeef4111111111111111",  # hex letters on one side only: not an identifier
        "4111111111111111abcd",
        "amount 4242424242424242.00",  # a card number followed by decimals is still one
    ],
)
def test_luhn_valid_pans_are_found(text: str) -> None:
    assert find_pan(text)


@pytest.mark.parametrize(
    "text",
    [
        "4242424242424241",  # Luhn-invalid 16-digit order number
        "order 1234567812345678",  # Luhn-invalid
        "424242424242",  # 12 digits
        "42424242424242424242",  # 20 digits: an identifier
        "4242  4242  4242  4242",  # double spaces are not card formatting
        "tok_visa",
        "",
        "2024-01-15 12:30:45",
        # Random hex ids that hold a Luhn-valid run by chance (seen on payment.events).
        "pay_0ac3e168922c590493089675592bc98e",
        "fingerprint 9a73999357991522a8dc699c4a9ed3dc5807ed7032254a804fe4239442384921",  # ends in 13 digits
        "evt 12345678-1234-5123-8123-123456789012",  # a UUID whose groups join into 16 digits
        "Timer commit is overlapping (interval=0.1 runtime=0.4242424242424242)",  # decimals
    ],
)
def test_non_pans_are_not_found(text: str) -> None:
    assert not find_pan(text)


def test_luhn() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert not luhn_valid("")
    assert not luhn_valid("12a4")


def test_redact_replaces_only_the_pan() -> None:
    assert redact("pay 4242 4242 4242 4242 now") == f"pay {REDACTED_PAN} now"
    assert redact("order 4242424242424241") == "order 4242424242424241"
    assert redact("a 4242424242424242 b 5555555555554444") == f"a {REDACTED_PAN} b {REDACTED_PAN}"


@pytest.mark.parametrize(
    ("name", "value"),
    [("cvv", "123"), ("CVC", "1234"), ("cvv2", 123), ("security_code", " 987 "), ("card_verification", "321"),
     ("cardCvc", "123")],
)
def test_cvv_fields_are_recognised(name: str, value: object) -> None:
    assert looks_like_cvv_field(name, value)


@pytest.mark.parametrize(
    ("name", "value"),
    [("cvv", "12"), ("cvv", "12345"), ("cvc_check", "pass"), ("amount", "123"), ("cvv", True), ("cvv", None)],
)
def test_non_cvv_fields_are_not(name: str, value: object) -> None:
    assert not looks_like_cvv_field(name, value)


def test_scan_returns_paths_never_values() -> None:
    payload = {
        "order": {"id": "4242424242424241", "items": [{"note": "ok"}, {"note": "card 4242 4242 4242 4242"}]},
        "card": {"number": 4242424242424242, "cvc": "123", "brand": "visa"},
        "tags": ("fine", "5555-5555-5555-4444"),
    }
    found = scan(payload)
    assert found == ["$.order.items[1].note", "$.card.number", "$.card.cvc", "$.tags[1]"]
    assert not any("4242" in path or "123" in path for path in found)


def test_scan_finds_pans_in_keys_without_echoing_them() -> None:
    found = scan({"4242424242424242": "x"})
    assert found == [f"$.{REDACTED_PAN}"]


def test_scan_of_clean_data_is_empty() -> None:
    assert scan({"amount": 1234, "currency": "USD", "token": "tok_visa", "nested": [[{"a": None}]]}) == []


def test_identifier_exemption_is_only_for_the_digits_inside_it() -> None:
    assert luhn_valid("590493089675592")  # the run inside the hex id really is Luhn-valid
    assert find_pan("4111111111111111 next to pay_0ac3e168922c590493089675592bc98e")
    assert redact("pay_0ac3e168922c590493089675592bc98e") == "pay_0ac3e168922c590493089675592bc98e"


def test_scan_can_leave_typed_integers_out() -> None:
    # A webhook record's epoch-ms timestamps: 1795725607000 is Luhn-valid (chaos F9: one
    # notification in ten was dead-lettered as card data and its payment stayed requires_action).
    record = {"occurred_at": 1795725607000, "received_at": 1795725608351, "amount": 134580,
              "raw_status": "authorized"}
    assert luhn_valid("1795725607000")
    assert scan(record) == ["$.occurred_at"]
    assert scan(record, integers=False) == []
    assert scan({**record, "raw_status": "card 4242424242424242"}, integers=False) == ["$.raw_status"]
