"""Failover: an authorization moves to the next gateway of the payment's route only when the
gateway it used did nothing (retries used up, circuit open, switched off); never after an
unknown outcome or a decline, never for other operations."""

from __future__ import annotations

from dataclasses import replace

from core_helpers import NOW, PAYMENT_ID, capture_cmd, create_cmd, names, reply, run, step
from hypothesis import given, settings
from hypothesis import strategies as st

from paystream.core.commands import CaptureMethod
from paystream.core.events import PaymentFailed, PaymentSucceeded
from paystream.core.machine import (
    MAX_GATEWAY_ATTEMPTS,
    CallGateway,
    GatewayOperation,
    GatewayReply,
    PaymentState,
    PaymentStatus,
    ReconcileResult,
    ReplyStatus,
    decide,
    next_gateway,
)

ROUTE = ("simulated", "stripe", "adyen")


def created(route: tuple[str, ...] = ROUTE, capture: CaptureMethod = CaptureMethod.AUTOMATIC) -> PaymentState:
    decision = decide(None, create_cmd(capture_method=capture, gateway=None), NOW, route=route)
    assert decision.state is not None and decision.effects[0].gateway == route[0]
    assert decision.events[0].gateway == route[0]  # type: ignore[union-attr]
    return decision.state


def retryable(state: PaymentState, unavailable: bool = False) -> GatewayReply:
    return reply(state, ReplyStatus.RETRYABLE_ERROR, gateway_ref=None, unavailable=unavailable)


def test_failover_after_retries_are_used_up_with_a_new_key_and_the_same_command() -> None:
    state = created()
    keys = [state.pending.idempotency_key]  # type: ignore[union-attr]
    for _ in range(MAX_GATEWAY_ATTEMPTS - 1):  # new attempts at the same gateway first
        d = run(state, retryable(state))
        assert d.effects[0].gateway == "simulated" and d.events == ()
        state = d.state  # type: ignore[assignment]
        keys.append(state.pending.idempotency_key)  # type: ignore[union-attr]
    d = run(state, retryable(state))
    call = d.effects[0]
    assert isinstance(call, CallGateway)
    assert (call.gateway, call.operation, call.payment_method_token, call.capture) == (
        "stripe", GatewayOperation.AUTHORIZE, "tok_visa", True)
    assert call.idempotency_key not in keys and d.events == () and d.causation_id == "cmd_create"
    state = d.state  # type: ignore[assignment]
    assert state.gateway == "stripe" and state.status is PaymentStatus.PROCESSING and state.pending.retries == 0  # type: ignore[union-attr]
    d = run(state, reply(state, ReplyStatus.CAPTURED, amount_authorized=10_000, amount_captured=10_000))
    assert names(d) == ["PaymentCaptured", "PaymentSucceeded"]
    ok = d.events[1]
    assert isinstance(ok, PaymentSucceeded) and ok.gateway == "stripe" and d.causation_id == "cmd_create"


def test_open_circuit_fails_over_at_once_and_the_route_order_is_kept() -> None:
    state = created()
    state = step(state, retryable(state, unavailable=True))
    assert state.gateway == "stripe"
    state = step(state, retryable(state, unavailable=True))
    assert state.gateway == "adyen"
    d = run(state, retryable(state, unavailable=True))  # the route ends: failed, nothing charged
    assert names(d) == ["PaymentFailed"] and d.effects == ()
    failed = d.events[0]
    assert isinstance(failed, PaymentFailed) and failed.gateway == "adyen"
    assert failed.decline_code == "processing_error" and failed.message == "gateway_unavailable"


def test_without_a_secondary_an_unavailable_gateway_fails_the_payment_at_once() -> None:
    state = created(route=("simulated",))
    d = run(state, retryable(state, unavailable=True))
    assert names(d) == ["PaymentFailed"] and d.effects == ()
    old = replace(created(route=("simulated",)), route=())  # a record from before routing
    assert next_gateway(old) is None
    d = run(old, retryable(old, unavailable=True))
    assert names(d) == ["PaymentFailed"]


def test_no_failover_after_an_unknown_outcome_even_when_the_reconciler_finds_nothing() -> None:
    state = created()
    state = step(state, reply(state, ReplyStatus.UNKNOWN, gateway_ref=None))
    assert state.status is PaymentStatus.UNKNOWN and state.gateway == "simulated"
    key = state.pending.idempotency_key  # type: ignore[union-attr]
    d = run(state, ReconcileResult(reconciliation_id="rc-1", idempotency_key=key, status=ReplyStatus.NOT_FOUND))
    assert names(d) == ["PaymentFailed"] and d.effects == ()
    assert d.state.gateway == "simulated"  # type: ignore[union-attr]


def test_no_failover_after_a_decline_or_a_permanent_error() -> None:
    state = created()
    d = run(state, reply(state, ReplyStatus.DECLINED, decline_code="insufficient_funds"))
    assert names(d) == ["PaymentFailed"] and d.effects == ()
    state = created()
    d = run(state, reply(state, ReplyStatus.PERMANENT_ERROR, gateway_ref=None, message="invalid_payment_method"))
    assert names(d) == ["PaymentFailed"] and d.effects == ()


def test_captures_never_fail_over() -> None:
    state = created(capture=CaptureMethod.MANUAL)
    state = step(state, reply(state, ReplyStatus.AUTHORIZED, amount_authorized=10_000))
    state = step(state, capture_cmd())
    d = run(state, retryable(state, unavailable=True))
    assert d.effects == () and d.state.gateway == "simulated"  # type: ignore[union-attr]
    assert d.state.status is PaymentStatus.REQUIRES_CAPTURE  # type: ignore[union-attr]
    assert names(d) == ["CommandRejected"]


REPLIES = st.lists(
    st.tuples(st.sampled_from([ReplyStatus.RETRYABLE_ERROR, ReplyStatus.RETRYABLE_ERROR, ReplyStatus.UNKNOWN,
                               ReplyStatus.DECLINED, ReplyStatus.CAPTURED, ReplyStatus.PERMANENT_ERROR]),
              st.booleans()),
    max_size=12,
)


@settings(max_examples=300)
@given(REPLIES, st.lists(st.sampled_from(["simulated", "stripe", "adyen", "paypal"]), min_size=1, max_size=4,
                         unique=True))
def test_calls_follow_the_route_and_switch_only_after_nothing_was_done(
    replies: list[tuple[ReplyStatus, bool]], route_list: list[str]
) -> None:
    route = tuple(route_list)
    state = created(route=route)
    gateways = [state.gateway]
    for status, unavailable in replies:
        if state.pending is None or state.pending.outcome_unknown:
            break
        before = state.gateway
        d = run(state, reply(state, status, unavailable=unavailable, amount_captured=10_000,
                             amount_authorized=10_000))
        assert d.state is not None
        state = d.state
        if state.gateway != before:
            assert status is ReplyStatus.RETRYABLE_ERROR  # the only way to move on
            assert route.index(state.gateway) == route.index(before) + 1
            assert d.events == () and len(d.effects) == 1 and d.effects[0].gateway == state.gateway
        for e in d.effects:
            gateways.append(e.gateway)
    # Calls go through the route in order, never back.
    positions = [route.index(g) for g in gateways]
    assert positions == sorted(positions)
    # A payment's gateway calls at one gateway are never more than MAX_GATEWAY_ATTEMPTS.
    assert all(gateways.count(g) <= MAX_GATEWAY_ATTEMPTS for g in route)
    assert state.payment_id == PAYMENT_ID
