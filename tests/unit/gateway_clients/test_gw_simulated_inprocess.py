"""InProcessSimulatedGateway: the protocol straight on the engine (no network)."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway_clients import (
    ChargeNotFoundError,
    DeclineCode,
    GatewayStatus,
    IdempotencyConflictError,
    OutcomeUnknownError,
    PermanentGatewayError,
    RetryableGatewayError,
    idempotency_key,
)
from gateway_clients.simulated import (
    InProcessSimulatedGateway,
    SimulatedGatewayEngine,
    SimulatorConfig,
)


def _gateway(**config: object) -> InProcessSimulatedGateway:
    engine = SimulatedGatewayEngine(SimulatorConfig(**config))  # type: ignore[arg-type]
    return InProcessSimulatedGateway(engine, timeout_s=1.0)


def test_authorize_capture_refund_flow() -> None:
    async def scenario() -> None:
        gw = _gateway()
        auth = await gw.authorize(
            payment_id="pay_1",
            amount=5_000,
            currency="USD",
            payment_method_token="tok_visa",
            capture=False,
            idempotency_key=idempotency_key("pay_1", "authorize", 0),
        )
        assert auth.status is GatewayStatus.AUTHORIZED
        assert auth.amount_authorized == 5_000
        cap = await gw.capture(
            gateway_ref=auth.gateway_ref,
            amount=4_000,
            currency="USD",
            idempotency_key=idempotency_key("pay_1", "capture", 0),
        )
        assert cap.status is GatewayStatus.CAPTURED
        assert cap.amount_captured == 4_000
        ref1 = await gw.refund(
            gateway_ref=auth.gateway_ref,
            refund_id="re_1",
            amount=1_500,
            currency="USD",
            idempotency_key=idempotency_key("pay_1", "refund:re_1", 0),
        )
        assert ref1.status is GatewayStatus.REFUNDED
        assert ref1.amount_refunded == 1_500
        with pytest.raises(PermanentGatewayError) as exc:
            await gw.refund(
                gateway_ref=auth.gateway_ref,
                refund_id="re_2",
                amount=2_501,
                currency="USD",
                idempotency_key=idempotency_key("pay_1", "refund:re_2", 0),
            )
        assert exc.value.gateway_code == "amount_too_large"
        now = await gw.retrieve(gateway_ref=auth.gateway_ref)
        assert (now.amount_authorized, now.amount_captured, now.amount_refunded) == (5_000, 4_000, 1_500)

    asyncio.run(scenario())


def test_decline_is_a_result_with_a_normalised_code() -> None:
    async def scenario() -> None:
        result = await _gateway().authorize(
            payment_id="p",
            amount=100,
            currency="EUR",
            payment_method_token="tok_decline_insufficient_funds",
            capture=True,
            idempotency_key="k",
        )
        assert result.status is GatewayStatus.DECLINED
        assert result.decline_code is DeclineCode.INSUFFICIENT_FUNDS

    asyncio.run(scenario())


def test_timeout_is_outcome_unknown_and_resolves_by_key_without_double_charge() -> None:
    async def scenario() -> None:
        gw = _gateway()
        key = idempotency_key("pay_t", "authorize", 0)
        with pytest.raises(OutcomeUnknownError):
            await gw.authorize(
                payment_id="pay_t",
                amount=700,
                currency="EUR",
                payment_method_token="tok_timeout",
                capture=True,
                idempotency_key=key,
            )
        found = await gw.retrieve(idempotency_key=key)
        assert found.status is GatewayStatus.CAPTURED
        assert found.amount_captured == 700
        retried = await gw.authorize(
            payment_id="pay_t",
            amount=700,
            currency="EUR",
            payment_method_token="tok_timeout",
            capture=True,
            idempotency_key=key,
        )
        assert retried.replayed
        assert retried.gateway_ref == found.gateway_ref
        assert len(gw.engine.charges_for_payment("pay_t")) == 1

    asyncio.run(scenario())


def test_5xx_is_retryable_and_nothing_was_charged() -> None:
    async def scenario() -> None:
        gw = _gateway()
        with pytest.raises(RetryableGatewayError):
            await gw.authorize(
                payment_id="p",
                amount=100,
                currency="EUR",
                payment_method_token="tok_5xx",
                capture=True,
                idempotency_key="k0",
            )
        with pytest.raises(ChargeNotFoundError):
            await gw.retrieve(idempotency_key="k0")
        with pytest.raises(ChargeNotFoundError):
            await gw.retrieve(idempotency_key="never-sent")
        assert gw.engine.ledger() == []

    asyncio.run(scenario())


def test_key_reuse_with_different_amount_is_a_conflict() -> None:
    async def scenario() -> None:
        gw = _gateway()
        await gw.authorize(
            payment_id="p",
            amount=100,
            currency="EUR",
            payment_method_token="tok_visa",
            capture=True,
            idempotency_key="k",
        )
        with pytest.raises(IdempotencyConflictError):
            await gw.authorize(
                payment_id="p",
                amount=200,
                currency="EUR",
                payment_method_token="tok_visa",
                capture=True,
                idempotency_key="k",
            )

    asyncio.run(scenario())


def test_sleeps_only_when_asked() -> None:
    async def elapsed(sleep: bool) -> float:
        engine = SimulatedGatewayEngine(SimulatorConfig(latency_mean_ms=60.0))
        gw = InProcessSimulatedGateway(engine, sleep=sleep)
        started = time.perf_counter()
        result = await gw.authorize(
            payment_id="p",
            amount=100,
            currency="EUR",
            payment_method_token="tok_visa",
            capture=True,
            idempotency_key="k",
        )
        assert result.latency_ms == pytest.approx(60.0)
        return time.perf_counter() - started

    assert asyncio.run(elapsed(sleep=True)) >= 0.055
    assert asyncio.run(elapsed(sleep=False)) < 0.045


def test_retrieve_needs_a_reference_or_a_key() -> None:
    with pytest.raises(ValueError):
        asyncio.run(_gateway().retrieve())
