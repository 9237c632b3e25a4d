"""Saved payment methods: the pure machine (add, remove, erase) and resolution for a payment."""

from __future__ import annotations

import pytest
from core_helpers import NOW

from paystream.core.commands import (
    AddPaymentMethod,
    CancelPayment,
    Command,
    CommandBody,
    ErasePaymentMethod,
    RemovePaymentMethod,
)
from paystream.core.events import TERMINAL_EVENTS, PaymentMethodAdded, PaymentMethodRemoved
from paystream.core.machine import decide
from paystream.core.methods import (
    DetachAtGateway,
    MethodStatus,
    SavedMethod,
    decide_method,
    detach_idempotency_key,
    resolve_for_payment,
)
from paystream.core.rejections import RejectionReason

SEALED = "v1:k1:bm9uY2U:c2VhbGVk"
METHOD_ID = "pm_1"


def _cmd(body: CommandBody, command_id: str = "cmd_1") -> Command:
    return Command(command_id=command_id, payment_id=METHOD_ID, issued_at=NOW, origin="api:key1", body=body)


def _add(**changes: object) -> Command:
    fields: dict[str, object] = dict(customer_id="cus_1", gateway="simulated", gateway_token="tok_visa",
                                     brand="visa", last4="4242", exp_month=12, exp_year=2030, fingerprint="fp_1")
    fields.update(changes)
    return _cmd(AddPaymentMethod(**fields))  # type: ignore[arg-type]


def _active() -> SavedMethod:
    decision = decide_method(None, _add(), SEALED, NOW)
    assert decision.state is not None
    return decision.state


def test_add_keeps_only_the_sealed_token_and_masked_details() -> None:
    decision = decide_method(None, _add(), SEALED, NOW)
    state = decision.state
    assert decision.rejection is None and state is not None
    assert state.status is MethodStatus.ACTIVE and state.sealed_token == SEALED
    assert (state.brand, state.last4, state.exp_month, state.exp_year, state.fingerprint) == (
        "visa", "4242", 12, 2030, "fp_1")
    assert "tok_visa" not in repr(state)
    assert decision.events == (PaymentMethodAdded("cus_1", "simulated", "visa", "4242", 12, 2030),)
    assert decision.causation_id == "cmd_1" and decision.effects == ()


def test_add_without_an_encryption_key_is_rejected() -> None:
    decision = decide_method(None, _add(), None, NOW)
    assert decision.rejection is not None and decision.rejection.reason is RejectionReason.ENCRYPTION_UNAVAILABLE
    assert decision.state is None and decision.events == ()


def test_add_twice_with_the_same_id_is_rejected() -> None:
    again = _add()
    decision = decide_method(_active(), Command("cmd_2", METHOD_ID, NOW, "api:key1", again.body), SEALED, NOW)
    assert decision.rejection is not None and decision.rejection.reason is RejectionReason.PAYMENT_METHOD_EXISTS


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (_add(gateway_token="4242 4242 4242 4242"), RejectionReason.SENSITIVE_DATA_REJECTED),
        (_add(fingerprint="4111111111111111"), RejectionReason.SENSITIVE_DATA_REJECTED),
        (_add(last4="42"), RejectionReason.INVALID_FIELD),
        (_add(gateway="acme"), RejectionReason.UNKNOWN_GATEWAY),
        (_add(customer_id=" "), RejectionReason.INVALID_FIELD),
        (_cmd(RemovePaymentMethod(customer_id="")), RejectionReason.INVALID_FIELD),
        (_cmd(CancelPayment()), RejectionReason.UNSUPPORTED_COMMAND),
    ],
)
def test_invalid_method_commands_are_rejected(command: Command, reason: RejectionReason) -> None:
    decision = decide_method(None, command, SEALED, NOW)
    assert decision.rejection is not None and decision.rejection.reason is reason
    assert decision.rejection.detail is None or "4242" not in decision.rejection.detail


def test_remove_detaches_at_the_gateway_and_forgets_the_token() -> None:
    decision = decide_method(_active(), _cmd(RemovePaymentMethod("cus_1"), "cmd_rm"), None, NOW + 5)
    state = decision.state
    assert state is not None and state.status is MethodStatus.REMOVED and state.sealed_token is None
    assert state.version == 2 and state.updated_at == NOW + 5 and state.last4 == "4242"
    assert decision.events == (PaymentMethodRemoved("cus_1"),)
    assert decision.effects == (DetachAtGateway(METHOD_ID, "simulated", SEALED, detach_idempotency_key(METHOD_ID)),)


