"""The payment state machine, transition by transition."""

from __future__ import annotations

from dataclasses import replace

import pytest
from core_helpers import (
    NOW,
    PAYMENT_ID,
    cancel_cmd,
    capture_cmd,
    create_cmd,
    names,
    notify,
    refund_cmd,
    reply,
    requires_action,
    requires_capture,
    run,
    step,
    succeeded,
)

from gateway_clients.protocol import idempotency_key as protocol_idempotency_key
from paystream.core.commands import AddPaymentMethod, CaptureMethod, Command
from paystream.core.events import (
    CommandRejected,
    DisputeClosed,
    DisputeOutcome,
    PaymentCanceled,
    PaymentCaptured,
    PaymentCreated,
    PaymentFailed,
    PaymentOutcomeUnknown,
    PaymentRequiresAction,
    PaymentSucceeded,
    RefundFailed,
    RefundProcessed,
)
from paystream.core.machine import (
    DEFAULT_GATEWAY,
    MAX_GATEWAY_ATTEMPTS,
    MAX_SEEN_NOTIFICATIONS,
    CallGateway,
    Decision,
    GatewayOperation,
    GatewayReply,
    NotificationKind,
    PaymentState,
    PaymentStatus,
    ReconcileResult,
    RefundStatus,
    ReplyStatus,
    decide,
    gateway_idempotency_key,
    pending_effect,
    reconcile_effects,
    totals,
)
from paystream.core.rejections import RejectionReason

# --- Create ---------------------------------------------------------------------------------


def test_create_starts_processing_with_payment_created_and_an_authorize_call() -> None:
    decision = run(None, create_cmd(capture_method=CaptureMethod.AUTOMATIC))
    assert decision.rejection is None
    assert decision.state is not None and decision.state.status is PaymentStatus.PROCESSING
    assert decision.events == (PaymentCreated("cus_1", 10_000, "USD", "automatic", "simulated"),)
    assert decision.effects == (
        CallGateway(
            operation=GatewayOperation.AUTHORIZE,
            payment_id=PAYMENT_ID,
            gateway="simulated",
            idempotency_key="ps-pay_1-authorize-0",
            attempt=0,
            amount=10_000,
            currency="USD",
            payment_method_token="tok_visa",
            capture=True,
        ),
    )
    assert decision.causation_id == "cmd_create"
    assert decision.state.created_at == NOW


def test_create_with_manual_capture_only_authorizes() -> None:
    decision = run(None, create_cmd(capture_method=CaptureMethod.MANUAL))
    assert decision.effects[0].capture is False


def test_create_without_gateway_preference_uses_the_default_gateway() -> None:
    decision = run(None, create_cmd(gateway=None))
    assert decision.state is not None and decision.state.gateway == DEFAULT_GATEWAY


def test_create_for_an_existing_payment_is_rejected_and_changes_nothing() -> None:
    state = requires_capture()
    decision = run(state, create_cmd(command_id="cmd_again"))
    assert decision.rejection is not None
    assert decision.rejection.reason is RejectionReason.PAYMENT_ALREADY_EXISTS
    assert decision.state == state and decision.events == () and decision.effects == ()


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (create_cmd(amount=0), RejectionReason.INVALID_AMOUNT),
        (create_cmd(currency="usd"), RejectionReason.UNKNOWN_CURRENCY),
        (create_cmd(token=None), RejectionReason.MISSING_PAYMENT_METHOD),
        (create_cmd(saved_method_id="pm_1"), RejectionReason.AMBIGUOUS_PAYMENT_METHOD),
        (create_cmd(token=None, saved_method_id="pm_1"), RejectionReason.PAYMENT_METHOD_NOT_FOUND),
        (create_cmd(token="4242 4242 4242 4242"), RejectionReason.SENSITIVE_DATA_REJECTED),
        (create_cmd(gateway="bank_of_bob"), RejectionReason.UNKNOWN_GATEWAY),
        (create_cmd(command_id=""), RejectionReason.INVALID_FIELD),
    ],
)
def test_invalid_create_is_rejected_with_its_reason(command: Command, reason: RejectionReason) -> None:
    decision = run(None, command)
    assert decision.rejection is not None and decision.rejection.reason is reason
    assert decision.state is None and decision.events == () and decision.effects == ()


def test_payment_method_commands_are_not_payment_commands() -> None:
    command = Command("cmd_pm", PAYMENT_ID, NOW, "test", AddPaymentMethod("cus_1", "stripe", "pm_123"))
    decision = run(None, command)
    assert decision.rejection is not None and decision.rejection.reason is RejectionReason.UNSUPPORTED_COMMAND


# --- Authorization outcomes ------------------------------------------------------------------


def test_manual_authorization_waits_for_capture() -> None:
    state = step(None, create_cmd(capture_method=CaptureMethod.MANUAL))
    decision = run(state, reply(state, ReplyStatus.AUTHORIZED, amount_authorized=10_000))
    assert decision.state is not None and decision.state.status is PaymentStatus.REQUIRES_CAPTURE
    assert names(decision) == ["PaymentAuthorized"]
    assert decision.state.authorized == 10_000 and decision.state.captured == 0
    assert decision.state.gateway_ref == "gw_1" and decision.state.pending is None
    assert decision.causation_id == "cmd_create"


