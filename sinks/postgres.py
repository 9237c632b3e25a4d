"""payment.events (and the internal gateway replies) → PostgreSQL.

Runs as its own consumer group in its own process, so a Postgres outage never stops payment
processing. Each batch is written in one Postgres transaction and the Kafka offsets are
committed only after that transaction commits: a crash in between replays the batch, and
the writes are idempotent (``event_id`` is the primary key; a current-state row only moves
to a newer ``sequence``), so a replay never duplicates nor moves state backwards (I7).

The same consumer reads the internal ``<app>-gateway-replies`` topic into
``payment_transactions`` (one row per gateway call attempt, unique on idempotency key and
kind), in the same batch transaction.

Liveness and readiness are kept in a ``SinkStatus`` the sink's HTTP server reads
(``sinks/server.py``): the loop's last turn, the assigned partitions, the last Postgres
write or ping.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from prometheus_client import Counter, Gauge, Histogram

from paystream.consuming import take_available
from paystream.transport import KafkaTarget, as_kafka
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
TRANSACTIONS = Counter("paystream_sink_gateway_replies_total", "Gateway replies written to payment_transactions")
LAST_COMMIT = Gauge("paystream_sink_last_commit_timestamp_seconds", "When the last batch was committed to Postgres")
PG_DOWN_SECONDS = Gauge("paystream_sink_postgres_down_seconds",
                        "How long the current Postgres outage has lasted (0 while Postgres is up)")
PING_INTERVAL_S = 5.0  # an idle sink checks Postgres this often, so /ready and the gauge stay true


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
ON CONFLICT (payment_id, refund_id) DO UPDATE SET
    status = EXCLUDED.status, reason = EXCLUDED.reason,
    last_sequence = EXCLUDED.last_sequence, updated_at = EXCLUDED.updated_at
WHERE r.last_sequence < EXCLUDED.last_sequence
"""


UPSERT_TRANSACTION = """
INSERT INTO payment_transactions AS t (payment_id, kind, operation, idempotency_key, attempt, gateway, gateway_ref,
                                       status, decline_code, error_code, latency_ms, created_at, updated_at,
                                       kafka_partition, kafka_offset, kafka_topic)
VALUES (%(payment_id)s, %(kind)s, %(operation)s, %(idempotency_key)s, %(attempt)s, %(gateway)s, %(gateway_ref)s,
        %(status)s, %(decline_code)s, %(error_code)s, %(latency_ms)s, %(at)s, %(at)s, %(partition)s, %(offset)s,
        %(topic)s)
ON CONFLICT (idempotency_key, kind) DO UPDATE SET
    gateway_ref = COALESCE(EXCLUDED.gateway_ref, t.gateway_ref),
    status = EXCLUDED.status, decline_code = EXCLUDED.decline_code, error_code = EXCLUDED.error_code,
    latency_ms = EXCLUDED.latency_ms, updated_at = EXCLUDED.updated_at,
    kafka_partition = EXCLUDED.kafka_partition, kafka_offset = EXCLUDED.kafka_offset,
    kafka_topic = EXCLUDED.kafka_topic
WHERE t.kind = 'reconcile' AND t.updated_at < EXCLUDED.updated_at
"""


class BadReply(ValueError):
    """A gateway-replies message the sink cannot read (goes to the dead-letter topic)."""


@dataclass(frozen=True)
class StoredReply:
    """One gateway reply (``agents/gateway.py``) as a payment_transactions row."""

    row: dict[str, Any]
    partition: int
    offset: int


def _attempt_from_key(key: str) -> int | None:
    tail = key.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


#: Offset-commit failures that say "not now" (the group coordinator is loading or moving, as right
#: after a broker restart, or the group is rebalancing): the batch is stored, so the commit is left
#: to the next batch's, which covers it; records read again meanwhile are stored once (idempotent rows).
COMMIT_LATER_CODES = frozenset({
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR,
    KafkaError.REQUEST_TIMED_OUT, KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID, KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._WAIT_COORD,
})


