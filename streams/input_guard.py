"""Every input offset of an agent applied exactly once, in order, whatever faust delivers.

Shared by the payments agent (``agents/payments.py``) and the fraud agents (``agents/fraud.py``):
faust-streaming 0.15.3 can skip a message and acknowledge it anyway (F11 in
docs/reliability.md), skip the first message of a partition when a worker starts under load,
and redeliver messages around rebalances. An ``InputGuard`` keeps the last applied offset per
input partition in a changelog-backed table, written in the input's transaction (so it commits
or aborts with the input's outputs and table writes), and

* skips an offset it already applied (a redelivery);
* heals a jump by reading the missing offsets directly (``GapReader``) and applying them first;
* refuses, through ``faust_fixes.install_ack_guard``, to acknowledge an input it has not
  applied while its partition is still assigned, and seeks the partition back so the input is
  fetched again;
* skips an input whose partition was revoked while it was buffered, or lost while it was being
  applied (``PartitionLost``): its new owner applies it from the committed offset.

``InputGuard.consume(stream)`` is the agent loop: each input is applied and acknowledged as a
whole under ``faust_fixes.commit_lock``, between two commits.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, cast

import faust
from aiokafka.errors import KafkaError
from faust.types import TP

from paystream import metrics
from paystream.transport import KafkaTarget, as_kafka
from streams import faust_fixes
from streams.faust_fixes import commit_lock
from streams.worker_transactions import worker_tid

log = logging.getLogger("paystream.input_guard")


class PartitionLost(Exception):
    """The input's partition was revoked while it was being applied."""


def applied_offset_is_stale(last_applied: int, partition_end: int | None) -> bool:
    """Whether the applied-offsets table remembers an offset the partition does not hold.

    An applied offset is the offset of a message that was read, so it is always below the
    partition's end (its last stable offset). One at or past the end means the topic was
    deleted and recreated while this app's changelogs were kept: every new message would be
    taken for a redelivery and skipped. An unknown end (None, or not positive) is never stale.
    """
    return partition_end is not None and partition_end > 0 and last_applied >= partition_end


def transactional_id(app: faust.App, event: Any) -> str | None:
    """The transaction of the input's partition (None outside exactly_once or without an input).

    faust routes an agent's sends to the transaction of the *destination* topic's partition
    group, and sends to a topic no agent consumes are not transactional at all. Sending
    explicitly in the source partition's transaction makes outputs, table writes and the input
    offset commit (or abort) together.
    """
    if event is None or not app.in_transaction:
        return None
    worker = worker_tid(app)  # one transaction for all the worker's partitions (the default)
    if worker is not None:
        return worker
    m = event.message
    cache: dict[tuple[str, int], str] | None = getattr(app, "_paystream_tids", None)
    if cache is None:
        cache = {}
        setattr(app, "_paystream_tids", cache)  # noqa: B010  # faust's App has no slot for it
    tid = cache.get((m.topic, m.partition))
    if tid is None:
        # Fixed for the app's life (its id, and the topic groups its assignor made at start-up);
        # building it took 3 % of the worker's CPU (faust's settings lookups, the f-string).
        tid = cache[(m.topic, m.partition)] = f"{app.conf.id}-{app.assignor.group_for_topic(m.topic)}-{m.partition}"
    return tid