def test_automatic_purchase_succeeds_with_captured_and_succeeded_events() -> None:
    state = step(None, create_cmd(capture_method=CaptureMethod.AUTOMATIC))
    decision = run(state, reply(state, ReplyStatus.CAPTURED, amount_authorized=10_000, amount_captured=10_000))
    assert decision.state is not None and decision.state.status is PaymentStatus.SUCCEEDED
    assert decision.events == (
        PaymentCaptured(amount=10_000, currency="USD", released=0),
        PaymentSucceeded(amount=10_000, currency="USD", gateway="simulated", gateway_ref="gw_1"),
    )
    assert (decision.state.authorized, decision.state.captured) == (10_000, 10_000)


def test_automatic_payment_the_gateway_only_authorized_is_captured_next() -> None:
    state = step(None, create_cmd(capture_method=CaptureMethod.AUTOMATIC))
    decision = run(state, reply(state, ReplyStatus.AUTHORIZED, amount_authorized=10_000))
    assert decision.events == ()
    assert decision.state is not None and decision.state.status is PaymentStatus.PROCESSING
    assert [e.operation for e in decision.effects] == [GatewayOperation.CAPTURE]
    assert decision.effects[0].idempotency_key == "ps-pay_1-capture-1"
    final = run(decision.state, reply(decision.state, ReplyStatus.CAPTURED, amount_captured=10_000))
    assert names(final) == ["PaymentCaptured", "PaymentSucceeded"]
    assert final.causation_id == "cmd_create"


def test_refused_automatic_capture_leaves_the_authorization_for_a_manual_capture() -> None:
    state = step(None, create_cmd(capture_method=CaptureMethod.AUTOMATIC))
    state = step(state, reply(state, ReplyStatus.AUTHORIZED, amount_authorized=10_000))
    decision = run(state, reply(state, ReplyStatus.PERMANENT_ERROR))
    assert decision.state is not None and decision.state.status is PaymentStatus.REQUIRES_CAPTURE
    assert names(decision) == ["PaymentAuthorized"] and decision.causation_id == "cmd_create"


def test_requires_action_reply_asks_the_customer() -> None:
    state = step(None, create_cmd())
    decision = run(state, reply(state, ReplyStatus.REQUIRES_ACTION, action_url="https://gw.test/3ds"))
    assert decision.state is not None and decision.state.status is PaymentStatus.REQUIRES_ACTION
    assert decision.events == (PaymentRequiresAction(gateway_ref="gw_1", action_url="https://gw.test/3ds"),)


def test_decline_fails_the_payment_with_the_normalized_code() -> None:
    state = step(None, create_cmd())
    decision = run(state, reply(state, ReplyStatus.DECLINED, decline_code="insufficient_funds"))
    assert decision.state is not None and decision.state.status is PaymentStatus.FAILED
    assert decision.events == (PaymentFailed(decline_code="insufficient_funds", gateway="simulated"),)


def test_decline_without_code_is_card_declined() -> None:
    state = step(None, create_cmd())
    decision = run(state, reply(state, ReplyStatus.DECLINED))
    assert decision.events == (PaymentFailed(decline_code="card_declined", gateway="simulated"),)


@pytest.mark.parametrize("status", [ReplyStatus.UNKNOWN, ReplyStatus.PENDING, ReplyStatus.REFUNDED])
def test_timeout_or_unexpected_answer_is_unknown_never_failed(status: ReplyStatus) -> None:
    state = step(None, create_cmd())
    decision = run(state, reply(state, status))
    assert decision.state is not None and decision.state.status is PaymentStatus.UNKNOWN
    assert decision.events == (PaymentOutcomeUnknown("authorize", "simulated", "ps-pay_1-authorize-0"),)
    assert decision.state.pending is not None and decision.state.pending.outcome_unknown
    assert decision.causation_id == "cmd_create"


def test_retryable_error_retries_with_the_next_key_then_gives_up() -> None:
    state = step(None, create_cmd())
    keys = [state.pending.idempotency_key if state.pending else ""]
    for _ in range(MAX_GATEWAY_ATTEMPTS - 1):
        decision = run(state, reply(state, ReplyStatus.RETRYABLE_ERROR))
        assert decision.events == () and len(decision.effects) == 1
        assert decision.state is not None
        state = decision.state
        keys.append(decision.effects[0].idempotency_key)
    assert keys == ["ps-pay_1-authorize-0", "ps-pay_1-authorize-1", "ps-pay_1-authorize-2"]
    decision = run(state, reply(state, ReplyStatus.RETRYABLE_ERROR))
    assert decision.state is not None and decision.state.status is PaymentStatus.FAILED
    assert decision.events == (PaymentFailed("processing_error", "gateway_unavailable", "simulated"),)


