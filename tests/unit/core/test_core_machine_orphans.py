"""Orphan charges: money held under an authorization key the payment gave up on is voided
(authorized) or refunded (captured) at the gateway that holds it, once, with a key derived from
the orphan's; the payment's own status and totals never change for it."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from core_helpers import NOW, PAYMENT_ID, capture_cmd, create_cmd, names, reply, run, step
from hypothesis import given, settings
from hypothesis import strategies as st

from paystream.core.commands import CaptureMethod
from paystream.core.events import OrphanChargeDetected, OrphanChargeResolved
from paystream.core.machine import (
    MAX_GATEWAY_ATTEMPTS,
    MAX_ORPHAN_RELEASE_FAILURES,
    CallGateway,
    Decision,
    GatewayOperation,
    GatewayReply,
    OrphanStatus,
    PaymentState,
    PaymentStatus,
    ReconcileResult,
    ReplyStatus,
    decide,
    reconcile_effects,
    superseded_call,
)

KEY0 = f"ps-{PAYMENT_ID}-authorize-0"


def retryable(state: PaymentState, unavailable: bool = False) -> GatewayReply:
    return reply(state, ReplyStatus.RETRYABLE_ERROR, gateway_ref=None, unavailable=unavailable)


def after_one_lie(capture: CaptureMethod = CaptureMethod.AUTOMATIC, route: tuple[str, ...] = ()) -> PaymentState:
    """Attempt 0 answered "nothing done, retry" (it charged: the lie), attempt 1 succeeded."""
    d = decide(None, create_cmd(capture_method=capture, gateway=None if route else "simulated"), NOW, route=route)
    assert d.state is not None
    state = step(d.state, retryable(d.state))
    assert state.pending is not None and state.pending.idempotency_key != KEY0
    status = ReplyStatus.CAPTURED if capture is CaptureMethod.AUTOMATIC else ReplyStatus.AUTHORIZED
    return step(state, reply(state, status, gateway_ref="gw_own", amount_authorized=10_000,
                             amount_captured=10_000 if status is ReplyStatus.CAPTURED else 0))


def lookup(key: str, status: ReplyStatus, **fields: object) -> ReconcileResult:
    return ReconcileResult(reconciliation_id=f"rc-{key}", idempotency_key=key, status=status, **fields)  # type: ignore[arg-type]


def own(state: PaymentState) -> tuple[object, ...]:
    """What an orphan must never change: the payment's own status, money and call."""
    return (state.status, state.authorized, state.captured, state.refunded, state.gateway, state.gateway_ref,
            state.pending, state.attempts, state.refunds, state.updated_at)


def only_call(d: Decision) -> CallGateway:
    assert len(d.effects) == 1 and isinstance(d.effects[0], CallGateway)
    return d.effects[0]


def test_an_abandoned_authorization_is_checked_and_its_captured_orphan_refunded_once() -> None:
    state = after_one_lie()
    assert state.status is PaymentStatus.SUCCEEDED and state.gateway_ref == "gw_own"
    assert [(o.idempotency_key, o.status) for o in state.orphans] == [(KEY0, OrphanStatus.SUSPECTED)]
    checks = reconcile_effects(state)
    assert [(c.operation, c.idempotency_key, c.gateway) for c in checks] == [
        (GatewayOperation.RETRIEVE, KEY0, "simulated")]

    found = lookup(KEY0, ReplyStatus.CAPTURED, gateway_ref="gw_orphan", amount_authorized=10_000,
                   amount_captured=10_000, amount_refunded=0)
    d = run(state, found)
    assert names(d) == ["OrphanChargeDetected"] and d.causation_id == f"rc-{KEY0}"
    assert d.events[0] == OrphanChargeDetected(orphan_key=KEY0, orphan_gateway="simulated",
                                               orphan_gateway_ref="gw_orphan", amount=10_000, currency="USD",
                                               action="refund")
    call = only_call(d)
    assert (call.operation, call.gateway, call.gateway_ref, call.amount, call.idempotency_key, call.orphan_of) == (
        GatewayOperation.REFUND, "simulated", "gw_orphan", 10_000, f"{KEY0}-refund", KEY0)
    assert call.refund_id is not None and call.payment_method_token is None
    assert d.state is not None and own(d.state) == own(state)
    releasing = d.state
    assert reconcile_effects(releasing) == ()  # no second check while the refund is out

    # The same finding again (a second tick's lookup, a redelivery): nothing new.
    again = run(releasing, found)
    assert again.ignored == "orphan_already_handled" and again.effects == () and again.events == ()

    refunded = GatewayReply(operation=GatewayOperation.REFUND, idempotency_key=call.idempotency_key,
                            status=ReplyStatus.REFUNDED, gateway_ref="gw_orphan", amount_captured=10_000,
                            amount_refunded=10_000)
    d = run(releasing, refunded)
    assert names(d) == ["OrphanChargeResolved"]
    resolved = d.events[0]
    assert isinstance(resolved, OrphanChargeResolved) and (resolved.outcome, resolved.amount) == ("refunded", 10_000)
    assert d.state is not None and own(d.state) == own(state) and d.effects == ()
    assert d.state.orphans[0].status is OrphanStatus.RELEASED and reconcile_effects(d.state) == ()
    assert run(d.state, refunded).ignored == "stale_reply"  # the refund's reply redelivered
    assert run(d.state, found).ignored == "orphan_already_handled"


