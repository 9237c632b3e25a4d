"""The walking skeleton end to end on the real stack: Avro commands from a plain
confluent-kafka producer → worker → payment.events (read_committed) → sink → Postgres."""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
import pytest

from tests.support.kafka_tools import Collector, OrderServiceProducer, create_cmd, envelope

# token → (expected terminal event, expected final status)
MIX = {
    "tok_visa": ("PaymentSucceeded", "succeeded"),
    "tok_mastercard": ("PaymentSucceeded", "succeeded"),
    "tok_decline_insufficient_funds": ("PaymentFailed", "failed"),
    "tok_decline_expired_card": ("PaymentFailed", "failed"),
    "tok_decline_fraud": ("PaymentFailed", "failed"),
    "tok_3ds": ("PaymentRequiresAction", "requires_action"),
}


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def check_sequences(events: list[dict[str, Any]]) -> None:
    """I5: per payment, sequence is 1..n with no gap or repeat; event ids unique."""
    seqs = [e["sequence"] for e in events]
    assert seqs == list(range(1, len(events) + 1)), seqs
    assert len({e["event_id"] for e in events}) == len(events)


def pg_rows(dsn: str, payment_ids: list[str]) -> tuple[dict[str, tuple[Any, ...]], dict[str, int]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT payment_id, status, amount, captured, refunded, last_sequence FROM payments "
            "WHERE payment_id = ANY(%s)", (payment_ids,)).fetchall()
        counts = conn.execute(
            "SELECT payment_id, count(*), count(DISTINCT event_id) FROM payment_events WHERE payment_id = ANY(%s) "
            "GROUP BY payment_id", (payment_ids,)).fetchall()
    return {r[0]: r[1:] for r in rows}, {c[0]: c[1] for c in counts if c[1] == c[2]}


def wait_pg(dsn: str, expected: dict[str, int],
            timeout: float = 60) -> tuple[dict[str, tuple[Any, ...]], dict[str, int]]:
    deadline = time.monotonic() + timeout
    rows, counts = {}, {}
    while time.monotonic() < deadline:
        rows, counts = pg_rows(dsn, list(expected))
        if counts == expected and all(rows.get(p, (None,) * 5)[4] == n for p, n in expected.items()):
            break
        time.sleep(0.5)
    return rows, counts


def test_mixed_payments_flow_to_events_and_postgres(worker, sink, producer: OrderServiceProducer,
                                                    collector: Collector, pg_dsn: str) -> None:
    sent: dict[str, tuple[str, dict[str, Any]]] = {}
    for i in range(4):
        for token in MIX:
            pid = uid("e2e")
            sent[pid] = (token, producer.send(create_cmd(pid, amount=1000 + i, token=token)))
    producer.flush()

    assert collector.wait_terminal({p: {c["command_id"]} for p, (_, c) in sent.items()}, timeout=90)
    collector.poll(1.0)  # anything extra that would break "exactly one" shows up now

    for pid, (token, cmd) in sent.items():
        events = collector.by_payment[pid]
        check_sequences(events)
        assert events[0]["_type"] == "PaymentCreated"
        terminal = [e for e in events if e["_type"] == MIX[token][0]]
        assert len(terminal) == 1, (token, [e["_type"] for e in events])
        assert terminal[0]["causation_command_id"] == cmd["command_id"]
        assert events[-1]["status"] == MIX[token][1]
        # CloudEvents binary-mode headers on every event
        h = events[-1]["_headers"]
        assert h["ce_id"].decode() == events[-1]["event_id"] and h["ce_specversion"] == b"1.0"
        assert h["ce_type"].decode() == f"io.paystream.{events[-1]['_type']}"

    # I7: Postgres holds every event exactly once and the current state of each payment.
    expected = {pid: len(collector.by_payment[pid]) for pid in sent}
    rows, counts = wait_pg(pg_dsn, expected)
    assert counts == expected
    for pid, (token, cmd) in sent.items():
        status, amount, captured, refunded, last_seq = rows[pid]
        assert status == MIX[token][1]
        assert amount == cmd["command"]["amount"]
        assert last_seq == expected[pid]
        assert captured == (amount if status == "succeeded" else 0) and refunded == 0


def test_manual_capture_partial_refunds_in_order(worker, sink, producer: OrderServiceProducer,
                                                 collector: Collector, pg_dsn: str) -> None:
    pid = uid("life")
    create = producer.send(create_cmd(pid, amount=10_000, currency="EUR", capture_method="manual"))
    # Sent back to back: the capture must wait for the authorization, the refunds for the capture.
    capture = producer.send(envelope(pid, "CapturePayment", {"amount": 7_000, "currency": "EUR"}))
    r1 = producer.send(envelope(pid, "RefundPayment", {"refund_id": "r1", "amount": 3_000, "currency": None,
                                                      "reason": None}))
    r2 = producer.send(envelope(pid, "RefundPayment", {"refund_id": "r2", "amount": 4_000, "currency": None,
                                                      "reason": None}))
    over = producer.send(envelope(pid, "RefundPayment", {"refund_id": "r3", "amount": 1, "currency": None,
                                                        "reason": None}))
    producer.flush()
    ids = {pid: {c["command_id"] for c in (create, capture, r1, r2, over)}}
    assert collector.wait_terminal(ids, timeout=60)
    events = collector.by_payment[pid]
    check_sequences(events)
    types = [e["_type"] for e in events]
    assert types == ["PaymentCreated", "PaymentAuthorized", "PaymentCaptured", "PaymentSucceeded",
                     "RefundProcessed", "RefundProcessed", "CommandRejected"], types
    assert events[-1]["event"][1]["reason"] == "payment_not_refundable"  # nothing left: status refunded
    totals = events[-2]["totals"][1]
    assert (totals["captured"], totals["refunded"]) == (7_000, 7_000)  # I3 at the edge
    assert events[-2]["status"] == "refunded"
    rows, _ = wait_pg(pg_dsn, {pid: len(events)})
    assert rows[pid][0] == "refunded" and rows[pid][2:4] == (7_000, 7_000)