def test_permanent_error_on_authorize_fails_the_payment() -> None:
    state = step(None, create_cmd())
    decision = run(state, reply(state, ReplyStatus.PERMANENT_ERROR, message="invalid_token"))
    assert decision.state is not None and decision.state.status is PaymentStatus.FAILED
    assert decision.events == (PaymentFailed("processing_error", "invalid_token", "simulated"),)


def test_reply_with_another_key_is_ignored() -> None:
    state = step(None, create_cmd())
    stale = GatewayReply(GatewayOperation.AUTHORIZE, "ps-pay_1-authorize-9", ReplyStatus.CAPTURED)
    decision = run(state, stale)
    assert decision.state == state and decision.events == () and decision.ignored == "stale_reply"


def test_reply_for_unknown_payment_is_ignored() -> None:
    decision = run(None, GatewayReply(GatewayOperation.AUTHORIZE, "k", ReplyStatus.CAPTURED))
    assert decision.state is None and decision.ignored == "unknown_payment"


def test_pending_effect_after_a_crash_repeats_the_same_call() -> None:
    decision = run(None, create_cmd())
    assert decision.state is not None
    assert pending_effect(decision.state) == decision.effects[0]


# --- Capture --------------------------------------------------------------------------------


def test_full_capture_succeeds() -> None:
    state = requires_capture()
    decision = run(state, capture_cmd())
    assert decision.effects[0].operation is GatewayOperation.CAPTURE
    assert decision.effects[0].amount == 10_000 and decision.effects[0].gateway_ref == "gw_1"
    assert decision.state is not None
    done = run(decision.state, reply(decision.state, ReplyStatus.CAPTURED, amount_captured=10_000))
    assert done.state is not None and done.state.status is PaymentStatus.SUCCEEDED
    assert done.events == (
        PaymentCaptured(amount=10_000, currency="USD", released=0),
        PaymentSucceeded(amount=10_000, currency="USD", gateway="simulated", gateway_ref="gw_1"),
    )
    assert done.causation_id == "cmd_capture"


def test_partial_capture_releases_the_remainder() -> None:
    state = step(requires_capture(), capture_cmd(6_000))
    done = run(state, reply(state, ReplyStatus.CAPTURED, amount_captured=6_000))
    assert done.state is not None
    assert (done.state.authorized, done.state.captured) == (10_000, 6_000)
    assert done.events[0] == PaymentCaptured(amount=6_000, currency="USD", released=4_000)


def test_capture_beyond_the_authorization_is_rejected() -> None:
    decision = run(requires_capture(), capture_cmd(10_001))
    assert decision.rejection is not None
    assert decision.rejection.reason is RejectionReason.CAPTURE_EXCEEDS_AUTHORIZED


@pytest.mark.parametrize(
    ("state_name", "reason"),
    [
        ("succeeded", RejectionReason.PAYMENT_NOT_CAPTURABLE),
        ("requires_action", RejectionReason.PAYMENT_NOT_CAPTURABLE),
        ("processing", RejectionReason.OPERATION_IN_PROGRESS),
        ("capturing", RejectionReason.OPERATION_IN_PROGRESS),
    ],
)
def test_capture_is_rejected_where_it_cannot_happen(state_name: str, reason: RejectionReason) -> None:
    states = {
        "succeeded": lambda: succeeded(),
        "requires_action": lambda: requires_action(),
        "processing": lambda: step(None, create_cmd()),
        "capturing": lambda: step(requires_capture(), capture_cmd()),
    }
    decision = run(states[state_name](), capture_cmd(command_id="cmd_capture_2"))
    assert decision.rejection is not None and decision.rejection.reason is reason


def test_capture_of_a_missing_payment_is_rejected() -> None:
    decision = run(None, capture_cmd())
    assert decision.rejection is not None and decision.rejection.reason is RejectionReason.PAYMENT_NOT_FOUND


def test_capture_in_another_currency_is_rejected() -> None:
    decision = run(requires_capture(), capture_cmd(100, currency="EUR"))
    assert decision.rejection is not None and decision.rejection.reason is RejectionReason.CURRENCY_MISMATCH


def test_capture_refused_by_the_gateway_ends_with_command_rejected_and_keeps_the_authorization() -> None:
    state = step(requires_capture(), capture_cmd())
    decision = run(state, reply(state, ReplyStatus.DECLINED, message="authorization_expired"))
    assert decision.state is not None and decision.state.status is PaymentStatus.REQUIRES_CAPTURE
    assert decision.state.pending is None
    assert decision.events == (CommandRejected("gateway_error", "authorization_expired", "CapturePayment"),)
    assert decision.causation_id == "cmd_capture"


def test_capture_answered_with_canceled_cancels_the_payment() -> None:
    state = step(requires_capture(), capture_cmd())
    decision = run(state, reply(state, ReplyStatus.CANCELED))
    assert decision.state is not None and decision.state.status is PaymentStatus.CANCELED
    assert decision.events == (PaymentCanceled(reason="canceled_by_gateway", released=10_000),)


