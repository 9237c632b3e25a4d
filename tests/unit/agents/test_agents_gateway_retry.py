"""agents/gateway.py: a call the gateway answers "nothing done, retry" is tried again under the
same idempotency key after an exponential backoff with full jitter, without holding up other
calls; replayed failures, timeouts and unknown outcomes are never retried there."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from agents.gateway import execute
from gateway_clients.protocol import (
    GatewayResult,
    GatewayStatus,
    OutcomeUnknownError,
    PermanentGatewayError,
    RetryableGatewayError,
)
from gateway_clients.simulated.client import InProcessSimulatedGateway
from gateway_clients.simulated.engine import SimulatedGatewayEngine
from paystream.core.machine import CallGateway, GatewayOperation
from paystream.core.resilience import RetryPolicy

CAPTURED = GatewayResult(status=GatewayStatus.CAPTURED, gateway_ref="ch_1", currency="USD",
                         amount_authorized=1999, amount_captured=1999)


class ScriptedGateway:
    """Answers each call with the next scripted outcome (an exception or a result)."""

    def __init__(self, *script: GatewayResult | Exception, delay_s: float = 0.0) -> None:
        self.script, self.delay_s = list(script), delay_s
        self.keys: list[str] = []

    async def authorize(self, **kw: Any) -> GatewayResult:
        self.keys.append(kw["idempotency_key"])
        await asyncio.sleep(self.delay_s)
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, Exception):
            raise step
        return step

    capture = cancel = refund = retrieve = authorize


def call(payment_id: str = "pay-1", token: str = "tok_visa", amount: int = 1999) -> CallGateway:
    return CallGateway(operation=GatewayOperation.AUTHORIZE, payment_id=payment_id, gateway="simulated",
                       idempotency_key=f"ps-{payment_id}-authorize-0", attempt=0, amount=amount, currency="USD",
                       payment_method_token=token, capture=True)


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


POLICY = RetryPolicy(max_tries=4, base_s=0.1, cap_s=1.0)


def run(gw: Any, policy: RetryPolicy = POLICY, sleeps: Sleeps | None = None) -> dict[str, Any]:
    return asyncio.run(execute({"simulated": gw}, call(), 5, retry=policy, sleep=sleeps or Sleeps(),
                               rand=lambda: 0.5))


def test_retryable_twice_then_success_under_the_same_key_with_growing_backoff() -> None:
    gw = ScriptedGateway(RetryableGatewayError("503"), RetryableGatewayError("503"), CAPTURED)
    sleeps = Sleeps()
    reply = run(gw, sleeps=sleeps)
    assert reply["input"]["status"] == "captured"
    assert gw.keys == ["ps-pay-1-authorize-0"] * 3
    assert reply["meta"]["tries"] == 3
    assert sleeps.delays == [pytest.approx(0.05), pytest.approx(0.1)]  # rand 0.5 of 0.1, 0.2


def test_gives_up_after_max_tries_and_tells_the_machine_retryable() -> None:
    gw = ScriptedGateway(RetryableGatewayError("rate limited", http_status=429))
    sleeps = Sleeps()
    reply = run(gw, sleeps=sleeps)
    assert (reply["input"]["status"], reply["meta"]["error_code"], reply["meta"]["tries"]) == (
        "retryable_error", "retryable_error", 4)
    assert len(gw.keys) == 4 and set(gw.keys) == {"ps-pay-1-authorize-0"}
    assert sleeps.delays == [pytest.approx(d) for d in (0.05, 0.1, 0.2)]
    assert reply["input"]["message"] == "rate limited"


def test_a_replayed_failure_is_not_retried_under_its_key() -> None:
    gw = ScriptedGateway(RetryableGatewayError("500", http_status=500, replayed=True), CAPTURED)
    reply = run(gw)
    assert (reply["input"]["status"], reply["meta"]["error_code"], len(gw.keys)) == (
        "retryable_error", "retryable_replayed", 1)


@pytest.mark.parametrize("error", [OutcomeUnknownError("lost"), PermanentGatewayError("400")])
def test_unknown_and_permanent_outcomes_are_never_retried(error: Exception) -> None:
    gw = ScriptedGateway(error, CAPTURED)
    reply = run(gw)
    assert len(gw.keys) == 1 and reply["input"]["status"] in ("unknown", "permanent_error")


def test_a_timeout_is_not_retried() -> None:
    gw = ScriptedGateway(CAPTURED, delay_s=1)
    reply = asyncio.run(execute({"simulated": gw}, call(), 0.05, retry=POLICY, sleep=Sleeps(), rand=lambda: 0.5))
    assert (reply["input"]["status"], len(gw.keys)) == ("unknown", 1)


def test_no_policy_means_one_try() -> None:
    gw = ScriptedGateway(RetryableGatewayError("503"), CAPTURED)
    reply = asyncio.run(execute({"simulated": gw}, call(), 5))
    assert (reply["input"]["status"], len(gw.keys)) == ("retryable_error", 1)


def test_a_call_in_backoff_does_not_hold_up_other_calls() -> None:
    """Real sleeps: the backing-off call waits in its own task while the other one finishes."""
    flaky = ScriptedGateway(RetryableGatewayError("503"), CAPTURED)
    healthy = ScriptedGateway(CAPTURED)
    policy = RetryPolicy(max_tries=2, base_s=0.6, cap_s=0.6)
    done: list[str] = []

    async def one(name: str, gw: ScriptedGateway) -> None:
        await execute({"simulated": gw}, call(name), 5, retry=policy, rand=lambda: 0.99)
        done.append(name)

    async def both() -> float:
        t0 = time.monotonic()
        first = asyncio.ensure_future(one("flaky", flaky))
        await asyncio.sleep(0.01)
        await one("healthy", healthy)
        healthy_at = time.monotonic() - t0
        await first
        return healthy_at

    healthy_at = asyncio.run(both())
    assert done == ["healthy", "flaky"] and healthy_at < 0.3
    assert len(flaky.keys) == 2


def test_real_engine_front_door_503s_then_one_charge_under_one_key() -> None:
    """The simulated gateway's ``tok_flaky_2``: two 503s (not stored), then approved."""
    engine = SimulatedGatewayEngine()
    gw = InProcessSimulatedGateway(engine)
    reply = asyncio.run(execute({"simulated": gw}, call("pay-flaky", "tok_flaky_2", 2500), 5, retry=POLICY,
                                sleep=Sleeps(), rand=lambda: 0.5))
    assert reply["input"]["status"] == "captured" and reply["meta"]["tries"] == 3
    charges = engine.charges_for_payment("pay-flaky")
    assert len(charges) == 1 and charges[0].amount_captured == 2500
    assert charges[0].idempotency_keys == ("ps-pay-flaky-authorize-0",)


def test_real_engine_stored_5xx_is_replayed_so_the_executor_stops() -> None:
    engine = SimulatedGatewayEngine()
    gw = InProcessSimulatedGateway(engine)
    reply = asyncio.run(execute({"simulated": gw}, call("pay-5xx", "tok_5xx"), 5, retry=POLICY, sleep=Sleeps(),
                                rand=lambda: 0.5))
    assert (reply["input"]["status"], reply["meta"]["error_code"], reply["meta"]["tries"]) == (
        "retryable_error", "retryable_replayed", 2)
    assert engine.charges_for_payment("pay-5xx") == []

