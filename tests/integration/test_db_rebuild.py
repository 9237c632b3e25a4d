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
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
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
    """The session sink's committed offset per partition (-1001, OFFSET_INVALID: none yet)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "paystream-sink", "enable.auto.commit": False})
    try:
        tps = [TopicPartition(t, p) for t, parts in ends.items() for p in parts]
        return {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(tps, timeout=10)}
    finally:
        consumer.close()


def records_below(bootstrap: str, starts: dict[tuple[str, int], int],
                  ends: dict[str, dict[int, int]]) -> set[tuple[str, int]]:
    """The partitions among ``starts`` where a read_committed consumer still gets a record at an
    offset in ``[start, end)`` (start -1001: the partition's beginning), or cannot tell yet (a
    transaction still open). Transaction markers and aborted records are never delivered, so a
    sink has nothing to store (nor, before its first record, to commit) for them."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"rb-probe-{uuid.uuid4().hex[:8]}",
                         "isolation.level": "read_committed", "enable.auto.commit": False,
                         "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    pending, found = set(starts), set()
    try:
        consumer.assign([TopicPartition(t, p, s if s >= 0 else OFFSET_BEGINNING) for (t, p), s in starts.items()])
        deadline = time.monotonic() + 10
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                key = (msg.topic() or "", msg.partition() or 0)
                if key not in pending:
                    continue
                err, offset = msg.error(), msg.offset() or 0
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(key)
                        if offset < ends[key[0]][key[1]]:
                            found.add(key)  # stopped below the end: an open transaction, ask again later
                    continue
                pending.discard(key)
                if offset < ends[key[0]][key[1]]:
                    found.add(key)
            for tp in consumer.position([TopicPartition(t, p) for t, p in pending]):
                if tp.offset >= ends[tp.topic][tp.partition]:
                    pending.discard((tp.topic, tp.partition))  # only markers/aborted records were left
        return found | pending
    finally:
        consumer.close()


def wait_sink_reached(bootstrap: str, ends: dict[str, dict[int, int]], timeout: float = 120) -> None:
    """Until the session sink has committed every record below ``ends``: its committed offset is
    at the end of each partition, or nothing a read_committed consumer would get lies between
    it and the end. No committed offset (-1001) means 'not yet' for a partition with records,
    and is all there is for an empty one."""
    deadline = time.monotonic() + timeout
    while True:
        got = sink_committed(bootstrap, ends)
        behind = {k: v for k, v in got.items() if v < ends[k[0]][k[1]]}
        if behind:
            behind = {k: got[k] for k in records_below(bootstrap, behind, ends)}
        if not behind:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the session sink did not reach the rebuild's end offsets {ends}: {behind}")
        time.sleep(0.5)


def past_cut(ends: dict[int, int], partition: int, offset: int) -> bool:
    """Whether a row written from (partition, offset) comes from a record at or past the cut."""
    return offset >= ends.get(partition, 0)


#: Every table the events source fills, by its key.
KEYS: dict[str, tuple[str, ...]] = {
    "payment_events": ("event_id",),
    "payments": ("payment_id",),
    "refunds": ("refund_id",),
    "payment_transactions": ("idempotency_key", "kind"),
}
#: The only columns left out of the comparison: they cannot be equal by construction.
DROP: dict[str, set[str]] = {
    "payment_events": {"stored_at"},  # DEFAULT now(): when the row was inserted, not what it says
    "payment_transactions": {"id"},  # an identity: the insertion order, which interleaves partitions differently
}

Table = dict[tuple[Any, ...], dict[str, Any]]


def read_tables(dsn: str) -> dict[str, Table]:
    """Every row of every table in ``KEYS`` (all columns but ``DROP``), by key, read in one
    REPEATABLE READ transaction: one snapshot, while the session sink goes on writing."""
    out: dict[str, Table] = {}
    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for table, key in KEYS.items():
            cur = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table)))
            names = [d.name for d in cur.description or []]
            keep = [n for n in names if n not in DROP.get(table, set())]
            rows_: Table = {}
            for r in cur.fetchall():
                row = dict(zip(names, r, strict=True))
                k = tuple(row[c] for c in key)
                assert k not in rows_, f"{table}: two rows with the key {k}"
                rows_[k] = {c: row[c] for c in keep}
            out[table] = rows_
    return out