def test_capture_timeout_then_reconciled_as_captured() -> None:
    state = step(requires_capture(), capture_cmd())
    unknown = run(state, reply(state, ReplyStatus.UNKNOWN))
    assert unknown.state is not None and unknown.state.status is PaymentStatus.UNKNOWN
    assert names(unknown) == ["PaymentOutcomeUnknown"] and unknown.causation_id == "cmd_capture"
    (retrieve,) = reconcile_effects(unknown.state)
    assert retrieve.operation is GatewayOperation.RETRIEVE
    assert retrieve.idempotency_key == "ps-pay_1-capture-1"
    result = ReconcileResult("rec_1", retrieve.idempotency_key, ReplyStatus.CAPTURED, amount_captured=10_000)
    resolved = run(unknown.state, result)
    assert resolved.state is not None and resolved.state.status is PaymentStatus.SUCCEEDED
    assert names(resolved) == ["PaymentCaptured", "PaymentSucceeded"]
    assert resolved.causation_id == "rec_1"


def test_capture_timeout_reconciled_as_not_done_returns_to_requires_capture() -> None:
    state = step(requires_capture(), capture_cmd())
    state = step(state, reply(state, ReplyStatus.UNKNOWN))
    assert state.pending is not None
    resolved = run(state, ReconcileResult("rec_1", state.pending.idempotency_key, ReplyStatus.NOT_FOUND))
    assert resolved.state is not None and resolved.state.status is PaymentStatus.REQUIRES_CAPTURE
    assert names(resolved) == ["PaymentAuthorized"] and resolved.causation_id == "rec_1"


# --- Cancel ---------------------------------------------------------------------------------


def test_cancel_of_an_authorization_releases_it() -> None:
    state = step(requires_capture(), cancel_cmd())
    assert state.pending is not None and state.pending.operation is GatewayOperation.CANCEL
    decision = run(state, reply(state, ReplyStatus.CANCELED))
    assert decision.state is not None and decision.state.status is PaymentStatus.CANCELED
    assert decision.events == (PaymentCanceled(reason="customer_request", released=10_000),)
    assert decision.causation_id == "cmd_cancel"


def test_cancel_while_awaiting_customer_action() -> None:
    state = step(requires_action(), cancel_cmd())
    decision = run(state, reply(state, ReplyStatus.CANCELED))
    assert decision.state is not None and decision.state.status is PaymentStatus.CANCELED
    assert decision.events == (PaymentCanceled(reason="customer_request", released=0),)


def test_cancel_while_authorizing_waits_for_the_gateway() -> None:
    decision = run(step(None, create_cmd()), cancel_cmd())
    assert decision.rejection is not None
    assert decision.rejection.reason is RejectionReason.OPERATION_IN_PROGRESS


def test_cancel_of_succeeded_payment_is_not_cancelable() -> None:
    decision = run(succeeded(), cancel_cmd())
    assert decision.rejection is not None
    assert decision.rejection.reason is RejectionReason.PAYMENT_NOT_CANCELABLE


def test_cancel_refused_by_the_gateway_restores_the_previous_status() -> None:
    state = step(requires_capture(), cancel_cmd())
    decision = run(state, reply(state, ReplyStatus.PERMANENT_ERROR, message="cannot_cancel"))
    assert decision.state is not None and decision.state.status is PaymentStatus.REQUIRES_CAPTURE
    assert decision.events == (CommandRejected("gateway_error", "cannot_cancel", "CancelPayment"),)


def test_cancel_that_lost_a_race_with_a_capture_succeeds() -> None:
    state = step(requires_capture(), cancel_cmd())
    decision = run(state, reply(state, ReplyStatus.CAPTURED, amount_captured=10_000))
    assert decision.state is not None and decision.state.status is PaymentStatus.SUCCEEDED
    assert names(decision) == ["PaymentCaptured", "PaymentSucceeded"]


# --- Refunds --------------------------------------------------------------------------------


def _refund(
    state: PaymentState | None, refund_id: str, amount: int | None, outcome: ReplyStatus = ReplyStatus.REFUNDED
) -> Decision:
    """Refund command plus the gateway's answer to it."""
    started = step(state, refund_cmd(refund_id, amount))
    return run(started, reply(started, outcome))


def test_full_lifecycle_manual_authorize_partial_capture_two_partial_refunds() -> None:
    state = step(None, create_cmd(amount=10_000, capture_method=CaptureMethod.MANUAL))
    state = step(state, reply(state, ReplyStatus.AUTHORIZED, amount_authorized=10_000))
    assert state.status is PaymentStatus.REQUIRES_CAPTURE
    state = step(state, capture_cmd(8_000))
    state = step(state, reply(state, ReplyStatus.CAPTURED, amount_captured=8_000))
    assert state.status is PaymentStatus.SUCCEEDED
    first = _refund(state, "r1", 3_000)
    assert first.events == (RefundProcessed("r1", 3_000, "USD"),)
    assert first.state is not None and first.state.status is PaymentStatus.PARTIALLY_REFUNDED
    second = _refund(first.state, "r2", None)
    assert second.events == (RefundProcessed("r2", 5_000, "USD"),)
    assert second.state is not None and second.state.status is PaymentStatus.REFUNDED
    assert totals(second.state).refunded == 8_000 and totals(second.state).captured == 8_000
    assert totals(second.state).authorized == 10_000 and totals(second.state).amount == 10_000


