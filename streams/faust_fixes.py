"""Targeted fixes for faust-streaming 0.15.3 behaviour that breaks a payment service.

Each fix names the symptom we observed, so it can be dropped once faust fixes it upstream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

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
    _APPLIED = True