def test_duplicate_command_id_is_acknowledged_without_new_events(worker, producer: OrderServiceProducer,
                                                                 collector: Collector) -> None:
    pid = uid("dup")
    cmd = create_cmd(pid)
    producer.send(cmd)
    producer.send(dict(cmd, issued_at=cmd["issued_at"] + 5))  # a retry by the sender: same id and parameters
    reused = create_cmd(pid, amount=5, command_id=cmd["command_id"])  # same id, other parameters
    producer.send(reused)
    producer.flush()
    assert collector.wait(lambda c: any(e["_type"] == "CommandRejected" for e in c.by_payment[pid]), 60)
    collector.poll(2.0)
    types = [e["_type"] for e in collector.by_payment[pid]]
    assert types.count("PaymentCreated") == 1 and types.count("PaymentSucceeded") == 1, types
    rejected = [e for e in collector.by_payment[pid] if e["_type"] == "CommandRejected"]
    assert [e["event"][1]["reason"] for e in rejected] == ["idempotency_key_reused"]
    check_sequences(collector.by_payment[pid])


@pytest.mark.parametrize(("amount", "currency", "reason"), [
    (-5, "USD", "invalid_amount"),
    (0, "USD", "invalid_amount"),
    (100, "XYZ", "unknown_currency"),
    (100, "usd", "unknown_currency"),
])
def test_invalid_commands_are_rejected_with_a_reason(worker, producer: OrderServiceProducer, collector: Collector,
                                                     amount: int, currency: str, reason: str) -> None:
    pid = uid("bad")
    cmd = producer.send(create_cmd(pid, amount=amount, currency=currency))
    producer.flush()
    assert collector.wait_terminal({pid: {cmd["command_id"]}}, 60)
    [event] = collector.by_payment[pid]
    assert event["_type"] == "CommandRejected" and event["event"][1]["reason"] == reason
    assert event["causation_command_id"] == cmd["command_id"] and event["sequence"] == 1


def test_cancel_before_capture_and_capture_after_cancel_is_rejected(worker, sink, producer: OrderServiceProducer,
                                                                    collector: Collector, pg_dsn: str) -> None:
    pid = uid("cancel")
    create = producer.send(create_cmd(pid, amount=2_500, currency="JPY", capture_method="manual"))
    cancel = producer.send(envelope(pid, "CancelPayment", {"reason": "customer_changed_mind"}))
    late = producer.send(envelope(pid, "CapturePayment", {"amount": None, "currency": None}))
    wrong_currency = producer.send(envelope(uid("cur"), "CapturePayment", {"amount": 1, "currency": "EUR"}))
    producer.flush()
    ids = {pid: {c["command_id"] for c in (create, cancel, late)}}
    assert collector.wait_terminal(ids, 60)
    events = collector.by_payment[pid]
    check_sequences(events)
    assert [e["_type"] for e in events] == ["PaymentCreated", "PaymentAuthorized", "PaymentCanceled",
                                            "CommandRejected"]
    assert events[2]["event"][1]["released"] == 2_500 and events[2]["status"] == "canceled"
    assert events[3]["event"][1]["reason"] == "payment_not_capturable"
    assert collector.wait_terminal({wrong_currency["payment_id"]: {wrong_currency["command_id"]}}, 30)
    rows, _ = wait_pg(pg_dsn, {pid: 4})
    assert rows[pid][0] == "canceled"


def test_many_payments_interleaved_keep_their_own_order(worker, producer: OrderServiceProducer,
                                                         collector: Collector) -> None:
    """Commands of 40 payments interleaved on the wire: each payment's own order holds (I2, I5)."""
    pids = [uid("interleave") for _ in range(40)]
    ids: dict[str, set[str]] = {p: set() for p in pids}
    for p in pids:
        ids[p].add(producer.send(create_cmd(p, amount=3_000, capture_method="manual"))["command_id"])
    for p in pids:
        ids[p].add(producer.send(envelope(p, "CapturePayment", {"amount": 2_000, "currency": None}))["command_id"])
    for p in pids:
        ids[p].add(producer.send(envelope(p, "RefundPayment", {"refund_id": "r", "amount": 500, "currency": None,
                                                              "reason": None}))["command_id"])
    producer.flush()
    assert collector.wait_terminal(ids, 120)
    collector.poll(1.0)
    counts = collector.terminal_causations()
    for p in pids:
        events = collector.by_payment[p]
        check_sequences(events)
        assert [e["_type"] for e in events] == ["PaymentCreated", "PaymentAuthorized", "PaymentCaptured",
                                                "PaymentSucceeded", "RefundProcessed"]
        assert all(counts[c] == 1 for c in ids[p])
        t = events[-1]["totals"][1]
        assert t["refunded"] <= t["captured"] <= t["authorized"] <= t["amount"]  # I3