def test_refund_call_carries_refund_id_and_key() -> None:
    decision = run(succeeded(), refund_cmd("r1", 2_500))
    (effect,) = decision.effects
    assert effect.operation is GatewayOperation.REFUND and effect.refund_id == "r1"
    assert effect.amount == 2_500 and effect.gateway_ref == "gw_1"
    assert effect.idempotency_key == "ps-pay_1-refund:r1-1"


def test_over_refund_is_rejected() -> None:
    decision = run(succeeded(), refund_cmd("r1", 10_001))
    assert decision.rejection is not None
    assert decision.rejection.reason is RejectionReason.REFUND_EXCEEDS_CAPTURED


def test_refund_beyond_what_is_left_after_an_earlier_refund_is_rejected() -> None:
    first = _refund(succeeded(), "r1", 7_000)
    decision = run(first.state, refund_cmd("r2", 3_001))
    assert decision.rejection is not None
    assert decision.rejection.reason is RejectionReason.REFUND_EXCEEDS_CAPTURED


def test_pending_refunds_count_against_the_limit() -> None:
    pending = _refund(succeeded(), "r1", 7_000, ReplyStatus.PENDING)
    assert pending.events == (PaymentOutcomeUnknown("refund", "simulated", "ps-pay_1-refund:r1-1"),)
    assert pending.state is not None and pending.state.status is PaymentStatus.SUCCEEDED
    assert pending.state.pending is None and pending.state.refund("r1") is not None
    assert pending.state.pending_refunds == 7_000
    too_much = run(pending.state, refund_cmd("r2", 3_001))
    assert too_much.rejection is not None
    assert too_much.rejection.reason is RejectionReason.REFUND_EXCEEDS_CAPTURED
    fits = run(pending.state, refund_cmd("r2", 3_000))
    assert fits.rejection is None


def test_refund_of_the_rest_when_nothing_is_left_is_rejected() -> None:
    done = _refund(succeeded(), "r1", None)
    assert done.state is not None and done.state.status is PaymentStatus.REFUNDED
    decision = run(done.state, refund_cmd("r2"))
    assert decision.rejection is not None
    assert decision.rejection.reason is RejectionReason.PAYMENT_NOT_REFUNDABLE


def test_refund_id_cannot_be_reused() -> None:
    done = _refund(succeeded(), "r1", 1_000)
    decision = run(done.state, refund_cmd("r1", 1_000, command_id="cmd_other"))
    assert decision.rejection is not None and decision.rejection.reason is RejectionReason.REFUND_ID_REUSED


def test_refund_before_capture_is_rejected() -> None:
    decision = run(requires_capture(), refund_cmd("r1", 100))
    assert decision.rejection is not None
    assert decision.rejection.reason is RejectionReason.PAYMENT_NOT_REFUNDABLE


def test_refund_while_another_refund_is_in_flight_is_rejected() -> None:
    state = step(succeeded(), refund_cmd("r1", 100))
    decision = run(state, refund_cmd("r2", 100))
    assert decision.rejection is not None
    assert decision.rejection.reason is RejectionReason.OPERATION_IN_PROGRESS


def test_refund_in_another_currency_is_rejected() -> None:
    decision = run(succeeded(), refund_cmd("r1", 100, currency="EUR"))
    assert decision.rejection is not None and decision.rejection.reason is RejectionReason.CURRENCY_MISMATCH


def test_failed_refund_leaves_the_payment_and_frees_the_amount() -> None:
    failed = _refund(succeeded(), "r1", 4_000, ReplyStatus.REFUND_FAILED)
    assert failed.events == (RefundFailed("r1", 4_000, "USD", "refund_failed"),)
    assert failed.state is not None and failed.state.status is PaymentStatus.SUCCEEDED
    assert failed.state.refunded == 0 and failed.state.refundable == 10_000


def test_refund_retries_exhausted_fail_the_refund() -> None:
    state = step(succeeded(), refund_cmd("r1", 1_000))
    for _ in range(MAX_GATEWAY_ATTEMPTS - 1):
        state = step(state, reply(state, ReplyStatus.RETRYABLE_ERROR))
    record = state.refund("r1")
    assert record is not None and record.idempotency_key == "ps-pay_1-refund:r1-3"
    decision = run(state, reply(state, ReplyStatus.RETRYABLE_ERROR))
    assert decision.events == (RefundFailed("r1", 1_000, "USD", "gateway_unavailable"),)


def test_refund_timeout_then_reconciled() -> None:
    unknown = _refund(succeeded(), "r1", 2_000, ReplyStatus.UNKNOWN)
    assert unknown.state is not None
    (retrieve,) = reconcile_effects(unknown.state)
    assert retrieve.refund_id == "r1" and retrieve.idempotency_key == "ps-pay_1-refund:r1-1"
    resolved = run(unknown.state, ReconcileResult("rec_9", retrieve.idempotency_key, ReplyStatus.REFUNDED))
    assert resolved.events == (RefundProcessed("r1", 2_000, "USD"),)
    assert resolved.causation_id == "rec_9"
    assert resolved.state is not None and resolved.state.status is PaymentStatus.PARTIALLY_REFUNDED


