"""The processor with fraud checks on: the check request it emits, queued commands, verdicts
(through the same ``verdict_input`` the payments agent uses), sequences. Plain dicts, no Kafka."""

from __future__ import annotations

import base64
from typing import Any

from agents.payments import timeout_verdict
from agents.processor import PaymentProcessor, PaymentRecord, unseal_call, verdict_input
from paystream.core import commands as cmds
from paystream.core import events as evs
from paystream.core import fraud as fr
from paystream.core.machine import FraudHoldStatus, GatewayOperation
from paystream.core.methods import MethodStatus, SavedMethod
from paystream.security.crypto import KeyRing
from tables import codec

NOW = 1_700_000_000_000
RING = KeyRing.load("k1:" + base64.b64encode(bytes(range(32))).decode())


def command(payment_id: str, body: cmds.CommandBody, command_id: str) -> cmds.Command:
    return cmds.Command(command_id=command_id, payment_id=payment_id, issued_at=NOW, origin="test", body=body)


def create(payment_id: str, *, saved: str | None = None) -> cmds.Command:
    body = cmds.CreatePayment(order_id="o", customer_id="cus_1", amount=1500, currency="EUR",
                              payment_method_token=None if saved else "tok_visa", saved_method_id=saved,
                              customer_ip="203.0.113.7", customer_email="A@Example.com ", shipping_country="de")
    return command(payment_id, body, f"c-{payment_id}")


def processor(enabled: bool = True) -> tuple[PaymentProcessor, dict[str, Any], dict[str, Any]]:
    payments: dict[str, Any] = {}
    methods: dict[str, Any] = {}
    return PaymentProcessor(payments, {}, methods=methods, sealer=RING, fraud_enabled=enabled), payments, methods


def fraud_verdict(payment_id: str, decision: fr.Decision, *, partition: int = 2,
                  shadow: fr.Decision | None = None) -> fr.FraudVerdict:
    outcome = fr.FraudOutcome(decision, ("customer_count_1m",) if decision is not fr.Decision.ALLOW else (), 20, "v1")
    cand = None if shadow is None else fr.FraudOutcome(shadow, ("card_count_1m",), 20, "v2-candidate")
    return fr.FraudVerdict(payment_id=payment_id, command_id=f"c-{payment_id}", partition=partition,
                           observed_at=NOW, outcome=outcome, shadow=cand)


def test_create_sends_a_check_and_no_gateway_call() -> None:
    proc, _, _ = processor()
    out = proc.handle_command(create("p1"), NOW, partition=2)
    assert out.calls == [] and [type(e.body) for e in out.events] == [evs.PaymentCreated]
    (check,) = out.fraud_checks
    assert check.payment_id == "p1" and check.command_id == "c-p1" and check.partition == 2
    assert check.observed_at == NOW
    f = check.features
    assert (f.customer_id, f.amount, f.currency, f.ip, f.shipping_country) == ("cus_1", 1500, "EUR", "203.0.113.7",
                                                                                 "DE")
    assert f.email_hash == fr.email_hash("a@example.com") and f.fingerprint is None
    assert check.stages == (fr.Dimension.CUSTOMER, fr.Dimension.IP)
    assert "tok_visa" not in codec.encode(check).decode()  # the token never goes into the check


def test_fraud_off_sends_no_check() -> None:
    proc, _, _ = processor(enabled=False)
    out = proc.handle_command(create("p1"), NOW)
    assert out.fraud_checks == [] and [c.operation for c in out.calls] == [GatewayOperation.AUTHORIZE]


def test_a_saved_methods_fingerprint_goes_into_the_check() -> None:
    proc, _, methods = processor()
    method = SavedMethod(method_id="pm_1", customer_id="cus_1", gateway="simulated",
                         sealed_token=RING.encrypt("tok_visa", "payment_method:pm_1"), status=MethodStatus.ACTIVE,
                         fingerprint="fp_9")
    methods["pm_1"] = codec.to_plain(method)
    out = proc.handle_command(create("p1", saved="pm_1"), NOW)
    (check,) = out.fraud_checks
    assert check.features.fingerprint == "fp_9"
    assert check.stages == (fr.Dimension.CUSTOMER, fr.Dimension.FINGERPRINT, fr.Dimension.IP)