def commit_stored(consumer: Consumer, logger: logging.Logger) -> bool:
    """Commit the consumer's offsets after a stored batch; False (logged) when the broker said
    "not now" (``COMMIT_LATER_CODES``). Any other failure raises. A sink crashed here on the
    coordinator loading after a broker restart (full-size kafka-kill, session 5)."""
    try:
        consumer.commit(asynchronous=False)
        return True
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if not isinstance(err, KafkaError) or err.code() not in COMMIT_LATER_CODES:
            raise
        logger.warning("offset commit deferred to the next batch: %s", err.str())
        return False


def transaction_row(value: Any, partition: int, offset: int, timestamp_ms: int | None = None,
                    topic: str | None = None) -> dict[str, Any]:
    """Map a reply record to a row; replies written before ``meta`` existed still map (fewer columns)."""
    if not isinstance(value, dict) or value.get("kind") not in ("reply", "reconcile"):
        raise BadReply("not a gateway reply record")
    inp, meta = value.get("input"), value.get("meta") or {}
    if not isinstance(inp, dict) or not isinstance(meta, dict):
        raise BadReply("reply without an input object")
    key, status, payment_id = inp.get("idempotency_key"), inp.get("status"), value.get("payment_id")
    if not (isinstance(key, str) and isinstance(status, str) and isinstance(payment_id, str)):
        raise BadReply("reply without payment_id, idempotency_key or status")
    operation = meta.get("operation") or inp.get("operation")
    if not isinstance(operation, str):
        parts = key.rsplit("-", 2)
        operation = parts[1].split(":", 1)[0] if len(parts) == 3 else "unknown"
    at_ms = meta.get("replied_at") or timestamp_ms or 0
    attempt = meta.get("attempt")
    return {
        "payment_id": payment_id,
        "kind": value["kind"],
        "operation": operation,
        "idempotency_key": key,
        "attempt": attempt if isinstance(attempt, int) else _attempt_from_key(key),
        "gateway": meta.get("gateway"),
        "gateway_ref": inp.get("gateway_ref"),
        "status": status,
        "decline_code": inp.get("decline_code"),
        "error_code": meta.get("error_code"),
        "latency_ms": meta.get("latency_ms"),
        "at": _ts(int(at_ms)),
        "partition": partition,
        "offset": offset,
        "topic": topic,
    }


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


def write_batch(conn: psycopg.Connection, events: Iterable[StoredEvent],
                replies: Iterable[StoredReply] = ()) -> int:
    """Write one batch in one transaction; returns how many events were new."""
    events, replies = list(events), list(replies)
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
        if replies:
            cur.executemany(UPSERT_TRANSACTION, [r.row for r in replies])
    return new


@dataclass
class SinkStatus:
    """What /health and /ready report; written by the sink's loop, read by the HTTP thread."""

    max_loop_age_s: float = 30.0
    last_loop: float = field(default_factory=time.monotonic)
    assigned: frozenset[tuple[str, int]] = frozenset()
    postgres_ok: bool = False
    postgres_error: str | None = "not connected yet"
    postgres_down_since: float | None = None
    last_postgres_ok: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: where a Postgres change is reported: (ok, seconds down); None: this sink's paystream_sink_* gauges
    report_postgres: Callable[[bool, float], None] | None = field(default=None, repr=False)

    def beat(self) -> None:
        self.last_loop = time.monotonic()

    def postgres(self, ok: bool, error: str | None = None) -> None:
        now = time.monotonic()
        with self.lock:
            self.postgres_ok, self.postgres_error = ok, None if ok else (error or "unavailable")
            if ok:
                self.last_postgres_ok, self.postgres_down_since = now, None
            elif self.postgres_down_since is None:
                self.postgres_down_since = now
        down_s = 0 if ok or self.postgres_down_since is None else now - self.postgres_down_since
        if self.report_postgres is not None:
            self.report_postgres(ok, down_s)
            return
        PG_UP.set(1 if ok else 0)
        PG_DOWN_SECONDS.set(down_s)

    def health(self) -> tuple[bool, dict[str, Any]]:
        age = time.monotonic() - self.last_loop
        return age <= self.max_loop_age_s, {"loop_age_s": round(age, 3)}

    def readiness(self) -> tuple[bool, list[str]]:
        reasons = []
        alive, info = self.health()
        if not alive:
            reasons.append(f"sink loop stalled for {info['loop_age_s']:.0f}s")
        with self.lock:
            if not self.assigned:
                reasons.append("no partitions assigned to the sink's consumer")
            if not self.postgres_ok:
                reasons.append(f"postgres: {self.postgres_error}")
        return not reasons, reasons