def test_refund_reconciled_as_never_processed_fails() -> None:
    unknown = _refund(succeeded(), "r1", 2_000, ReplyStatus.UNKNOWN)
    assert unknown.state is not None
    key = unknown.state.refunds[0].idempotency_key
    resolved = run(unknown.state, ReconcileResult("rec_9", key, ReplyStatus.NOT_FOUND))
    assert resolved.events == (RefundFailed("r1", 2_000, "USD", "not_processed"),)


# --- Unknown outcomes and reconciliation ----------------------------------------------------


def test_authorize_timeout_reconciled_as_captured_succeeds() -> None:
    state = step(None, create_cmd(capture_method=CaptureMethod.AUTOMATIC))
    state = step(state, reply(state, ReplyStatus.UNKNOWN))
    assert state.status is PaymentStatus.UNKNOWN
    result = ReconcileResult("rec_1", "ps-pay_1-authorize-0", ReplyStatus.CAPTURED, "gw_7", 10_000, 10_000)
    decision = run(state, result)
    assert decision.state is not None and decision.state.status is PaymentStatus.SUCCEEDED
    assert decision.state.gateway_ref == "gw_7" and decision.causation_id == "rec_1"


def test_authorize_timeout_reconciled_as_nothing_charged_fails() -> None:
    state = step(None, create_cmd())
    state = step(state, reply(state, ReplyStatus.UNKNOWN))
    decision = run(state, ReconcileResult("rec_1", "ps-pay_1-authorize-0", ReplyStatus.NOT_FOUND))
    assert decision.state is not None and decision.state.status is PaymentStatus.FAILED
    assert decision.events == (PaymentFailed("processing_error", "no charge was made", "simulated"),)


def test_reconcile_that_still_does_not_know_changes_nothing() -> None:
    state = step(None, create_cmd())
    state = step(state, reply(state, ReplyStatus.UNKNOWN))
    decision = run(state, ReconcileResult("rec_1", "ps-pay_1-authorize-0", ReplyStatus.UNKNOWN))
    assert decision.state == state and decision.events == () and decision.ignored is not None


def test_reconcile_for_a_resolved_operation_is_ignored() -> None:
    state = requires_capture()
    decision = run(state, ReconcileResult("rec_1", "ps-pay_1-authorize-0", ReplyStatus.CAPTURED))
    assert decision.state == state and decision.events == ()


def test_commands_wait_while_the_outcome_is_unknown() -> None:
    state = step(requires_capture(), capture_cmd())
    state = step(state, reply(state, ReplyStatus.UNKNOWN))
    decision = run(state, cancel_cmd())
    assert decision.rejection is not None
    assert decision.rejection.reason is RejectionReason.OPERATION_IN_PROGRESS


# --- Notifications: 3-D Secure, duplicates, order ---------------------------------------------


def test_3ds_completed_for_manual_capture_authorizes() -> None:
    decision = run(requires_action(), notify(NotificationKind.ACTION_COMPLETED, "evt_3ds", amount=10_000))
    assert decision.state is not None and decision.state.status is PaymentStatus.REQUIRES_CAPTURE
    assert names(decision) == ["PaymentAuthorized"] and decision.causation_id == "evt_3ds"
    assert decision.state.authorized == 10_000


def test_3ds_completed_for_automatic_capture_captures() -> None:
    state = requires_action(CaptureMethod.AUTOMATIC)
    decision = run(state, notify(NotificationKind.ACTION_COMPLETED, "evt_3ds"))
    assert decision.state is not None and decision.state.status is PaymentStatus.PROCESSING
    assert [e.operation for e in decision.effects] == [GatewayOperation.CAPTURE]
    done = run(decision.state, reply(decision.state, ReplyStatus.CAPTURED, amount_captured=10_000))
    assert done.state is not None and done.state.status is PaymentStatus.SUCCEEDED
    assert done.causation_id == "evt_3ds"


def test_3ds_then_payment_succeeded_notification() -> None:
    decision = run(requires_action(CaptureMethod.AUTOMATIC), notify(NotificationKind.PAYMENT_SUCCEEDED, amount=10_000))
    assert decision.state is not None and decision.state.status is PaymentStatus.SUCCEEDED
    assert decision.state.captured == 10_000 and names(decision) == ["PaymentCaptured", "PaymentSucceeded"]


def test_3ds_failed_notification_fails_the_payment() -> None:
    n = notify(NotificationKind.PAYMENT_FAILED, decline_code="card_declined")
    decision = run(requires_action(), n)
    assert decision.state is not None and decision.state.status is PaymentStatus.FAILED
    assert names(decision) == ["PaymentFailed"]


def test_same_notification_twice_is_a_no_op() -> None:
    n = notify(NotificationKind.ACTION_COMPLETED, "evt_1")
    once = step(requires_action(), n)
    twice = run(once, n)
    assert twice.state == once and twice.events == () and twice.effects == ()
    assert twice.ignored == "duplicate_notification"


