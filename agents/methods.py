"""Every worker's read-only view of all saved payment methods, for cross-partition lookups.

Method commands are keyed by the method id, so a method lives in the ``payment-methods``
table of its own partition; a CreatePayment naming that method as ``saved_method_id`` is keyed
by its payment id and may be processed on another partition, by another worker. The
authoritative, exactly-once state is the partitioned table; this directory replicates its
changelog (read_committed, no consumer group, all partitions, from the beginning) into a dict
in every worker — what a faust GlobalTable does, without the GlobalTable's known recovery loop
with several workers (see faust's own warning on ``GlobalTable``) and without moving the
table's changelog writes out of the input partition's transaction.

Values are the table's JSON (sealed token only: the directory never holds a plaintext token).
A lookup that misses first waits (bounded) until the directory has read up to the changelog's
current end, so a method added a moment ago on another worker is found.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from paystream.transport import KafkaTarget, as_kafka

log = logging.getLogger("paystream.methods")


class MethodDirectory:
    def __init__(self, bootstrap: KafkaTarget, changelog_topic: str) -> None:
        self.kafka = as_kafka(bootstrap)
        self.topic = changelog_topic
        self.methods: dict[str, dict[str, Any]] = {}
        self._consumer: Any = None
        self._ready = asyncio.Event()

    def get(self, method_id: str) -> dict[str, Any] | None:
        return self.methods.get(method_id)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        try:
            method_id = json.loads(key)
        except ValueError:
            method_id = key.decode("utf-8", "replace")
        if not isinstance(method_id, str):
            return
        if value is None:
            self.methods.pop(method_id, None)
            return
        try:
            decoded = json.loads(value)
        except ValueError:
            log.warning("unreadable payment-methods changelog value for one key; skipped")
            return
        if isinstance(decoded, dict):
            self.methods[method_id] = decoded
        elif decoded is None:
            self.methods.pop(method_id, None)

    async def run(self) -> None:
        """Follow the changelog until cancelled (restarts the consumer after errors)."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        while True:
            consumer = AIOKafkaConsumer(**self.kafka.aiokafka(), enable_auto_commit=False,
                                        isolation_level="read_committed", group_id=None)
            try:
                await consumer.start()
                partitions: set[int] | None = None
                deadline = time.monotonic() + 60
                while not partitions and time.monotonic() < deadline:
                    # Fresh cluster metadata; the changelog appears once faust has created it.
                    metadata = await consumer._client.fetch_all_metadata()
                    partitions = metadata.partitions_for_topic(self.topic)
                    if not partitions:
                        await asyncio.sleep(0.5)
                if not partitions:
                    log.warning("changelog %s not found yet; retrying", self.topic)
                    continue
                tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                self._consumer = consumer
                while True:
                    batch = await consumer.getmany(timeout_ms=500)
                    for records in batch.values():
                        for rec in records:
                            self.apply(rec.key, rec.value)
                    if not self._ready.is_set() and await self._caught_up():
                        self._ready.set()
                        log.info("payment-method directory loaded: %d methods", len(self.methods))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("payment-method directory failed; restarting")
                await asyncio.sleep(1)
            finally:
                self._consumer = None
                await consumer.stop()

    async def _caught_up(self) -> bool:
        consumer = self._consumer
        if consumer is None:
            return False
        tps = list(consumer.assignment())
        ends = await consumer.end_offsets(tps)  # the last stable offset with read_committed
        for tp in tps:
            if await consumer.position(tp) < ends[tp]:
                return False
        return True

    async def refresh(self, timeout_s: float = 3.0) -> bool:
        """Wait until everything committed to the changelog so far has been read (bounded)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if await self._caught_up():
                    return True
            except Exception:
                pass
            await asyncio.sleep(0.05)
        return False
