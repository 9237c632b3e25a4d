"""Pure mappings of the edge: request → Avro command, gateway notification → payment.webhooks
record (both checked against the .avsc files), table value → JSON view."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fastavro
import pytest

from gateway_clients.protocol import DeclineCode, GatewayNotification, GatewayResult, GatewayStatus
from paystream.core import commands as cmds
from paystream.web import mapping
from paystream.web.models import (
    AddPaymentMethodRequest,
    CancelPaymentRequest,
    CapturePaymentRequest,
    CreatePaymentRequest,
    RefundPaymentRequest,
)

AVRO = Path(__file__).resolve().parents[3] / "avro"
COMMAND_SCHEMA = fastavro.parse_schema(json.loads((AVRO / "payment_command.avsc").read_text()))
WEBHOOK_SCHEMA = fastavro.parse_schema(json.loads((AVRO / "gateway_notification.avsc").read_text()))


def valid_command(record: dict[str, Any]) -> bool:
    return bool(fastavro.validate(record, COMMAND_SCHEMA, raise_errors=True))


def test_create_payment_command_matches_the_contract() -> None:
    req = CreatePaymentRequest.model_validate({
        "amount": 1999, "currency": "EUR", "order_id": "ord_1", "customer_id": "cus_1",
        "payment_method_token": "tok_visa", "capture_method": "manual", "metadata": {"b": "2", "a": "1"},
    })
    record = mapping.create_payment_command(req, payment_id="pay_1", command_id="idem-1", origin="api:shop",
                                            issued_at=1_700_000_000_000)
    assert valid_command(record)
    assert record["command_id"] == "idem-1" and record["payment_id"] == "pay_1" and record["origin"] == "api:shop"
    body = record["command"]
    assert body["-type"] == "io.paystream.commands.CreatePayment"
    assert body["amount"] == 1999 and isinstance(body["amount"], int)
    assert body["capture_method"] == "manual"
    assert body["metadata"] == {"a": "1", "b": "2"}
    decoded = cmds.from_avro(record)
    assert isinstance(decoded.body, cmds.CreatePayment)
    assert decoded.body.payment_method_token == "tok_visa"


def test_other_commands_match_the_contract() -> None:
    common = {"payment_id": "pay_1", "command_id": "k", "origin": "api:shop", "issued_at": 1}
    capture = mapping.capture_command(CapturePaymentRequest(amount=500, currency="USD"), **common)
    cancel = mapping.cancel_command(CancelPaymentRequest(reason="customer asked"), **common)
    refund = mapping.refund_command(RefundPaymentRequest(amount=100), **common, refund_id="re_derived")
    named_refund = mapping.refund_command(RefundPaymentRequest(refund_id="re_mine"), **common, refund_id="re_derived")
    for record in (capture, cancel, refund, named_refund):
        assert valid_command(record)
    assert capture["command"]["amount"] == 500
    assert refund["command"]["refund_id"] == "re_derived"
    assert named_refund["command"]["refund_id"] == "re_mine"
    assert named_refund["command"]["amount"] is None

    method = AddPaymentMethodRequest(gateway="stripe", gateway_token="pm_card_visa", last4="4242")
    add = mapping.add_method_command(method, customer_id="cus_1", method_id="pm_1", command_id="k", origin="o",
                                     issued_at=1)
    remove = mapping.remove_method_command(customer_id="cus_1", method_id="pm_1", command_id="k2", origin="o",
                                           issued_at=1)
    assert valid_command(add) and valid_command(remove)
    assert add["payment_id"] == "pm_1" and add["command"]["customer_id"] == "cus_1"
    assert remove["command"]["-type"].endswith("RemovePaymentMethod")


def test_core_validation_still_applies() -> None:
    req = CreatePaymentRequest.model_validate({
        "amount": 1, "currency": "USD", "order_id": "o", "customer_id": "c", "payment_method_token": "tok_visa",
    })
    with pytest.raises(mapping.CommandRejectedAtEdge) as info:
        mapping.create_payment_command(req, payment_id="pay_1", command_id=" ", origin="o", issued_at=1)
    assert info.value.rejection.reason.value == "invalid_field"


def test_derived_ids_are_deterministic_and_scoped() -> None:
    a = mapping.derived_id("pay", "shop", "idem-1")
    assert a == mapping.derived_id("pay", "shop", "idem-1")
    assert a.startswith("pay_")
    assert a != mapping.derived_id("pay", "other-key", "idem-1")
    assert a != mapping.derived_id("pay", "shop", "idem-2")
    assert mapping.derived_id("pay", "a", "bc") != mapping.derived_id("pay", "ab", "c")


@pytest.mark.parametrize("obj, found", [
    ({"metadata": {"note": "4242 4242 4242 4242"}}, True),
    ({"cvc": "123"}, True),
    ({"nested": [{"cvv2": 999}]}, True),
    ({"metadata": {"note": "order 12345"}}, False),
    ({"amount": 1999}, False),
])
def test_sensitive_paths(obj: object, found: bool) -> None:
    paths = mapping.sensitive_paths(obj)
    assert bool(paths) is found
    assert "4242" not in "".join(paths)


# --- notifications -----------------------------------------------------------------------------


def note(status: GatewayStatus, *, raw: str = "x", authorized: int = 0, captured: int = 0, refunded: int = 0,
         refund_ref: str | None = None, decline: DeclineCode | None = None, payment_id: str | None = "pay_1",
         occurred_at: int = 1_700_000_000) -> GatewayNotification:
    return GatewayNotification(
        event_id="evt_1", event_type="some.event", occurred_at=occurred_at, payment_id=payment_id,
        result=GatewayResult(status=status, gateway_ref="ref_1", currency="usd", amount_authorized=authorized,
                             amount_captured=captured, amount_refunded=refunded, decline_code=decline,
                             raw_status=raw, refund_ref=refund_ref),
    )


@pytest.mark.parametrize("n, kind", [
    (note(GatewayStatus.CAPTURED, captured=1999), "payment_succeeded"),
    (note(GatewayStatus.DECLINED, decline=DeclineCode.INSUFFICIENT_FUNDS), "payment_failed"),
    (note(GatewayStatus.AUTHORIZED, authorized=1999), "action_completed"),
    (note(GatewayStatus.AUTHORIZED), None),  # e.g. a failed Adyen capture: nothing authorized stated
    (note(GatewayStatus.REFUNDED, refund_ref="re_1"), "refund_succeeded"),
    (note(GatewayStatus.REFUND_FAILED, refund_ref="re_1"), "refund_failed"),
    (note(GatewayStatus.CAPTURED, raw="dispute_opened", captured=500), "dispute_opened"),
    (note(GatewayStatus.CAPTURED, raw="dispute_won"), "dispute_won"),
    (note(GatewayStatus.CAPTURED, raw="dispute_lost"), "dispute_lost"),
    (note(GatewayStatus.REQUIRES_ACTION), None),
    (note(GatewayStatus.PENDING), None),
    (note(GatewayStatus.CANCELED), None),
])
def test_notification_kind(n: GatewayNotification, kind: str | None) -> None:
    assert mapping.notification_kind(n) == kind
    if kind is not None:
        assert kind in mapping.NOTIFICATION_KINDS


def test_succeeded_record_matches_the_contract() -> None:
    record = mapping.notification_record("simulated", note(GatewayStatus.CAPTURED, raw="succeeded", captured=1999),
                                         payment_id="pay_1", received_at=1_700_000_000_500)
    assert isinstance(record, dict)
    assert fastavro.validate(record, WEBHOOK_SCHEMA, raise_errors=True)
    assert record == {
        "notification_id": "evt_1", "gateway": "simulated", "payment_id": "pay_1", "gateway_ref": "ref_1",
        "kind": "payment_succeeded", "occurred_at": 1_700_000_000_000, "received_at": 1_700_000_000_500,
        "amount": 1999, "currency": "USD", "refund_id": None, "dispute_id": None, "decline_code": None,
        "raw_status": "succeeded",
    }


def test_failed_refund_and_dispute_records() -> None:
    failed = mapping.notification_record(
        "stripe", note(GatewayStatus.DECLINED, decline=DeclineCode.EXPIRED_CARD), payment_id="p", received_at=1)
    refund = mapping.notification_record(
        "stripe", note(GatewayStatus.REFUNDED, refunded=700, refund_ref="re_9"), payment_id="p", received_at=1)
    dispute = mapping.notification_record(
        "paypal", note(GatewayStatus.CAPTURED, raw="dispute_opened", captured=300), payment_id="p", received_at=1)
    for record in (failed, refund, dispute):
        assert isinstance(record, dict)
        assert fastavro.validate(record, WEBHOOK_SCHEMA, raise_errors=True)
    assert isinstance(failed, dict) and failed["decline_code"] == "expired_card" and failed["amount"] is None
    # The protocol's amount_refunded is a running total: never passed off as this refund's amount.
    assert isinstance(refund, dict) and refund["refund_id"] == "re_9" and refund["amount"] is None
    assert isinstance(dispute, dict) and dispute["amount"] == 300
    assert dispute["dispute_id"] == mapping.dispute_id_for("paypal", "ref_1")


def test_ignored_notifications() -> None:
    pending = mapping.notification_record("stripe", note(GatewayStatus.PENDING), payment_id="p", received_at=1)
    no_refund_id = mapping.notification_record("stripe", note(GatewayStatus.REFUNDED), payment_id="p", received_at=1)
    assert isinstance(pending, mapping.Ignored) and pending.reason == "not_actionable:pending"
    assert isinstance(no_refund_id, mapping.Ignored) and no_refund_id.reason == "refund_id_missing"


def test_missing_event_time_falls_back_to_receipt() -> None:
    record = mapping.notification_record("adyen", note(GatewayStatus.CAPTURED, occurred_at=0), payment_id="p",
                                         received_at=42)
    assert isinstance(record, dict) and record["occurred_at"] == 42


# --- payment view ------------------------------------------------------------------------------

STATE = {
    "payment_id": "pay_1", "order_id": "ord_1", "customer_id": "cus_1", "status": "partially_refunded",
    "amount": 2000, "currency": "USD", "capture_method": "automatic", "gateway": "simulated", "gateway_ref": "g1",
    "payment_method_token": "tok_secret_visa", "authorized": 2000, "captured": 2000, "refunded": 500,
    "refunds": [
        {"refund_id": "re_1", "amount": 500, "status": "succeeded", "idempotency_key": "ps-k", "attempt": 0,
         "reason": None},
        {"refund_id": "re_2", "amount": 300, "status": "pending", "idempotency_key": "ps-k2", "attempt": 0,
         "reason": "damaged"},
    ],
    "pending": {"operation": "refund", "attempt": 0, "idempotency_key": "ps-k2", "causation_id": "c",
                "amount": 300, "prior_status": "partially_refunded", "outcome_unknown": False},
    "dispute": None, "created_at": 1, "updated_at": 2, "attempts": 2, "seen_notifications": ["evt_1"],
}


def test_payment_view_whitelists_fields() -> None:
    view = mapping.payment_view("pay_1", {"state": STATE, "sequence": 7, "queue": [{}], "partition": 2})
    assert view is not None
    assert view["status"] == "partially_refunded" and view["sequence"] == 7
    assert view["refundable"] == 2000 - 500 - 300
    assert view["pending_operation"] == {"operation": "refund", "outcome_unknown": False}
    assert view["queued_commands"] == 1
    assert [r["refund_id"] for r in view["refunds"]] == ["re_1", "re_2"]
    text = json.dumps(view)
    for secret in ("tok_secret_visa", "payment_method_token", "idempotency_key", "seen_notifications", "ps-k"):
        assert secret not in text


def test_payment_view_of_nothing() -> None:
    assert mapping.payment_view("p", None) is None
    assert mapping.payment_view("p", {"state": None, "sequence": 1, "queue": [], "partition": 0}) is None


def test_refund_record_carries_our_refund_id_and_its_own_amount_when_the_gateway_echoes_them() -> None:
    # F6: the simulated gateway's refund.succeeded names our refund id beside its own ref; the
    # notification must settle *that* refund, with this refund's amount, not the running total.
    from gateway_clients.simulated.translator import result_from_refund

    result = result_from_refund({"id": "simre_0000000001", "refund_id": "rf-7", "amount": 700, "currency": "usd",
                                 "status": "succeeded", "payment_ref": "simpay_1",
                                 "payment": {"id": "simpay_1", "status": "partially_refunded", "currency": "usd",
                                             "amount_authorized": 2000, "amount_captured": 2000,
                                             "amount_refunded": 1500}})
    n = GatewayNotification(event_id="simevt_1", event_type="refund.succeeded", occurred_at=1_700_000_000,
                            payment_id="pay_1", result=result)
    record = mapping.notification_record("simulated", n, payment_id="pay_1", received_at=1)
    assert isinstance(record, dict) and fastavro.validate(record, WEBHOOK_SCHEMA, raise_errors=True)
    assert (record["kind"], record["refund_id"], record["amount"]) == ("refund_succeeded", "rf-7", 700)