def assert_same(table: str, original: Table, rebuilt: Table, skip: set[tuple[Any, ...]]) -> int:
    """The two tables are equal, row for row and column for column, but for the keys in
    ``skip``; returns how many rows were compared."""
    a = {k: v for k, v in original.items() if k not in skip}
    b = {k: v for k, v in rebuilt.items() if k not in skip}
    lost = sorted(set(b) - set(a), key=repr)  # in the history, not in what the running sink wrote
    extra = sorted(set(a) - set(b), key=repr)  # written by the running sink, not in the history
    differ = sorted((k for k in set(a) & set(b) if a[k] != b[k]), key=repr)
    details = [f"{len(lost)} missing from the original, e.g. {[b[k] for k in lost[:3]]}",
               f"{len(extra)} only in the original, e.g. {[a[k] for k in extra[:3]]}",
               f"{len(differ)} differ, e.g. " + str([{c: (a[k][c], b[k][c]) for c in a[k] if a[k][c] != b[k][c]}
                                                    for k in differ[:3]])]
    assert not (lost or extra or differ), f"{table}: " + "; ".join(details)
    return len(a)


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
    rebuilt_dsn = make_conninfo(pg_dsn, dbname=rebuilt_db)

    # A second run refuses the database it filled.
    again = subprocess.run([sys.executable, "-m", "paystream.cli", "db", "rebuild", "--database", rebuilt_db,
                            "--only", "events"], env=sink.env, cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode != 0 and "not empty" in again.stderr

    wait_sink_reached(bootstrap, ends)
    original = read_tables(pg_dsn)
    rebuilt = read_tables(rebuilt_dsn)
    for table, count in report["counts"].items():
        assert len(rebuilt[table]) == count, table

    # The cut: the running sink went on past the end offsets the rebuild captured (the session
    # worker's reconciler, other traffic). Rows it wrote or moved on from records past the cut
    # say so in their own kafka_partition/kafka_offset; nothing else is left out.
    ev_ends, tx_ends = ends["payment.events"], ends[REPLIES]
    for table, cut in (("payment_events", ev_ends), ("payment_transactions", tx_ends)):
        assert not [r for r in rebuilt[table].values() if past_cut(cut, r["kafka_partition"], r["kafka_offset"])]
    late_events = {k for k, r in original["payment_events"].items()
                   if past_cut(ev_ends, r["kafka_partition"], r["kafka_offset"])}
    late_tx = {k for k, r in original["payment_transactions"].items()
               if past_cut(tx_ends, r["kafka_partition"], r["kafka_offset"])}
    moved = {original["payment_events"][k]["payment_id"] for k in late_events}
    assert not moved & set(mine)

    # payment_events and payment_transactions: every row but those written (or, for a
    # reconcile row, updated) from a record past the cut.
    n_events = assert_same("payment_events", original["payment_events"], rebuilt["payment_events"], late_events)
    assert n_events == report["events"]
    n_tx = assert_same("payment_transactions", original["payment_transactions"], rebuilt["payment_transactions"],
                       late_tx)
    # payments: every row but those of payments with an event past the cut.
    n_payments = assert_same("payments", original["payments"], rebuilt["payments"], {(p,) for p in moved})
    # refunds: likewise, and without refund ids several payments used: the table's key is refund_id
    # alone (test_end_to_end reuses "r"), so which payment's row is kept depends on how partitions
    # interleave, in the running sink and in a rebuild alike (docs/operations.md, limits).
    owners: dict[str, set[str]] = {}
    for r in original["payment_events"].values():
        refund_id = (r["payload"].get("event") or {}).get("refund_id")
        if r["event_type"] in ("RefundProcessed", "RefundFailed") and refund_id:
            owners.setdefault(refund_id, set()).add(r["payment_id"])
    skip_refunds = {(rid,) for rid, pids in owners.items() if len(pids) > 1 or pids & moved}
    n_refunds = assert_same("refunds", original["refunds"], rebuilt["refunds"], skip_refunds)
    print(f"compared rows: payment_events {n_events}, payment_transactions {n_tx} ({len(late_tx)} past the cut), "
          f"payments {n_payments} ({len(moved)} moved on), refunds {n_refunds} ({len(skip_refunds)} left out)")

    # Not vacuous: this test's payments, their transactions and refunds were among the compared rows.
    assert {(p,) for p in mine} <= set(rebuilt["payments"])
    ops = {r["operation"] for r in rebuilt["payment_transactions"].values() if r["payment_id"] in mine}
    assert ops >= {"authorize", "capture", "cancel", "refund"}
    got = {p: rebuilt["payments"][(p,)]["status"] for p in mine}
    assert sorted(got.values()) == sorted(["succeeded", "partially_refunded", "failed", "canceled", "refunded"])
    refunds = sorted((r["amount"], r["status"]) for r in rebuilt["refunds"].values() if r["payment_id"] in mine)
    assert refunds == [(200, "succeeded"), (1000, "succeeded"), (2000, "succeeded")]