def test_payment_succeeded_after_success_is_a_no_op() -> None:
    state = succeeded()
    decision = run(state, notify(NotificationKind.PAYMENT_SUCCEEDED, "evt_late", amount=10_000))
    assert decision.state == state and decision.events == ()


def test_webhook_before_the_reply_settles_the_command_and_the_late_reply_is_ignored() -> None:
    state = step(None, create_cmd(capture_method=CaptureMethod.AUTOMATIC))
    late_reply = reply(state, ReplyStatus.CAPTURED, amount_captured=10_000)
    decision = run(state, notify(NotificationKind.PAYMENT_SUCCEEDED, "evt_early", amount=10_000))
    assert decision.state is not None and decision.state.status is PaymentStatus.SUCCEEDED
    assert decision.causation_id == "cmd_create"  # the notification answered the command
    after = run(decision.state, late_reply)
    assert after.state == decision.state and after.events == ()


def test_out_of_order_3ds_notifications_reach_the_same_final_state() -> None:
    completed = notify(NotificationKind.ACTION_COMPLETED, "evt_a", amount=10_000)
    paid = notify(NotificationKind.PAYMENT_SUCCEEDED, "evt_b", amount=10_000)
    in_order = step(step(requires_action(), completed), paid)
    reversed_order = run(step(requires_action(), paid), completed)
    assert reversed_order.events == ()
    assert reversed_order.state is not None
    assert reversed_order.state.status is in_order.status is PaymentStatus.SUCCEEDED
    assert totals(reversed_order.state) == totals(in_order)


def test_refund_succeeded_twice_is_a_no_op() -> None:
    done = _refund(succeeded(), "r1", 1_000)
    assert done.state is not None
    decision = run(done.state, notify(NotificationKind.REFUND_SUCCEEDED, "evt_r", refund_id="r1", amount=1_000))
    assert decision.state == done.state and decision.events == ()


def test_refund_webhook_before_the_reply_settles_the_refund_command() -> None:
    state = step(succeeded(), refund_cmd("r1", 1_000))
    late_reply = reply(state, ReplyStatus.REFUNDED)
    decision = run(state, notify(NotificationKind.REFUND_SUCCEEDED, "evt_r", refund_id="r1", amount=1_000))
    assert decision.events == (RefundProcessed("r1", 1_000, "USD"),)
    assert decision.causation_id == "cmd_r1" and decision.state is not None and decision.state.pending is None
    after = run(decision.state, late_reply)
    assert after.state == decision.state and after.events == ()


def test_refund_made_in_the_gateway_dashboard_is_recorded() -> None:
    decision = run(succeeded(), notify(NotificationKind.REFUND_SUCCEEDED, "evt_r", refund_id="re_ext", amount=500))
    assert decision.events == (RefundProcessed("re_ext", 500, "USD"),)
    assert decision.state is not None and decision.state.refunded == 500
    record = decision.state.refund("re_ext")
    assert record is not None and record.status is RefundStatus.SUCCEEDED


def test_notification_in_another_currency_is_ignored() -> None:
    state = requires_action()
    decision = run(state, notify(NotificationKind.PAYMENT_SUCCEEDED, amount=10_000, currency="EUR"))
    assert decision.state == state and decision.ignored == "currency_mismatch"


def test_notification_for_unknown_payment_is_ignored() -> None:
    decision = run(None, notify(NotificationKind.PAYMENT_SUCCEEDED))
    assert decision.state is None and decision.ignored == "unknown_payment"


def test_seen_notification_ids_are_bounded() -> None:
    state = succeeded()
    for index in range(MAX_SEEN_NOTIFICATIONS + 5):
        n = notify(NotificationKind.REFUND_SUCCEEDED, f"evt_{index}", refund_id=f"ext_{index}", amount=1)
        state = step(state, n)
    assert len(state.seen_notifications) == MAX_SEEN_NOTIFICATIONS
    assert state.seen_notifications[-1] == f"evt_{MAX_SEEN_NOTIFICATIONS + 4}"


def test_cancel_in_flight_when_the_payment_succeeded_at_the_gateway() -> None:
    state = step(requires_capture(), cancel_cmd())
    decision = run(state, notify(NotificationKind.PAYMENT_SUCCEEDED, "evt_paid", amount=10_000))
    assert decision.state is not None and decision.state.status is PaymentStatus.SUCCEEDED
    assert decision.causation_id == "cmd_cancel"


# --- Disputes -------------------------------------------------------------------------------


@pytest.mark.parametrize("refunded", [0, 4_000, 10_000])
def test_dispute_opens_from_succeeded_or_refunded(refunded: int) -> None:
    state = succeeded()
    if refunded:
        done = _refund(state, "r1", refunded)
        assert done.state is not None
        state = done.state
    decision = run(state, notify(NotificationKind.DISPUTE_OPENED, "evt_d", dispute_id="dp_1", amount=10_000))
    assert decision.state is not None and decision.state.status is PaymentStatus.DISPUTED
    assert names(decision) == ["DisputeOpened"]