@pytest.mark.parametrize(
    ("state", "body", "reason"),
    [
        (None, RemovePaymentMethod("cus_1"), RejectionReason.PAYMENT_METHOD_NOT_FOUND),
        ("active", RemovePaymentMethod("cus_2"), RejectionReason.CUSTOMER_MISMATCH),
        ("removed", RemovePaymentMethod("cus_1"), RejectionReason.PAYMENT_METHOD_REMOVED),
        (None, ErasePaymentMethod("cus_1"), RejectionReason.PAYMENT_METHOD_NOT_FOUND),
        ("active", ErasePaymentMethod("cus_2"), RejectionReason.CUSTOMER_MISMATCH),
        ("erased", ErasePaymentMethod("cus_1"), RejectionReason.PAYMENT_METHOD_REMOVED),
        ("erased", RemovePaymentMethod("cus_1"), RejectionReason.PAYMENT_METHOD_REMOVED),
    ],
)
def test_remove_and_erase_rejections(state: str | None, body: CommandBody, reason: RejectionReason) -> None:
    current = None if state is None else _active()
    if state == "removed":
        current = decide_method(current, _cmd(RemovePaymentMethod("cus_1")), None, NOW).state
    if state == "erased":
        current = decide_method(current, _cmd(ErasePaymentMethod("cus_1")), None, NOW).state
    decision = decide_method(current, _cmd(body, "cmd_x"), None, NOW)
    assert decision.rejection is not None and decision.rejection.reason is reason
    assert decision.state == current and decision.events == () and decision.effects == ()


def test_erase_forgets_token_and_card_details_but_keeps_the_tombstone() -> None:
    decision = decide_method(_active(), _cmd(ErasePaymentMethod("cus_1", "gdpr")), None, NOW + 9)
    state = decision.state
    assert state is not None and state.status is MethodStatus.ERASED
    assert (state.sealed_token, state.brand, state.last4, state.exp_month, state.exp_year, state.fingerprint) == (
        None, None, None, None, None, None)
    assert (state.method_id, state.customer_id, state.gateway) == (METHOD_ID, "cus_1", "simulated")
    assert decision.events == (PaymentMethodRemoved("cus_1", erased=True),)
    assert len(decision.effects) == 1  # still attached at the gateway: detach it


def test_erasing_a_removed_method_needs_no_second_detach() -> None:
    removed = decide_method(_active(), _cmd(RemovePaymentMethod("cus_1")), None, NOW).state
    decision = decide_method(removed, _cmd(ErasePaymentMethod("cus_1"), "cmd_2"), None, NOW)
    assert decision.state is not None and decision.state.status is MethodStatus.ERASED
    assert decision.effects == () and decision.state.version == 3
    # The removal's time stays: it is on the vault record, which compaction may leave alone.
    assert removed is not None and removed.removed_at == NOW and decision.state.removed_at == NOW


def test_erasing_an_active_method_sets_when_it_stopped_being_active() -> None:
    state = decide_method(_active(), _cmd(ErasePaymentMethod("cus_1")), None, NOW + 9).state
    assert state is not None and state.removed_at == NOW + 9


def test_method_events_are_terminal_for_their_commands() -> None:
    for name in ("AddPaymentMethod", "RemovePaymentMethod", "ErasePaymentMethod"):
        assert "CommandRejected" in TERMINAL_EVENTS[name]
    assert "PaymentMethodRemoved" in TERMINAL_EVENTS["ErasePaymentMethod"]


def test_resolution_for_a_payment() -> None:
    active = _active()
    assert resolve_for_payment(active, "cus_1") is None
    cases = [
        (None, "cus_1", RejectionReason.PAYMENT_METHOD_NOT_FOUND),
        (active, "cus_2", RejectionReason.CUSTOMER_MISMATCH),
        (decide_method(active, _cmd(RemovePaymentMethod("cus_1")), None, NOW).state, "cus_1",
         RejectionReason.PAYMENT_METHOD_REMOVED),
    ]
    for method, customer, reason in cases:
        rejection = resolve_for_payment(method, customer)
        assert rejection is not None and rejection.reason is reason


def test_the_payment_machine_leaves_method_commands_to_this_module() -> None:
    for body in (RemovePaymentMethod("cus_1"), ErasePaymentMethod("cus_1")):
        decision = decide(None, _cmd(body), NOW)
        assert decision.rejection is not None and decision.rejection.reason is RejectionReason.UNSUPPORTED_COMMAND
