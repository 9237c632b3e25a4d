"""The vault topic → ``payment_methods`` (masked card data) and ``customer_gateway_tokens``.

The worker writes one JSON record per saved-method change to the internal vault topic, in the
same transaction as the ``PaymentMethodAdded``/``Removed`` event: the gateway token travels
there only sealed (AES-GCM envelope bound to the method id), never on ``payment.events``.
This sink (its own consumer group and process: ``paystream customers sink``) stores it:

* ``payment_methods``: brand, last4, expiry, fingerprint, status; a row only moves to a newer
  ``version``, so a replayed batch never moves a method backwards;
* ``customer_gateway_tokens``: the envelope, for active methods only; a removal or an erasure
  deletes it (data minimization).

Like the event sink, a batch is written in one Postgres transaction and the offsets are
committed after it. A record that would put card data into Postgres is refused (I6).

``JsonTopicSink`` is the loop both this sink and the audit sink use.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
from confluent_kafka import Consumer, KafkaError, Message
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector

from paystream.consuming import take_available
from paystream.core.sensitive import scan
from paystream.security.crypto import CryptoError, is_envelope, key_id_of
from paystream.transport import KafkaTarget, as_kafka
from sinks.postgres import commit_stored

if TYPE_CHECKING:
    from sinks.postgres import SinkStatus

log = logging.getLogger("paystream.sink.vault")

# The vault and audit sinks' own registry: their /metrics shows these (and the process's), not
# the event sink's paystream_sink_* series, which would read as a second event sink at zero.
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
RECORDS = Counter("paystream_topic_sink_records_total", "Records the vault/audit sink wrote to Postgres", ["sink"],
                  registry=REGISTRY)
BATCHES = Counter("paystream_topic_sink_batches_total", "Batches the vault/audit sink committed", ["sink"],
                  registry=REGISTRY)
BATCH_SECONDS = Histogram("paystream_topic_sink_batch_seconds", "Time to write and commit one batch", ["sink"],
                          registry=REGISTRY)
PG_UP = Gauge("paystream_topic_sink_postgres_up", "1 while the vault/audit sink can reach Postgres", ["sink"],
              registry=REGISTRY)
LAST_COMMIT = Gauge("paystream_topic_sink_last_commit_timestamp_seconds",
                    "When the vault/audit sink last committed a batch", ["sink"], registry=REGISTRY)
LAG = Gauge("paystream_topic_sink_lag_messages", "Records in the vault/audit topic not yet stored, per partition",
            ["sink", "partition"], registry=REGISTRY)
RETRIES = Counter("paystream_topic_sink_retries_total", "Vault/audit batch writes retried after a Postgres error",
                  ["sink"], registry=REGISTRY)
SKIPPED = Counter("paystream_topic_sink_skipped_total",
                  "Vault/audit records not stored: unreadable, or refused (a token not sealed, card data)",
                  ["sink"], registry=REGISTRY)
PING_INTERVAL_S = 5.0  # an idle sink checks Postgres this often, so /ready stays true

Record = tuple[bytes | None, bytes | None]  # key, value


def _ts(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


class JsonTopicSink:
    """Consume one internal topic (read_committed) and write each batch in one transaction."""

    name = "sink"
    kind = "topic"  # the ``sink`` label of its metrics: vault | audit

    def __init__(self, bootstrap: KafkaTarget, dsn: str, topic: str, group: str, batch_size: int = 500,
                 batch_wait_s: float = 0.2, consumer: Consumer | None = None,
                 status: SinkStatus | None = None, batch_linger_s: float = 0.2) -> None:
        self.status = status
        if status is not None:
            kind = self.kind
            status.report_postgres = lambda ok, _down_s: PG_UP.labels(kind).set(1 if ok else 0)
        self._last_ping = 0.0
        self.dsn = dsn
        self.topic = topic
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self.batch_linger_s = batch_linger_s  # a batch leaves at most this long after its first message
        self.consumer = consumer or Consumer(as_kafka(bootstrap).librdkafka({
            "group.id": group, "isolation.level": "read_committed",
            "enable.auto.commit": False, "auto.offset.reset": "earliest", "enable.partition.eof": False,
        }))
        self.conn: psycopg.Connection | None = None
        self.stored = 0

    def write(self, conn: psycopg.Connection, records: list[Record]) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _connect(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(self.dsn, connect_timeout=5)
        return self.conn

    def _postgres(self, ok: bool, error: str | None = None) -> None:
        self._last_ping = time.monotonic()
        if self.status is not None:
            self.status.postgres(ok, error)

    def ping(self) -> None:
        """Check Postgres while idle, so /ready says whether the sink could write."""
        try:
            conn = self._connect()
            # In its own transaction: a bare execute would leave one open (psycopg is not in
            # autocommit), and every later ``conn.transaction()`` of a batch would then be only a
            # savepoint inside it, never committed (the vault and audit sinks wrote nothing).
            with conn.transaction():
                conn.execute("SELECT 1")
            self._postgres(True)
        except psycopg.Error as exc:
            self._postgres(False, type(exc).__name__)
            if self.conn is not None:
                self.conn.close()
                self.conn = None

    def _store(self, records: list[Record], stop: Callable[[], bool]) -> bool:
        backoff = 0.2
        while True:
            try:
                started = time.monotonic()
                written = self.write(self._connect(), records)
                self.stored += written
                RECORDS.labels(self.kind).inc(written)
                BATCHES.labels(self.kind).inc()
                BATCH_SECONDS.labels(self.kind).observe(time.monotonic() - started)
                LAST_COMMIT.labels(self.kind).set(time.time())
                self._postgres(True)
                return True
            except psycopg.OperationalError as exc:
                self._postgres(False, type(exc).__name__)
                if self.status is not None:
                    self.status.beat()  # waiting for Postgres is not a stalled loop
                RETRIES.labels(self.kind).inc()
                log.warning("%s: postgres unavailable (%s); retrying in %.1fs", self.name,
                            type(exc).__name__, backoff)
                if self.conn is not None:
                    self.conn.close()
                    self.conn = None
                if stop():
                    return False
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def store_messages(self, msgs: list[Message], stop: Callable[[], bool] = lambda: False) -> bool:
        """Write a batch in one Postgres transaction (retried while Postgres is unavailable);
        False if asked to stop first. The one write path of the loop and of ``paystream db rebuild``."""
        records: list[Record] = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("%s: consumer error %s", self.name, err.code())
                continue
            records.append((msg.key(), msg.value()))
        return not records or self._store(records, stop)

    def _update_lag(self) -> None:
        """The lag gauge per assigned partition: the topic's end minus the sink's position."""
        try:
            for tp in self.consumer.assignment():
                _, high = self.consumer.get_watermark_offsets(tp, timeout=1, cached=True)
                pos = self.consumer.position([tp])[0].offset
                if high >= 0 and pos >= 0:
                    LAG.labels(self.kind, str(tp.partition)).set(max(high - pos, 0))
        except Exception:  # lag is informative only: it never stops the sink
            pass

    def _on_assign(self, _consumer: Consumer, partitions: list[Any]) -> None:
        if self.status is not None:
            with self.status.lock:
                self.status.assigned = frozenset((tp.topic, tp.partition) for tp in partitions)

    def _on_revoke(self, _consumer: Consumer, _partitions: list[Any]) -> None:
        if self.status is not None:
            with self.status.lock:
                self.status.assigned = frozenset()

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        self.consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)
        if self.status is not None:
            self.ping()
        try:
            while not stop():
                if self.status is not None:
                    self.status.beat()
                msgs: list[Message] = take_available(self.consumer, self.batch_size, self.batch_wait_s,
                                                     self.batch_linger_s)
                if not msgs:
                    if self.status is not None and time.monotonic() - self._last_ping >= PING_INTERVAL_S:
                        self.ping()
                        self._update_lag()
                    continue
                if not self.store_messages(msgs, stop):
                    return  # stopping before Postgres took the batch: offsets stay uncommitted
                commit_stored(self.consumer, log)
                self._update_lag()
        finally:
            self.consumer.close()
            if self.conn is not None:
                self.conn.close()


UPSERT_METHOD = """
INSERT INTO payment_methods AS m (method_id, customer_id, gateway, status, brand, last4, exp_month, exp_year,
                                  fingerprint, version, created_at, updated_at, removed_at)
