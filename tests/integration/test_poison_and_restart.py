"""Bad input never stops the worker, and a restarted worker recovers its state from the
changelog: nothing lost, nothing duplicated."""

from __future__ import annotations

import json
import struct
import time
import uuid

from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from tests.integration.test_end_to_end import check_sequences, uid, wait_pg
from tests.support.kafka_tools import AVRO, DEADLETTER, EVENTS, Collector, create_cmd, envelope


def test_poison_messages_go_to_the_dead_letter_topic_and_the_worker_keeps_going(worker, producer, stack_env):
    dead = Collector(stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"], stack_env["PAYSTREAM_SCHEMA_REGISTRY_URL"],
                     topic=DEADLETTER)
    events = Collector(stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"], stack_env["PAYSTREAM_SCHEMA_REGISTRY_URL"])
    good = producer.encode(create_cmd("poison-x"))
    # An event record is valid Avro but of another subject's schema: wrong shape for a command.
    event_ser = AvroSerializer(producer.registry, (AVRO / "payment_event.avsc").read_text(),
                               conf={"auto.register.schemas": False})
    wrong_schema = event_ser({"event_id": "e", "payment_id": "p", "sequence": 1, "occurred_at": 1,
                              "event": {"-type": "io.paystream.events.PaymentMethodRemoved", "customer_id": "c"}},
                             SerializationContext(EVENTS, MessageField.VALUE))
    poison = {
        "not_avro": b"{\"amount\": 100}",
        "unknown_schema_id": b"\x00" + struct.pack(">I", 987654) + good[5:],
        "truncated": good[:12],
        "wrong_schema": wrong_schema,
        "empty": b"",
    }
    keys = {}
    for name, value in poison.items():
        key = f"poison-{name}-{uuid.uuid4().hex[:6]}".encode()
        keys[key] = name
        producer.send_raw(key, value)
    pid = uid("after-poison")
    cmd = producer.send(create_cmd(pid))
    producer.flush()

    assert dead.wait(lambda c: {m.key() for m in c.raw} >= set(keys), 60), [m.key() for m in dead.raw]
    for msg in dead.raw:
        if msg.key() in keys:
            headers = dict(msg.headers())
            assert headers["ps_stage"] in (b"decode", b"route")
            assert headers["ps_error"]  # says why
            assert msg.value() == poison[keys[msg.key()]]  # the original bytes, untouched
    assert events.wait_terminal({pid: {cmd["command_id"]}}, 60)  # still processing
    assert worker.alive
    dead.close()
    events.close()


def test_command_keyed_differently_from_its_payment_is_dead_lettered(worker, producer, stack_env):
    dead = Collector(stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"], stack_env["PAYSTREAM_SCHEMA_REGISTRY_URL"],
                     topic=DEADLETTER)
    cmd = create_cmd(uid("rekey"))
    producer.send_raw(b"some-other-key", producer.encode(cmd))
    producer.flush()
    assert dead.wait(lambda c: any(m.key() == b"some-other-key" for m in c.raw), 60)
    msg = next(m for m in dead.raw if m.key() == b"some-other-key")
    assert dict(msg.headers())["ps_reason"] == b"key_mismatch"
    dead.close()


def test_ids_holding_a_card_number_are_dead_lettered_redacted_never_echoed(worker, producer, stack_env):
    """A command_id or payment_id built around a card number cannot go on any event (I6): the
    command is dead-lettered with its bytes withheld, and the payment gets no event at all."""
    pan = "3530111333300000"  # JCB test card
    dead = Collector(stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"], stack_env["PAYSTREAM_SCHEMA_REGISTRY_URL"],
                     topic=DEADLETTER)
    events = Collector(stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"], stack_env["PAYSTREAM_SCHEMA_REGISTRY_URL"])
    by_command_id = create_cmd(uid("pan-cmd"))
    by_command_id["command_id"] = f"cmd-{pan}-{uuid.uuid4().hex[:6]}"
    by_payment_id = create_cmd(f"pan-{pan}-{uuid.uuid4().hex[:4]}")
    producer.send(by_command_id)
    producer.send(by_payment_id)
    after = uid("after-pan")
    cmd = producer.send(create_cmd(after))
    producer.flush()
    assert events.wait_terminal({after: {cmd["command_id"]}}, 60)

    def guarded(c: Collector) -> list:
        return [m for m in c.raw if dict(m.headers()).get("ps_reason", b"").startswith(b"unpublishable_")]

    assert dead.wait(lambda c: {dict(m.headers())["ps_reason"] for m in guarded(c)}
                     >= {b"unpublishable_command_id", b"unpublishable_payment_id"}, 60)
    for msg in guarded(dead):
        headers = dict(msg.headers())
        assert headers["ps_redacted"] == b"sensitive_data_rejected" and msg.value() == b""
        assert pan.encode() not in (msg.key() or b"") + b"".join(headers.values())
    assert by_command_id["payment_id"] not in events.by_payment and by_payment_id["payment_id"] not in events.by_payment
    dead.close()
    events.close()


def test_restart_recovers_state_from_the_changelog(worker, sink, producer, collector, pg_dsn):
    # Before the restart: a payment authorized for manual capture, one succeeded.
    manual, auto = uid("restart-manual"), uid("restart-auto")
    c1 = producer.send(create_cmd(manual, amount=4_200, capture_method="manual"))
    c2 = producer.send(create_cmd(auto, amount=1_234))
    producer.flush()
    assert collector.wait_terminal({manual: {c1["command_id"]}, auto: {c2["command_id"]}}, 60)

    worker.stop()
    assert not worker.alive
    # While it is down: commands that need the state built before the restart, and new ones.
    capture = producer.send(envelope(manual, "CapturePayment", {"amount": None, "currency": None}))
    refund = producer.send(envelope(auto, "RefundPayment", {"refund_id": "rf-1", "amount": 234, "currency": None,
                                                           "reason": None}))
    fresh = {uid("restart-new"): None for _ in range(5)}
    for pid in fresh:
        fresh[pid] = producer.send(create_cmd(pid))["command_id"]
    producer.flush()

    t0 = time.monotonic()
    worker.start()
    ready = worker.wait_ready()
    ids = {manual: {capture["command_id"]}, auto: {refund["command_id"]}, **{p: {c} for p, c in fresh.items()}}
    assert collector.wait_terminal(ids, 180), json.dumps({p: [e["_type"] for e in collector.by_payment[p]]
                                                         for p in ids})
    collector.poll(2.0)
    print(f"worker restart to ready: {ready:.1f}s (total {time.monotonic() - t0:.1f}s)")

    assert [e["_type"] for e in collector.by_payment[manual]][-2:] == ["PaymentCaptured", "PaymentSucceeded"]
    assert collector.by_payment[manual][-1]["totals"][1]["captured"] == 4_200
    assert [e["_type"] for e in collector.by_payment[auto]][-1] == "RefundProcessed"
    # The sequences continue where they stopped (1..n, no restart from 1): the state came back
    # from the changelog.
    assert [e["sequence"] for e in collector.by_payment[manual]] == [1, 2, 3, 4]
    assert [e["sequence"] for e in collector.by_payment[auto]] == [1, 2, 3, 4]
    for pid in fresh:
        check_sequences(collector.by_payment[pid])
    # Nothing duplicated: one terminal event per command.
    counts = collector.terminal_causations()
    assert all(counts[c] == 1 for cs in ids.values() for c in cs), counts
    rows, _ = wait_pg(pg_dsn, {manual: 4, auto: 4})
    assert rows[manual][0] == "succeeded" and rows[auto][0] == "partially_refunded"


def test_worker_started_under_load_applies_every_command(worker, producer, collector):
    """Commands arriving while a worker starts (table recovery → ready) are all applied.

    faust-streaming was seen to skip a partition's first message across that switch in about
    one restart out of three; the offset guard in agents/payments.py reads skipped offsets back.
    """
    worker.stop()
    worker.start()
    ids = {}
    for _ in range(300):
        pid = uid("startup-load")
        ids[pid] = {producer.send(create_cmd(pid))["command_id"]}
    producer.flush()
    assert collector.wait_terminal(ids, 180), [p for p in ids if not collector.by_payment[p]][:10]
    collector.poll(1.0)
    counts = collector.terminal_causations()
    assert all(counts[c] == 1 for cs in ids.values() for c in cs)
    for pid in ids:
        check_sequences(collector.by_payment[pid])
