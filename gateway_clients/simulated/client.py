"""Clients of the simulated gateway that implement ``PaymentGateway``.

* ``SimulatedGatewayClient`` talks HTTP to ``gateway_clients.simulated.server`` via aiohttp.
* ``InProcessSimulatedGateway`` calls a ``SimulatedGatewayEngine`` directly, for unit tests and
  benchmarks; it only sleeps when asked to.

Both hand every answer to the same pure translator, so errors are classified in one place.

Why aiohttp and not httpx (which the PayPal and Adyen clients use): the simulated gateway is the
one HTTP gateway the benchmark drives at hundreds of calls per second, and there httpx cost the
worker 2.8 ms of CPU per request at 64 requests in flight (1.1 ms once ``sniffio`` is installed:
httpcore imports it on every lock it builds; 2.5 ms with a keep-alive pool of 64: its pool scans
every connection per request) against 0.19 ms for aiohttp on the same server (``docs/performance.md``,
session 7). aiohttp is already the worker's web server (faust's).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from typing import Final

import aiohttp

from gateway_clients._guards import ClosingClient
from gateway_clients.protocol import (
    GatewayNotification,
    GatewayResult,
    OutcomeUnknownError,
    PermanentGatewayError,
    RetryableGatewayError,
)
from gateway_clients.simulated.engine import (
    Delivery,
    EngineResponse,
    SimulatedGatewayEngine,
)
from gateway_clients.simulated.translator import (
    REPLAYED_HEADER,
    SHOULD_RETRY_HEADER,
    translate_response,
)
from gateway_clients.simulated.webhooks import (
    DEFAULT_TOLERANCE_S,
    parse_verified_webhook,
)

__all__ = [
    "InProcessSimulatedGateway",
    "SimulatedGatewayClient",
]

# Raised before a single byte of the request left: nothing can have been charged. A connection
# that could not be made, or none free in the pool within the connect timeout.
_NOT_SENT_ERRORS: Final = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
# Sent (at least partly), no usable answer: disconnects, resets, read timeouts, broken bodies.
_NO_ANSWER_ERRORS: Final = (aiohttp.ClientError, asyncio.TimeoutError)

_USER_AGENT: Final = "paystream-gateway-client"


class SimulatedGatewayClient(ClosingClient):
    """``PaymentGateway`` over HTTP to the simulated gateway server.

    The aiohttp session is made on first use, in the running event loop (a session belongs to
    one loop), and made again if a later call runs in another loop. ``timeout_s`` bounds getting
    a connection (pool wait and TCP connect: a timeout there means *not sent*) and each read of
    the answer (a timeout there means *sent, outcome unknown*), like httpx's per-phase timeouts.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 10.0,
        max_connections: int = 256,
        webhook_secrets: Sequence[str] = (),
        webhook_tolerance_s: int = DEFAULT_TOLERANCE_S,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_read=timeout_s)
        self._max_connections = max_connections
        self.max_concurrency = max_connections  # calls in flight to it: one per pooled connection
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._webhook_secrets = tuple(webhook_secrets)
        self._webhook_tolerance_s = webhook_tolerance_s

    @property
    def gateway_name(self) -> str:
        return "simulated"

    def _http(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=self._max_connections)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                                  headers={"User-Agent": _USER_AGENT})
            self._loop = loop
        return self._session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed and self._loop is asyncio.get_running_loop():
            await session.close()

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
        body = {
            "payment_id": payment_id,
            "amount": amount,
            "currency": currency,
            "payment_method": payment_method_token,
            "capture": capture,
            "metadata": {**(metadata or {}), "payment_id": payment_id},
        }
        return await self._send("POST", "/v1/payments", body, idempotency_key)

    async def capture(self, *, gateway_ref: str, amount: int, currency: str, idempotency_key: str) -> GatewayResult:
        body = {"amount": amount, "currency": currency}
        return await self._send("POST", f"/v1/payments/{_path(gateway_ref)}/capture", body, idempotency_key)

    async def cancel(self, *, gateway_ref: str, idempotency_key: str) -> GatewayResult:
        return await self._send("POST", f"/v1/payments/{_path(gateway_ref)}/cancel", {}, idempotency_key)

    async def refund(
        self,
        *,
        gateway_ref: str,
        refund_id: str,
        amount: int,
        currency: str,
        idempotency_key: str,
    ) -> GatewayResult:
        body = {"refund_id": refund_id, "amount": amount, "currency": currency}
        return await self._send("POST", f"/v1/payments/{_path(gateway_ref)}/refunds", body, idempotency_key)

    async def retrieve(self, *, gateway_ref: str | None = None, idempotency_key: str | None = None) -> GatewayResult:
        if gateway_ref is not None:
            return await self._send("GET", f"/v1/payments/{_path(gateway_ref)}", None, None)
        if idempotency_key is not None:
            return await self._send("GET", "/v1/lookup", None, None, params={"idempotency_key": idempotency_key})
        raise ValueError("retrieve needs gateway_ref or idempotency_key")

    async def detach_payment_method(self, *, payment_method_token: str, idempotency_key: str) -> None:
        """Detach a removed saved method at the gateway (``POST /v1/payment_methods/{token}/detach``)."""
        path = f"/v1/payment_methods/{_token_path(payment_method_token)}/detach"
        try:
            status, _, _ = await self._request("POST", path, None, {"Idempotency-Key": idempotency_key}, None)
        except _NOT_SENT_ERRORS as exc:
            raise RetryableGatewayError(f"request not sent: {type(exc).__name__}",
                                        idempotency_key=idempotency_key) from exc
        except _NO_ANSWER_ERRORS as exc:
            raise OutcomeUnknownError(f"no response: {type(exc).__name__}", idempotency_key=idempotency_key) from exc
        if status >= 500:
            raise RetryableGatewayError("detach failed", http_status=status, idempotency_key=idempotency_key)
        if status >= 400:
            raise PermanentGatewayError("detach refused", http_status=status, idempotency_key=idempotency_key)

    def verify_and_parse(self, raw_body: bytes, headers: Mapping[str, str], now: int) -> GatewayNotification:
        return parse_verified_webhook(
            raw_body, headers, now=now, secrets=self._webhook_secrets, tolerance_s=self._webhook_tolerance_s
        )

    async def _request(
        self,
        method: str,
        path: str,
        body: Mapping[str, object] | None,
        headers: dict[str, str],
        params: Mapping[str, str] | None,
    ) -> tuple[int, bytes, Mapping[str, str]]:
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        async with self._http().request(method, self._base + path, data=data, headers=headers,
                                        params=params) as response:
            return response.status, await response.read(), response.headers

    async def _send(
        self,
        method: str,
        path: str,
        body: Mapping[str, object] | None,
        idempotency_key: str | None,
        *,
        params: Mapping[str, str] | None = None,
    ) -> GatewayResult:
        mutating = method != "GET"
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        started = time.perf_counter()
        try:
            status, content, response_headers = await self._request(method, path, body, headers, params)
        except _NOT_SENT_ERRORS as exc:
            raise RetryableGatewayError(
                f"request not sent: {type(exc).__name__}: {exc}", idempotency_key=idempotency_key
            ) from exc
        except _NO_ANSWER_ERRORS as exc:
            # Sent (at least partly), but no usable answer: the gateway may have acted on it.
            cls = OutcomeUnknownError if mutating else RetryableGatewayError
            raise cls(f"no response: {type(exc).__name__}: {exc}", idempotency_key=idempotency_key) from exc
        latency_ms = (time.perf_counter() - started) * 1000.0
        try:
            decoded = json.loads(content) if content else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            decoded = None
        return translate_response(
            status,
            decoded if isinstance(decoded, dict) else None,
            should_retry=response_headers.get(SHOULD_RETRY_HEADER, "").lower() == "true",
            mutating=mutating,
            latency_ms=latency_ms,
            replayed=response_headers.get(REPLAYED_HEADER, "").lower() == "true",
            idempotency_key=idempotency_key,
        )


