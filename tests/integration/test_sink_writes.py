"""write_batch on a fresh, migrated database: a replayed batch changes nothing, a payments row
only moves forward, reconcile rows keep the newest answer, refunds of two payments that use the
same refund id are two rows (F14), and a sink connection that pinged first still commits its
batches (the ping must not leave a transaction open)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sinks.migrate import migrate
from sinks.postgres import EventSink, StoredEvent, StoredReply, transaction_row, write_batch
from sinks.schema import scratch_database


@pytest.fixture(scope="module")
def db(stack_env: dict[str, str]) -> Iterator[str]:
    with scratch_database(stack_env["PAYSTREAM_POSTGRES_DSN"], "ps_sink_test") as dsn:
        migrate(dsn)
        yield dsn


def event(pid: str, seq: int, status: str, captured: int = 0, etype: str = "PaymentSucceeded") -> StoredEvent:
    body: dict[str, Any] = {"amount": captured, "currency": "USD", "gateway": "simulated", "gateway_ref": "ch_1"}
    value = {"event_id": f"{pid}-{seq}", "payment_id": pid, "order_id": "o1", "sequence": seq,
             "occurred_at": 1_700_000_000_000 + seq, "causation_command_id": "c1", "status": status,
             "totals": {"currency": "USD", "amount": 1000, "authorized": 1000, "captured": captured, "refunded": 0},
             "event": (f"io.paystream.events.{etype}", body)}
    return StoredEvent(value, 0, seq)


def reply(pid: str, kind: str, status: str, at: int, offset: int) -> StoredReply:
    value = {"kind": kind, "payment_id": pid,
             "input": {"idempotency_key": f"ps-{pid}-authorize-0", "status": status, "gateway_ref": "ch_1"},
             "meta": {"gateway": "simulated", "operation": "authorize", "attempt": 0, "latency_ms": 3,
                      "replied_at": at}}
    return StoredReply(transaction_row(value, 1, offset), 1, offset)


def rows(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()  # type: ignore[arg-type]


def test_replayed_batch_is_stored_once_and_state_only_moves_forward(db: str) -> None:
    batch = [event("p1", 1, "processing", etype="PaymentCreated"), event("p1", 2, "succeeded", 1000)]
    replies = [reply("p1", "reply", "captured", 1_700_000_000_100, 5)]
    with psycopg.connect(db, autocommit=True) as conn:
        assert write_batch(conn, batch, replies) == 2
        assert write_batch(conn, batch, replies) == 0  # a crash before the offset commit replays it
        write_batch(conn, [batch[0]])  # an old event alone does not move the row back
    assert rows(db, "SELECT count(*) FROM payment_events WHERE payment_id = 'p1'") == [(2,)]
    assert rows(db, "SELECT status, captured, last_sequence FROM payments WHERE payment_id = 'p1'") == [
        ("succeeded", 1000, 2)]
    assert rows(db, "SELECT kind, status FROM payment_transactions WHERE payment_id = 'p1'") == [
        ("reply", "captured")]


def test_reply_keeps_the_first_answer_and_reconcile_the_newest(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        write_batch(conn, [], [reply("p2", "reply", "unknown", 1000, 1), reply("p2", "reply", "captured", 2000, 2)])
        write_batch(conn, [], [reply("p2", "reconcile", "pending", 3000, 3),
                               reply("p2", "reconcile", "captured", 4000, 4)])
        write_batch(conn, [], [reply("p2", "reconcile", "pending", 3000, 3)])  # an older one, replayed
    got = rows(db, "SELECT kind, status, kafka_offset FROM payment_transactions WHERE payment_id = 'p2' "
                   "ORDER BY kind")
    assert got == [("reconcile", "captured", 4), ("reply", "unknown", 1)]


def refund_event(pid: str, seq: int, refund_id: str, amount: int, etype: str) -> StoredEvent:
    ev = event(pid, seq, "partially_refunded", 1000, etype=etype)
    body = {"refund_id": refund_id, "amount": amount, "currency": "USD", "reason": None}
    return StoredEvent({**ev.value, "event": (f"io.paystream.events.{etype}", body)}, 0, seq)


def test_refunds_of_two_payments_with_the_same_refund_id_are_two_rows(db: str) -> None:
    """The refund id is the merchant's, unique within its payment: a second payment's refund "r"
    is its own row, and neither moves the other's (keyed by refund_id alone, the second one
    was lost and its status written over the first's: F14)."""
    with psycopg.connect(db, autocommit=True) as conn:
        write_batch(conn, [refund_event("p4", 5, "r", 300, "RefundProcessed"),
                           refund_event("p5", 7, "r", 400, "RefundFailed")])
        write_batch(conn, [refund_event("p4", 5, "r", 300, "RefundProcessed")])  # replayed
    assert rows(db, "SELECT payment_id, refund_id, amount, status, last_sequence FROM refunds "
                    "WHERE payment_id IN ('p4', 'p5') ORDER BY payment_id") == [
        ("p4", "r", 300, "succeeded", 5), ("p5", "r", 400, "failed", 7)]


def test_a_sink_that_pinged_first_still_commits(db: str, stack_env: dict[str, str]) -> None:
    sink = EventSink(stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"], db, codec=None, group="ps-sink-write-test")  # type: ignore[arg-type]
    try:
        assert sink.ping()
        assert sink._store([event("p3", 1, "processing", etype="PaymentCreated")], [], lambda: False)
        # Seen from another connection: committed, not pending in an open transaction.
        assert rows(db, "SELECT count(*) FROM payment_events WHERE payment_id = 'p3'") == [(1,)]
        assert sink.status.readiness()[1] == ["no partitions assigned to the sink's consumer"]
    finally:
        sink._drop_connection()
        sink.consumer.close()