def test_commands_queue_during_the_check_and_run_after_a_review() -> None:
    proc, payments, _ = processor()
    proc.handle_command(create("p1"), NOW, partition=2)
    cancel = proc.handle_command(command("p1", cmds.CancelPayment("changed_mind"), "c-cancel"), NOW + 1, 2)
    assert cancel.queued and cancel.events == []
    out = proc.handle_input("p1", verdict_input(fraud_verdict("p1", fr.Decision.REVIEW, shadow=fr.Decision.BLOCK)),
                            NOW + 2, 2)
    kinds = [(type(e.body).__name__, e.causation_command_id, e.sequence) for e in out.events]
    assert kinds == [("FraudDecision", "c-p1", 2), ("FraudDecision", "c-p1", 3), ("PaymentCanceled", "c-cancel", 4)]
    active, shadow = out.events[0].body, out.events[1].body
    assert isinstance(active, evs.FraudDecision) and active.decision is evs.FraudOutcome.REVIEW and not active.shadow
    assert active.rules == ("customer_count_1m",)
    assert isinstance(shadow, evs.FraudDecision) and shadow.shadow and shadow.decision is evs.FraudOutcome.BLOCK
    assert out.calls == []
    record = PaymentRecord.from_json(payments["p1"])
    assert record.state is not None and record.state.status.value == "canceled" and record.queue == []


def test_allow_then_release_paths_call_the_gateway_once() -> None:
    proc, payments, _ = processor()
    proc.handle_command(create("p1"), NOW)
    out = proc.handle_input("p1", verdict_input(fraud_verdict("p1", fr.Decision.ALLOW)), NOW + 1)
    assert [e.body.AVRO_NAME for e in out.events] == ["FraudDecision"]
    assert [c.idempotency_key for c in out.calls] == ["ps-p1-authorize-0"]
    # Sealed on the gateway-calls topic; the executor opens it just before calling the gateway.
    assert out.calls[0].payment_method_token != "tok_visa"
    assert unseal_call(RING, out.calls[0]).payment_method_token == "tok_visa"
    again = proc.handle_input("p1", verdict_input(fraud_verdict("p1", fr.Decision.ALLOW)), NOW + 2)
    assert again.ignored == "stale_fraud_verdict" and again.events == [] and again.calls == []

    proc.handle_command(create("p2"), NOW)
    proc.handle_input("p2", verdict_input(fraud_verdict("p2", fr.Decision.REVIEW)), NOW + 1)
    out = proc.handle_command(command("p2", cmds.ReleasePayment("analyst-7"), "c-rel"), NOW + 5)
    assert out.events == [] and [c.idempotency_key for c in out.calls] == ["ps-p2-authorize-0"]
    assert PaymentRecord.from_json(payments["p2"]).state.fraud is None  # type: ignore[union-attr]


def test_block_fails_and_a_reject_outside_review_is_rejected() -> None:
    proc, _, _ = processor()
    proc.handle_command(create("p1"), NOW)
    out = proc.handle_input("p1", verdict_input(fraud_verdict("p1", fr.Decision.BLOCK)), NOW + 1)
    assert [e.body.AVRO_NAME for e in out.events] == ["FraudDecision", "PaymentFailed"] and out.calls == []
    failed = out.events[1]
    assert isinstance(failed.body, evs.PaymentFailed) and failed.body.decline_code == "fraud_suspected"
    assert failed.status == "failed"
    out = proc.handle_command(command("p1", cmds.RejectPayment("analyst-7"), "c-rej"), NOW + 2)
    assert isinstance(out.events[0].body, evs.CommandRejected)
    assert out.events[0].body.reason == "payment_not_in_review"


def test_timeout_verdict_is_a_review_for_the_held_create_only() -> None:
    proc, payments, _ = processor()
    proc.handle_command(create("p1"), NOW, partition=3)
    record = PaymentRecord.from_json(payments["p1"])
    v = timeout_verdict(record, "v1")
    assert v is not None and v.command_id == "c-p1" and v.partition == 3 and v.decision is fr.Decision.REVIEW
    assert v.outcome.rules == ("fraud_check_timeout",)
    out = proc.handle_input("p1", verdict_input(v), NOW + 30_000, 3)
    assert [e.body.AVRO_NAME for e in out.events] == ["FraudDecision"]
    state = PaymentRecord.from_json(payments["p1"]).state
    assert state is not None and state.fraud is not None and state.fraud.status is FraudHoldStatus.REVIEW
    assert timeout_verdict(PaymentRecord.from_json(payments["p1"]), "v1") is None  # in review: no more timeouts
    late = proc.handle_input("p1", verdict_input(fraud_verdict("p1", fr.Decision.ALLOW)), NOW + 31_000)
    assert late.ignored == "stale_fraud_verdict" and late.calls == []