def test_an_authorized_orphan_is_voided_with_a_key_derived_from_it() -> None:
    state = after_one_lie(CaptureMethod.MANUAL)
    assert state.status is PaymentStatus.REQUIRES_CAPTURE
    d = run(state, lookup(KEY0, ReplyStatus.AUTHORIZED, gateway_ref="gw_orphan", amount_authorized=10_000))
    call = only_call(d)
    assert (call.operation, call.idempotency_key, call.gateway_ref) == (
        GatewayOperation.CANCEL, f"{KEY0}-void", "gw_orphan")
    detected = d.events[0]
    assert isinstance(detected, OrphanChargeDetected) and detected.action == "void"
    assert d.state is not None
    d = run(d.state, GatewayReply(operation=GatewayOperation.CANCEL, idempotency_key=f"{KEY0}-void",
                                  status=ReplyStatus.CANCELED, gateway_ref="gw_orphan"))
    resolved = d.events[0]
    assert isinstance(resolved, OrphanChargeResolved) and resolved.outcome == "voided"
    assert d.state is not None and own(d.state) == own(state)


def test_nothing_under_the_key_clears_it_and_a_later_stale_reply_with_money_still_counts() -> None:
    state = after_one_lie()
    d = run(state, lookup(KEY0, ReplyStatus.NOT_FOUND))
    assert d.events == () and d.effects == () and d.state is not None
    cleared = d.state
    assert cleared.orphans[0].status is OrphanStatus.CLEAR and reconcile_effects(cleared) == ()
    # An executor redelivery redid the call later and it charged.
    late = GatewayReply(operation=GatewayOperation.AUTHORIZE, idempotency_key=KEY0, status=ReplyStatus.CAPTURED,
                        gateway_ref="gw_late", amount_authorized=10_000, amount_captured=10_000)
    assert superseded_call(cleared, late)
    d = run(cleared, late)
    assert names(d) == ["OrphanChargeDetected"] and only_call(d).gateway_ref == "gw_late"
    assert d.causation_id == KEY0


def test_duplicates_of_the_payments_own_calls_are_never_orphans() -> None:
    state = after_one_lie(CaptureMethod.MANUAL)
    own_key = f"ps-{PAYMENT_ID}-authorize-1"
    own_reply = GatewayReply(operation=GatewayOperation.AUTHORIZE, idempotency_key=own_key,
                             status=ReplyStatus.AUTHORIZED, gateway_ref="gw_own", amount_authorized=10_000)
    assert not superseded_call(state, own_reply)
    d = run(state, own_reply)
    assert d.ignored == "stale_reply" and d.effects == ()
    # Even after a capture moved the attempt counter on (the chaos false alarm).
    capturing = step(state, capture_cmd())
    assert capturing.pending is not None and capturing.pending.operation is GatewayOperation.CAPTURE
    assert not superseded_call(capturing, replace(own_reply, status=ReplyStatus.CAPTURED))
    assert run(capturing, replace(own_reply, status=ReplyStatus.CAPTURED)).ignored == "stale_reply"