VALUES (%(method_id)s, %(customer_id)s, %(gateway)s, %(status)s, %(brand)s, %(last4)s, %(exp_month)s,
        %(exp_year)s, %(fingerprint)s, %(version)s, %(created_at)s, %(updated_at)s, %(removed_at)s)
ON CONFLICT (method_id) DO UPDATE SET
    customer_id = EXCLUDED.customer_id, gateway = EXCLUDED.gateway, status = EXCLUDED.status,
    brand = EXCLUDED.brand, last4 = EXCLUDED.last4, exp_month = EXCLUDED.exp_month, exp_year = EXCLUDED.exp_year,
    fingerprint = EXCLUDED.fingerprint, version = EXCLUDED.version, updated_at = EXCLUDED.updated_at,
    removed_at = COALESCE(m.removed_at, EXCLUDED.removed_at)
WHERE m.version < EXCLUDED.version
"""

UPSERT_TOKEN = """
INSERT INTO customer_gateway_tokens (method_id, customer_id, gateway, token_ciphertext, key_id, updated_at)
SELECT %(method_id)s, %(customer_id)s, %(gateway)s, %(token)s, %(key_id)s, %(updated_at)s
WHERE EXISTS (SELECT 1 FROM payment_methods
              WHERE method_id = %(method_id)s AND version = %(version)s AND status = 'active')
