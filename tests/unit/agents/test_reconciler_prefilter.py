"""The reconciler's cheap prefilter (``agents.processor.may_need_watch``) never hides a payment
the full check (``needs_watch``) would watch, and does filter out the settled ones: it runs on
every payment of the table once a minute, on the stored JSON, without decoding it."""

from __future__ import annotations

from typing import Any

from agents.processor import PaymentRecord, may_need_watch, needs_watch
from paystream.core import commands as cmds
from paystream.core.machine import GatewayOperation, GatewayReply, ReplyStatus
from tests.unit.agents.test_agents_routing_processor import NOW, command, create, processor


def reply(out: Any, status: ReplyStatus, **kw: Any) -> GatewayReply:
    call = out.calls[0]
    return GatewayReply(operation=call.operation, idempotency_key=call.idempotency_key, status=status,
                        gateway_ref=kw.pop("gateway_ref", "ref-1"), **kw)


def states() -> dict[str, Any]:
    proc, payments = processor()
    # Settled: approved and captured in one call.
    out = proc.handle_command(create("settled"), NOW)
    proc.handle_input("settled", reply(out, ReplyStatus.CAPTURED, amount_authorized=1500, amount_captured=1500),
                      NOW + 1)
    # Declined: terminal too.
    out = proc.handle_command(create("declined"), NOW)
    proc.handle_input("declined", reply(out, ReplyStatus.DECLINED, decline_code="card_declined"), NOW + 1)
    # Waiting for its first answer (not unknown yet): nothing for the reconciler.
    proc.handle_command(create("in-flight"), NOW)
    # The authorization timed out: outcome unknown.
    out = proc.handle_command(create("unknown"), NOW)
    proc.handle_input("unknown", reply(out, ReplyStatus.UNKNOWN, gateway_ref=None), NOW + 1)
    # Captured, then a refund whose outcome is unknown.
    out = proc.handle_command(create("refund-unknown"), NOW)
    proc.handle_input("refund-unknown", reply(out, ReplyStatus.CAPTURED, amount_authorized=1500,
                                              amount_captured=1500), NOW + 1)
    out = proc.handle_command(command("refund-unknown", cmds.RefundPayment(refund_id="r1", amount=500),
                                      command_id="c-r1"), NOW + 2)
    assert out.calls and out.calls[0].operation is GatewayOperation.REFUND
    proc.handle_input("refund-unknown", reply(out, ReplyStatus.UNKNOWN), NOW + 3)
    # A refund the gateway accepted as pending.
    out = proc.handle_command(create("refund-pending"), NOW)
    proc.handle_input("refund-pending", reply(out, ReplyStatus.CAPTURED, amount_authorized=1500,
                                              amount_captured=1500), NOW + 1)
    out = proc.handle_command(command("refund-pending", cmds.RefundPayment(refund_id="r2", amount=500),
                                      command_id="c-r2"), NOW + 2)
    proc.handle_input("refund-pending", reply(out, ReplyStatus.PENDING), NOW + 3)
    return payments


def test_the_prefilter_keeps_every_payment_the_reconciler_watches_and_drops_settled_ones() -> None:
    payments = states()
    watched = {pid for pid, value in payments.items() if needs_watch(PaymentRecord.from_json(value).state)}
    kept = {pid for pid, value in payments.items() if may_need_watch(value)}
    assert {"unknown", "refund-unknown", "refund-pending"} <= watched  # the flows above did what they say
    assert watched <= kept  # never hides a payment to watch
    assert "settled" not in kept and "declined" not in kept and "in-flight" not in kept


def test_unexpected_shapes_are_kept_for_the_full_check() -> None:
    assert may_need_watch({"state": {"pending": "odd"}}) is True
    assert may_need_watch({"state": {"refunds": [{"amount": 1}]}}) is True  # status missing: look
    assert may_need_watch({"state": {"orphans": [{"status": "suspected"}]}}) is True
    assert may_need_watch({"state": {"orphans": [{"status": "released"}], "refunds": [{"status": "succeeded"}]}}) \
        is False
    assert may_need_watch(None) is False and may_need_watch({}) is False
