"""The protocol module: deterministic idempotency keys and the error hierarchy."""

from __future__ import annotations

import dataclasses

import pytest

from gateway_clients import (
    ChargeNotFoundError,
    GatewayError,
    GatewayResult,
    GatewayStatus,
    IdempotencyConflictError,
    InvalidWebhookError,
    OutcomeUnknownError,
    PaymentGateway,
    PermanentGatewayError,
    RetryableGatewayError,
    idempotency_key,
)
from gateway_clients.simulated import (
    InProcessSimulatedGateway,
    SimulatedGatewayClient,
    SimulatedGatewayEngine,
)


def test_idempotency_key_is_deterministic_and_distinguishes_inputs() -> None:
    key = idempotency_key("pay_123", "authorize", 0)
    assert key == "ps-pay_123-authorize-0"
    assert idempotency_key("pay_123", "authorize", 0) == key
    others = {
        idempotency_key("pay_124", "authorize", 0),
        idempotency_key("pay_123", "capture", 0),
        idempotency_key("pay_123", "authorize", 1),
        idempotency_key("pay_123", "refund:re_1", 0),
    }
    assert key not in others
    assert len(others) == 4


@pytest.mark.parametrize(
    ("payment_id", "operation", "attempt"),
    [
        ("", "authorize", 0),
        ("p", "", 0),
        ("p", "auth-orize", 0),  # '-' would make keys ambiguous
        ("p", "authorize", -1),
        ("p", "authorize", True),
        ("p" * 300, "authorize", 0),
    ],
)
def test_idempotency_key_rejects_ambiguous_or_invalid_input(payment_id: str, operation: str, attempt: int) -> None:
    with pytest.raises(ValueError):
        idempotency_key(payment_id, operation, attempt)


def test_error_hierarchy_classifies_into_three_kinds() -> None:
    for cls in (RetryableGatewayError, PermanentGatewayError, OutcomeUnknownError):
        assert issubclass(cls, GatewayError)
    for cls in (IdempotencyConflictError, ChargeNotFoundError, InvalidWebhookError):
        assert issubclass(cls, PermanentGatewayError)
    # "outcome unknown" must never be caught as a retryable or permanent failure
    assert not issubclass(OutcomeUnknownError, RetryableGatewayError | PermanentGatewayError)
    err = OutcomeUnknownError("timeout", http_status=None, idempotency_key="k")
    assert err.idempotency_key == "k"
    assert "OutcomeUnknownError" in repr(err)


def test_gateway_result_is_frozen() -> None:
    result = GatewayResult(status=GatewayStatus.CAPTURED, gateway_ref="r", currency="EUR")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.amount_captured = 5  # type: ignore[misc]


def test_simulated_clients_satisfy_the_protocol() -> None:
    engine = SimulatedGatewayEngine()
    assert isinstance(InProcessSimulatedGateway(engine), PaymentGateway)
    assert isinstance(SimulatedGatewayClient("http://127.0.0.1:9"), PaymentGateway)
