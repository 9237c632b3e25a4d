"""payment.events → PostgreSQL.

Runs as its own consumer group in its own process, so a Postgres outage never stops payment
processing. Each batch is written in one Postgres transaction and the Kafka offsets are
committed only after that transaction commits: a crash in between replays the batch, and
the writes are idempotent (``event_id`` is the primary key; a current-state row only moves
to a newer ``sequence``), so a replay never duplicates nor moves state backwards (I7).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaError, Message, Producer
from prometheus_client import Counter, Gauge, Histogram

from streams import topics
from streams.avro import AvroCodec, DecodeError, RegistryUnavailable

log = logging.getLogger("paystream.sink")

ROWS = Counter("paystream_sink_events_total", "Events written to Postgres (replays counted once)")
BATCHES = Counter("paystream_sink_batches_total", "Batches committed to Postgres")
BATCH_SECONDS = Histogram("paystream_sink_batch_seconds", "Time to write and commit one batch")
PG_UP = Gauge("paystream_sink_postgres_up", "1 while the sink can write to Postgres")
RETRIES = Counter("paystream_sink_retries_total", "Batch writes retried after a Postgres error")
LAG = Gauge("paystream_sink_lag_messages", "Messages in payment.events not yet stored", ["partition"])
DEAD = Counter("paystream_sink_deadletters_total", "Undecodable events sent to the dead-letter topic")


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


@dataclass(frozen=True)
class StoredEvent:
    """One decoded event with where it came from."""

    value: dict[str, Any]
    partition: int
    offset: int

    @property
    def event_type(self) -> str:
        name: str = self.value["event"][0]
        return name.rsplit(".", 1)[-1]

    @property
    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = self.value["event"][1]
        return body


INSERT_EVENT = """
INSERT INTO payment_events (event_id, payment_id, sequence, event_type, occurred_at, causation_command_id,
                            status, payload, kafka_partition, kafka_offset)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (event_id) DO NOTHING
"""

UPSERT_PAYMENT = """
INSERT INTO payments AS p (payment_id, order_id, customer_id, status, currency, amount, authorized, captured,
                           refunded, gateway, gateway_ref, decline_code, last_sequence, created_at, updated_at)
VALUES (%(payment_id)s, %(order_id)s, %(customer_id)s, %(status)s, %(currency)s, %(amount)s, %(authorized)s,
        %(captured)s, %(refunded)s, %(gateway)s, %(gateway_ref)s, %(decline_code)s, %(sequence)s, %(at)s, %(at)s)
ON CONFLICT (payment_id) DO UPDATE SET
    order_id = COALESCE(EXCLUDED.order_id, p.order_id),
    customer_id = COALESCE(EXCLUDED.customer_id, p.customer_id),
    status = EXCLUDED.status,
    currency = COALESCE(EXCLUDED.currency, p.currency),
    amount = COALESCE(EXCLUDED.amount, p.amount),
    authorized = EXCLUDED.authorized,
    captured = EXCLUDED.captured,
    refunded = EXCLUDED.refunded,
    gateway = COALESCE(EXCLUDED.gateway, p.gateway),
    gateway_ref = COALESCE(EXCLUDED.gateway_ref, p.gateway_ref),
    decline_code = COALESCE(EXCLUDED.decline_code, p.decline_code),
    last_sequence = EXCLUDED.last_sequence,
    updated_at = EXCLUDED.updated_at
WHERE p.last_sequence < EXCLUDED.last_sequence
"""

UPSERT_REFUND = """
INSERT INTO refunds AS r (refund_id, payment_id, amount, currency, status, reason, last_sequence, updated_at)
VALUES (%(refund_id)s, %(payment_id)s, %(amount)s, %(currency)s, %(status)s, %(reason)s, %(sequence)s, %(at)s)
ON CONFLICT (refund_id) DO UPDATE SET
    status = EXCLUDED.status, reason = EXCLUDED.reason,
    last_sequence = EXCLUDED.last_sequence, updated_at = EXCLUDED.updated_at
