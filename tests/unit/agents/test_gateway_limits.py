"""agents/gateway.py ``GatewayLimits``: requests in flight per gateway are capped across callers
(the payments agent's inline calls and the executor share one instance), the rest wait in the
worker, and a gateway's slots never hold up another gateway."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agents.gateway import GatewayLimits, concurrency_caps, execute
from gateway_clients.protocol import GatewayResult, GatewayStatus
from paystream.core.machine import CallGateway, GatewayOperation

OK = GatewayResult(status=GatewayStatus.CAPTURED, gateway_ref="ch_1", currency="USD", amount_authorized=100,
                   amount_captured=100)


class CountingGateway:
    def __init__(self) -> None:
        self.now, self.peak, self.calls = 0, 0, 0

    async def authorize(self, **_: Any) -> GatewayResult:
        self.now += 1
        self.calls += 1
        self.peak = max(self.peak, self.now)
        await asyncio.sleep(0.01)
        self.now -= 1
        return OK


def call(n: int, gateway: str) -> CallGateway:
    return CallGateway(operation=GatewayOperation.AUTHORIZE, payment_id=f"p{n}", gateway=gateway,
                       idempotency_key=f"ps-p{n}-authorize-0", attempt=0, amount=100, currency="USD",
                       payment_method_token="tok_visa")


def test_in_flight_requests_are_capped_per_gateway_across_callers() -> None:
    a, b = CountingGateway(), CountingGateway()
    gateways = {"a": a, "b": b}
    limits = GatewayLimits(3)

    async def run() -> list[dict[str, Any]]:
        # Two callers (as the inline path and the executor) sharing one GatewayLimits.
        first = [execute(gateways, call(n, "a"), 5, limits=limits) for n in range(10)]
        second = [execute(gateways, call(n, "a"), 5, limits=limits) for n in range(10, 20)]
        other = [execute(gateways, call(n, "b"), 5, limits=limits) for n in range(20, 25)]
        return await asyncio.gather(*first, *second, *other)

    replies = asyncio.run(run())
    assert [r["input"]["status"] for r in replies] == ["captured"] * 25
    assert (a.calls, a.peak) == (20, 3)  # every call made, never more than 3 at once
    assert (b.calls, b.peak) == (5, 3)  # b has slots of its own


def test_without_limits_every_call_runs_at_once() -> None:
    a = CountingGateway()

    async def run() -> None:
        await asyncio.gather(*(execute({"a": a}, call(n, "a"), 5) for n in range(8)))

    asyncio.run(run())
    assert a.peak == 8


def test_typical_latency_follows_the_gateways_answers() -> None:
    limits = GatewayLimits(4, alpha=0.5)
    assert limits.typical_latency_s("a") == 0.0  # no answer yet: fast until shown otherwise
    a = CountingGateway()

    async def run() -> None:
        await asyncio.gather(*(execute({"a": a}, call(n, "a"), 5, limits=limits) for n in range(4)))

    asyncio.run(run())
    assert 0.009 <= limits.typical_latency_s("a") < 0.5  # CountingGateway answers in ~10 ms
    before = limits.typical_latency_s("a")
    limits.observe("a", 2.0)  # one very slow answer counts as LATENCY_SAMPLE_CAP_S (0.1 s)
    assert limits.typical_latency_s("a") == pytest.approx(before + 0.5 * (0.1 - before))
    for _ in range(5):
        limits.observe("a", 0.2)  # slow answers in a row: it becomes slow
    assert limits.typical_latency_s("a") > 0.09
    assert limits.typical_latency_s("b") == 0.0


def test_a_gateway_client_lowers_its_own_limit() -> None:
    # The httpx-based clients serve 100 calls at once (their pool); one setting lets more fly to
    # the simulated gateway without making the others queue inside httpx.
    a, b = CountingGateway(), CountingGateway()
    b.max_concurrency = 2  # type: ignore[attr-defined]
    gateways = {"a": a, "b": b}
    limits = GatewayLimits(5, caps=concurrency_caps(gateways))
    assert (limits.limit("a"), limits.limit("b")) == (5, 2)
    assert GatewayLimits(1, caps={"b": 2}).limit("b") == 1  # the setting still bounds it

    async def run() -> None:
        await asyncio.gather(*(execute(gateways, call(n, "a"), 5, limits=limits) for n in range(12)),
                             *(execute(gateways, call(n, "b"), 5, limits=limits) for n in range(12, 24)))

    asyncio.run(run())
    assert (a.peak, b.peak) == (5, 2)
    assert (a.calls, b.calls) == (12, 12)


def test_every_http_client_states_what_it_serves_at_once() -> None:
    from gateway_clients.adyen import AdyenGatewayClient
    from gateway_clients.paypal import PayPalGatewayClient
    from gateway_clients.protocol import HTTPX_POOL_CONNECTIONS
    from gateway_clients.stripe import StripeGatewayClient

    built = {
        "stripe": StripeGatewayClient("sk_test_x"),
        "paypal": PayPalGatewayClient("id", "secret"),
        "adyen": AdyenGatewayClient("key", "merchant"),
    }
    assert concurrency_caps(built) == dict.fromkeys(built, HTTPX_POOL_CONNECTIONS)
    assert concurrency_caps({"odd": object(), "zero": type("Z", (), {"max_concurrency": 0})()}) == {}  # type: ignore[dict-item]