class InProcessSimulatedGateway:
    """``PaymentGateway`` straight on an engine: no network, sleeps only if ``sleep=True``.

    The engine's delivery instructions are honoured: a response delayed past ``timeout_s`` or a
    dropped connection raises ``OutcomeUnknownError`` (after the engine has processed it, just
    like the HTTP server). ``latency_ms`` in results is the simulated latency, slept or not.
    """

    def __init__(
        self,
        engine: SimulatedGatewayEngine,
        *,
        timeout_s: float = 10.0,
        sleep: bool = False,
        webhook_secrets: Sequence[str] = (),
        webhook_tolerance_s: int = DEFAULT_TOLERANCE_S,
    ) -> None:
        self.engine = engine
        self._timeout_ms = timeout_s * 1000.0
        self._sleep = sleep
        self._webhook_secrets = tuple(webhook_secrets)
        self._webhook_tolerance_s = webhook_tolerance_s

    @property
    def gateway_name(self) -> str:
        return "simulated"

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
        response = self.engine.authorize(
            payment_id=payment_id,
            amount=amount,
            currency=currency,
            payment_method_token=payment_method_token,
            capture=capture,
            idempotency_key=idempotency_key,
            metadata=metadata,
        )
        return await self._deliver(response, mutating=True, idempotency_key=idempotency_key)

    async def capture(self, *, gateway_ref: str, amount: int, currency: str, idempotency_key: str) -> GatewayResult:
        response = self.engine.capture(
            gateway_ref=gateway_ref, amount=amount, currency=currency, idempotency_key=idempotency_key
        )
        return await self._deliver(response, mutating=True, idempotency_key=idempotency_key)

    async def cancel(self, *, gateway_ref: str, idempotency_key: str) -> GatewayResult:
        response = self.engine.cancel(gateway_ref=gateway_ref, idempotency_key=idempotency_key)
        return await self._deliver(response, mutating=True, idempotency_key=idempotency_key)

    async def refund(
        self,
        *,
        gateway_ref: str,
        refund_id: str,
        amount: int,
        currency: str,
        idempotency_key: str,
    ) -> GatewayResult:
        response = self.engine.refund(
            gateway_ref=gateway_ref,
            refund_id=refund_id,
            amount=amount,
            currency=currency,
            idempotency_key=idempotency_key,
        )
        return await self._deliver(response, mutating=True, idempotency_key=idempotency_key)

    async def detach_payment_method(self, *, payment_method_token: str, idempotency_key: str) -> None:
        self.engine.detach_payment_method(payment_method_token, idempotency_key)

    async def retrieve(self, *, gateway_ref: str | None = None, idempotency_key: str | None = None) -> GatewayResult:
        if gateway_ref is not None:
            response = self.engine.get_payment(gateway_ref)
        elif idempotency_key is not None:
            response = self.engine.lookup(idempotency_key)
        else:
            raise ValueError("retrieve needs gateway_ref or idempotency_key")
        return await self._deliver(response, mutating=False, idempotency_key=None)

    def verify_and_parse(self, raw_body: bytes, headers: Mapping[str, str], now: int) -> GatewayNotification:
        return parse_verified_webhook(
            raw_body, headers, now=now, secrets=self._webhook_secrets, tolerance_s=self._webhook_tolerance_s
        )

    async def _deliver(self, response: EngineResponse, *, mutating: bool, idempotency_key: str | None) -> GatewayResult:
        if response.delay_ms >= self._timeout_ms:
            if self._sleep:
                await asyncio.sleep(self._timeout_ms / 1000.0)
            cls = OutcomeUnknownError if mutating else RetryableGatewayError
            raise cls("timed out waiting for the gateway", idempotency_key=idempotency_key)
        if self._sleep and response.delay_ms > 0:
            await asyncio.sleep(response.delay_ms / 1000.0)
        if response.delivery is Delivery.DROP:
            raise OutcomeUnknownError("connection dropped before the response", idempotency_key=idempotency_key)
        return translate_response(
            response.status_code,
            response.body,
            should_retry=response.should_retry,
            mutating=mutating,
            latency_ms=response.delay_ms,
            replayed=response.replayed,
            idempotency_key=idempotency_key,
        )


def _token_path(token: str) -> str:
    """A token as one URL path segment; the error never repeats the token (it is a secret)."""
    if not token or any(c in token for c in "/?#%") or ".." in token:
        raise PermanentGatewayError("invalid payment method token for a URL path")
    return token


def _path(segment: str) -> str:
    """Refuse references that would change the URL path (they come from outside)."""
    if not segment or "/" in segment or "?" in segment or "#" in segment or ".." in segment:
        raise PermanentGatewayError(f"invalid gateway reference {segment!r}")
    return segment
