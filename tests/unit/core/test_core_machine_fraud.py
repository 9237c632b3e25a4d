"""The state machine with fraud checks on: hold, verdicts, review decisions (docs/fraud.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from core_helpers import NOW, PAYMENT_ID, cancel_cmd, capture_cmd, create_cmd

from paystream.core.commands import CaptureMethod, Command, RejectPayment, ReleasePayment
from paystream.core.events import (
    TERMINAL_EVENTS,
    FraudDecision,
    FraudOutcome,
    PaymentFailed,
    is_terminal,
)
from paystream.core.machine import (
    CallGateway,
    Decision,
    FraudHoldStatus,
    FraudVerdictInput,
    GatewayOperation,
    GatewayReply,
    Notification,
    NotificationKind,
    PaymentState,
    PaymentStatus,
    ReplyStatus,
    RequestFraudCheck,
    check_invariants,
    decide,
    gateway_idempotency_key,
    is_busy,
)
from tables import codec


def names(d: Decision) -> list[str]:
    return [e.AVRO_NAME for e in d.events]


def verdict(outcome: FraudOutcome, rules: tuple[str, ...] = (), *, command_id: str = "cmd_create",
            shadow: FraudOutcome | None = None) -> FraudVerdictInput:
    return FraudVerdictInput(
        command_id=command_id, decision=FraudDecision(decision=outcome, rules=rules),
        shadow=None if shadow is None else FraudDecision(decision=shadow, rules=("cand_rule",), shadow=True),
    )


def release(command_id: str = "cmd_release") -> Command:
    return Command(command_id, PAYMENT_ID, NOW, "test", ReleasePayment(released_by="analyst-7"))


def reject(command_id: str = "cmd_reject") -> Command:
    return Command(command_id, PAYMENT_ID, NOW, "test", RejectPayment(rejected_by="analyst-7", reason="ring"))


def held(capture: CaptureMethod = CaptureMethod.AUTOMATIC) -> PaymentState:
    d = decide(None, create_cmd(capture_method=capture), NOW, fraud_check=True)
    assert d.state is not None
    return d.state


def in_review() -> PaymentState:
    d = decide(held(), verdict(FraudOutcome.REVIEW, ("customer_count_1m",)), NOW + 10)
    assert d.state is not None
    return d.state


def test_create_with_fraud_on_holds_the_payment_and_asks_for_a_check() -> None:
    d = decide(None, create_cmd(), NOW, fraud_check=True)
    assert names(d) == ["PaymentCreated"]
    assert d.effects == (RequestFraudCheck(payment_id=PAYMENT_ID, command_id="cmd_create"),)
    st = d.state
    assert st is not None and st.status is PaymentStatus.PROCESSING and st.pending is None and st.attempts == 0
    assert st.fraud is not None and st.fraud.status is FraudHoldStatus.CHECKING
    assert st.fraud.command_id == "cmd_create" and st.fraud.requested_at == NOW
    assert is_busy(st)  # commands of the payment queue until the verdict
    assert not any(is_terminal("CreatePayment", e) for e in d.events)


def test_create_with_fraud_off_is_unchanged() -> None:
    on, off = decide(None, create_cmd(), NOW, fraud_check=False), decide(None, create_cmd(), NOW)
    assert on == off
    assert off.state is not None and off.state.fraud is None
    assert [type(e) for e in off.effects] == [CallGateway]


def test_allow_publishes_the_decision_then_authorizes_with_the_usual_key() -> None:
    d = decide(held(), verdict(FraudOutcome.ALLOW, shadow=FraudOutcome.REVIEW), NOW + 50)
    assert names(d) == ["FraudDecision", "FraudDecision"]
    active, shadow = d.events
    assert isinstance(active, FraudDecision) and active.decision is FraudOutcome.ALLOW and not active.shadow
    assert isinstance(shadow, FraudDecision) and shadow.decision is FraudOutcome.REVIEW and shadow.shadow
    assert d.causation_id == "cmd_create"
    (call,) = d.effects
    assert isinstance(call, CallGateway) and call.operation is GatewayOperation.AUTHORIZE
    assert call.idempotency_key == gateway_idempotency_key(PAYMENT_ID, GatewayOperation.AUTHORIZE, 0)
    assert call.capture  # automatic capture
    assert d.state is not None and d.state.fraud is None and d.state.pending is not None
    # Allow and shadow decisions are progress: the authorization's result ends the CreatePayment.
    assert not any(is_terminal("CreatePayment", e) for e in d.events)
    reply = GatewayReply(GatewayOperation.AUTHORIZE, call.idempotency_key, ReplyStatus.CAPTURED, gateway_ref="ch_1")
    done = decide(d.state, reply, NOW + 90)
    assert names(done) == ["PaymentCaptured", "PaymentSucceeded"] and done.causation_id == "cmd_create"


def test_block_fails_with_fraud_suspected_and_no_gateway_call() -> None:
    d = decide(held(), verdict(FraudOutcome.BLOCK, ("blocklisted",), shadow=FraudOutcome.BLOCK), NOW + 50)
    assert names(d) == ["FraudDecision", "FraudDecision", "PaymentFailed"]
    assert d.effects == ()
    failed = d.events[-1]
    assert isinstance(failed, PaymentFailed) and failed.decline_code == "fraud_suspected" and failed.gateway is None
    assert d.state is not None and d.state.status is PaymentStatus.FAILED and d.state.fraud is None
    assert d.state.authorized == 0 and check_invariants(d.state) == []
    assert [is_terminal("CreatePayment", e) for e in d.events] == [False, False, True]


def test_review_holds_without_a_call_and_ends_the_create() -> None:
    d = decide(held(), verdict(FraudOutcome.REVIEW, ("customer_count_1m",), shadow=FraudOutcome.ALLOW), NOW + 50)
    assert names(d) == ["FraudDecision", "FraudDecision"] and d.effects == ()
    st = d.state
    assert st is not None and st.status is PaymentStatus.PROCESSING and st.pending is None
    assert st.fraud is not None and st.fraud.status is FraudHoldStatus.REVIEW
    assert not is_busy(st)  # a review can take hours: commands are applied, not queued
    # Exactly one terminal for the CreatePayment: the active review decision (not the shadow one).
    assert [is_terminal("CreatePayment", e) for e in d.events] == [True, False]


def test_release_authorizes_under_the_release_command() -> None:
    d = decide(in_review(), release(), NOW + 100)
    assert d.events == () and d.causation_id == "cmd_release"
    (call,) = d.effects
    assert isinstance(call, CallGateway) and call.operation is GatewayOperation.AUTHORIZE and call.attempt == 0
    assert d.state is not None and d.state.fraud is None
    reply = GatewayReply(GatewayOperation.AUTHORIZE, call.idempotency_key, ReplyStatus.CAPTURED, gateway_ref="ch_1")
    done = decide(d.state, reply, NOW + 200)
    assert names(done) == ["PaymentCaptured", "PaymentSucceeded"] and done.causation_id == "cmd_release"
    assert sum(is_terminal("ReleasePayment", e) for e in done.events) == 1


def test_reject_fails_the_payment_without_a_gateway_call() -> None:
    d = decide(in_review(), reject(), NOW + 100)
    assert names(d) == ["PaymentFailed"] and d.effects == () and d.causation_id == "cmd_reject"
    assert isinstance(d.events[0], PaymentFailed) and d.events[0].decline_code == "fraud_suspected"
    assert d.state is not None and d.state.status is PaymentStatus.FAILED and d.state.fraud is None
    assert is_terminal("RejectPayment", d.events[0])


def test_cancel_in_review_cancels_without_a_gateway_call() -> None:
    d = decide(in_review(), cancel_cmd(), NOW + 100)
    assert names(d) == ["PaymentCanceled"] and d.effects == () and d.causation_id == "cmd_cancel"
    assert d.state is not None and d.state.status is PaymentStatus.CANCELED and d.state.fraud is None


def test_capture_in_review_is_rejected_as_not_capturable() -> None:
    d = decide(in_review(), capture_cmd(), NOW + 100)
    assert d.rejection is not None and d.rejection.reason.value == "payment_not_capturable"


@pytest.mark.parametrize("cmd", [release(), reject()])
def test_release_or_reject_outside_review_is_rejected(cmd: Command) -> None:
    authorizing = decide(None, create_cmd(), NOW).state  # fraud off: authorization in flight
    for state in (authorizing, decide(in_review(), release("cmd_r0"), NOW).state):
        d = decide(state, cmd, NOW + 100)
        assert d.rejection is not None and d.rejection.reason.value == "payment_not_in_review"
    none = decide(None, cmd, NOW)
    assert none.rejection is not None and none.rejection.reason.value == "payment_not_found"


def test_commands_while_checking_are_not_applied() -> None:
    # The processor queues them (is_busy); decide() on its own refuses them.
    d = decide(held(), cancel_cmd(), NOW + 1)
    assert d.rejection is not None and d.rejection.reason.value == "operation_in_progress"


@pytest.mark.parametrize("late", [FraudOutcome.ALLOW, FraudOutcome.BLOCK, FraudOutcome.REVIEW])
def test_late_and_duplicate_verdicts_are_ignored(late: FraudOutcome) -> None:
    reviewed = in_review()
    for state in (reviewed, decide(reviewed, release(), NOW).state, decide(reviewed, reject(), NOW).state):
        d = decide(state, verdict(late), NOW + 500)
        assert d.ignored == "stale_fraud_verdict" and d.state == state and d.events == () and d.effects == ()
    # A verdict for another CreatePayment id, and one for a payment held by no check.
    other = decide(held(), verdict(late, command_id="cmd_other"), NOW + 1)
    assert other.ignored == "stale_fraud_verdict"
    plain = decide(None, create_cmd(), NOW).state
    assert decide(plain, verdict(late), NOW + 1).ignored == "stale_fraud_verdict"
    assert decide(None, verdict(late), NOW).ignored == "unknown_payment"


def test_gateway_notifications_for_a_held_payment_are_ignored() -> None:
    n = Notification("evt_1", NotificationKind.PAYMENT_SUCCEEDED, amount=10_000)
    for state in (held(), in_review()):
        assert decide(state, n, NOW + 1).ignored == "held_by_fraud_check"


def test_release_and_reject_have_terminal_sets() -> None:
    assert TERMINAL_EVENTS["ReleasePayment"] == TERMINAL_EVENTS["CreatePayment"]
    assert TERMINAL_EVENTS["RejectPayment"] == frozenset({"PaymentFailed", "CommandRejected"})
    review = FraudDecision(FraudOutcome.REVIEW, ("r",))
    assert not is_terminal("ReleasePayment", review)
    assert not is_terminal("CreatePayment", FraudDecision(FraudOutcome.REVIEW, shadow=True))


def test_held_states_round_trip_and_old_records_stay_readable() -> None:
    for state in (held(), in_review()):
        assert codec.decode(PaymentState, codec.encode(state)) == state
    plain = decide(None, create_cmd(), NOW).state
    old = codec.to_plain(plain)
    del old["fraud"]  # a record written before fraud checks existed
    restored = codec.from_plain(PaymentState, old)
    assert restored == plain and restored.fraud is None
