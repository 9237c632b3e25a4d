"""Money: ISO-4217 exponents, validation, integer-only formatting."""

from __future__ import annotations

import pytest

from paystream.core.money import (
    CURRENCY_EXPONENTS,
    MAX_MINOR_UNITS,
    InvalidMoneyError,
    Money,
    UnknownCurrencyError,
    currency_exponent,
    format_money,
    is_known_currency,
)


@pytest.mark.parametrize(
    ("code", "exponent"),
    [
        ("USD", 2), ("EUR", 2), ("GBP", 2), ("JPY", 0), ("KRW", 0), ("CLP", 0), ("VND", 0), ("ISK", 0),
        ("KWD", 3), ("BHD", 3), ("JOD", 3), ("OMR", 3), ("TND", 3), ("LYD", 3), ("IQD", 3),
        ("CLF", 4), ("UYW", 4),
    ],
)
def test_currency_exponent(code: str, exponent: int) -> None:
    assert currency_exponent(code) == exponent


@pytest.mark.parametrize("code", ["usd", "XXX", "XAU", "ABC", "", "US", "USDD"])
def test_unknown_currency_raises_a_typed_error(code: str) -> None:
    with pytest.raises(UnknownCurrencyError):
        currency_exponent(code)
    assert not is_known_currency(code)


def test_table_covers_the_active_currencies_with_sane_exponents() -> None:
    assert len(CURRENCY_EXPONENTS) >= 150
    assert set(CURRENCY_EXPONENTS.values()) == {0, 2, 3, 4}
    assert all(len(code) == 3 and code.isupper() for code in CURRENCY_EXPONENTS)


@pytest.mark.parametrize(
    ("money", "text"),
    [
        (Money(1234, "USD"), "12.34 USD"),
        (Money(5, "USD"), "0.05 USD"),
        (Money(0, "EUR"), "0.00 EUR"),
        (Money(1000, "JPY"), "1000 JPY"),
        (Money(1005, "KWD"), "1.005 KWD"),
        (Money(12345, "CLF"), "1.2345 CLF"),
        (Money(MAX_MINOR_UNITS, "USD"), "10000000000000.00 USD"),
    ],
)
def test_format_money(money: Money, text: str) -> None:
    assert format_money(money) == text


@pytest.mark.parametrize("amount", [True, False, 12.0, 12.5, "12", None, -1, MAX_MINOR_UNITS + 1])
def test_money_rejects_non_int_negative_and_huge_amounts(amount: object) -> None:
    with pytest.raises(InvalidMoneyError):
        Money(amount, "USD")  # type: ignore[arg-type]


def test_money_rejects_unknown_currency() -> None:
    with pytest.raises(UnknownCurrencyError):
        Money(100, "usd")


def test_money_is_frozen() -> None:
    money = Money(1, "USD")
    with pytest.raises(AttributeError):
        money.amount = 2  # type: ignore[misc]
