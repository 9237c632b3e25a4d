"""Targeted fixes for faust-streaming 0.15.3 behaviour that breaks a payment service.

Each fix names the symptom we observed, so it can be dropped once faust fixes it upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

_APPLIED = False


async def _highwaters_from_list_offsets(self: Any, partitions: list[TP]) -> Mapping[TP, int]:
    """End offsets from the broker (ListOffsets), under exactly_once too.

    faust asks the consumer's cached ``last_stable_offset`` under exactly_once, which is -1 for
    a partition the consumer has not fetched yet: table recovery after a rebalance then fails
    with ``ConsistencyError: persisted offset ... higher than ... highwater (N > -1)`` and the
    worker stops. aiokafka's ``end_offsets`` honours the consumer's read_committed isolation, so
    it returns the last stable offset the broker knows.
    """
    consumer = self._ensure_consumer()
    return cast(Mapping[TP, int], await consumer.end_offsets(partitions))


def apply() -> None:
    global _APPLIED
    if _APPLIED:
        return
    faust_aiokafka.AIOKafkaConsumerThread._highwaters = _highwaters_from_list_offsets  # type: ignore[method-assign]
    faust_consumer.Consumer._commit_offsets = _commit_offsets_between_inputs  # type: ignore[method-assign]
    _APPLIED = True


def commit_lock(app: Any) -> asyncio.Lock:
    """The lock that keeps a commit out of the middle of an input being applied."""
    lock: asyncio.Lock | None = getattr(app, "_paystream_commit_lock", None)
    if lock is None:
        lock = asyncio.Lock()
        app._paystream_commit_lock = lock
    return lock


_original_commit_offsets = faust_consumer.Consumer._commit_offsets


async def _commit_offsets_between_inputs(self: Any, offsets: Mapping[TP, int],
                                         start_new_transaction: bool = True) -> bool:
    """Commit a transaction only between two inputs, with the table writes flushed into it.

    faust commits on a timer: under exactly_once a commit could fall while an input was half
    applied (its first outputs in the committed transaction, its offset not), and it did not
    flush its producer buffer first, so table changelog writes of committed inputs could land in
    the next transaction. A worker killed in between left outputs committed and table state lost:
    a new owner republished events with the same sequence numbers (seen in the chaos rebalance
    scenario). The payments agent holds ``commit_lock`` while it applies and acks each input.
    """
    if not self.in_transaction:
        return await _original_commit_offsets(self, offsets, start_new_transaction)
    async with commit_lock(self.app):
        await self.app.producer.flush()
        return await _original_commit_offsets(self, offsets, start_new_transaction)