class EventSink:
    """Consume payment.events and the gateway replies (read_committed); store each exactly once."""

    def __init__(
        self,
        bootstrap: KafkaTarget,
        dsn: str,
        codec: AvroCodec,
        group: str = "paystream-sink",
        batch_size: int = 500,
        batch_wait_s: float = 0.2,
        replies_topic: str | Sequence[str] | None = tuple(topics.replies_history("paystream")),
        status: SinkStatus | None = None,
        consumer: Consumer | None = None,
        dead_letters: bool = True,
        batch_linger_s: float = 0.2,
    ) -> None:
        """``consumer``: read with this one instead (``sinks/rebuild.py`` assigns partitions itself);
        ``dead_letters=False``: an undecodable message is only counted in ``skipped`` (a rebuild
        must not dead-letter the same message a second time)."""
        self.dsn = dsn
        # The gateway-reply topics (executor replies and inline-applied ones), read into payment_transactions.
        self.replies_topics = [replies_topic] if isinstance(replies_topic, str) else list(replies_topic or ())
        self.status = status or SinkStatus()
        self._last_ping = 0.0
        self.codec = codec
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self.batch_linger_s = batch_linger_s  # a batch leaves at most this long after its first message
        kafka = as_kafka(bootstrap)
        self.consumer = consumer or Consumer(
            kafka.librdkafka({
                "group.id": group,
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
            })
        )
        self.deadletters = (Producer(kafka.librdkafka({"enable.idempotence": True}))
                            if dead_letters else None)
        self.conn: psycopg.Connection | None = None
        self.stored = 0  # new payment_events rows
        self.replies = 0  # gateway replies written (payment_transactions upserts)
        self.skipped = 0  # undecodable messages (dead-lettered, or only counted)

    def _connect(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            # autocommit: a ping must not leave a transaction open, or the batch's
            # ``conn.transaction()`` would become a savepoint inside it and never commit.
            self.conn = psycopg.connect(self.dsn, connect_timeout=5, autocommit=True)
        return self.conn

    def _drop_connection(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def ping(self) -> bool:
        """Connect if needed and ``SELECT 1``; records the outcome (gauge, readiness)."""
        self._last_ping = time.monotonic()
        try:
            self._connect().execute("SELECT 1")
        except psycopg.Error as exc:
            self.status.postgres(False, str(exc).strip()[:200])
            self._drop_connection()
            return False
        self.status.postgres(True)
        return True

    def _dead_letter(self, msg: Message, error: str) -> None:
        self.skipped += 1
        if self.deadletters is None:
            log.warning("undecodable message %s[%s]@%s skipped: %s", msg.topic(), msg.partition(), msg.offset(),
                        error[:200])
            return
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

    def _decode_event(self, msg: Message) -> StoredEvent | None:
        while True:
            self.status.beat()
            try:
                value = self.codec.decode(msg.value())
            except DecodeError as exc:
                self._dead_letter(msg, str(exc))
                return None
            except RegistryUnavailable:
                log.warning("schema registry unavailable; retrying")
                time.sleep(1)
                continue
            return StoredEvent(value, msg.partition() or 0, msg.offset() or 0)

    def _decode_reply(self, msg: Message) -> StoredReply | None:
        try:
            value = json.loads(msg.value() or b"")
            _, ts = msg.timestamp()
            row = transaction_row(value, msg.partition() or 0, msg.offset() or 0, ts if ts > 0 else None,
                                  msg.topic())
        except (ValueError, TypeError) as exc:  # BadReply, JSON errors, odd field types
            self._dead_letter(msg, f"gateway reply: {type(exc).__name__}: {str(exc)[:200]}")
            return None
        return StoredReply(row, row["partition"], row["offset"])

    def _decode(self, msgs: list[Message]) -> tuple[list[StoredEvent], list[StoredReply]]:
        events: list[StoredEvent] = []
        replies: list[StoredReply] = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", err)
                continue
            if msg.topic() == topics.EVENTS:
                event = self._decode_event(msg)
                if event is not None:
                    events.append(event)
            else:
                reply = self._decode_reply(msg)
                if reply is not None:
                    replies.append(reply)
        return events, replies

    def _store(self, events: list[StoredEvent], replies: list[StoredReply], stop: Callable[[], bool]) -> bool:
        """Write until it succeeds (Postgres may be down); False if asked to stop first."""
        backoff = 0.2
        while True:
            self.status.beat()
            try:
                t0 = time.monotonic()
                new = write_batch(self._connect(), events, replies)
                BATCH_SECONDS.observe(time.monotonic() - t0)
                self.status.postgres(True)
                ROWS.inc(new)
                TRANSACTIONS.inc(len(replies))
                BATCHES.inc()
                LAST_COMMIT.set(time.time())
                self.stored += new
                self.replies += len(replies)
                return True
            except psycopg.OperationalError as exc:
                self.status.postgres(False, str(exc).strip()[:200])
                RETRIES.inc()
                log.warning("postgres unavailable (%s); retrying in %.1fs", str(exc).strip()[:120], backoff)
                self._drop_connection()
                if stop():
                    return False
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def store_messages(self, msgs: list[Message], stop: Callable[[], bool] = lambda: False) -> bool:
        """Decode a batch of payment.events and gateway-replies messages and write it in one
        Postgres transaction (retried while Postgres is unavailable); False if asked to stop first.
        The one write path of the sink's loop and of ``paystream db rebuild``."""
        events, replies = self._decode(msgs)
        return not (events or replies) or self._store(events, replies, stop)

    def _update_lag(self) -> None:
        for tp in self.consumer.assignment():
            if tp.topic != topics.EVENTS:
                continue
            try:
                _, high = self.consumer.get_watermark_offsets(tp, timeout=1, cached=True)
                pos = self.consumer.position([tp])[0].offset
                if high >= 0 and pos >= 0:
                    LAG.labels(str(tp.partition)).set(max(high - pos, 0))
            except Exception:  # lag is informative only
                pass

    def _on_assign(self, _consumer: Consumer, partitions: list[Any]) -> None:
        with self.status.lock:
            self.status.assigned = frozenset((tp.topic, tp.partition) for tp in partitions)
        log.info("assigned %d partition(s)", len(partitions))

    def _on_revoke(self, _consumer: Consumer, _partitions: list[Any]) -> None:
        with self.status.lock:
            self.status.assigned = frozenset()

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        subscribed = [topics.EVENTS, *self.replies_topics]
        self.consumer.subscribe(subscribed, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)
        self.ping()  # the gauge and /ready say at once whether Postgres is reachable
        try:
            while not stop():
                self.status.beat()
                msgs = take_available(self.consumer, self.batch_size, self.batch_wait_s, self.batch_linger_s)
                if not msgs:
                    self._update_lag()
                    if time.monotonic() - self._last_ping >= PING_INTERVAL_S:
                        self.ping()
                    continue
                if not self.store_messages(msgs, stop):
                    return  # stopping before Postgres took the batch: offsets stay uncommitted
                self._last_ping = time.monotonic()
                commit_stored(self.consumer, log)
                self._update_lag()
        finally:
            self.consumer.close()
            self._drop_connection()