WHERE r.last_sequence < EXCLUDED.last_sequence
"""


def payment_row(ev: StoredEvent) -> dict[str, Any] | None:
    v, body = ev.value, ev.body
    if v.get("status") is None:
        return None  # not about a payment's state (a rejected command for an unknown payment, a method event)
    totals = v.get("totals") or {}
    if isinstance(totals, tuple):  # a union of records read with its record name
        totals = totals[1]
    return {
        "payment_id": v["payment_id"],
        "order_id": v.get("order_id"),
        "customer_id": body.get("customer_id") if ev.event_type == "PaymentCreated" else None,
        "status": v["status"],
        "currency": totals.get("currency"),
        "amount": totals.get("amount"),
        "authorized": totals.get("authorized", 0),
        "captured": totals.get("captured", 0),
        "refunded": totals.get("refunded", 0),
        "gateway": body.get("gateway") if isinstance(body.get("gateway"), str) else None,
        "gateway_ref": body.get("gateway_ref"),
        "decline_code": body.get("decline_code"),
        "sequence": v["sequence"],
        "at": _ts(v["occurred_at"]),
    }


def refund_row(ev: StoredEvent) -> dict[str, Any] | None:
    if ev.event_type not in ("RefundProcessed", "RefundFailed"):
        return None
    body = ev.body
    return {
        "refund_id": body["refund_id"],
        "payment_id": ev.value["payment_id"],
        "amount": body["amount"],
        "currency": body["currency"],
        "status": "succeeded" if ev.event_type == "RefundProcessed" else "failed",
        "reason": body.get("reason"),
        "sequence": ev.value["sequence"],
        "at": _ts(ev.value["occurred_at"]),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return {"type": value[0].rsplit(".", 1)[-1], **_jsonable(value[1])}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def write_batch(conn: psycopg.Connection, events: Iterable[StoredEvent]) -> int:
    """Write one batch in one transaction; returns how many events were new."""
    events = list(events)
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            INSERT_EVENT,
            [
                (
                    e.value["event_id"], e.value["payment_id"], e.value["sequence"], e.event_type,
                    _ts(e.value["occurred_at"]), e.value.get("causation_command_id"), e.value.get("status"),
                    json.dumps(_jsonable(e.value)), e.partition, e.offset,
                )
                for e in events
            ],
            returning=False,
        )
        new = cur.rowcount if cur.rowcount >= 0 else len(events)
        payments = [r for r in map(payment_row, events) if r]
        if payments:
            cur.executemany(UPSERT_PAYMENT, payments)
        refunds = [r for r in map(refund_row, events) if r]
        if refunds:
            cur.executemany(UPSERT_REFUND, refunds)
    return new


class EventSink:
    """Consume payment.events (read_committed) and store every event exactly once."""

    def __init__(
        self,
        bootstrap: str,
        dsn: str,
        codec: AvroCodec,
        group: str = "paystream-sink",
        batch_size: int = 500,
        batch_wait_s: float = 0.2,
    ) -> None:
        self.dsn = dsn
        self.codec = codec
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
            }
        )
        self.deadletters = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
        self.conn: psycopg.Connection | None = None
        self.stored = 0

    def _connect(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(self.dsn, connect_timeout=5)
        return self.conn

    def _dead_letter(self, msg: Message, error: str) -> None:
        DEAD.inc()
        self.deadletters.produce(
            topics.DEADLETTER,
            key=msg.key(),
            value=msg.value(),
            headers=[
                ("ps_error", error.encode()[:500]),
                ("ps_source_topic", (msg.topic() or "").encode()),
                ("ps_source_partition", str(msg.partition()).encode()),
                ("ps_source_offset", str(msg.offset()).encode()),
                ("ps_stage", b"sink"),
            ],
        )
        self.deadletters.flush(10)

    def _decode(self, msgs: list[Message]) -> list[StoredEvent]:
        out = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", err)
                continue
            while True:
                try:
                    value = self.codec.decode(msg.value())
                    break
                except DecodeError as exc:
                    self._dead_letter(msg, str(exc))
                    value = None
                    break
                except RegistryUnavailable:
                    log.warning("schema registry unavailable; retrying")
                    time.sleep(1)
            if value is not None:
                out.append(StoredEvent(value, msg.partition() or 0, msg.offset() or 0))
        return out

    def _store(self, events: list[StoredEvent], stop: Callable[[], bool]) -> bool:
        """Write until it succeeds (Postgres may be down); False if asked to stop first."""
        backoff = 0.2
        while True:
            try:
                t0 = time.monotonic()
                new = write_batch(self._connect(), events)
                BATCH_SECONDS.observe(time.monotonic() - t0)
                PG_UP.set(1)
                ROWS.inc(new)
                BATCHES.inc()
                self.stored += new
                return True
            except psycopg.OperationalError as exc:
                PG_UP.set(0)
                RETRIES.inc()
                log.warning("postgres unavailable (%s); retrying in %.1fs", str(exc).strip()[:120], backoff)
                if self.conn is not None:
                    self.conn.close()
                    self.conn = None
                if stop():
                    return False
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _update_lag(self) -> None:
        for tp in self.consumer.assignment():
            try:
                _, high = self.consumer.get_watermark_offsets(tp, timeout=1, cached=True)
                pos = self.consumer.position([tp])[0].offset
                if high >= 0 and pos >= 0:
                    LAG.labels(str(tp.partition)).set(max(high - pos, 0))
            except Exception:  # lag is informative only
                pass

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        self.consumer.subscribe([topics.EVENTS])
        try:
            while not stop():
                msgs = self.consumer.consume(num_messages=self.batch_size, timeout=self.batch_wait_s)
                if not msgs:
                    self._update_lag()
                    continue
                events = self._decode(msgs)
                if events and not self._store(events, stop):
                    return  # stopping before Postgres took the batch: offsets stay uncommitted
                self.consumer.commit(asynchronous=False)
                self._update_lag()
        finally:
            self.consumer.close()
            if self.conn is not None:
                self.conn.close()
