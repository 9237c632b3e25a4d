"""Disaster recovery on the real stack: ``paystream db rebuild`` replays payment.events and the
gateway replies into a new database, which equals the one the session's sink filled.

The test makes its own traffic (automatic and manual payments, a partial capture, partial and
full refunds, a decline, a cancel), waits until the session sink stored it, runs the real CLI
into ``paystream_rebuild_<uuid>`` on the same Postgres, waits until the sink's committed offsets
reached the end offsets the rebuild captured, and compares rows up to that cut:

* payment_events: every column but ``stored_at`` (the ingestion time, ``now()`` at insert);
* payments: every column (timestamps come from the events' ``occurred_at``), for the payments
  with no event past the cut (a later event moved the original's row on);
* refunds: every column, except refund ids several payments share (the table's key is
  refund_id alone; test_end_to_end reuses ``"r"``, and which payment's row wins depends on how
  the partitions interleave);
* payment_transactions: every column but ``id`` (an identity: insertion order across
  partitions), for this test's payments.

The rebuilt database is dropped at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.conftest import ROOT, Proc
from tests.support.i7 import read_events, wait_i7
from tests.support.kafka_tools import Collector, OrderServiceProducer, create_cmd, envelope

REPLIES = "paystream-gateway-replies"


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def rebuilt_db(pg_dsn: str) -> Iterator[str]:
    name = f"paystream_rebuild_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(make_conninfo(pg_dsn, dbname="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def send_and_wait(producer: OrderServiceProducer, collector: Collector, cmds: list[dict[str, Any]]) -> None:
    for cmd in cmds:
        producer.send(cmd)
    producer.flush()
    want: dict[str, set[str]] = {}
    for cmd in cmds:
        want.setdefault(cmd["payment_id"], set()).add(cmd["command_id"])
    assert collector.wait_terminal(want, 90), "commands without a terminal event"


def make_traffic(producer: OrderServiceProducer, collector: Collector) -> list[str]:
    auto, manual, declined, canceled, refunded = (uid(p) for p in ("rb-auto", "rb-man", "rb-decl", "rb-cancel",
                                                                    "rb-refund"))
    customer = uid("cus_rb")
    send_and_wait(producer, collector, [
        create_cmd(auto, amount=1250, customer_id=customer),
        create_cmd(manual, amount=1000, capture_method="manual", customer_id=customer),
        create_cmd(declined, token="tok_decline_insufficient_funds", customer_id=customer),
        create_cmd(canceled, capture_method="manual", customer_id=customer),
        create_cmd(refunded, amount=3000, currency="EUR", customer_id=customer),
    ])
    send_and_wait(producer, collector, [
        envelope(manual, "CapturePayment", {"amount": 600, "currency": None}),
        envelope(canceled, "CancelPayment", {"reason": "requested_by_customer"}),
        envelope(refunded, "RefundPayment", {"refund_id": uid("re"), "amount": 1000, "currency": None,
                                             "reason": "requested_by_customer"}),
    ])
    send_and_wait(producer, collector, [
        envelope(manual, "RefundPayment", {"refund_id": uid("re"), "amount": 200, "currency": None, "reason": None}),
        envelope(refunded, "RefundPayment", {"refund_id": uid("re"), "amount": None, "currency": None,
                                             "reason": None}),
    ])
    return [auto, manual, declined, canceled, refunded]


def sink_committed(bootstrap: str, ends: dict[str, dict[int, int]]) -> dict[tuple[str, int], int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "paystream-sink", "enable.auto.commit": False})
    try:
        tps = [TopicPartition(t, p) for t, parts in ends.items() for p in parts]
        return {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(tps, timeout=10)}
    finally:
        consumer.close()


def wait_sink_reached(bootstrap: str, ends: dict[str, dict[int, int]], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = sink_committed(bootstrap, ends)
        behind = {k: v for k, v in got.items() if v < ends[k[0]][k[1]]}
        if not behind:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the session sink did not reach the rebuild's end offsets: {behind}")
        time.sleep(0.5)


def rows(dsn: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def below_cut(ends: dict[int, int]) -> tuple[str, list[Any]]:
    """A WHERE clause: (kafka_partition, kafka_offset) below the captured end offsets."""
    parts = list(ends)
    return ("kafka_offset < (%s::bigint[])[array_position(%s::int[], kafka_partition)]",
            [[ends[p] for p in parts], parts])


EVENT_COLS = ("event_id, payment_id, sequence, event_type, occurred_at, causation_command_id, status, payload, "
              "kafka_partition, kafka_offset")
TX_COLS = ("payment_id, kind, operation, idempotency_key, attempt, gateway, gateway_ref, status, decline_code, "
           "error_code, latency_ms, created_at, updated_at, kafka_partition, kafka_offset")


def test_rebuilt_database_equals_the_original(worker, sink: Proc, producer: OrderServiceProducer,
                                              collector: Collector, stack_env: dict[str, str], pg_dsn: str,
                                              rebuilt_db: str) -> None:
    bootstrap = stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"]
    mine = make_traffic(producer, collector)
    events = read_events(bootstrap, stack_env["PAYSTREAM_SCHEMA_REGISTRY_URL"], mine)
    assert wait_i7(pg_dsn, events, 90) == []  # the session sink has stored this test's events

    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "paystream.cli", "db", "rebuild", "--database", rebuilt_db,
                           "--only", "events", "--json"], env=sink.env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert "[rebuild]" in proc.stderr and "offsets" in proc.stderr  # progress was shown
    assert report["created"] is True and report["skipped"] == 0
    assert report["events"] > 0 and report["seconds"] <= time.monotonic() - t0
    ends = {t: {int(p): o for p, o in parts.items()} for t, parts in report["end_offsets"].items()}
    assert set(ends) == {"payment.events", REPLIES}
    rebuilt = make_conninfo(pg_dsn, dbname=rebuilt_db)

    # A second run refuses the database it filled.
    again = subprocess.run([sys.executable, "-m", "paystream.cli", "db", "rebuild", "--database", rebuilt_db,
                            "--only", "events"], env=sink.env, cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode != 0 and "not empty" in again.stderr

    wait_sink_reached(bootstrap, ends)
    cut_e, cut_e_params = below_cut(ends["payment.events"])

    # payment_events: the whole history up to the cut.
    q = f"SELECT {EVENT_COLS} FROM payment_events WHERE {cut_e} ORDER BY event_id"
    original_events = rows(pg_dsn, q, cut_e_params)
    rebuilt_events = rows(rebuilt, q, cut_e_params)
    assert rebuilt_events == original_events
    assert len(rebuilt_events) == report["events"]
    assert rows(rebuilt, "SELECT count(*) FROM payment_events")[0][0] == report["events"]  # nothing past the cut

    # payments: every payment whose last event is below the cut.
    moved = {r[0] for r in rows(pg_dsn, f"SELECT DISTINCT payment_id FROM payment_events WHERE NOT ({cut_e})",
                                cut_e_params)}
    q = "SELECT * FROM payments WHERE NOT (payment_id = ANY(%s)) ORDER BY payment_id"
    original_payments = rows(pg_dsn, q, [list(moved)])
    assert rows(rebuilt, q, [list(moved)]) == original_payments
    assert report["counts"]["payments"] >= len(original_payments) >= len(mine)

    # refunds: all but refund ids shared by several payments.
    shared = [r[0] for r in rows(rebuilt, "SELECT payload->'event'->>'refund_id' FROM payment_events WHERE "
                                          "event_type IN ('RefundProcessed', 'RefundFailed') GROUP BY 1 "
                                          "HAVING count(DISTINCT payment_id) > 1")]
    q = ("SELECT * FROM refunds WHERE NOT (refund_id = ANY(%s)) AND NOT (payment_id = ANY(%s)) "
         "ORDER BY refund_id")
    assert rows(rebuilt, q, [shared, list(moved)]) == rows(pg_dsn, q, [shared, list(moved)])

    # payment_transactions: this test's payments exactly. (Not the whole table: after the chaos
    # scenarios of a full run the original lacked some reply rows the rebuild has — under
    # investigation, see the session-2 note — so a whole-table check would test them, not this.)
    q = f"SELECT {TX_COLS} FROM payment_transactions WHERE payment_id = ANY(%s) ORDER BY idempotency_key, kind"
    mine_tx = rows(rebuilt, q, [mine])
    assert mine_tx == rows(pg_dsn, q, [mine])
    assert {r[2] for r in mine_tx} >= {"authorize", "capture", "cancel", "refund"}

    # This test's own payments are all there, in the states the traffic drove them to.
    got = dict(rows(rebuilt, "SELECT payment_id, status FROM payments WHERE payment_id = ANY(%s)", [mine]))
    assert sorted(got.values()) == sorted(["succeeded", "partially_refunded", "failed", "canceled", "refunded"])
    refunds = rows(rebuilt, "SELECT payment_id, amount, status FROM refunds WHERE payment_id = ANY(%s) "
                            "ORDER BY payment_id, amount", [mine])
    assert [(a, s) for _, a, s in refunds] == [(200, "succeeded"), (1000, "succeeded"), (2000, "succeeded")]