async def send_in_input_transaction(app: faust.App, event: Any, topic: str, key: bytes | None,
                                    value: bytes | None, partition: int | None, timestamp: float | None = None,
                                    headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future[Any]:
    """Produce in the transaction of ``event``'s partition; ``PartitionLost`` when that
    transaction was closed by a rebalance (the partition is another worker's now, which applies
    the input again from the committed offset). Returns the record's delivery future."""
    tid = transactional_id(app, event)
    if tid is None:
        return cast(asyncio.Future[Any],
                    await app.producer.send(topic, key, value, partition, timestamp, headers, transactional_id=None))
    # Straight to the partition's transactional producer: faust's ``Producer.send`` would take
    # its per-transaction lock for every record (4 % of the worker's CPU), which only orders sends
    # against faust's own commits, and those run under ``commit_lock`` between two inputs, never
    # during one. aiokafka checks the transaction's state on every send: a record sent while its
    # transaction is aborted or ended raises, and becomes ``PartitionLost`` as before.
    producer = cast(Any, app.producer)._transaction_producers.get(tid)
    if producer is None:
        raise PartitionLost(tid)
    try:
        return cast(asyncio.Future[Any],
                    await producer.send(topic, value, key=key, partition=partition,
                                        timestamp_ms=int(timestamp * 1000.0) if timestamp else None, headers=headers))
    except KafkaError as exc:
        raise PartitionLost(tid) from exc


@dataclass(frozen=True)
class ReadMessage:
    """A message read back by ``GapReader`` (timestamp in seconds, as faust's)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float | None = None


@dataclass(frozen=True)
class Replayed:
    """A message read back by ``GapReader``, shaped like a faust event for the handlers."""

    message: ReadMessage


class GapReader:
    """Reads a range of offsets of one partition directly (read_committed, no group)."""

    def __init__(self, bootstrap: KafkaTarget, timeout_s: float = 15.0) -> None:
        self.kafka = as_kafka(bootstrap)
        self.timeout_s = timeout_s

    async def read(self, topic: str, partition: int, start: int, end: int) -> list[ReadMessage]:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        tp = TopicPartition(topic, partition)
        consumer = AIOKafkaConsumer(**self.kafka.aiokafka(), enable_auto_commit=False,
                                    isolation_level="read_committed", group_id=None)
        await consumer.start()
        out: list[ReadMessage] = []
        try:
            consumer.assign([tp])
            consumer.seek(tp, start)
            deadline = time.monotonic() + self.timeout_s
            while await consumer.position(tp) < end:
                if time.monotonic() > deadline:
                    metrics.GAPS_UNREADABLE.labels(topic).inc()
                    log.error("could not read back %s:%d offsets %d..%d", topic, partition, start, end - 1)
                    break
                batch = await consumer.getmany(tp, timeout_ms=200)
                for rec in batch.get(tp, []):
                    if start <= rec.offset < end:
                        ts = rec.timestamp / 1000 if rec.timestamp is not None else None
                        out.append(ReadMessage(topic, partition, rec.offset, rec.key, rec.value, ts))
        finally:
            await consumer.stop()
        return out


Handler = Callable[[Any], Awaitable[None]]
#: Called once a batch's inputs were handled, before their offsets are recorded and they are
#: acknowledged: the handler's deferred work (inline gateway calls, batched outputs). Gets the
#: transactions (``transactional_id``) lost to a rebalance while the inputs were applied, whose
#: deferred outputs must be dropped; returns those lost meanwhile: their inputs are left to the
#: new owner.
BatchEnd = Callable[[set[str | None]], Awaitable[set[str | None]]]
#: Writes ``value`` under ``key`` of a table for the input ``event`` (its partition, its
#: transaction); ``PartitionLost`` when that transaction was closed by a rebalance. The default is
#: faust's own write (``faust_writer``); ``tables.batched.changelog_writer`` sends the changelog
#: record straight into the transaction.
TableWrite = Callable[[Any, str, Any], Awaitable[None]]


def faust_writer(table: Any) -> TableWrite:
    """faust's own table write: the input as current event, then ``table[key] = value`` (the
    changelog record goes through faust's send buffer and is delivered before the commit)."""

    async def write(event: Any, key: str, value: Any) -> None:
        if event is not None:
            set_current_event(event)
        table[key] = value

    return write


def current_assignment(app: faust.App) -> Collection[tuple[str, int]]:
    """The partitions the consumer holds now, as aiokafka keeps them: an immutable set of
    (topic, partition) named tuples, replaced at each rebalance. faust's ``assignment()``
    copies it into a set of new ``TP`` tuples on every call (2 % of a worker when asked once
    per input); a (topic, partition) tuple is found in either, the same way."""
    thread = getattr(app.consumer, "_thread", None)
    ensure = getattr(thread, "_ensure_consumer", None)
    if ensure is None:  # not faust's aiokafka consumer (in its thread or in the loop): faust's own answer
        return cast(Collection[tuple[str, int]], app.consumer.assignment())
    return cast(Collection[tuple[str, int]], ensure().assignment())


def set_current_event(event: Any) -> None:
    """Make ``event`` faust's current event: a table write goes to the changelog partition (and
    the transaction) of the current event, so work done for an input after the stream moved on
    (a batch) must name its input first."""
    from faust.streams import _current_event

    _current_event.set(weakref.ref(event))


class IdleCommitter:
    """Commits the open transactions as soon as the agent has nothing left to apply.

    Under exactly_once an output is visible only once its transaction commits, and faust commits
    on a timer (``commit_interval_s``): at low load every hop of a payment waited half an
    interval on average, a whole one at worst. When the agent's input queue is empty after an
    input, nothing is gained by waiting, so a commit is asked for at once (at most one running,
    one more queued, and at least ``min_gap_s`` apart); under load the queue is never empty and
    the timer alone commits, as before. The commit itself is faust's, so it goes through the
    same barrier (``faust_fixes``: between two inputs, with every table write delivered).
    """

    def __init__(self, app: faust.App, min_gap_s: float = 0.005) -> None:
        self.app, self.min_gap_s = app, min_gap_s
        self.dirty = False
        self.last = 0.0
        self.task: asyncio.Future[None] | None = None

    def poke(self) -> None:
        self.dirty = True
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.dirty and not self.app.should_stop:
            self.dirty = False
            wait = self.last + self.min_gap_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.last = loop.time()
            try:
                await self.app.consumer.commit()
            except Exception as exc:  # the timer's next commit meets the same error and handles it
                log.warning("commit on idle failed: %s: %s", type(exc).__name__, exc)
                return
            metrics.IDLE_COMMITS.inc()


def input_queue_empty(stream: Any) -> bool:
    """Whether the stream's channel holds no delivered input waiting (unknown: False)."""
    queue = getattr(getattr(stream, "channel", None), "queue", None)
    try:
        return bool(queue is not None and queue.empty())
    except Exception:
        return False


class InputGuard:
    """Applies the inputs of ``topics`` through ``handle`` exactly once, in offset order.

    ``table`` is a faust table (``"topic:partition" -> last applied offset``) written from the
    agent, so co-partitioned with the inputs and committed with their outputs. ``handle`` gets
    faust events and ``Replayed`` messages alike and must not raise, except ``PartitionLost``.
    Create it at install time, then ``install()`` it (the ack guard) and run ``consume`` as
    the agent's body.
    """

    def __init__(self, app: faust.App, table: Any, topics: Collection[str], handle: Handler,
                 gaps: GapReader, *, commit_when_idle: bool = False, max_batch: int = 1,
                 on_batch_end: BatchEnd | None = None, write: TableWrite | None = None) -> None:
        self.app, self.table, self.topics, self.handle, self.gaps = app, table, frozenset(topics), handle, gaps
        self.max_batch = max(1, max_batch)
        self.on_batch_end = on_batch_end
        self.write = write if write is not None else faust_writer(table)  # how a batch records its offsets
        self.idle_committer = IdleCommitter(app) if commit_when_idle else None
        self.refused: dict[TP, list[Any]] = {}  # partition -> inputs faust dropped before they were applied
        self._refetching: set[asyncio.Future[None]] = set()

    def install(self) -> InputGuard:
        faust_fixes.install_ack_guard(self.app, self.topics, self.applied, self.on_refused)
        return self

    @staticmethod
    def _key(topic: str, partition: int) -> str:
        return f"{topic}:{partition}"

    def applied(self, tp: TP, offset: int) -> bool:
        last = self.table.get(self._key(tp.topic, tp.partition))
        return last is not None and offset <= last

    def partition_end(self, tp: TP) -> int | None:
        try:
            return cast(int | None, self.app.consumer.highwater(tp))
        except Exception:  # unknown yet: never treat an offset as stale on a guess
            return None

    async def apply(self, event: Any) -> None:
        """Apply one input: skip a redelivery, heal a gap first, remember the offset."""
        m = event.message
        key = self._key(m.topic, m.partition)
        if await self._apply_after(event, self.table.get(key)):
            self.table[key] = m.offset

    async def _apply_after(self, event: Any, last: int | None) -> bool:
        """Apply ``event`` given the partition's last applied offset; False for a redelivery."""
        m = event.message
        key = self._key(m.topic, m.partition)
        if last is not None and m.offset <= last:
            end = self.partition_end(TP(m.topic, m.partition))
            if not applied_offset_is_stale(last, end):
                metrics.REDELIVERED.labels(m.topic).inc()
                return False
            metrics.STALE_APPLIED_OFFSETS.labels(m.topic).inc()
            log.error("applied offset %d of %s lies beyond the partition's end (%s): the topic was recreated "
                      "without this app's changelogs; applying from offset %d on", last, key, end, m.offset)
            last = None
        if last is not None and m.offset > last + 1:
            missing = await self.gaps.read(m.topic, m.partition, last + 1, m.offset)
            if missing:
                metrics.GAPS_HEALED.labels(m.topic).inc(len(missing))
                log.warning("consumer skipped %d message(s) of %s before offset %d: applying them now",
                            len(missing), key, m.offset)
            for msg in missing:
                await self.handle(Replayed(msg))
        await self.handle(event)
        return True

    def owned(self, event: Any) -> bool:
        m = event.message
        return not self.app.in_transaction or (m.topic, m.partition) in current_assignment(self.app)

    async def consume(self, stream: faust.StreamT[bytes]) -> None:
        """The agent's loop: each input applied and acked as a whole between two commits."""
        if self.max_batch > 1 or self.on_batch_end is not None:
            await self.consume_batches(stream)
            return
        async for event in stream.events():
            async with commit_lock(self.app):
                if not self.owned(event):
                    metrics.REVOKED_SKIPPED.inc()  # revoked while buffered: the new owner applies it
                    continue
                faust_fixes.begin_input(self.app)  # left open if this input stops half-way: see faust_fixes
                try:
                    await self.apply(event)
                except PartitionLost as lost:
                    faust_fixes.end_input(self.app)  # its transaction is closed: nothing of it commits
                    metrics.REVOKED_SKIPPED.inc()
                    log.warning("partition lost to a rebalance while applying an input (%s): left to its new owner",
                                lost)
                    continue
                await stream.ack(event)
                faust_fixes.end_input(self.app)
            if self.idle_committer is not None and self.app.in_transaction and input_queue_empty(stream):
                self.idle_committer.poke()

    async def consume_batches(self, stream: faust.StreamT[bytes]) -> None:
        """The agent's loop in batches: the inputs already delivered (up to ``max_batch``) are
        applied in offset order as one unit between two commits, then ``on_batch_end`` runs,
        then each partition's last applied offset is written once and the inputs are acked.

        faust's stream acknowledges an event when the loop asks for the next one, which in a
        batch would be before the event is applied: its own acks are off here, and every input
        is acknowledged by ``stream.ack`` (through the ack guard) once the batch is applied.
        """
        stream.enable_acks = False
        events = stream.events().__aiter__()
        while not self.app.should_stop:
            try:
                t_wait = time.monotonic()
                batch = [await events.__anext__()]
                if time.monotonic() - t_wait > 0.001 and batch[0].message.timestamp:
                    # the agent was idle, waiting for this input: its age is the transport's latency
                    metrics.child(metrics.BATCH_SECONDS, "fetch").observe(
                        max(0.0, time.time() - batch[0].message.timestamp))
                while len(batch) < self.max_batch and not input_queue_empty(stream):
                    batch.append(await events.__anext__())
            except StopAsyncIteration:
                return
            metrics.INPUT_BATCH.observe(len(batch))
            t_asked = time.monotonic()
            async with commit_lock(self.app):
                t_locked = time.monotonic()
                oldest = min((e.message.timestamp for e in batch if e.message.timestamp), default=None)
                if oldest is not None:
                    metrics.child(metrics.BATCH_SECONDS, "age").observe(max(0.0, time.time() - oldest))
                faust_fixes.begin_input(self.app)  # left open if the batch stops half-way: see faust_fixes
                await self.apply_batch(batch)
                for event in batch:
                    await stream.ack(event)
                faust_fixes.end_input(self.app)
            t_done = time.monotonic()
            metrics.child(metrics.BATCH_SECONDS, "lock").observe(t_locked - t_asked)
            metrics.child(metrics.BATCH_SECONDS, "apply").observe(t_done - t_locked)
            if self.idle_committer is not None and self.app.in_transaction and input_queue_empty(stream):
                self.idle_committer.poke()

    async def apply_batch(self, batch: list[Any]) -> None:
        """Apply a batch of inputs (see ``consume_batches``); an input whose transaction was
        closed by a rebalance, before or while the batch was applied, is left to the new owner."""
        lost: set[str | None] = set()
        last: dict[str, int | None] = {}  # "topic:partition" -> last applied offset, as the batch goes
        writer: dict[str, tuple[Any, int]] = {}  # "topic:partition" -> the input that applied its last offset
        for event in batch:
            m = event.message
            tid = transactional_id(self.app, event)
            if tid in lost or not self.owned(event):
                metrics.REVOKED_SKIPPED.inc()  # revoked while buffered: the new owner applies it
                continue
            key = self._key(m.topic, m.partition)
            set_current_event(event)
            try:
                if await self._apply_after(event, last[key] if key in last else self.table.get(key)):
                    last[key], writer[key] = m.offset, (event, m.offset)
            except PartitionLost as exc:
                lost.add(tid)
                log.warning("partition lost to a rebalance while applying an input (%s): left to its new owner", exc)
        if self.on_batch_end is not None:
            lost |= await self.on_batch_end(set(lost))
        for key, (event, offset) in writer.items():
            tid = transactional_id(self.app, event)
            if tid in lost:
                continue
            try:
                await self.write(event, key, offset)
            except PartitionLost as exc:  # its inputs stay unacknowledged (the ack guard): the new owner's
                lost.add(tid)
                log.warning("partition lost to a rebalance while recording applied offsets (%s)", exc)

    def on_refused(self, message: Any) -> None:
        metrics.ACK_REFUSED.labels(message.topic).inc()
        tp = message.tp
        first = tp not in self.refused
        self.refused.setdefault(tp, []).append(message)
        if first:
            task = asyncio.ensure_future(self.settle_refused(tp))
            self._refetching.add(task)
            task.add_done_callback(self._refetching.discard)

    async def settle_refused(self, tp: TP) -> None:
        """Between two inputs: acknowledge the dropped inputs applied meanwhile (the gap healer
        reads them back when a later one arrives), and seek back to the first one that is not,
        so it is fetched again. faust commits nothing on the partition until then."""
        await asyncio.sleep(0.05)  # gather the other drops of this burst first
        async with commit_lock(self.app):
            messages = self.refused.pop(tp, [])
            if tp not in self.app.consumer.assignment():
                return  # revoked: its new owner starts from the committed offset
            pending = [m for m in messages if not self.applied(tp, m.offset)]
            for m in messages:
                if self.applied(tp, m.offset):
                    self.app.consumer.ack(m)
            if not pending:
                return
            first = min(m.offset for m in pending)
            log.warning("input %s:%d was dropped by the stream before it was applied: fetching it again",
                        tp.topic, first)
            try:
                await self.app.consumer.seek_wait({tp: first})  # in the consumer's own thread
            except Exception:  # revoked meanwhile: its new owner starts from the committed offset
                log.exception("could not seek %s back to %d", tp, first)
