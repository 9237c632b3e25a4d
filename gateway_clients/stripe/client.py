"""``PaymentGateway`` for Stripe via the official SDK's async API (stripe-python ≥ 10).

Wiring only: every answer and every SDK error goes to ``translator``, where it is classified.

Choices that matter for money:

* Our deterministic idempotency key is passed on every POST. stripe-python would otherwise
  invent a random one, and a crash-and-retry would become a second charge.
* ``max_network_retries=0``: the SDK never retries; retry decisions are the caller's.
* The HTTP transport is httpx (``stripe.HTTPXClient``); a test or a proxy can inject an httpx
  transport to see exactly what is sent.
* Our ``payment_id`` and the authorize key go into the PaymentIntent's metadata, so webhooks can
  be routed and an unknown outcome can be looked up by key.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import httpx
import stripe

from gateway_clients._guards import ClosingClient, check_amount, check_key, path_segment
from gateway_clients.protocol import (
    HTTPX_POOL_CONNECTIONS,
    ChargeNotFoundError,
    GatewayError,
    GatewayNotification,
    GatewayResult,
    OutcomeUnknownError,
    PermanentGatewayError,
    RetryableGatewayError,
)
from gateway_clients.stripe.translator import (
    METADATA_IDEMPOTENCY_KEY,
    METADATA_PAYMENT_ID,
    METADATA_REFUND_ID,
    classify_error,
    result_from_payment_intent,
    result_from_refund,
)
from gateway_clients.stripe.webhooks import DEFAULT_TOLERANCE_S, parse_verified_webhook

__all__ = ["DEFAULT_API_BASE", "StripeGatewayClient", "TransportHTTPXClient"]

DEFAULT_API_BASE: Final = "https://api.stripe.com"
_KEY_RE: Final = re.compile(r"^ps-(?P<payment_id>.+)-(?P<operation>[A-Za-z0-9_:.]+)-(?P<attempt>\d+)$")
_CURRENCY_RE: Final = re.compile(r"^[A-Za-z]{3}$")


class TransportHTTPXClient(stripe.HTTPXClient):
    """stripe's httpx client, optionally on an injected httpx transport (tests, proxies)."""

    def __init__(self, *, timeout_s: float, transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(timeout=timeout_s)
        if transport is not None:
            # The SDK builds its AsyncClient itself; swap it for one on our transport.
            self._client_async = httpx.AsyncClient(transport=transport)


class StripeGatewayClient(ClosingClient):
    """``PaymentGateway`` over Stripe PaymentIntents and Refunds."""

    max_concurrency: int = HTTPX_POOL_CONNECTIONS  # calls in flight to it: httpx's pool

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str = DEFAULT_API_BASE,
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        return_url: str | None = None,
        stripe_version: str | None = None,
        webhook_secrets: Sequence[str] = (),
        webhook_tolerance_s: int = DEFAULT_TOLERANCE_S,
    ) -> None:
        if not api_key:
            raise ValueError("api_key must not be empty")
        self._http_client = TransportHTTPXClient(timeout_s=timeout_s, transport=transport)
        self._stripe = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base.rstrip("/")},
            max_network_retries=0,
            http_client=self._http_client,
            stripe_version=stripe_version,
        )
        self._return_url = return_url
        self._webhook_secrets = tuple(webhook_secrets)
        self._webhook_tolerance_s = webhook_tolerance_s

    @property
    def gateway_name(self) -> str:
        return "stripe"

    async def aclose(self) -> None:
        await self._http_client.close_async()  # type: ignore[no-untyped-call]

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
        _check_currency(currency)
        check_key(idempotency_key)
        if not payment_method_token:
            raise PermanentGatewayError("payment_method_token must not be empty", gateway_code="invalid_request")
        params: dict[str, Any] = {
            "amount": amount,
            "currency": currency.lower(),
            "confirm": True,
            "payment_method": payment_method_token,
            "capture_method": "automatic" if capture else "manual",
            "metadata": {
                **(metadata or {}),
                METADATA_PAYMENT_ID: payment_id,
                METADATA_IDEMPOTENCY_KEY: idempotency_key,
            },
            "expand": ["latest_charge"],
        }
        if self._return_url is not None:
            params["return_url"] = self._return_url
        else:
            # Without a return URL Stripe refuses redirect-based methods on confirm: cards only.
            params["payment_method_types"] = ["card"]
        started = time.perf_counter()
        try:
            intent = await self._stripe.v1.payment_intents.create_async(
                params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            )
        except stripe.StripeError as exc:
            return _result_or_raise(exc, mutating=True, idempotency_key=idempotency_key, started=started)
        return _translate(intent, result_from_payment_intent, mutating=True, key=idempotency_key, started=started)

    async def capture(self, *, gateway_ref: str, amount: int, currency: str, idempotency_key: str) -> GatewayResult:
        check_amount(amount)
        _check_currency(currency)
        check_key(idempotency_key)
        started = time.perf_counter()
        try:
            intent = await self._stripe.v1.payment_intents.capture_async(
                path_segment(gateway_ref),
                {"amount_to_capture": amount, "expand": ["latest_charge"]},
                options={"idempotency_key": idempotency_key},
            )
        except stripe.StripeError as exc:
            return _result_or_raise(exc, mutating=True, idempotency_key=idempotency_key, started=started)
        return _translate(intent, result_from_payment_intent, mutating=True, key=idempotency_key, started=started)

    async def cancel(self, *, gateway_ref: str, idempotency_key: str) -> GatewayResult:
        check_key(idempotency_key)
        started = time.perf_counter()
        try:
            intent = await self._stripe.v1.payment_intents.cancel_async(
                path_segment(gateway_ref), {}, options={"idempotency_key": idempotency_key}
            )
        except stripe.StripeError as exc:
            return _result_or_raise(exc, mutating=True, idempotency_key=idempotency_key, started=started)
        return _translate(intent, result_from_payment_intent, mutating=True, key=idempotency_key, started=started)

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
        _check_currency(currency)
        check_key(idempotency_key)
        metadata = {METADATA_REFUND_ID: refund_id, METADATA_IDEMPOTENCY_KEY: idempotency_key}
        payment_id = payment_id_from_key(idempotency_key)
        if payment_id is not None:
            metadata[METADATA_PAYMENT_ID] = payment_id
        started = time.perf_counter()
        try:
            refund = await self._stripe.v1.refunds.create_async(
                {"payment_intent": path_segment(gateway_ref), "amount": amount, "metadata": metadata,
                 "expand": ["charge"]},
                options={"idempotency_key": idempotency_key},
            )
        except stripe.StripeError as exc:
            return _result_or_raise(exc, mutating=True, idempotency_key=idempotency_key, started=started)
        return _translate(refund, result_from_refund, mutating=True, key=idempotency_key, started=started)

    async def detach_payment_method(self, *, payment_method_token: str, idempotency_key: str) -> None:
        """Detach a removed saved method from its Stripe customer (``POST /v1/payment_methods/{id}/detach``)."""
        check_key(idempotency_key)
        started = time.perf_counter()
        try:
            await self._stripe.v1.payment_methods.detach_async(
                path_segment(payment_method_token), {}, options={"idempotency_key": idempotency_key})
        except stripe.StripeError as exc:
            outcome = classify_error(exc, mutating=True, idempotency_key=idempotency_key,
                                     latency_ms=(time.perf_counter() - started) * 1000.0)
            if isinstance(outcome, GatewayError):
                raise outcome from exc
            raise PermanentGatewayError("detach refused", http_status=exc.http_status,
                                        idempotency_key=idempotency_key) from exc

    async def retrieve(self, *, gateway_ref: str | None = None, idempotency_key: str | None = None) -> GatewayResult:
        """By PaymentIntent id; or by key: a refund key (with ``gateway_ref``) or an authorize key.

        * ``gateway_ref`` and a key: the refund made under the key, found in the intent's refund
          list (strongly consistent); ``ChargeNotFoundError`` if there is none.
        * key alone: the PaymentIntent created under it, found with Stripe's search. Search lags
          writes (≤ 1 min normally, up to an hour in incidents), so "not found" is reported as
          ``OutcomeUnknownError`` (ask again later), never as ``ChargeNotFoundError``.
        """
        started = time.perf_counter()
        try:
            if gateway_ref is not None and idempotency_key is not None:
                return await self._refund_by_key(gateway_ref, idempotency_key, started)
            if gateway_ref is not None:
                intent = await self._stripe.v1.payment_intents.retrieve_async(
                    path_segment(gateway_ref), {"expand": ["latest_charge"]}
                )
                return _translate(intent, result_from_payment_intent, mutating=False, key=None, started=started)
            if idempotency_key is not None:
                return await self._intent_by_key(idempotency_key, started)
        except stripe.StripeError as exc:
            return _result_or_raise(exc, mutating=False, idempotency_key=idempotency_key, started=started)
        raise ValueError("retrieve needs gateway_ref or idempotency_key")

    def verify_and_parse(self, raw_body: bytes, headers: Mapping[str, str], now: int) -> GatewayNotification:
        return parse_verified_webhook(
            raw_body, headers, now=now, secrets=self._webhook_secrets, tolerance_s=self._webhook_tolerance_s
        )

    async def _intent_by_key(self, key: str, started: float) -> GatewayResult:
        query = f"metadata['{METADATA_IDEMPOTENCY_KEY}']:'{_search_literal(key)}'"
        found = await self._stripe.v1.payment_intents.search_async({"query": query, "limit": 10})
        for intent in found.data:
            if _metadata_value(intent, METADATA_IDEMPOTENCY_KEY) == key:
                return _translate(intent, result_from_payment_intent, mutating=False, key=None, started=started)
        raise OutcomeUnknownError(
            "no PaymentIntent found under this key yet; Stripe search lags writes, ask again later",
            gateway_code="not_found_in_search",
            idempotency_key=key,
        )

    async def _refund_by_key(self, gateway_ref: str, key: str, started: float) -> GatewayResult:
        refunds = await self._stripe.v1.refunds.list_async(
            {"payment_intent": path_segment(gateway_ref), "limit": 100, "expand": ["data.charge"]}
        )
        for refund in refunds.data:
            if _metadata_value(refund, METADATA_IDEMPOTENCY_KEY) == key:
                return _translate(refund, result_from_refund, mutating=False, key=None, started=started)
        raise ChargeNotFoundError("no refund was made under this key", gateway_code="no_refund", idempotency_key=key)