def test_a_failed_payment_still_gets_every_orphan_refunded_and_stays_failed() -> None:
    d = decide(None, create_cmd(capture_method=CaptureMethod.AUTOMATIC), NOW)
    state = d.state
    assert state is not None
    for _ in range(MAX_GATEWAY_ATTEMPTS):
        state = step(state, retryable(state))
    assert state.status is PaymentStatus.FAILED and state.captured == 0
    keys = [o.idempotency_key for o in state.orphans]
    assert keys == [f"ps-{PAYMENT_ID}-authorize-{n}" for n in range(MAX_GATEWAY_ATTEMPTS)]
    assert [c.idempotency_key for c in reconcile_effects(state)] == keys
    for n, key in enumerate(keys):
        d = run(state, lookup(key, ReplyStatus.CAPTURED, gateway_ref=f"gw_{n}", amount_captured=10_000))
        assert names(d) == ["OrphanChargeDetected"] and only_call(d).operation is GatewayOperation.REFUND
        assert d.state is not None
        state = step(d.state, GatewayReply(operation=GatewayOperation.REFUND, idempotency_key=f"{key}-refund",
                                           status=ReplyStatus.REFUNDED, gateway_ref=f"gw_{n}"))
        assert state.status is PaymentStatus.FAILED and state.captured == 0
    assert {o.status for o in state.orphans} == {OrphanStatus.RELEASED}


def test_the_void_goes_to_the_gateway_that_holds_the_orphan_after_failover() -> None:
    state = after_one_lie(route=("simulated", "stripe"))
    # One lie at simulated, attempt 1 went to simulated again (retries are not used up yet).
    assert state.orphans[0].gateway == "simulated"
    d = decide(None, create_cmd(capture_method=CaptureMethod.AUTOMATIC, gateway=None), NOW,
               route=("simulated", "stripe"))
    s = d.state
    assert s is not None
    for _ in range(MAX_GATEWAY_ATTEMPTS):
        s = step(s, retryable(s))
    assert s.gateway == "stripe" and all(o.gateway == "simulated" for o in s.orphans)
    d = run(s, lookup(KEY0, ReplyStatus.AUTHORIZED, gateway_ref="sim_1", amount_authorized=10_000))
    assert only_call(d).gateway == "simulated"


def test_a_failed_release_is_checked_again_and_retried_under_a_new_key_then_given_up() -> None:
    state = after_one_lie()
    d = run(state, lookup(KEY0, ReplyStatus.CAPTURED, gateway_ref="gw_orphan", amount_captured=10_000))
    assert d.state is not None
    state, keys = d.state, [only_call(d).idempotency_key]
    for failure in range(1, MAX_ORPHAN_RELEASE_FAILURES + 1):
        refused = GatewayReply(operation=GatewayOperation.REFUND, idempotency_key=keys[-1],
                               status=ReplyStatus.PERMANENT_ERROR, message="amount_too_large")
        d = run(state, refused)
        assert d.state is not None
        state = d.state
        if failure == MAX_ORPHAN_RELEASE_FAILURES:
            assert names(d) == ["OrphanChargeResolved"]
            given_up = d.events[0]
            assert isinstance(given_up, OrphanChargeResolved) and given_up.outcome == "failed"
            assert given_up.reason == "amount_too_large" and state.orphans[0].status is OrphanStatus.STUCK
            assert reconcile_effects(state) == ()
            break
        assert d.events == () and state.orphans[0].status is OrphanStatus.RECHECKING
        assert [c.idempotency_key for c in reconcile_effects(state)] == [KEY0]
        d = run(state, lookup(KEY0, ReplyStatus.CAPTURED, gateway_ref="gw_orphan", amount_captured=10_000))
        assert d.events == ()  # detected once only
        keys.append(only_call(d).idempotency_key)
        assert d.state is not None
        state = d.state
    assert keys == [f"{KEY0}-refund", f"{KEY0}-refund-1", f"{KEY0}-refund-2"]


def test_a_release_with_an_unknown_outcome_that_did_happen_is_resolved_by_the_check() -> None:
    state = after_one_lie()
    d = run(state, lookup(KEY0, ReplyStatus.CAPTURED, gateway_ref="gw_orphan", amount_captured=10_000))
    assert d.state is not None
    d = run(d.state, GatewayReply(operation=GatewayOperation.REFUND, idempotency_key=f"{KEY0}-refund",
                                  status=ReplyStatus.UNKNOWN))
    assert d.state is not None and d.state.orphans[0].status is OrphanStatus.RECHECKING
    # The lookup shows the charge refunded in full: no second refund.
    d = run(d.state, lookup(KEY0, ReplyStatus.CAPTURED, gateway_ref="gw_orphan", amount_captured=10_000,
                            amount_refunded=10_000))
    assert d.effects == () and names(d) == ["OrphanChargeResolved"]
    assert d.events[0].outcome == "refunded"  # type: ignore[union-attr]


