"""Money as integer minor units plus an ISO-4217 currency code; no floats anywhere.

The exponent table lists the active ISO-4217 currencies (list one) that have a minor unit.
Codes whose minor unit is "N.A." (precious metals XAU/XAG/XPT/XPD, the SDR XDR, the bond
market units XBA-XBD, XSU, XUA, the test code XTS and "no currency" XXX) are deliberately
absent: nobody pays an order in them, so they are unknown currencies to paystream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "CURRENCY_EXPONENTS",
    "MAX_MINOR_UNITS",
    "InvalidMoneyError",
    "Money",
    "UnknownCurrencyError",
    "currency_exponent",
    "format_money",
    "is_known_currency",
    "is_valid_minor_amount",
]

# Upper bound for any single amount: 10**15 minor units (ten trillion dollars in cents).
# Far below Avro's long limit, so sums of a few amounts can never overflow a long.
MAX_MINOR_UNITS: Final = 10**15

_ZERO_DECIMALS: Final = (
    "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
)
_THREE_DECIMALS: Final = "BHD IQD JOD KWD LYD OMR TND"
_FOUR_DECIMALS: Final = "CLF UYW"
_TWO_DECIMALS: Final = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP "
    "BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR "
    "FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW "
    "KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN "
    "NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD "
    "SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS "
    "VED VES WST XCD XCG YER ZAR ZMW ZWG"
)


def _table() -> dict[str, int]:
    table: dict[str, int] = {}
    for codes, exponent in (
        (_ZERO_DECIMALS, 0),
        (_TWO_DECIMALS, 2),
        (_THREE_DECIMALS, 3),
        (_FOUR_DECIMALS, 4),
    ):
        for code in codes.split():
            if code in table:  # pragma: no cover - guards the literal above
                raise AssertionError(f"currency {code} listed twice")
            table[code] = exponent
    return table


CURRENCY_EXPONENTS: Final[dict[str, int]] = _table()


class UnknownCurrencyError(ValueError):
    """The code is not an active ISO-4217 currency with a minor unit (codes are upper case)."""

    def __init__(self, code: object) -> None:
        super().__init__(f"unknown currency code: {code!r}")
        self.code = code


class InvalidMoneyError(ValueError):
    """An amount that is not an int in [0, MAX_MINOR_UNITS]."""


def is_known_currency(code: object) -> bool:
    """True for an upper-case active ISO-4217 code listed in CURRENCY_EXPONENTS."""
    return isinstance(code, str) and code in CURRENCY_EXPONENTS


def currency_exponent(code: str) -> int:
    """Number of minor-unit digits of ``code`` (2 for USD, 0 for JPY, 3 for KWD).

    Raises ``UnknownCurrencyError`` for anything that is not a listed upper-case code.
    """
    if not is_known_currency(code):
        raise UnknownCurrencyError(code)
    return CURRENCY_EXPONENTS[code]


def is_valid_minor_amount(value: object, *, allow_zero: bool = True) -> bool:
    """True for an ``int`` (never ``bool`` or ``float``) in range for one amount."""
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    lowest = 0 if allow_zero else 1
    return lowest <= value <= MAX_MINOR_UNITS


@dataclass(frozen=True, slots=True)
class Money:
    """A non-negative amount in integer minor units of an ISO-4217 currency."""

    amount: int
    currency: str

    def __post_init__(self) -> None:
        if not is_valid_minor_amount(self.amount):
            raise InvalidMoneyError(
                f"amount must be an int in [0, {MAX_MINOR_UNITS}], got {type(self.amount).__name__}"
                f" {self.amount!r}"
            )
        if not is_known_currency(self.currency):
            raise UnknownCurrencyError(self.currency)


def format_money(money: Money) -> str:
    """Human-readable amount, e.g. ``"12.34 USD"``, ``"1000 JPY"``, ``"1.005 KWD"``."""
    exponent = currency_exponent(money.currency)
    if exponent == 0:
        return f"{money.amount} {money.currency}"
    major, minor = divmod(money.amount, 10**exponent)
    return f"{major}.{minor:0{exponent}d} {money.currency}"
