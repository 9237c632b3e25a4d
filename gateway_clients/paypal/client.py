"""``PaymentGateway`` for PayPal over its documented REST API (Orders v2, Payments v2), async.

Why REST and not the SDK: ``paypal-server-sdk`` (2.4.0 on PyPI) is an APIMatic-generated,
synchronous client; calling it from the event loop would need a thread per request and its
retry behaviour would have to be switched off and audited. The REST surface we need is six
endpoints, so httpx does it with the transport, timeouts and retries under our control.

* OAuth2 client credentials (``/v1/oauth2/token``); the token is cached until shortly before
  it expires and fetched again once if PayPal answers 401.
* Every POST carries ``PayPal-Request-Id`` derived from our deterministic key (PayPal's limit
  is 108 characters; longer keys are replaced by a SHA-256 digest of the key, deterministic too).
  A second call inside one operation (authorize/capture an approved order) gets ``<key>:<step>``.
* ``gateway_ref`` is the PayPal order id. Capture, void and refund first read the order to
  find the authorization / capture id (a read: safe to repeat).
* ``payment_method_token`` is a PayPal vault id (saved card or PayPal wallet).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Final, Literal

import httpx

from gateway_clients._guards import ClosingClient, check_amount, check_key, elapsed_ms, path_segment
from gateway_clients.paypal.translator import (
    MalformedPayloadError,
    classify_error,
    minor_to_value,
    result_from_authorization,
    result_from_capture,
    result_from_order,
    result_from_refund,
    voided_result,
)
from gateway_clients.paypal.webhooks import CertFetcher, PayPalWebhookVerifier, fetch_cert_over_https
from gateway_clients.protocol import (
    HTTPX_POOL_CONNECTIONS,
    GatewayError,
    GatewayNotification,
    GatewayResult,
    GatewayStatus,
    InvalidWebhookError,
    OutcomeUnknownError,
    PermanentGatewayError,
    RetryableGatewayError,
)

__all__ = ["LIVE_API_BASE", "SANDBOX_API_BASE", "PayPalGatewayClient", "request_id"]

SANDBOX_API_BASE: Final = "https://api-m.sandbox.paypal.com"
LIVE_API_BASE: Final = "https://api-m.paypal.com"
_MAX_REQUEST_ID: Final = 108
_TOKEN_MARGIN_S: Final = 60.0
_NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_KEY_RE: Final = re.compile(r"^ps-(?P<payment_id>.+)-(?P<operation>[A-Za-z0-9_:.]+)-(?P<attempt>\d+)$")

PaymentSource = Literal["card", "paypal"]


def request_id(key: str, step: str | None = None) -> str:
    """``PayPal-Request-Id`` for ``key`` (and a sub-step), deterministic and ≤ 108 characters."""
    value = key if step is None else f"{key}:{step}"
    if len(value) <= _MAX_REQUEST_ID:
        return value
    return "psh-" + hashlib.sha256(value.encode()).hexdigest()


class PayPalGatewayClient(ClosingClient):
    """``PaymentGateway`` over PayPal Orders v2."""

    max_concurrency: int = HTTPX_POOL_CONNECTIONS  # calls in flight to it: httpx's pool

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        api_base: str = SANDBOX_API_BASE,
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        payment_source: PaymentSource = "card",
        webhook_id: str | None = None,
        fetch_cert: CertFetcher = fetch_cert_over_https,
        webhook_tolerance_s: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not client_id or not client_secret:
            raise ValueError("client_id and client_secret are required")
        self._http = httpx.AsyncClient(
            base_url=api_base.rstrip("/"),
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            headers={"User-Agent": "paystream-gateway-client"},
        )
        self._auth = (client_id, client_secret)
        self._payment_source = payment_source
        self._clock = clock
        self._token: str | None = None
        self._token_expires_at = 0.0
        self._token_lock = asyncio.Lock()
        self._verifier = (
            PayPalWebhookVerifier(webhook_id, fetch_cert=fetch_cert, tolerance_s=webhook_tolerance_s)
            if webhook_id
            else None
        )

    @property
    def gateway_name(self) -> str:
        return "paypal"

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
        body = {
            "intent": "CAPTURE" if capture else "AUTHORIZE",
            "purchase_units": [
                {
                    "reference_id": "default",
                    "custom_id": payment_id,  # comes back on captures and in webhooks
                    "amount": {"currency_code": currency.upper(), "value": minor_to_value(amount, currency)},
                }
            ],
            "payment_source": {self._payment_source: {"vault_id": payment_method_token}},
        }
        started = time.perf_counter()
        status, order = await self._request("POST", "/v2/checkout/orders", body, request_id(idempotency_key))
        result = self._order_result(status, order, idempotency_key, started, mutating=True)
        if result.status is not GatewayStatus.PENDING or result.raw_status != "APPROVED":
            return result
        # Approved but not processed yet: complete it (its own deterministic request id).
        step = "capture" if capture else "authorize"
        path = f"/v2/checkout/orders/{path_segment(result.gateway_ref)}/{step}"
        status, order = await self._request("POST", path, {}, request_id(idempotency_key, step))
        return self._order_result(status, order, idempotency_key, started, mutating=True)

    async def capture(self, *, gateway_ref: str, amount: int, currency: str, idempotency_key: str) -> GatewayResult:
        check_amount(amount)
        check_key(idempotency_key)
        started = time.perf_counter()
        authorization_id = await self._payment_id_in_order(gateway_ref, "authorizations")
        body = {
            "amount": {"currency_code": currency.upper(), "value": minor_to_value(amount, currency)},
            "final_capture": True,  # the remainder of the authorization is released
        }
        path = f"/v2/payments/authorizations/{path_segment(authorization_id)}/capture"
        status, payload = await self._request("POST", path, body, request_id(idempotency_key))
        return self._translate(status, payload, idempotency_key, started, True, result_from_capture, gateway_ref)

    async def cancel(self, *, gateway_ref: str, idempotency_key: str) -> GatewayResult:
        check_key(idempotency_key)
        started = time.perf_counter()
        authorization_id = await self._payment_id_in_order(gateway_ref, "authorizations")
        path = f"/v2/payments/authorizations/{path_segment(authorization_id)}/void"
        status, payload = await self._request("POST", path, None, request_id(idempotency_key))
        if status == 204:
            return voided_result(gateway_ref, latency_ms=elapsed_ms(started))
        return self._translate(status, payload, idempotency_key, started, True, result_from_authorization, gateway_ref)

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
        check_key(idempotency_key)
        started = time.perf_counter()
        capture_id = await self._payment_id_in_order(gateway_ref, "captures")
        body: dict[str, object] = {
            "amount": {"currency_code": currency.upper(), "value": minor_to_value(amount, currency)},
            "invoice_id": refund_id[:127],
        }
        match = _KEY_RE.match(idempotency_key)
        if match:
            body["custom_id"] = match.group("payment_id")[:127]
        path = f"/v2/payments/captures/{path_segment(capture_id)}/refund"
        status, payload = await self._request("POST", path, body, request_id(idempotency_key))
        return self._translate(status, payload, idempotency_key, started, True, result_from_refund, gateway_ref)

    async def retrieve(self, *, gateway_ref: str | None = None, idempotency_key: str | None = None) -> GatewayResult:
        """By order id. PayPal offers no lookup by ``PayPal-Request-Id``: resend the original
        request with the same key instead (PayPal replays it), or wait for the webhook."""
        if gateway_ref is not None:
            started = time.perf_counter()
            status, order = await self._request("GET", f"/v2/checkout/orders/{path_segment(gateway_ref)}", None, None)
            return self._order_result(status, order, None, started, mutating=False)
        if idempotency_key is not None:
            raise OutcomeUnknownError(
                "PayPal cannot look up a request by its key; resend it with the same key",
                gateway_code="lookup_by_key_unsupported",
                idempotency_key=idempotency_key,
            )
        raise ValueError("retrieve needs gateway_ref or idempotency_key")

    def verify_and_parse(self, raw_body: bytes, headers: Mapping[str, str], now: int) -> GatewayNotification:
        if self._verifier is None:
            raise InvalidWebhookError("no PayPal webhook_id configured", gateway_code="no_secret")
        return self._verifier.verify_and_parse(raw_body, headers, now=now)

    # -- internals ------------------------------------------------------------------------------

    async def _payment_id_in_order(self, order_id: str, kind: Literal["authorizations", "captures"]) -> str:
        """The id of the order's (last) authorization or capture, read from the order."""
        status, order = await self._request("GET", f"/v2/checkout/orders/{path_segment(order_id)}", None, None)
        if not 200 <= status < 300 or order is None:
            outcome = classify_error(status, order, mutating=False)
            if isinstance(outcome, GatewayError):
                raise outcome
            raise RetryableGatewayError(f"unexpected answer {status} reading the order", http_status=status)
        units = order.get("purchase_units")
        items: list[object] = []
        if isinstance(units, list) and units and isinstance(units[0], Mapping):
            payments = units[0].get("payments")
            if isinstance(payments, Mapping) and isinstance(payments.get(kind), list):
                items = payments[kind]
        ids = [i for item in items if isinstance(item, Mapping) and isinstance(i := item.get("id"), str)]
        if not ids:
            raise PermanentGatewayError(f"order has no {kind}", gateway_code=f"no_{kind}")
        return ids[-1]

    def _order_result(
        self,
        status: int,
        order: Mapping[str, object] | None,
        key: str | None,
        started: float,
        *,
        mutating: bool,
    ) -> GatewayResult:
        def translate(payload: Mapping[str, object], *, order_id: str, latency_ms: float) -> GatewayResult:
            return result_from_order(payload, latency_ms=latency_ms)

        return self._translate(status, order, key, started, mutating, translate, "")

    def _translate(
        self,
        status: int,
        payload: Mapping[str, object] | None,
        key: str | None,
        started: float,
        mutating: bool,
        translate: Callable[..., GatewayResult],
        order_id: str,
    ) -> GatewayResult:
        latency_ms = elapsed_ms(started)
        if not 200 <= status < 300:
            outcome = classify_error(status, payload, mutating=mutating, idempotency_key=key, latency_ms=latency_ms)
            if isinstance(outcome, GatewayError):
                raise outcome
            return outcome
        try:
            if payload is None:
                raise MalformedPayloadError("empty body")
            return translate(payload, order_id=order_id, latency_ms=latency_ms)
        except (MalformedPayloadError, PermanentGatewayError) as exc:
            cls = OutcomeUnknownError if mutating else RetryableGatewayError
            raise cls(f"malformed PayPal response: {exc}", http_status=status, idempotency_key=key) from exc

    async def _request(
        self, method: str, path: str, body: Mapping[str, object] | None, paypal_request_id: str | None
    ) -> tuple[int, Mapping[str, object] | None]:
        mutating = method != "GET"
        for attempt in range(2):
            token = await self._access_token(force=attempt > 0)
            headers = {"Authorization": f"Bearer {token}", "Prefer": "return=representation"}
            if paypal_request_id is not None:
                headers["PayPal-Request-Id"] = paypal_request_id
            response = await self._send(method, path, body, headers, mutating, paypal_request_id)
            if response.status_code == 401 and attempt == 0:
                continue  # expired or revoked token: nothing was done; fetch a new one once
            return response.status_code, _json_object(response)
        raise AssertionError("unreachable")

    async def _send(
        self,
        method: str,
        path: str,
        body: Mapping[str, object] | None,
        headers: Mapping[str, str],
        mutating: bool,
        key: str | None,
    ) -> httpx.Response:
        try:
            if body is None:
                return await self._http.request(method, path, headers=headers)
            return await self._http.request(method, path, json=body, headers=headers)
        except _NOT_SENT as exc:
            raise RetryableGatewayError(f"request not sent: {type(exc).__name__}", idempotency_key=key) from exc
        except httpx.TransportError as exc:
            cls = OutcomeUnknownError if mutating else RetryableGatewayError
            raise cls(f"no response: {type(exc).__name__}", idempotency_key=key) from exc

    async def _access_token(self, *, force: bool = False) -> str:
        async with self._token_lock:
            if not force and self._token is not None and self._clock() < self._token_expires_at:
                return self._token
            try:
                response = await self._http.post(
                    "/v1/oauth2/token", data={"grant_type": "client_credentials"}, auth=self._auth
                )
            except httpx.TransportError as exc:
                # Getting a token changes nothing at PayPal: always safe to retry.
                raise RetryableGatewayError(f"token request failed: {type(exc).__name__}") from exc
            payload = _json_object(response)
            if response.status_code != 200 or payload is None:
                cls = RetryableGatewayError if response.status_code >= 500 else PermanentGatewayError
                raise cls("PayPal refused the client credentials", http_status=response.status_code,
                          gateway_code=str(payload.get("error")) if payload else None)  # fmt: skip
            token, expires_in = payload.get("access_token"), payload.get("expires_in")
            if not isinstance(token, str) or isinstance(expires_in, bool) or not isinstance(expires_in, int):
                raise RetryableGatewayError("malformed token response", http_status=response.status_code)
            self._token = token
            self._token_expires_at = self._clock() + max(0.0, expires_in - _TOKEN_MARGIN_S)
            return token


def _json_object(response: httpx.Response) -> Mapping[str, object] | None:
    if not response.content:
        return None
    try:
        decoded = json.loads(response.content)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return decoded if isinstance(decoded, dict) else None



