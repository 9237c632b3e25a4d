"""take_available on the real broker: a trickle is not held back waiting for a batch to fill,
and what piled up is taken in one call.

confluent-kafka's ``consume(n, timeout)`` returns when n messages are in or the timeout passed:
the sinks (0.2 s) and the benchmark's watcher (0.05 s) waited that long on every light batch.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from paystream.consuming import take_available


@pytest.fixture()
def topic(stack_env: dict[str, str]) -> Iterator[tuple[str, str]]:
    bootstrap = stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"]
    name = f"test-take-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, 1, 1)])[name].result(30)
    yield bootstrap, name
    admin.delete_topics([name])


def _consumer(bootstrap: str, name: str) -> Consumer:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"take-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 10})
    consumer.assign([TopicPartition(name, 0, 0)])
    return consumer


def _produce(bootstrap: str, name: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in values:
        producer.produce(name, value)
    assert producer.flush(30) == 0


def test_one_message_comes_back_without_waiting_for_the_batch_or_the_timeout(topic: tuple[str, str]) -> None:
    bootstrap, name = topic
    consumer = _consumer(bootstrap, name)
    try:
        assert take_available(consumer, 1000, 0.5) == []  # nothing there: waits, returns empty
        _produce(bootstrap, name, [b"only"])
        started = time.monotonic()
        got = take_available(consumer, 1000, 60.0)
        waited = time.monotonic() - started
        # consume(1000, 60.0) would have held this one message for the whole minute.
        assert [m.value() for m in got] == [b"only"]
        assert waited < 30.0
    finally:
        consumer.close()


def test_what_piled_up_is_taken_in_order_up_to_the_batch_size(topic: tuple[str, str]) -> None:
    bootstrap, name = topic
    values = [f"m{i}".encode() for i in range(300)]
    _produce(bootstrap, name, values)
    consumer = _consumer(bootstrap, name)
    try:
        got: list[bytes] = []
        calls = 0
        while len(got) < len(values) and calls < 200:
            batch = take_available(consumer, 100, 5.0)
            assert len(batch) <= 100
            got += [m.value() for m in batch if m.error() is None]
            calls += 1
        assert got == values
        assert calls < len(values)  # batches, not one message per call
    finally:
        consumer.close()
