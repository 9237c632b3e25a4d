"""The one gateway protocol every payment gateway client implements.

Value types are frozen dataclasses; money is always integer minor units plus an ISO-4217
currency code. Errors are classified once, here, into three kinds the caller acts on:

* ``RetryableGatewayError``   nothing was charged; retry (use the next attempt's key).
* ``PermanentGatewayError``   the request is wrong; retrying will not help.
* ``OutcomeUnknownError``     the request may have been carried out; never treat it as failed,
                              resolve it with ``retrieve(idempotency_key=...)``.

A decline is not an error: it is a ``GatewayResult`` with status ``DECLINED``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol, runtime_checkable

__all__ = [
    "ChargeNotFoundError",
    "DeclineCode",
    "GatewayError",
    "GatewayNotification",
    "GatewayResult",
    "GatewayStatus",
    "IdempotencyConflictError",
    "InvalidWebhookError",
    "OutcomeUnknownError",
    "PaymentGateway",
    "PermanentGatewayError",
    "RetryableGatewayError",
    "idempotency_key",
]


class GatewayStatus(StrEnum):
    """Normalised outcome of a gateway operation (one vocabulary for all gateways)."""

    AUTHORIZED = "authorized"
    CAPTURED = "captured"  # money moved: the gateway's "succeeded"
    REQUIRES_ACTION = "requires_action"
    DECLINED = "declined"
    CANCELED = "canceled"
    REFUNDED = "refunded"  # the refund operation succeeded (full or partial)
    REFUND_FAILED = "refund_failed"
    PENDING = "pending"  # accepted but not final yet; a webhook or retrieve will tell


class DeclineCode(StrEnum):
    """Normalised decline reasons; each translator maps its gateway's codes to these."""

    INSUFFICIENT_FUNDS = "insufficient_funds"
    CARD_DECLINED = "card_declined"
    EXPIRED_CARD = "expired_card"
    INCORRECT_CVC = "incorrect_cvc"
    FRAUD_SUSPECTED = "fraud_suspected"
    PROCESSING_ERROR = "processing_error"


@dataclass(frozen=True, slots=True)
class GatewayResult:
    """What a gateway says about one payment after an operation or a retrieve."""

    status: GatewayStatus
    gateway_ref: str
    currency: str
    amount_authorized: int = 0
    amount_captured: int = 0
    amount_refunded: int = 0
    decline_code: DeclineCode | None = None
    raw_status: str = ""
    latency_ms: float = 0.0  # timing only, never money
    action_url: str | None = None
    refund_ref: str | None = None  # the gateway's id of the refund, for refund operations
    refund_id: str | None = None  # our refund id, when the gateway echoes it (metadata / reference)
    refund_amount: int | None = None  # this refund's amount (minor units), for refund operations
    replayed: bool = False  # the gateway answered from its idempotency store


@dataclass(frozen=True, slots=True)
class GatewayNotification:
    """A signature-verified, parsed gateway webhook."""

    event_id: str
    event_type: str  # the gateway's own event name, kept for audit
    occurred_at: int  # unix seconds, as stated by the gateway
    payment_id: str | None
    result: GatewayResult


