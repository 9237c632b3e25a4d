"""I7 as a check: Postgres holds every event of ``payment.events`` exactly once, and each
``payments`` row equals the last state-bearing event of its payment (status, totals, sequence).

Kafka is the reference: events are read with a read_committed consumer of their own (or taken
from a ``Collector``); nothing here imports the sink's code, so the check does not trust what
it checks.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import psycopg
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

EVENTS = "payment.events"


def _totals(value: dict[str, Any]) -> dict[str, Any] | None:
    totals = value.get("totals")
    if isinstance(totals, tuple):  # a union read with its record name
        totals = totals[1]
    return totals


def read_events(bootstrap: str, registry_url: str, payment_ids: Iterable[str],
                timeout: float = 30.0) -> dict[str, list[dict[str, Any]]]:
    """Every committed event of these payments in ``payment.events``, from the beginning up to
    the end offsets of now, in offset order per payment."""
    wanted = set(payment_ids)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"i7-{uuid.uuid4()}",
                         "isolation.level": "read_committed", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    de = AvroDeserializer(SchemaRegistryClient({"url": registry_url}), return_record_name=True)
    ctx = SerializationContext(EVENTS, MessageField.VALUE)
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    try:
        parts = consumer.list_topics(EVENTS, timeout=10).topics[EVENTS].partitions
        ends = {}
        for p in parts:
            _, high = consumer.get_watermark_offsets(TopicPartition(EVENTS, p), timeout=10)
            ends[p] = high
        consumer.assign([TopicPartition(EVENTS, p, 0) for p in parts])
        deadline = time.monotonic() + timeout
        idle = 0
        # read_committed may end a partition on a transaction marker the consumer never hands
        # out: done when every position reached its end, or after a second with nothing new.
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"payment.events not read to its end within {timeout}s")
            msgs = consumer.consume(1000, 0.5)
            idle = 0 if msgs else idle + 1
            for msg in msgs:
                if msg.error() is not None:
                    continue
                value = de(msg.value(), ctx)
                if value["payment_id"] in wanted:
                    out[value["payment_id"]].append(value)
            positions = consumer.position([TopicPartition(EVENTS, p) for p in parts])
            if idle >= 2 or all(tp.offset >= ends[tp.partition] for tp in positions if ends[tp.partition] > 0):
                break
    finally:
        consumer.close()
    return dict(out)


def i7_problems(dsn: str, events: Mapping[str, list[dict[str, Any]]]) -> list[str]:
    """What breaks I7 for these payments (empty: Postgres matches payment.events)."""
    problems: list[str] = []
    ids = list(events)
    with psycopg.connect(dsn) as conn:
        stored = conn.execute(
            "SELECT payment_id, event_id, sequence, event_type FROM payment_events WHERE payment_id = ANY(%s)",
            (ids,)).fetchall()
        rows = {r[0]: r[1:] for r in conn.execute(
            "SELECT payment_id, status, currency, amount, authorized, captured, refunded, last_sequence "
            "FROM payments WHERE payment_id = ANY(%s)", (ids,)).fetchall()}
    in_pg: dict[str, Counter[str]] = defaultdict(Counter)
    pg_seq: dict[str, tuple[int, str]] = {}
    for pid, event_id, seq, etype in stored:
        in_pg[pid][event_id] += 1
        pg_seq[event_id] = (seq, etype)
    for pid, evs in events.items():
        in_kafka = Counter(e["event_id"] for e in evs)
        for event_id, n in in_kafka.items():
            if n != 1:
                problems.append(f"{pid}: event {event_id} is {n} times in payment.events")
            if in_pg[pid][event_id] != 1:
                problems.append(f"{pid}: event {event_id} is {in_pg[pid][event_id]} times in Postgres")
            else:
                ev = next(e for e in evs if e["event_id"] == event_id)
                etype = ev["event"][0].rsplit(".", 1)[-1]
                if pg_seq[event_id] != (ev["sequence"], etype):
                    problems.append(f"{pid}: event {event_id} stored as {pg_seq[event_id]}, "
                                    f"is {(ev['sequence'], etype)}")
        extra = set(in_pg[pid]) - set(in_kafka)
        if extra:
            problems.append(f"{pid}: Postgres has events not in payment.events: {sorted(extra)}")
        stateful = [e for e in evs if e.get("status") is not None]
        if not stateful:
            if pid in rows:
                problems.append(f"{pid}: payments row without a state-bearing event")
            continue
        last = max(stateful, key=lambda e: e["sequence"])
        t = _totals(last) or {}
        want = (last["status"], t.get("currency"), t.get("amount"), t.get("authorized", 0), t.get("captured", 0),
                t.get("refunded", 0), last["sequence"])
        got = rows.get(pid)
        if got is None:
            problems.append(f"{pid}: no payments row (last event #{last['sequence']} {last['status']})")
        elif tuple(got) != want:
            problems.append(f"{pid}: payments row {tuple(got)} != last event {want}")
    return problems


def wait_i7(dsn: str, events: Mapping[str, list[dict[str, Any]]], timeout: float = 60.0) -> list[str]:
    """Poll until Postgres matches (the sink is asynchronous); returns the remaining problems."""
    deadline = time.monotonic() + timeout
    problems = i7_problems(dsn, events)
    while problems and time.monotonic() < deadline:
        time.sleep(0.5)
        problems = i7_problems(dsn, events)
    return problems