def test_a_release_not_made_circuit_open_does_not_count_as_a_failure() -> None:
    state = after_one_lie()
    d = run(state, lookup(KEY0, ReplyStatus.AUTHORIZED, gateway_ref="gw_orphan", amount_authorized=10_000))
    assert d.state is not None
    state = d.state
    for _ in range(MAX_ORPHAN_RELEASE_FAILURES + 2):
        d = run(state, GatewayReply(operation=GatewayOperation.CANCEL, idempotency_key=state.orphans[0].release_key
                                    or "", status=ReplyStatus.RETRYABLE_ERROR, unavailable=True))
        assert d.events == () and d.state is not None and d.state.orphans[0].failures == 0
        d = run(d.state, lookup(KEY0, ReplyStatus.AUTHORIZED, gateway_ref="gw_orphan", amount_authorized=10_000))
        assert d.state is not None
        state = d.state
    assert state.orphans[0].status is OrphanStatus.RELEASING


# --- property: whatever the gateway says about orphans, and however often -----------------

EVIDENCE = st.lists(
    st.tuples(
        st.sampled_from(["reply", "lookup", "release_reply"]),
        st.integers(0, MAX_GATEWAY_ATTEMPTS - 1),
        st.sampled_from(list(ReplyStatus)),
        st.sampled_from([None, 0, 4_000, 10_000]),
        st.booleans(),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(lies=st.integers(1, MAX_GATEWAY_ATTEMPTS), capture=st.sampled_from(list(CaptureMethod)), steps=EVIDENCE)
def test_orphans_never_touch_the_payment_and_each_is_detected_and_resolved_at_most_once(
    lies: int, capture: CaptureMethod, steps: list[tuple[str, int, ReplyStatus, int | None, bool]]
) -> None:
    d = decide(None, create_cmd(capture_method=capture), NOW)
    state = d.state
    assert state is not None
    for _ in range(lies):
        state = step(state, retryable(state))
    if state.pending is not None:  # an attempt is left: it succeeds
        status = ReplyStatus.CAPTURED if capture is CaptureMethod.AUTOMATIC else ReplyStatus.AUTHORIZED
        state = step(state, reply(state, status, gateway_ref="gw_own", amount_authorized=10_000,
                                  amount_captured=10_000 if status is ReplyStatus.CAPTURED else 0))
    baseline = own(state)
    detected: Counter[str] = Counter()
    resolved: Counter[str] = Counter()
    release_keys: list[str] = []
    for kind, n, status, amount, unavailable in steps:
        orphan = state.orphans[min(n, len(state.orphans) - 1)]
        inp: GatewayReply | ReconcileResult
        if kind == "lookup":
            inp = lookup(orphan.idempotency_key, status, gateway_ref=f"gw_o{n}", amount_authorized=amount,
                         amount_captured=amount, amount_refunded=None)
        elif kind == "reply":
            inp = GatewayReply(operation=GatewayOperation.AUTHORIZE, idempotency_key=orphan.idempotency_key,
                               status=status, gateway_ref=f"gw_o{n}", amount_authorized=amount,
                               amount_captured=amount)
        else:
            inp = GatewayReply(operation=orphan.release or GatewayOperation.CANCEL,
                               idempotency_key=orphan.release_key or "none", status=status, unavailable=unavailable)
        d = run(state, inp)
        assert d.rejection is None and d.state is not None
        for e in d.events:
            assert isinstance(e, OrphanChargeDetected | OrphanChargeResolved)
            (detected if isinstance(e, OrphanChargeDetected) else resolved)[e.orphan_key] += 1
        for call in d.effects:
            assert isinstance(call, CallGateway) and call.orphan_of is not None
            assert call.operation in (GatewayOperation.CANCEL, GatewayOperation.REFUND) and call.amount > 0
            assert call.idempotency_key not in release_keys  # a call is never made twice by the machine
            release_keys.append(call.idempotency_key)
        state = d.state
        assert own(state) == baseline
        releasing = [o for o in state.orphans if o.status is OrphanStatus.RELEASING]
        assert all(o.release_key is not None and o.gateway_ref for o in releasing)
    assert all(count == 1 for count in detected.values()) and all(count == 1 for count in resolved.values())
    assert set(resolved) <= set(detected)
