"""``PaymentGateway`` for Adyen over the documented Checkout API v71 (REST), async.

Why REST and not the SDK: the ``Adyen`` package (16.0.0 on PyPI) is synchronous (requests,
pycurl or urllib under the hood); from the event loop it would need a thread per call. We need
four endpoints: ``/payments`` and ``/payments/{pspReference}/captures|cancels|refunds``.

* ``Idempotency-Key`` carries our deterministic key. Adyen's limit is 64 characters; longer
  keys are replaced by a SHA-256 digest of the key (still deterministic).
* ``payment_method_token`` is an Adyen ``storedPaymentMethodId`` (card on file); the shopper
  reference is ``metadata["customer_id"]`` when given.
* ``reference`` is our payment id for payments and our idempotency key for modifications, so
  every webhook's ``merchantReference`` leads back to the payment.
* Adyen has no payment lookup in Checkout: results of unknown outcomes arrive by webhook.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Final

import httpx

from gateway_clients._guards import ClosingClient, check_amount, check_key, elapsed_ms, path_segment
from gateway_clients.adyen.translator import (
    MalformedPayloadError,
    classify_error,
    payment_id_from_reference,
    result_from_modification,
    result_from_payment,
)
from gateway_clients.adyen.webhooks import parse_verified_webhook
from gateway_clients.protocol import (
    HTTPX_POOL_CONNECTIONS,
    GatewayNotification,
    GatewayResult,
    InvalidWebhookError,
    OutcomeUnknownError,
    PermanentGatewayError,
    RetryableGatewayError,
)

__all__ = ["TEST_API_BASE", "AdyenGatewayClient", "adyen_idempotency_key"]

TEST_API_BASE: Final = "https://checkout-test.adyen.com/v71"
_MAX_KEY: Final = 64
_MAX_REFERENCE: Final = 80
_NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def adyen_idempotency_key(key: str) -> str:
    """Our key if it fits Adyen's 64 characters, else a deterministic digest of it."""
    if len(key) <= _MAX_KEY:
        return key
    return "psh-" + hashlib.sha256(key.encode()).hexdigest()[:60]


