"""The processor routes new payments (agents.routing + core.routing) and keeps the route in
the payment's state; old table records without a route still load. Plain dicts, no Kafka."""

from __future__ import annotations

import base64
from typing import Any

from agents.processor import PaymentProcessor, PaymentRecord
from agents.routing import make_router
from paystream.core import commands as cmds
from paystream.core import events as evs
from paystream.core.routing import load_routing_table
from paystream.security.crypto import KeyRing

NOW = 1_700_000_000_000
RING = KeyRing.load("k1:" + base64.b64encode(bytes(range(32))).decode())
TABLE = load_routing_table({
    "version": "t", "default": ["simulated"],
    "rules": [{"name": "is", "match": {"countries": ["IS"]}, "gateways": ["simulated", "stripe"]}],
})


def command(payment_id: str, body: cmds.CommandBody, command_id: str | None = None) -> cmds.Command:
    return cmds.Command(command_id=command_id or f"c-{payment_id}", payment_id=payment_id, issued_at=NOW,
                        origin="test", body=body)


def create(payment_id: str, *, country: str | None = None, gateway: str | None = None,
           saved: str | None = None) -> cmds.Command:
    body = cmds.CreatePayment(order_id="o", customer_id="cus_1", amount=1500, currency="EUR",
                              payment_method_token=None if saved else "tok_visa", saved_method_id=saved,
                              gateway=gateway, shipping_country=country)
    return command(payment_id, body)


def processor(disabled: tuple[str, ...] = ()) -> tuple[PaymentProcessor, dict[str, Any]]:
    payments: dict[str, Any] = {}
    router = make_router(TABLE, configured=["simulated", "stripe"], disabled=disabled)
    return PaymentProcessor(payments, {}, methods={}, sealer=RING, router=router), payments


def test_route_is_kept_in_the_state_and_the_primary_gets_the_call() -> None:
    proc, payments = processor()
    out = proc.handle_command(create("p1", country="IS"), NOW)
    assert [c.gateway for c in out.calls] == ["simulated"]
    created = out.events[0].body
    assert isinstance(created, evs.PaymentCreated) and created.gateway == "simulated"
    state = PaymentRecord.from_json(payments["p1"]).state
    assert state is not None and state.route == ("simulated", "stripe")
    out = proc.handle_command(create("p2"), NOW)
    assert PaymentRecord.from_json(payments["p2"]).state.route == ("simulated",)  # type: ignore[union-attr]


def test_switched_off_primary_routes_to_the_secondary_and_explicit_ones_are_rejected() -> None:
    proc, payments = processor(disabled=("simulated",))
    out = proc.handle_command(create("p1", country="IS"), NOW)
    assert [c.gateway for c in out.calls] == ["stripe"]
    out = proc.handle_command(create("p2", gateway="simulated"), NOW)
    rejected = out.events[0].body
    assert isinstance(rejected, evs.CommandRejected) and rejected.reason == "gateway_unavailable"
    assert out.calls == [] and PaymentRecord.from_json(payments["p2"]).state is None
    out = proc.handle_command(create("p3"), NOW)  # the default (simulated) is off: nothing left
    assert isinstance(out.events[0].body, evs.CommandRejected) and out.events[0].body.reason == "gateway_unavailable"


def test_saved_method_pays_at_its_gateway_only() -> None:
    proc, payments = processor()
    add = cmds.AddPaymentMethod(customer_id="cus_1", gateway="stripe", gateway_token="pm_card_visa", brand="visa",
                                last4="4242", exp_month=1, exp_year=2031)
    proc.handle_command(command("pm_1", add), NOW)
    out = proc.handle_command(create("p1", country="IS", saved="pm_1"), NOW)
    assert [c.gateway for c in out.calls] == ["stripe"]
    assert PaymentRecord.from_json(payments["p1"]).state.route == ("stripe",)  # type: ignore[union-attr]


def test_a_record_written_before_routing_loads_with_an_empty_route() -> None:
    proc, payments = processor()
    proc.handle_command(create("p1", country="IS"), NOW)
    old = dict(payments["p1"])
    old["state"] = {k: v for k, v in old["state"].items() if k != "route"}
    state = PaymentRecord.from_json(old).state
    assert state is not None and state.route == () and state.gateway == "simulated"


