"""``paystream db rebuild``: a new sink database from the record topics (docs/operations.md).

Kafka is the source of truth: ``payment.events`` (and the other record topics, kept
indefinitely by default, ``streams/topics.py``) hold everything the sinks ever wrote. A
rebuild creates the database if it is missing, refuses one that holds rows (unless told
otherwise), applies the migrations, captures the end offsets of every source topic, and
replays each topic from its first offset up to those ends, read_committed, through the sinks'
own write path (``EventSink.store_messages``, ``JsonTopicSink.store_messages``): the same
decoding, the same SQL, one Postgres transaction per batch.

What each source restores:

=========== ========================================== ==============================================
source      topics                                     tables
=========== ========================================== ==============================================
``events``  ``payment.events``, ``<app>-gateway-replies`` payments, payment_events, refunds,
                                                       payment_transactions
``methods`` ``<app>-vault`` (compacted)                 payment_methods, customer_gateway_tokens
``audit``   ``<app>-audit``                             audit_log, audit_chain_head (a new chain)
=========== ========================================== ==============================================

No consumer group offsets are committed: a rebuild leaves no trace in Kafka. The writes are
idempotent, so a rebuild that was interrupted can be run again into the same database with
``--force`` (it goes on where the rows are; nothing is written twice).
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

import psycopg
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from paystream.transport import KafkaTarget, as_kafka
from streams import topics

log = logging.getLogger("paystream.rebuild")

SOURCES: dict[str, tuple[str, ...]] = {
    "events": ("payments", "payment_events", "refunds", "payment_transactions"),
    "methods": ("payment_methods", "customer_gateway_tokens"),
    "audit": ("audit_log",),
}
#: Rows a freshly migrated database already has: not a sign of an earlier rebuild or a live sink.
_SEEDED = {"schema_migrations", "audit_chain_head"}


class RebuildError(RuntimeError):
    """The rebuild cannot start (or go on); the message says why and what to do."""


def source_topics(source: str, app_id: str) -> list[str]:
    if source == "events":
        return [topics.EVENTS, *topics.replies_history(app_id)]
    if source == "methods":
        return [topics.vault(app_id)]
    if source == "audit":
        return [topics.audit(app_id)]
    raise ValueError(f"unknown source {source!r}; one of {sorted(SOURCES)}")


# --- the database ---------------------------------------------------------------------------


def target_dsn(dsn: str, database: str | None) -> str:
    return make_conninfo(dsn, dbname=database) if database else dsn


def database_name(dsn: str) -> str:
    name = conninfo_to_dict(dsn).get("dbname")
    if not name:
        raise RebuildError("the DSN names no database (dbname)")
    return str(name)


def ensure_database(dsn: str) -> bool:
    """Create the DSN's database when it does not exist; True if it was created."""
    name = database_name(dsn)
    admin = make_conninfo(dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return True


def tables_with_rows(dsn: str) -> list[str]:
    """Tables of ``public`` that hold rows (the seeded bookkeeping tables aside)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY c.relname")]
        full = []
        for name in names:
            if name in _SEEDED:
                continue
            row = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(name))).fetchone()
            if row and row[0]:
                full.append(name)
    return full


# --- bounded reading ------------------------------------------------------------------------


@dataclass
class PartitionRange:
    """Offsets ``[low, end)`` of one partition, ``end`` captured when the rebuild started."""

    topic: str
    partition: int
    low: int
    end: int
    position: int = -1

    def __post_init__(self) -> None:
        if self.position < 0:
            self.position = self.low

    @property
    def done(self) -> bool:
        return self.position >= self.end

    @property
    def read(self) -> int:
        return min(self.position, self.end) - self.low

    @property
    def size(self) -> int:
        return max(self.end - self.low, 0)


def capture_ranges(consumer: Consumer, names: Sequence[str], timeout: float = 30.0) -> list[PartitionRange]:
    """The first and end offsets of every partition of ``names``, now."""
    meta = consumer.list_topics(timeout=timeout).topics
    ranges = []
    for name in names:
        if name not in meta or meta[name].error is not None:
            raise RebuildError(f"topic {name} does not exist (is this the right cluster and app id?)")
        for partition in sorted(meta[name].partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(name, partition), timeout=timeout, cached=False)
            ranges.append(PartitionRange(name, partition, low, high))
    return ranges


def committed_gaps(ranges: Sequence[PartitionRange], compacted: set[str]) -> list[PartitionRange]:
    """Partitions of delete-policy topics whose first offset is not 0: retention (or a
    delete-records call) removed their beginning, so a replay cannot restore it."""
    return [r for r in ranges if r.low > 0 and r.topic not in compacted]


class BoundedReplay:
    """Read assigned partitions from their first offset up to the captured end offsets."""

    def __init__(self, consumer: Consumer, ranges: Sequence[PartitionRange], batch_size: int = 2000,
                 poll_s: float = 0.5) -> None:
        self.consumer = consumer
        self.ranges = {(r.topic, r.partition): r for r in ranges}
        self.batch_size = batch_size
        self.poll_s = poll_s
        pending = [r for r in ranges if not r.done]
        if pending:
            consumer.assign([TopicPartition(r.topic, r.partition, r.low) for r in pending])

    @property
    def pending(self) -> list[PartitionRange]:
        return [r for r in self.ranges.values() if not r.done]

    def _advance(self, r: PartitionRange, offset: int) -> None:
        if offset > r.position:
            r.position = offset
        if r.done:
            self.consumer.pause([TopicPartition(r.topic, r.partition)])

    def batches(self) -> Iterator[list[Message]]:
        """Batches of messages below the end offsets (possibly empty: time to show progress)."""
        while self.pending:
            out = []
            for msg in self.consumer.consume(num_messages=self.batch_size, timeout=self.poll_s):
                r = self.ranges.get((msg.topic() or "", msg.partition() or 0))
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if r is not None:
                            self._advance(r, msg.offset() or 0)  # EOF: the partition's current end
                    elif err.fatal():
                        raise RebuildError(f"consumer error: {err}")
                    else:
                        log.warning("consumer error: %s", err)
                    continue
                offset = msg.offset() or 0
                if r is None or offset >= r.end:
                    continue  # written after the rebuild started: not part of it
                out.append(msg)
                self._advance(r, offset + 1)
            # Transaction markers and aborted records are never delivered: the position skips them.
            for tp in self.consumer.position([TopicPartition(r.topic, r.partition) for r in self.pending]):
                if tp.offset >= 0:
                    self._advance(self.ranges[(tp.topic, tp.partition)], tp.offset)
            yield out


# --- progress ---------------------------------------------------------------------------


class Progress:
    """A live line on a terminal (rewritten in place), a line every ``every_s`` otherwise."""

    def __init__(self, total: int, out: TextIO | None = None, every_s: float | None = None) -> None:
        self.total = total
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.every_s = every_s if every_s is not None else (0.2 if self.tty else 5.0)
        self.t0 = time.monotonic()
        self._last = 0.0

    def line(self, done: int, label: str) -> str:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        rate = done / elapsed
        pct = 100.0 * done / self.total if self.total else 100.0
        eta = f"{(self.total - done) / rate:,.0f}s" if rate > 0 and done < self.total else "-"
        width = 24
        filled = int(width * pct / 100)
        return (f"[rebuild] [{'#' * filled}{'.' * (width - filled)}] {done:,}/{self.total:,} offsets "
                f"({pct:5.1f}%) {rate:,.0f}/s eta {eta}  {label}")

    def update(self, done: int, label: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        if self.tty:
            self.out.write("\r\033[K" + self.line(done, label))
        else:
            self.out.write(self.line(done, label) + "\n")
        self.out.flush()

    def close(self, done: int, label: str) -> None:
        self.update(done, label, force=True)
        if self.tty:
            self.out.write("\n")
            self.out.flush()


# --- the rebuild ----------------------------------------------------------------------------


class MessageStore(Protocol):
    def store_messages(self, msgs: list[Message], stop: Callable[[], bool] = ...) -> bool: ...


@dataclass
class SourceReport:
    source: str
    topics: list[str]
    messages: int = 0
    seconds: float = 0.0


@dataclass
class RebuildReport:
    database: str
    created: bool
    migrations: int
    sources: list[SourceReport] = field(default_factory=list)
    end_offsets: dict[str, dict[int, int]] = field(default_factory=dict)
    events: int = 0  # payment_events rows written
    replies: int = 0
    skipped: int = 0  # undecodable messages, not written
    counts: dict[str, int] = field(default_factory=dict)  # rows per restored table afterwards
    seconds: float = 0.0

    @property
    def messages(self) -> int:
        return sum(s.messages for s in self.sources)

    def summary(self) -> str:
        rate = self.messages / self.seconds if self.seconds > 0 else 0.0
        lines = [f"rebuilt {self.database}{' (created)' if self.created else ''} in {self.seconds:.1f}s: "
                 f"{self.messages:,} messages, {rate:,.0f} messages/s; "
                 f"{self.events:,} events, {self.counts.get('payments', 0):,} payments"
                 + (f"; {self.skipped} undecodable message(s) skipped" if self.skipped else "")]
        for s in self.sources:
            lines.append(f"  {s.source:<8} {s.messages:>10,} messages in {s.seconds:7.1f}s  ({', '.join(s.topics)})")
        lines.append("  rows: " + ", ".join(f"{t}={n:,}" for t, n in self.counts.items()))
        return "\n".join(lines)


def _consumer(bootstrap: KafkaTarget) -> Consumer:
    return Consumer(as_kafka(bootstrap).librdkafka({
        "group.id": f"paystream-rebuild-{uuid.uuid4().hex[:12]}",  # never committed to
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
    }))


def rebuild(
    *,
    bootstrap: KafkaTarget,
    registry_url: str | Mapping[str, Any],
    dsn: str,
    app_id: str,
    sources: Sequence[str] = tuple(SOURCES),
    force: bool = False,
    allow_truncated: bool = False,
    batch_size: int = 2000,
    progress_out: TextIO | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> RebuildReport:
    """Replay the sources' topics into the database of ``dsn`` (see the module's doc)."""
    from sinks.audit import AuditSink
    from sinks.migrate import migrate
    from sinks.postgres import EventSink
    from sinks.vault import VaultSink
    from streams.avro import codecs, registry_client

    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise RebuildError(f"sources must be among {sorted(SOURCES)}, got {list(sources)}")
    t0 = time.monotonic()
    name = database_name(dsn)
    created = ensure_database(dsn)
    if not created and not force:
        full = tables_with_rows(dsn)
        if full:
            raise RebuildError(f"database {name} is not empty ({', '.join(full)} hold rows): rebuild into a new "
                               "database, or pass --force to replay into this one (writes are idempotent)")
    applied = migrate(dsn)
    report = RebuildReport(database=name, created=created, migrations=len(applied))

    # Every end offset is captured before anything is replayed: one consistent cut.
    plan: list[tuple[str, list[str], Consumer, list[PartitionRange]]] = []
    compacted = set(topics.compacted_topics(app_id))
    try:
        for source in sources:
            names = source_topics(source, app_id)
            consumer = _consumer(bootstrap)
            plan.append((source, names, consumer, capture_ranges(consumer, names)))
        truncated = [r for *_, ranges in plan for r in committed_gaps(ranges, compacted)]
        if truncated and not allow_truncated:
            where = ", ".join(f"{r.topic}[{r.partition}] starts at {r.low}" for r in truncated[:6])
            raise RebuildError(f"the beginning of the history is gone ({where}): retention deleted it, so the "
                               "rebuilt database would miss it. Restore Postgres from a backup instead, or pass "
                               "--allow-truncated to rebuild what is left")
        for *_, ranges in plan:
            for r in ranges:
                report.end_offsets.setdefault(r.topic, {})[r.partition] = r.end
        total = sum(r.size for *_, ranges in plan for r in ranges)
        progress = Progress(total, progress_out)
        done_before = 0
        codec = codecs(registry_client(registry_url))[topics.EVENTS] if "events" in sources else None
        for source, names, consumer, ranges in plan:
            sink: MessageStore
            if source == "events":
                event_sink = EventSink(bootstrap, dsn, codec,  # type: ignore[arg-type]
                                       replies_topic=names[1:], consumer=consumer, dead_letters=False)
                sink = event_sink
            elif source == "methods":
                sink = VaultSink(bootstrap, dsn, names[0], "unused", consumer=consumer)
            else:
                sink = AuditSink(bootstrap, dsn, names[0], "unused", consumer=consumer)
            part = SourceReport(source, names)
            ts = time.monotonic()
            replay = BoundedReplay(consumer, ranges, batch_size=batch_size)
            try:
                for msgs in replay.batches():
                    if msgs and not sink.store_messages(msgs, stop):
                        raise RebuildError("stopped before the batch was written")
                    part.messages += len(msgs)
                    progress.update(done_before + sum(r.read for r in ranges), f"{source}: {part.messages:,} messages")
                    if stop():
                        raise RebuildError("stopped")
            finally:
                conn = getattr(sink, "conn", None)
                if conn is not None:
                    conn.close()
            if source == "events":
                report.events, report.replies, report.skipped = event_sink.stored, event_sink.replies, \
                    event_sink.skipped
            done_before += sum(r.size for r in ranges)
            part.seconds = time.monotonic() - ts
            report.sources.append(part)
        progress.close(done_before, "done")
    finally:
        for _source, _names, consumer, _ranges in plan:
            consumer.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for source in sources:
            for table in SOURCES[source]:
                row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
                report.counts[table] = int(row[0]) if row else 0
    report.seconds = time.monotonic() - t0
    return report


def describe_end_offsets(report: RebuildReport) -> dict[str, Any]:
    return {t: dict(sorted(p.items())) for t, p in sorted(report.end_offsets.items())}
