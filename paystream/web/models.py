"""Request bodies of the command facade (pydantic v2, strict).

Amounts are strict ints of minor units: ``19.99``, ``"1999"`` and ``true`` are refused, never
coerced. Unknown fields are refused too, so a misspelt field cannot silently be dropped.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from paystream.core.money import MAX_MINOR_UNITS, is_known_currency

__all__ = [
    "AddPaymentMethodRequest",
    "CancelPaymentRequest",
    "CapturePaymentRequest",
    "CreatePaymentRequest",
    "RefundPaymentRequest",
    "validation_reasons",
]

GatewayName = Literal["simulated", "stripe", "paypal", "adyen"]


def _known_currency(code: str) -> str:
    if not is_known_currency(code):
        raise ValueError("currency must be a known ISO-4217 code")
    return code


def _ip(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("customer_ip must be an IPv4 or IPv6 address") from None
    return value


def _metadata(value: dict[str, str]) -> dict[str, str]:
    if len(value) > 50:
        raise ValueError("metadata may have at most 50 entries")
    for key, item in value.items():
        if not 1 <= len(key) <= 40:
            raise ValueError("metadata keys must be 1-40 characters")
        if len(item) > 500:
            raise ValueError("metadata values must be at most 500 characters")
    return value


Amount = Annotated[int, Field(gt=0, le=MAX_MINOR_UNITS, description="integer minor units")]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$"), AfterValidator(_known_currency)]
Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]
ShortText = Annotated[str, Field(min_length=1, max_length=500)]
Token = Annotated[str, Field(min_length=1, max_length=255)]


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class CreatePaymentRequest(_Body):
    amount: Amount
    currency: Currency
    order_id: Identifier
    customer_id: Identifier
    payment_method_token: Token | None = None
    saved_method_id: Identifier | None = None
    capture_method: Literal["automatic", "manual"] = "automatic"
    gateway: GatewayName | None = None
    metadata: Annotated[dict[str, str], AfterValidator(_metadata)] = Field(default_factory=dict)
    customer_ip: Annotated[str, Field(max_length=45), AfterValidator(_ip)] | None = None
    customer_email: Annotated[str, Field(max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")] | None = None
    shipping_country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] | None = None

    @model_validator(mode="after")
    def _one_payment_method(self) -> CreatePaymentRequest:
        if (self.payment_method_token is None) == (self.saved_method_id is None):
            raise ValueError("give exactly one of payment_method_token and saved_method_id")
        return self


class CapturePaymentRequest(_Body):
    amount: Amount | None = None
    currency: Currency | None = None


class CancelPaymentRequest(_Body):
    reason: ShortText | None = None


class RefundPaymentRequest(_Body):
    amount: Amount | None = None
    currency: Currency | None = None
    reason: ShortText | None = None
    refund_id: Identifier | None = None


class AddPaymentMethodRequest(_Body):
    gateway: GatewayName
    gateway_token: Token
    brand: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    last4: Annotated[str, Field(pattern=r"^[0-9]{4}$")] | None = None
    exp_month: Annotated[int, Field(ge=1, le=12)] | None = None
    exp_year: Annotated[int, Field(ge=2000, le=2199)] | None = None
    fingerprint: Annotated[str, Field(min_length=1, max_length=128)] | None = None


def validation_reasons(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors without the offending input (it could be anything, even card data)."""
    reasons = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        reasons.append({"field": ".".join(str(p) for p in err["loc"]) or "$", "type": err["type"], "msg": err["msg"]})
    return reasons
