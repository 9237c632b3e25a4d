"""agents/gateway.py: a call the gateway answers "nothing done, retry" is tried again under the
same idempotency key after an exponential backoff with full jitter, without holding up other
calls; replayed failures, timeouts and unknown outcomes are never retried there."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from agents.gateway import Breakers, execute, reply_input
from gateway_clients.protocol import (
    GatewayResult,
    GatewayStatus,
    OutcomeUnknownError,
    PermanentGatewayError,
    RetryableGatewayError,
)
from gateway_clients.simulated.client import InProcessSimulatedGateway
from gateway_clients.simulated.engine import SimulatedGatewayEngine
from paystream.core.machine import CallGateway, GatewayOperation, GatewayReply, ReplyStatus
from paystream.core.resilience import BreakerConfig, BreakerState, RetryPolicy

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



# --- circuit breaker and switched-off gateways ----------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def circuit(gateway: str = "simulated") -> float | None:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("paystream_gateway_circuit_state", {"gateway": gateway})


def test_open_circuit_means_the_call_is_not_made_and_nothing_charged() -> None:
    clock = Clock()
    breakers = Breakers(BreakerConfig(failures=3, window=50, cooldown_s=30), clock)
    down = ScriptedGateway(RetryableGatewayError("503"))
    policy = RetryPolicy(max_tries=2, base_s=0, cap_s=0)

    def one(gw: Any, payment_id: str) -> dict[str, Any]:
        return asyncio.run(execute({"simulated": gw}, call(payment_id), 5, retry=policy, breakers=breakers,
                                   sleep=Sleeps(), rand=lambda: 0.5))

    first = one(down, "p1")  # two failed tries
    assert first["input"]["status"] == "retryable_error" and "unavailable" not in first["input"]
    second = one(down, "p2")  # third failure opens the circuit: the retry is not made
    assert len(down.keys) == 3
    assert (second["meta"]["error_code"], second["input"]["unavailable"], second["meta"]["tries"]) == (
        "circuit_open", True, 1)
    assert circuit() == 2
    healthy = ScriptedGateway(CAPTURED)
    refused = one(healthy, "p3")
    assert healthy.keys == [] and refused["input"]["status"] == "retryable_error"
    assert reply_input(refused) == GatewayReply(
        operation=GatewayOperation.AUTHORIZE, idempotency_key="ps-p3-authorize-0",
        status=ReplyStatus.RETRYABLE_ERROR, message="circuit of gateway 'simulated' is open", unavailable=True)
    clock.t += 30  # half-open: one probe goes through and closes the circuit
    assert one(healthy, "p4")["input"]["status"] == "captured"
    assert breakers.state("simulated") is BreakerState.CLOSED and circuit() == 0


def test_declines_and_request_errors_do_not_count_against_the_gateway() -> None:
    breakers = Breakers(BreakerConfig(failures=2, window=50), Clock())
    gw = ScriptedGateway(PermanentGatewayError("400"), OutcomeUnknownError("lost"), PermanentGatewayError("400"),
                         OutcomeUnknownError("lost"), RetryableGatewayError("500", replayed=True))
    for i in range(5):
        asyncio.run(execute({"simulated": gw}, call(f"q{i}"), 5, breakers=breakers))
    # 400s are answers (they reset the streak), a replayed 5xx is no news: never two failures in a row.
    assert breakers.state("simulated") is BreakerState.CLOSED


def test_timeouts_count_against_the_gateway() -> None:
    breakers = Breakers(BreakerConfig(failures=2, window=50), Clock())
    gw = ScriptedGateway(OutcomeUnknownError("lost"))
    for i in range(2):
        reply = asyncio.run(execute({"simulated": gw}, call(f"t{i}"), 5, breakers=breakers))
        assert reply["input"]["status"] == "unknown"  # still unknown, never "unavailable"
    assert breakers.state("simulated") is BreakerState.OPEN


def test_switched_off_gateway_gets_no_new_authorization_but_still_captures() -> None:
    gw = ScriptedGateway(CAPTURED)
    reply = asyncio.run(execute({"simulated": gw}, call(), 5, disabled=frozenset({"simulated"})))
    assert (reply["input"]["status"], reply["input"]["unavailable"], reply["meta"]["error_code"]) == (
        "retryable_error", True, "gateway_disabled")
    assert gw.keys == []
    capture = CallGateway(operation=GatewayOperation.CAPTURE, payment_id="pay-1", gateway="simulated",
                          idempotency_key="ps-pay-1-capture-1", attempt=1, amount=1999, currency="USD",
                          gateway_ref="ch_1")
    reply = asyncio.run(execute({"simulated": gw}, capture, 5, disabled=frozenset({"simulated"})))
    assert reply["input"]["status"] == "captured" and gw.keys == ["ps-pay-1-capture-1"]


def test_the_gateway_gets_the_token_opened_but_the_reply_never_carries_it() -> None:
    # #7: the gateway-calls topic carries the token sealed; the executor opens it in memory only.
    import base64
    import json

    from agents.processor import seal_call, unseal_call
    from paystream.security.crypto import KeyRing, is_envelope

    ring = KeyRing.load("k1:" + base64.b64encode(bytes(range(32))).decode())
    sealed = seal_call(ring, call(token="pm_secret_token_42"))
    assert is_envelope(sealed.payment_method_token or "") and "pm_secret_token_42" not in repr(sealed)
    seen: list[str] = []

    class Recording(ScriptedGateway):
        async def authorize(self, **kw: Any) -> GatewayResult:
            seen.append(kw["payment_method_token"])
            return await super().authorize(**kw)

    reply = asyncio.run(execute({"simulated": Recording(CAPTURED)}, sealed, 5, sleep=Sleeps(),
                                unseal=lambda c: unseal_call(ring, c)))
    assert seen == ["pm_secret_token_42"]
    assert reply["input"]["status"] == "captured" and "pm_secret_token_42" not in json.dumps(reply)