def test_a_stale_reply_reporting_money_moved_refunds_the_orphan_charge_once() -> None:
    from prometheus_client import REGISTRY

    from paystream.core.machine import GatewayOperation, GatewayReply, ReplyStatus

    proc, payments = processor()
    out = proc.handle_command(create("p1", country="IS"), NOW)
    old_key = out.calls[0].idempotency_key
    unavailable = GatewayReply(operation=GatewayOperation.AUTHORIZE, idempotency_key=old_key,
                               status=ReplyStatus.RETRYABLE_ERROR, unavailable=True)
    out = proc.handle_input("p1", unavailable, NOW)
    assert [c.gateway for c in out.calls] == ["stripe"] and out.calls[0].idempotency_key != old_key
    before_state = PaymentRecord.from_json(payments["p1"]).state
    before = REGISTRY.get_sample_value("paystream_gateway_orphan_charges_total") or 0.0
    # A redone call (executor redelivery) charged under the abandoned key after all.
    late = GatewayReply(operation=GatewayOperation.AUTHORIZE, idempotency_key=old_key, status=ReplyStatus.CAPTURED,
                        gateway_ref="ch_old", amount_authorized=1500, amount_captured=1500)
    out = proc.handle_input("p1", late, NOW)
    assert [type(e.body).__name__ for e in out.events] == ["OrphanChargeDetected"]
    detected = out.events[0]
    assert detected.status == "processing" and detected.totals is not None and detected.totals.captured == 0
    assert [(c.operation, c.gateway, c.gateway_ref, c.amount, c.idempotency_key, c.orphan_of) for c in out.calls] == [
        (GatewayOperation.REFUND, "simulated", "ch_old", 1500, f"{old_key}-refund", old_key)]
    assert REGISTRY.get_sample_value("paystream_gateway_orphan_charges_total") == before + 1
    after = PaymentRecord.from_json(payments["p1"]).state
    assert after is not None and before_state is not None
    assert (after.status, after.pending, after.gateway, after.captured) == (
        before_state.status, before_state.pending, before_state.gateway, before_state.captured)
    again = proc.handle_input("p1", late, NOW)  # the same stale reply, delivered again
    assert again.ignored == "orphan_already_handled" and again.events == [] and again.calls == []
    assert REGISTRY.get_sample_value("paystream_gateway_orphan_charges_total") == before + 1


def test_a_repeated_reply_to_the_latest_call_is_a_duplicate_not_an_orphan_charge() -> None:
    # The executor is at-least-once: the same reply under the payment's latest key can come
    # twice. That is no orphan charge (chaos worker-kill runs logged dozens of false alarms).
    from prometheus_client import REGISTRY

    from paystream.core.machine import GatewayOperation, GatewayReply, ReplyStatus

    proc, _ = processor()
    out = proc.handle_command(create("p2"), NOW)
    key = out.calls[0].idempotency_key
    captured = GatewayReply(operation=GatewayOperation.AUTHORIZE, idempotency_key=key, status=ReplyStatus.CAPTURED,
                            gateway_ref="ch_1", amount_authorized=1500, amount_captured=1500)
    assert proc.handle_input("p2", captured, NOW).events  # applied
    before = REGISTRY.get_sample_value("paystream_gateway_orphan_charges_total") or 0.0
    again = proc.handle_input("p2", captured, NOW)
    assert again.ignored == "stale_reply" and again.events == []
    assert (REGISTRY.get_sample_value("paystream_gateway_orphan_charges_total") or 0.0) == before


def test_a_redelivered_authorization_reply_after_a_refund_started_is_no_orphan_charge() -> None:
    # The alarm of the chaos rebalance runs: `authorize-0` answered "captured" again after the
    # payment had started a refund (attempt 1). The old test compared with the latest attempt
    # of any operation and took it for an orphan; nothing was charged twice.
    from prometheus_client import REGISTRY

    from paystream.core.machine import GatewayOperation, GatewayReply, ReplyStatus

    proc, payments = processor()
    out = proc.handle_command(create("p3"), NOW)
    key = out.calls[0].idempotency_key
    captured = GatewayReply(operation=GatewayOperation.AUTHORIZE, idempotency_key=key, status=ReplyStatus.CAPTURED,
                            gateway_ref="ch_1", amount_authorized=1500, amount_captured=1500)
    proc.handle_input("p3", captured, NOW)
    refund = command("p3", cmds.RefundPayment(refund_id="r1", amount=500), command_id="c-r1")
    out = proc.handle_command(refund, NOW)
    assert [c.operation for c in out.calls] == [GatewayOperation.REFUND]
    before = REGISTRY.get_sample_value("paystream_gateway_orphan_charges_total") or 0.0
    again = proc.handle_input("p3", captured, NOW)
    assert again.ignored == "stale_reply" and again.events == [] and again.calls == []
    assert (REGISTRY.get_sample_value("paystream_gateway_orphan_charges_total") or 0.0) == before
    state = PaymentRecord.from_json(payments["p3"]).state
    assert state is not None and state.orphans == ()
