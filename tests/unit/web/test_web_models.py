"""Request models of the command facade: strict minor-unit ints, ISO currencies, no extras."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from paystream.web.models import (
    AddPaymentMethodRequest,
    CapturePaymentRequest,
    CreatePaymentRequest,
    RefundPaymentRequest,
    validation_reasons,
)

VALID: dict[str, Any] = {
    "amount": 1999, "currency": "USD", "order_id": "ord_1", "customer_id": "cus_1", "payment_method_token": "tok_visa",
}


def test_valid_create_payment_defaults() -> None:
    req = CreatePaymentRequest.model_validate(VALID)
    assert req.amount == 1999
    assert req.capture_method == "automatic"
    assert req.metadata == {}
    assert req.gateway is None


@pytest.mark.parametrize("amount", [19.99, 1999.0, "1999", True, False, 0, -5, 10**15 + 1, None])
def test_amount_must_be_a_positive_strict_int(amount: object) -> None:
    with pytest.raises(ValidationError) as info:
        CreatePaymentRequest.model_validate({**VALID, "amount": amount})
    assert any(r["field"] == "amount" for r in validation_reasons(info.value))


@pytest.mark.parametrize("currency", ["usd", "US", "USDD", "XYZ", "", 840])
def test_currency_must_be_a_known_upper_case_iso_code(currency: object) -> None:
    with pytest.raises(ValidationError):
        CreatePaymentRequest.model_validate({**VALID, "currency": currency})


def test_zero_decimal_currency_is_fine() -> None:
    assert CreatePaymentRequest.model_validate({**VALID, "currency": "JPY", "amount": 500}).currency == "JPY"


def test_exactly_one_payment_method() -> None:
    both = {**VALID, "saved_method_id": "pm_1"}
    neither = {k: v for k, v in VALID.items() if k != "payment_method_token"}
    for body in (both, neither):
        with pytest.raises(ValidationError):
            CreatePaymentRequest.model_validate(body)
    saved = {**neither, "saved_method_id": "pm_1"}
    assert CreatePaymentRequest.model_validate(saved).saved_method_id == "pm_1"


def test_unknown_fields_and_gateways_are_refused() -> None:
    with pytest.raises(ValidationError):
        CreatePaymentRequest.model_validate({**VALID, "card_number": "x"})
    with pytest.raises(ValidationError):
        CreatePaymentRequest.model_validate({**VALID, "gateway": "bank-of-nowhere"})
    with pytest.raises(ValidationError):
        CreatePaymentRequest.model_validate({**VALID, "capture_method": "later"})


def test_metadata_values_must_be_strings() -> None:
    with pytest.raises(ValidationError):
        CreatePaymentRequest.model_validate({**VALID, "metadata": {"n": 1}})


def test_customer_ip_is_checked() -> None:
    with pytest.raises(ValidationError):
        CreatePaymentRequest.model_validate({**VALID, "customer_ip": "not-an-ip"})
    assert CreatePaymentRequest.model_validate({**VALID, "customer_ip": "2001:db8::1"}).customer_ip == "2001:db8::1"


def test_reasons_never_carry_the_input() -> None:
    secret = "sensitive-value-123"
    with pytest.raises(ValidationError) as info:
        CreatePaymentRequest.model_validate({**VALID, "amount": secret, "currency": secret})
    reasons = validation_reasons(info.value)
    assert {r["field"] for r in reasons} == {"amount", "currency"}
    assert secret not in repr(reasons)


def test_capture_and_refund_amounts_are_optional_but_strict() -> None:
    assert CapturePaymentRequest.model_validate({}).amount is None
    assert RefundPaymentRequest.model_validate({"amount": 500, "reason": "requested"}).amount == 500
    with pytest.raises(ValidationError):
        CapturePaymentRequest.model_validate({"amount": 5.5})
    with pytest.raises(ValidationError):
        RefundPaymentRequest.model_validate({"amount": True})


def test_add_payment_method_fields() -> None:
    ok = {"gateway": "stripe", "gateway_token": "pm_card_visa", "brand": "visa", "last4": "4242",
          "exp_month": 12, "exp_year": 2030, "fingerprint": "fp_1"}
    assert AddPaymentMethodRequest.model_validate(ok).last4 == "4242"
    for bad in ({"last4": "42a2"}, {"exp_month": 13}, {"exp_year": 99}, {"gateway": "x"}, {"exp_month": "12"}):
        with pytest.raises(ValidationError):
            AddPaymentMethodRequest.model_validate({**ok, **bad})