@pytest.mark.parametrize(
    ("kind", "status", "outcome"),
    [
        (NotificationKind.DISPUTE_WON, PaymentStatus.DISPUTE_WON, DisputeOutcome.WON),
        (NotificationKind.DISPUTE_LOST, PaymentStatus.DISPUTE_LOST, DisputeOutcome.LOST),
    ],
)
def test_dispute_closes_won_or_lost(kind: NotificationKind, status: PaymentStatus, outcome: DisputeOutcome) -> None:
    state = step(succeeded(), notify(NotificationKind.DISPUTE_OPENED, "evt_d1", dispute_id="dp_1"))
    decision = run(state, notify(kind, "evt_d2", dispute_id="dp_1"))
    assert decision.state is not None and decision.state.status is status
    assert decision.events == (DisputeClosed("dp_1", outcome),)
    again = run(decision.state, notify(kind, "evt_d3", dispute_id="dp_1"))
    assert again.state == decision.state and again.events == ()


def test_dispute_cannot_open_before_money_moved() -> None:
    state = requires_capture()
    decision = run(state, notify(NotificationKind.DISPUTE_OPENED, dispute_id="dp_1"))
    assert decision.state == state and decision.events == ()


def test_disputed_payment_cannot_be_refunded() -> None:
    state = step(succeeded(), notify(NotificationKind.DISPUTE_OPENED, "evt_d", dispute_id="dp_1"))
    decision = run(state, refund_cmd("r1", 100))
    assert decision.rejection is not None
    assert decision.rejection.reason is RejectionReason.PAYMENT_NOT_REFUNDABLE


def test_dispute_closed_before_opened_reaches_the_same_final_state() -> None:
    opened = notify(NotificationKind.DISPUTE_OPENED, "evt_o", dispute_id="dp_1", amount=10_000)
    lost = notify(NotificationKind.DISPUTE_LOST, "evt_l", dispute_id="dp_1", amount=10_000)
    in_order = step(step(succeeded(), opened), lost)
    first_close = run(succeeded(), lost)
    assert names(first_close) == ["DisputeOpened", "DisputeClosed"]
    assert first_close.state is not None
    late_open = run(first_close.state, opened)
    assert late_open.events == () and late_open.state is not None
    assert late_open.state.status is in_order.status is PaymentStatus.DISPUTE_LOST
    assert late_open.state.dispute == in_order.dispute


# --- Idempotency keys -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "attempt", "refund_id"),
    [
        (GatewayOperation.AUTHORIZE, 0, None),
        (GatewayOperation.CAPTURE, 3, None),
        (GatewayOperation.REFUND, 1, "re_1"),
    ],
)
def test_idempotency_keys_match_the_gateway_protocol(
    operation: GatewayOperation, attempt: int, refund_id: str | None
) -> None:
    op = f"refund:{refund_id}" if refund_id else operation.value
    expected = protocol_idempotency_key("pay-123", op, attempt)
    assert gateway_idempotency_key("pay-123", operation, attempt, refund_id) == expected


def test_odd_refund_ids_still_give_a_valid_deterministic_key() -> None:
    first = gateway_idempotency_key("pay_1", GatewayOperation.REFUND, 0, "refund/with-dash")
    second = gateway_idempotency_key("pay_1", GatewayOperation.REFUND, 0, "refund/with-dash")
    assert first == second and "/" not in first
    assert first.count("-") == 3  # ps-<payment>-<op>-<attempt>


def test_keys_differ_per_attempt_and_operation() -> None:
    keys = {
        gateway_idempotency_key("p", GatewayOperation.AUTHORIZE, 0),
        gateway_idempotency_key("p", GatewayOperation.AUTHORIZE, 1),
        gateway_idempotency_key("p", GatewayOperation.CAPTURE, 0),
        gateway_idempotency_key("p", GatewayOperation.REFUND, 0, "a"),
        gateway_idempotency_key("p", GatewayOperation.REFUND, 0, "b"),
    }
    assert len(keys) == 5


def test_capture_after_a_refused_automatic_capture_uses_a_fresh_key() -> None:
    state = step(None, create_cmd(capture_method=CaptureMethod.AUTOMATIC))
    state = step(state, reply(state, ReplyStatus.AUTHORIZED, amount_authorized=10_000))
    first_key = state.pending.idempotency_key if state.pending else ""
    state = step(state, reply(state, ReplyStatus.PERMANENT_ERROR))
    decision = run(state, capture_cmd())
    assert decision.effects[0].idempotency_key != first_key


# --- Purity ---------------------------------------------------------------------------------


def test_decide_is_deterministic_and_does_not_mutate_inputs() -> None:
    state = requires_capture()
    snapshot = replace(state)
    first = decide(state, capture_cmd(5_000), NOW)
    second = decide(state, capture_cmd(5_000), NOW)
    assert first == second and state == snapshot


def test_time_comes_from_the_caller() -> None:
    decision = decide(None, create_cmd(), 42)
    assert decision.state is not None and decision.state.created_at == decision.state.updated_at == 42
