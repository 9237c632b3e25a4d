"""Table recovery at the speed of the client library, not of faust's per-message delivery.

faust rebuilds a table by delivering every changelog record through its fetcher, conductor
and a recovery queue, one message at a time (several asyncio tasks and waits per record):
about 6,700 records/s on the benchmark machine, so a table of a million payments (two million
records with the idempotency table) took five minutes before the worker could serve a single
payment. Here, before faust's own recovery reads, the changelog partitions it is about to
replay are read in bulk by a librdkafka consumer (``read_committed``, fetching in its own
threads) and applied to the tables through the tables' own decode and ``apply_changelog_batch``
(the path faust's recovery uses, so memory and rocksdb stores alike); faust then finds those
partitions up to date and reads only what is left.

Two pieces, wired into faust's ``Recovery`` by ``streams/faust_fixes.py``:

* ``last_committed_offsets``: the offset of the last record a read_committed consumer delivers
  below each partition's end. Under exactly_once the last offset of a changelog partition is a
  transaction marker, never delivered; with this as its target, recovery ends the moment that
  record is applied instead of after faust's empty-queue timeouts.
* ``load_changelogs``: reads each partition from the offset after the one the table already
  holds up to its target (or its end, reported by the consumer), and applies the records in
  order, in chunks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from faust.types import TP, Message

log = logging.getLogger("paystream.fast_recovery")

CHANGELOG_TAIL_WINDOW = 512
BULK_MIN_RECORDS = 2_000  # fewer than this left to read: faust's own recovery reads them
APPLY_CHUNK = 5_000


async def last_committed_offsets(aiokafka_kwargs: Mapping[str, Any], ends: Mapping[TP, int],
                                 window: int = CHANGELOG_TAIL_WINDOW, timeout_s: float = 30.0) -> dict[TP, int]:
    """For each partition with end offset ``ends[tp]`` (its last stable offset), the offset of
    the last record a read_committed consumer delivers below it; the partition's start - 1
    when it holds none at all. A partition whose last ``window`` offsets hold no committed
    record while older ones exist is left out (unknown without reading it whole)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    wanted = {TopicPartition(tp.topic, tp.partition): end for tp, end in ends.items() if end > 0}
    found: dict[TP, int] = {TP(tp.topic, tp.partition): -1 for tp, end in ends.items() if end <= 0}
    if not wanted:
        return found
    consumer = AIOKafkaConsumer(**aiokafka_kwargs, enable_auto_commit=False, isolation_level="read_committed",
                                group_id=None)
    await consumer.start()
    try:
        consumer.assign(list(wanted))
        starts = await consumer.beginning_offsets(list(wanted))
        first = {tp: max(starts.get(tp, 0), end - window) for tp, end in wanted.items()}
        for tp, offset in first.items():
            consumer.seek(tp, offset)
        last: dict[Any, int] = {}
        pending = set(wanted)
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"changelog tails not read in {timeout_s:.0f} s: {sorted(map(str, pending))}")
            batches = await consumer.getmany(*pending, timeout_ms=200)
            for tp, records in batches.items():
                for rec in records:
                    if rec.offset < wanted[tp]:
                        last[tp] = max(last.get(tp, -1), rec.offset)
            for tp in list(pending):
                if await consumer.position(tp) >= wanted[tp]:
                    pending.discard(tp)
        for tp in wanted:
            if tp in last:
                found[TP(tp.topic, tp.partition)] = last[tp]
            elif first[tp] <= starts.get(tp, 0):
                found[TP(tp.topic, tp.partition)] = starts.get(tp, 0) - 1  # no committed record at all
    finally:
        await consumer.stop()
    return found


@dataclass(frozen=True)
class LoadRange:
    """Read ``tp`` from ``after + 1`` up to ``target`` (inclusive) into ``table``."""

    table: Any  # a faust table (Collection)
    after: int
    target: int


ApplyHook = Callable[[Any, list[Any]], Awaitable[None]]


async def _apply(table: Any, events: list[Any]) -> None:
    """Apply decoded changelog events to a table, as faust's recovery does."""
    if getattr(table, "_on_changelog_event", None):
        for event in events:
            await table.on_changelog_event(event)
    table.apply_changelog_batch(events)


async def load_changelogs(librdkafka_conf: Mapping[str, Any], ranges: Mapping[TP, LoadRange],
                          should_stop: Callable[[], bool] = lambda: False, *, timeout_s: float = 600.0,
                          apply: ApplyHook = _apply,
                          progress: Callable[[int], None] | None = None) -> dict[TP, int]:
    """Read and apply each range; returns, per partition, the offset the table now holds up to.

    A partition is done when its target record was applied or the consumer reports its end
    (read_committed: its last stable offset, at or past the target, so everything the target
    asked for was delivered; the target may be a transaction marker). Stops early, with what
    was applied so far, when ``should_stop()`` (a new rebalance) or after ``timeout_s``.
    """
    from confluent_kafka import Consumer, KafkaError
    from confluent_kafka import TopicPartition as CTP

    todo = {tp: r for tp, r in ranges.items() if r.target > r.after}
    held: dict[TP, int] = {tp: r.after for tp, r in ranges.items()}
    if not todo:
        return held
    consumer = Consumer({
        **librdkafka_conf,
        "group.id": "paystream-recovery-loader",  # never joins a group (assign), never commits
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
    })
    by_key = {(tp.topic, tp.partition): tp for tp in todo}
    pending = set(todo)
    applied = 0
    deadline = time.monotonic() + timeout_s
    try:
        consumer.assign([CTP(tp.topic, tp.partition, r.after + 1) for tp, r in todo.items()])
        while pending and not should_stop():
            if time.monotonic() > deadline:
                log.warning("bulk recovery stopped after %.0f s with %d partition(s) left", timeout_s, len(pending))
                break
            batch: list[Any] = await asyncio.to_thread(consumer.consume, 20_000, 0.5)
            chunks: dict[TP, list[Any]] = {}
            for msg in batch:
                tp = by_key.get((msg.topic(), msg.partition()))
                if tp is None or tp not in pending:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(tp)  # everything below the end was delivered
                        held[tp] = max(held[tp], todo[tp].target)
                        continue
                    raise RuntimeError(f"bulk recovery of {tp} failed: {err}")
                offset = msg.offset()
                if offset <= held[tp] or offset > todo[tp].target:
                    continue
                chunks.setdefault(tp, []).append(msg)
                held[tp] = offset
                if offset >= todo[tp].target:
                    pending.discard(tp)
            for tp, msgs in chunks.items():
                table = todo[tp].table
                topic = table.changelog_topic
                for start in range(0, len(msgs), APPLY_CHUNK):
                    events = [await topic.decode(_faust_message(tp, m), propagate=True)
                              for m in msgs[start:start + APPLY_CHUNK]]
                    await apply(table, events)
                applied += len(msgs)
            if progress is not None:
                progress(applied)
    finally:
        await asyncio.to_thread(consumer.close)
    return held


def _faust_message(tp: TP, msg: Any) -> Message:
    key, value = msg.key(), msg.value()
    ts_type, ts = msg.timestamp()
    return Message(tp.topic, tp.partition, msg.offset(), ts / 1000.0 if ts is not None else 0.0, ts_type,
                   msg.headers() or [], key, value, None, len(key) if key else 0, len(value) if value else 0, tp=tp)