def payment_id_from_key(key: str) -> str | None:
    """The payment id inside a key made by ``gateway_clients.idempotency_key``, if it is one."""
    match = _KEY_RE.match(key)
    return match.group("payment_id") if match else None


def _metadata_value(obj: stripe.StripeObject, name: str) -> str | None:
    metadata = obj.to_dict().get("metadata")
    value = metadata.get(name) if isinstance(metadata, Mapping) else None
    return value if isinstance(value, str) else None


def _translate(
    obj: stripe.StripeObject,
    translate: Callable[..., GatewayResult],
    *,
    mutating: bool,
    key: str | None,
    started: float,
) -> GatewayResult:
    latency_ms = (time.perf_counter() - started) * 1000.0
    response = obj.last_response
    data: object = response.data if response is not None else obj.to_dict()
    replayed = response is not None and response.headers.get("idempotent-replayed", "").lower() == "true"
    try:
        if not isinstance(data, Mapping):
            raise ValueError("response is not a JSON object")
        result: GatewayResult = translate(data, latency_ms=latency_ms, replayed=replayed)
    except ValueError as exc:
        # We cannot read the answer: for a write, we do not know what happened.
        cls = OutcomeUnknownError if mutating else RetryableGatewayError
        raise cls(f"malformed Stripe response: {exc}", idempotency_key=key) from exc
    return result


def _result_or_raise(
    exc: stripe.StripeError, *, mutating: bool, idempotency_key: str | None, started: float
) -> GatewayResult:
    latency_ms = (time.perf_counter() - started) * 1000.0
    outcome = classify_error(exc, mutating=mutating, idempotency_key=idempotency_key, latency_ms=latency_ms)
    if isinstance(outcome, GatewayError):
        raise outcome from exc
    return outcome



def _check_currency(currency: str) -> None:
    if not isinstance(currency, str) or not _CURRENCY_RE.match(currency):
        raise PermanentGatewayError(f"invalid currency {currency!r}", gateway_code="invalid_currency")




def _search_literal(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")
