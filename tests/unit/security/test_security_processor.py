"""The processor with saved methods and encryption at rest, on plain dicts (no Kafka)."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

from agents.processor import PaymentProcessor, unseal_call
from paystream.core import commands as cmds
from paystream.core import events as evs
from paystream.core.sensitive import find_pan
from paystream.security.crypto import KeyRing, is_envelope

NOW = 1_700_000_000_000
TOKEN = "pm_card_visa_SECRET_TOKEN_01"
RING = KeyRing.load("k1:" + base64.b64encode(bytes(range(32))).decode())


def _command(payment_id: str, body: cmds.CommandBody, command_id: str) -> cmds.Command:
    return cmds.Command(command_id=command_id, payment_id=payment_id, issued_at=NOW, origin="test", body=body)


def _add(method_id: str = "pm_1", customer: str = "cus_1") -> cmds.Command:
    body = cmds.AddPaymentMethod(customer_id=customer, gateway="simulated", gateway_token=TOKEN, brand="visa",
                                 last4="4242", exp_month=1, exp_year=2031)
    return _command(method_id, body, f"add-{method_id}")


def _create(payment_id: str, method_id: str, customer: str = "cus_1") -> cmds.Command:
    body = cmds.CreatePayment(order_id="o1", customer_id=customer, amount=500, currency="EUR",
                              saved_method_id=method_id)
    return _command(payment_id, body, f"create-{payment_id}")


def _processor() -> tuple[PaymentProcessor, dict[str, Any], dict[str, Any]]:
    payments: dict[str, Any] = {}
    methods: dict[str, Any] = {}
    return PaymentProcessor(payments, {}, methods=methods, sealer=RING), payments, methods


def _types(out: Any) -> list[str]:
    return [evs.event_type(e.body) for e in out.events]


def test_add_seals_the_token_in_the_table_and_the_vault_record_only() -> None:
    proc, payments, methods = _processor()
    out = proc.handle_command(_add(), NOW)
    assert _types(out) == ["PaymentMethodAdded"]
    assert out.events[0].sequence == 1 and out.events[0].status is None
    stored = methods["pm_1"]
    assert is_envelope(stored["sealed_token"]) and TOKEN not in json.dumps(stored)
    assert out.vault[0]["sealed_token"] == stored["sealed_token"] and TOKEN not in json.dumps(out.vault)
    assert TOKEN not in repr(out.events) and TOKEN not in json.dumps(payments)


def test_saved_method_pays_with_its_token_and_the_payment_state_keeps_it_sealed() -> None:
    proc, payments, _ = _processor()
    proc.handle_command(_add(), NOW)
    out = proc.handle_command(_create("pay_1", "pm_1"), NOW)
    assert _types(out) == ["PaymentCreated"]
    (call,) = out.calls
    # Sealed on the gateway-calls topic (never in clear there); the executor opens it.
    assert is_envelope(call.payment_method_token or "") and TOKEN not in repr(call)
    assert unseal_call(RING, call).payment_method_token == TOKEN and call.gateway == "simulated"
    state_token = payments["pay_1"]["state"]["payment_method_token"]
    assert is_envelope(state_token) and TOKEN not in json.dumps(payments)


def test_one_off_tokens_are_sealed_in_the_table_too() -> None:
    proc, payments, _ = _processor()
    body = cmds.CreatePayment(order_id="o", customer_id="c", amount=100, currency="USD",
                              payment_method_token="tok_visa")
    out = proc.handle_command(_command("pay_2", body, "c1"), NOW)
    assert is_envelope(out.calls[0].payment_method_token or "")
    assert unseal_call(RING, out.calls[0]).payment_method_token == "tok_visa"
    assert "tok_visa" not in json.dumps(payments)


def test_customer_mismatch_removed_and_unknown_methods_are_rejected() -> None:
    proc, _, _ = _processor()
    proc.handle_command(_add(), NOW)
    out = proc.handle_command(_create("pay_x", "pm_1", customer="cus_other"), NOW)
    assert out.events[0].body == evs.CommandRejected("customer_mismatch", out.events[0].body.detail,  # type: ignore[union-attr]
                                                     "CreatePayment")
    assert out.calls == []
    out = proc.handle_command(_create("pay_y", "pm_unknown"), NOW)
    assert out.events[0].body.reason == "payment_method_not_found"  # type: ignore[union-attr]
    removed = proc.handle_command(_command("pm_1", cmds.RemovePaymentMethod("cus_1"), "rm-1"), NOW)
    assert _types(removed) == ["PaymentMethodRemoved"] and removed.events[0].sequence == 2
    assert len(removed.detaches) == 1 and removed.vault[0]["sealed_token"] is None
    out = proc.handle_command(_create("pay_z", "pm_1"), NOW)
    assert out.events[0].body.reason == "payment_method_removed"  # type: ignore[union-attr]


def test_method_and_payment_ids_do_not_collide() -> None:
    proc, _, _ = _processor()
    proc.handle_command(_add("pm_9"), NOW)
    out = proc.handle_command(_create("pm_9", "pm_9"), NOW)
    assert out.events[0].body.reason == "payment_already_exists"  # type: ignore[union-attr]
    assert out.events[0].sequence == 2  # one sequence per key on payment.events (I5)


def test_card_data_is_rejected_and_never_published() -> None:
    proc, _, methods = _processor()
    body = cmds.AddPaymentMethod(customer_id="c", gateway="simulated", gateway_token="4242424242424242")
    out = proc.handle_command(_command("pm_card", body, "a1"), NOW)
    assert out.events[0].body.reason == "sensitive_data_rejected"  # type: ignore[union-attr]
    assert not find_pan(repr(out.events)) and "pm_card" not in methods and out.vault == []


def test_undecodable_detail_is_redacted() -> None:
    proc, _, _ = _processor()
    out = proc.handle_undecodable("pay_u", "c", "capture_method: not a symbol: '4111 1111 1111 1111'", NOW)
    assert not find_pan(repr(out.events))


def test_without_keys_methods_cannot_be_saved() -> None:
    proc = PaymentProcessor({}, {}, methods={}, sealer=None)
    out = proc.handle_command(_add(), NOW)
    assert out.events[0].body.reason == "encryption_unavailable"  # type: ignore[union-attr]


def test_a_new_payment_seals_its_token_once_and_an_inline_call_opens_it_from_memory() -> None:
    proc, payments, _ = _processor()
    body = cmds.CreatePayment(order_id="o", customer_id="c", amount=100, currency="USD",
                              payment_method_token=TOKEN)
    out = proc.handle_command(_command("pay_3", body, "c3"), NOW)
    (call,) = out.calls
    # The call carries the state's envelope (one encryption, the same key and associated data).
    state_token = payments["pay_3"]["state"]["payment_method_token"]
    assert call.payment_method_token == state_token and is_envelope(state_token)
    assert unseal_call(RING, call).payment_method_token == TOKEN  # the executor can open it
    assert proc.unseal_inline(call).payment_method_token == TOKEN
    # At the batch's end the plaintexts are dropped; opening then decrypts, with the same answer.
    proc.forget_opened()
    assert proc._opened == {}
    assert proc.unseal_inline(call).payment_method_token == TOKEN


def test_unseal_inline_does_not_trust_an_envelope_it_did_not_seal() -> None:
    proc, _, _ = _processor()
    other, _, _ = _processor()
    body = cmds.CreatePayment(order_id="o", customer_id="c", amount=100, currency="USD",
                              payment_method_token=TOKEN)
    (call,) = other.handle_command(_command("pay_4", body, "c4"), NOW).calls
    assert proc._opened == {}
    assert proc.unseal_inline(call).payment_method_token == TOKEN  # decrypted, not remembered
    sealed = call.payment_method_token or ""
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    forged = dataclasses.replace(call, payment_method_token=tampered)
    assert proc.unseal_inline(forged).payment_method_token == tampered  # does not open: left sealed


def test_the_remembered_plaintexts_are_bounded() -> None:
    proc, _, _ = _processor()
    for n in range(5000):
        body = cmds.CreatePayment(order_id="o", customer_id="c", amount=100, currency="USD",
                                  payment_method_token=f"tok_{n}")
        proc.handle_command(_command(f"pay_{n}", body, f"c{n}"), NOW)
    assert 0 < len(proc._opened) <= 4096
