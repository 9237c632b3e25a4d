"""The raw-Kafka baseline: what one Python process does with the same messages and no payment
logic — consume with confluent-kafka, Avro-decode, Avro-encode, produce — on the same broker.

Two flavours, to compare like with like: ``at_least_once`` (idempotent producer, offsets
committed asynchronously) and ``exactly_once`` (a transactional producer committing the output
and the input offsets together every ``commit_interval_s``, as paystream's worker does).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, Producer

from paystream.config import Settings
from streams import topics
from streams.avro import codecs, registry_client

BASELINE_IN = "bench.baseline.requests"
BASELINE_OUT = "bench.baseline.out"


@dataclass(frozen=True)
class BaselineResult:
    guarantee: str
    messages: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def run_baseline(settings: Settings, expected: int, guarantee: str, commit_interval_s: float,
                 tick: Callable[[int], None] | None = None, timeout: float = 300.0) -> BaselineResult:
    """Consume ``expected`` messages of BASELINE_IN from offset 0, decode and re-encode each as
    a command, produce to BASELINE_OUT; the clock runs from the first message read to the last
    output acknowledged (and, with exactly_once, committed)."""
    codec = codecs(registry_client(settings.schema_registry_url))[topics.REQUESTS]
    group = f"bench-baseline-{guarantee}-{uuid.uuid4().hex[:8]}"
    eos = guarantee == "exactly_once"
    consumer = Consumer({
        "bootstrap.servers": settings.kafka_bootstrap, "group.id": group, "auto.offset.reset": "earliest",
        "enable.auto.commit": False, "isolation.level": "read_committed",
    })
    pconf = {"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True, "linger.ms": 5,
             "partitioner": "murmur2_random"}
    if eos:
        pconf["transactional.id"] = group
    producer = Producer(pconf)
    if eos:
        producer.init_transactions(30)
    consumer.subscribe([BASELINE_IN])
    done = 0
    t0: float | None = None
    last_commit = time.monotonic()
    in_tx = False
    deadline = time.monotonic() + timeout
    try:
        while done < expected and time.monotonic() < deadline:
            msgs = consumer.consume(500, 0.2)
            if not msgs:
                continue
            if t0 is None:
                t0 = time.time()
            if eos and not in_tx:
                producer.begin_transaction()
                in_tx = True
            for msg in msgs:
                if msg.error() is not None:
                    continue
                value = codec.decode(msg.value())
                out = codec.encode(value)
                while True:
                    try:
                        producer.produce(BASELINE_OUT, key=msg.key(), value=out)
                        break
                    except BufferError:
                        producer.poll(0.05)
                done += 1
            producer.poll(0)
            now = time.monotonic()
            if eos and (now - last_commit >= commit_interval_s or done >= expected):
                producer.send_offsets_to_transaction(consumer.position(consumer.assignment()),
                                                     consumer.consumer_group_metadata(), 30)
                producer.commit_transaction(30)
                in_tx = False
                last_commit = now
            elif not eos and (now - last_commit >= commit_interval_s or done >= expected):
                consumer.commit(asynchronous=True)
                last_commit = now
            if tick is not None:
                tick(done)
        if producer.flush(60) != 0:
            raise RuntimeError("baseline output not delivered")
        t1 = time.time()
    finally:
        consumer.close()
    if done < expected or t0 is None:
        raise RuntimeError(f"baseline read {done} of {expected} messages in {timeout:.0f}s")
    return BaselineResult(guarantee, done, t1 - t0)