ON CONFLICT (method_id) DO UPDATE SET
    token_ciphertext = EXCLUDED.token_ciphertext, key_id = EXCLUDED.key_id, updated_at = EXCLUDED.updated_at
"""

DELETE_TOKEN = "DELETE FROM customer_gateway_tokens WHERE method_id = %(method_id)s"


def _removed_at(value: dict[str, Any], status: Any) -> datetime | None:
    """When the method stopped being active: the record says so (a removal's time survives a
    later erasure, also when compaction left only the erasure record); records written before
    it did fall back to the record's own time."""
    if status == "active":
        return None
    removed_at = value.get("removed_at")
    return _ts(removed_at if isinstance(removed_at, int) and not isinstance(removed_at, bool)
               else value.get("updated_at"))


def method_row(value: dict[str, Any]) -> dict[str, Any] | None:
    """The rows' parameters for one vault record, or None when it must not be stored."""
    if value.get("kind") != "payment_method" or not isinstance(value.get("method_id"), str):
        return None
    token = value.get("sealed_token")
    if token is not None and not (isinstance(token, str) and is_envelope(token)):
        log.error("vault record of %s carries a token that is not sealed: refused", value["method_id"])
        return None
    # Text fields only, as commands.validate does: an epoch-ms timestamp is not a card number.
    if scan({k: v for k, v in value.items() if k != "sealed_token" and isinstance(v, str)}):
        log.error("vault record of %s carries card data: refused", value["method_id"])
        return None
    status = value.get("status")
    try:
        key_id = key_id_of(token) if token else None
    except CryptoError:
        return None
    return {
        "method_id": value["method_id"], "customer_id": value["customer_id"], "gateway": value["gateway"],
        "status": status, "brand": value.get("brand"), "last4": value.get("last4"),
        "exp_month": value.get("exp_month"), "exp_year": value.get("exp_year"),
        "fingerprint": value.get("fingerprint"), "version": value["version"],
        "created_at": _ts(value.get("created_at")), "updated_at": _ts(value.get("updated_at")),
        "removed_at": _removed_at(value, status),
        "token": token if status == "active" else None, "key_id": key_id,
    }


def write_vault_batch(conn: psycopg.Connection, records: list[Record]) -> int:
    rows = []
    for _, value in records:
        try:
            decoded = json.loads(value or b"null")
        except ValueError:
            log.error("unreadable vault record skipped")
            SKIPPED.labels("vault").inc()
            continue
        row = method_row(decoded) if isinstance(decoded, dict) else None
        if row is not None:
            rows.append(row)
        elif isinstance(decoded, dict) and decoded.get("kind") == "payment_method":
            SKIPPED.labels("vault").inc()  # refused: see method_row's log line
    with conn.transaction(), conn.cursor() as cur:
        for row in rows:  # in order: a method's records share a partition, so they come in order
            cur.execute(UPSERT_METHOD, row)
            if row["token"] is not None:
                cur.execute(UPSERT_TOKEN, row)
            else:
                cur.execute(DELETE_TOKEN, row)
    return len(rows)


class VaultSink(JsonTopicSink):
    kind = "vault"
    name = "vault sink"

    def write(self, conn: psycopg.Connection, records: list[Record]) -> int:
        return write_vault_batch(conn, records)