class AdyenGatewayClient(ClosingClient):
    """``PaymentGateway`` over Adyen Checkout v71."""

    max_concurrency: int = HTTPX_POOL_CONNECTIONS  # calls in flight to it: httpx's pool

    def __init__(
        self,
        api_key: str,
        merchant_account: str,
        *,
        api_base: str = TEST_API_BASE,
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        return_url: str = "https://example.invalid/return",
        hmac_keys: Sequence[str] = (),
    ) -> None:
        if not api_key or not merchant_account:
            raise ValueError("api_key and merchant_account are required")
        self._http = httpx.AsyncClient(
            base_url=api_base.rstrip("/"),
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            headers={"X-API-Key": api_key, "User-Agent": "paystream-gateway-client"},
        )
        self._merchant_account = merchant_account
        self._return_url = return_url
        self._hmac_keys = tuple(hmac_keys)

    @property
    def gateway_name(self) -> str:
        return "adyen"

    async def aclose(self) -> None:
        await self._http.aclose()

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
        check_amount(amount)
        check_key(idempotency_key)
        if not payment_method_token:
            raise PermanentGatewayError("payment_method_token must not be empty", gateway_code="invalid_request")
        metadata = dict(metadata or {})
        body: dict[str, object] = {
            "merchantAccount": self._merchant_account,
            "amount": {"currency": currency.upper(), "value": amount},
            "reference": payment_id,
            "paymentMethod": {"type": "scheme", "storedPaymentMethodId": payment_method_token},
            "shopperReference": metadata.get("customer_id", payment_id),
            "shopperInteraction": "ContAuth",
            "recurringProcessingModel": "CardOnFile",
            "returnUrl": self._return_url,
            "metadata": {**metadata, "payment_id": payment_id},
        }
        if capture:
            body["captureDelayHours"] = 0
        else:
            body["additionalData"] = {"manualCapture": "true"}
        started = time.perf_counter()
        status, payload, headers = await self._post("/payments", body, idempotency_key)
        self._raise_for_error(status, payload, headers, idempotency_key)
        try:
            return result_from_payment(
                _required(payload),
                capture_requested=capture,
                amount=amount,
                currency=currency,
                latency_ms=elapsed_ms(started),
                replayed=_replayed(headers),
            )
        except MalformedPayloadError as exc:
            raise OutcomeUnknownError(f"malformed Adyen response: {exc}", idempotency_key=idempotency_key) from exc

    async def capture(self, *, gateway_ref: str, amount: int, currency: str, idempotency_key: str) -> GatewayResult:
        check_amount(amount)
        body = {"amount": {"currency": currency.upper(), "value": amount}}
        return await self._modify(gateway_ref, "captures", body, idempotency_key, refund=False)

    async def cancel(self, *, gateway_ref: str, idempotency_key: str) -> GatewayResult:
        return await self._modify(gateway_ref, "cancels", {}, idempotency_key, refund=False)

    async def refund(
        self,
        *,
        gateway_ref: str,
        refund_id: str,
        amount: int,
        currency: str,
        idempotency_key: str,
    ) -> GatewayResult:
        check_amount(amount)
        body = {"amount": {"currency": currency.upper(), "value": amount}}
        return await self._modify(gateway_ref, "refunds", body, idempotency_key, refund=True)

    async def retrieve(self, *, gateway_ref: str | None = None, idempotency_key: str | None = None) -> GatewayResult:
        """Adyen Checkout has no payment lookup: an unknown outcome is resolved by resending the
        same request with the same key (Adyen replays its answer) or by the webhook."""
        if gateway_ref is None and idempotency_key is None:
            raise ValueError("retrieve needs gateway_ref or idempotency_key")
        raise OutcomeUnknownError(
            "Adyen has no payment lookup; resend with the same key or wait for the webhook",
            gateway_code="lookup_unsupported",
            idempotency_key=idempotency_key,
        )

    def verify_and_parse(self, raw_body: bytes, headers: Mapping[str, str], now: int) -> GatewayNotification:
        """Single-item webhooks (Adyen's current default). Batches: use ``verify_and_parse_all``."""
        notifications = self.verify_and_parse_all(raw_body)
        if len(notifications) != 1:
            raise InvalidWebhookError("batch webhook: use verify_and_parse_all", gateway_code="batch_webhook")
        return notifications[0]

    def verify_and_parse_all(self, raw_body: bytes) -> list[GatewayNotification]:
        return parse_verified_webhook(raw_body, self._hmac_keys)

    async def _modify(
        self, psp_reference: str, kind: str, extra: Mapping[str, object], idempotency_key: str, *, refund: bool
    ) -> GatewayResult:
        check_key(idempotency_key)
        body = {
            "merchantAccount": self._merchant_account,
            "reference": _modification_reference(idempotency_key),
            **extra,
        }
        started = time.perf_counter()
        path = f"/payments/{path_segment(psp_reference)}/{kind}"
        status, payload, headers = await self._post(path, body, idempotency_key)
        self._raise_for_error(status, payload, headers, idempotency_key)
        try:
            return result_from_modification(
                _required(payload), refund=refund, latency_ms=elapsed_ms(started), replayed=_replayed(headers)
            )
        except MalformedPayloadError as exc:
            raise OutcomeUnknownError(f"malformed Adyen response: {exc}", idempotency_key=idempotency_key) from exc

    def _raise_for_error(
        self, status: int, payload: Mapping[str, object] | None, headers: httpx.Headers, key: str
    ) -> None:
        if 200 <= status < 300:
            return
        transient = headers.get("transient-error", "").lower() == "true"
        raise classify_error(status, payload, mutating=True, transient=transient, idempotency_key=key)

    async def _post(
        self, path: str, body: Mapping[str, object], key: str
    ) -> tuple[int, Mapping[str, object] | None, httpx.Headers]:
        headers = {"Idempotency-Key": adyen_idempotency_key(key)}
        try:
            response = await self._http.post(path, json=body, headers=headers)
        except _NOT_SENT as exc:
            raise RetryableGatewayError(f"request not sent: {type(exc).__name__}", idempotency_key=key) from exc
        except httpx.TransportError as exc:
            raise OutcomeUnknownError(f"no response: {type(exc).__name__}", idempotency_key=key) from exc
        payload: Mapping[str, object] | None = None
        if response.content:
            try:
                decoded = json.loads(response.content)
            except (UnicodeDecodeError, json.JSONDecodeError):
                decoded = None
            payload = decoded if isinstance(decoded, dict) else None
        return response.status_code, payload, response.headers


def _required(payload: Mapping[str, object] | None) -> Mapping[str, object]:
    if payload is None:
        raise MalformedPayloadError("empty or non-JSON body")
    return payload


def _replayed(headers: httpx.Headers) -> bool:
    """Adyen echoes the Idempotency-Key header on every answer; it does not flag replays."""
    return False


def _modification_reference(key: str) -> str:
    """Adyen references hold 80 characters: the key, or else the payment id inside it."""
    if len(key) <= _MAX_REFERENCE:
        return key
    payment_id = payment_id_from_reference(key)
    return (payment_id or key)[:_MAX_REFERENCE]