class GatewayError(Exception):
    """Base of every error a gateway client raises; foreign errors are wrapped into these."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        gateway_code: str | None = None,
        idempotency_key: str | None = None,
        replayed: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.gateway_code = gateway_code
        self.idempotency_key = idempotency_key
        # The gateway answered from its idempotency store: the same key gets the same answer.
        self.replayed = replayed

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, http_status={self.http_status!r}, "
            f"gateway_code={self.gateway_code!r})"
        )


class RetryableGatewayError(GatewayError):
    """Nothing was charged (not sent, rate limited, or a 5xx the gateway flags as safe).

    Retrying under the same idempotency key is always safe and helps when the gateway did not
    store the answer (request not sent, rate limited, an unavailable front end). Gateways with
    Stripe's semantics store a 5xx against the key and replay it (``replayed`` is then set on
    the replay): only the next attempt's key gets a fresh try there.
    """


class PermanentGatewayError(GatewayError):
    """The gateway rejected the request itself (4xx); retrying the same request will not help."""


class IdempotencyConflictError(PermanentGatewayError):
    """The idempotency key was already used with different parameters."""


class ChargeNotFoundError(PermanentGatewayError):
    """No charge exists for the given reference, or none was made under the given key."""


class InvalidWebhookError(PermanentGatewayError):
    """A webhook failed signature verification or could not be parsed."""


class OutcomeUnknownError(GatewayError):
    """The request may or may not have been carried out (timeout, lost response, 5xx after send).

    Never treat this as a failure: resolve it with ``retrieve(idempotency_key=...)``.
    """


_OPERATION_RE = re.compile(r"^[A-Za-z0-9_:.]+$")
_MAX_KEY_LENGTH = 255  # Stripe's limit; the strictest of the gateways we talk to


def idempotency_key(payment_id: str, operation: str, attempt: int) -> str:
    """Deterministic idempotency key for one attempt of one operation on one payment.

    The same (payment_id, operation, attempt) always gives the same key, so a crashed worker
    that retries sends the same key and cannot charge twice. ``operation`` must not contain
    ``-`` so that keys stay unambiguous (use e.g. ``refund:<refund_id>``).
    """
    if not payment_id:
        raise ValueError("payment_id must not be empty")
    if not _OPERATION_RE.match(operation):
        raise ValueError(f"operation must match {_OPERATION_RE.pattern}: {operation!r}")
    if isinstance(attempt, bool) or attempt < 0:
        raise ValueError(f"attempt must be a non-negative int: {attempt!r}")
    key = f"ps-{payment_id}-{operation}-{attempt}"
    if len(key) > _MAX_KEY_LENGTH:
        raise ValueError(f"idempotency key longer than {_MAX_KEY_LENGTH} characters")
    return key


HTTPX_POOL_CONNECTIONS: Final = 100  # httpx's default connection pool (max_connections)
"""Calls in flight to one gateway that an httpx-based client (Stripe, PayPal, Adyen) serves
without queueing inside httpx's pool, whose queue costs CPU quadratic in its length. A client
states its own figure as ``max_concurrency``; the worker keeps at most that many calls in flight."""


@runtime_checkable
class PaymentGateway(Protocol):
    """The one protocol all gateway clients implement.

    Mutating calls take keyword arguments only, so an amount can never be passed as a
    currency (or a refund id as a gateway reference) by position.
    """

    @property
    def gateway_name(self) -> str: ...

    async def authorize(
        self,
        *,
        payment_id: str,
        amount: int,
        currency: str,
        payment_method_token: str,
        capture: bool,
        idempotency_key: str,
        metadata: Mapping[str, str] | None = None,
    ) -> GatewayResult:
        """Authorize (``capture=False``) or purchase (``capture=True``) ``amount``."""
        ...

    async def capture(self, *, gateway_ref: str, amount: int, currency: str, idempotency_key: str) -> GatewayResult:
        """Capture ``amount`` (≤ authorized) of an authorization; the remainder is released."""
        ...

    async def cancel(self, *, gateway_ref: str, idempotency_key: str) -> GatewayResult:
        """Void an authorization that has not been captured."""
        ...

    async def refund(
        self,
        *,
        gateway_ref: str,
        refund_id: str,
        amount: int,
        currency: str,
        idempotency_key: str,
    ) -> GatewayResult:
        """Refund ``amount`` of a captured payment (may be called several times, partially)."""
        ...

    async def retrieve(self, *, gateway_ref: str | None = None, idempotency_key: str | None = None) -> GatewayResult:
        """Current state of a payment, by reference or by the key of an earlier request.

        Raises ``ChargeNotFoundError`` when nothing was charged under the key.
        """
        ...

    def verify_and_parse(self, raw_body: bytes, headers: Mapping[str, str], now: int) -> GatewayNotification:
        """Verify a webhook's signature on the raw bytes, then parse it.

        Raises ``InvalidWebhookError`` when the signature or the payload is not acceptable.
        """
        ...
