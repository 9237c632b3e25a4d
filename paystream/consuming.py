"""Reading batches from confluent-kafka consumers without waiting for a batch to fill.

``Consumer.consume(n, timeout)`` returns when ``n`` messages are in or when ``timeout`` has
passed: under light load every batch waits the whole timeout (measured: one message, ``consume(1000,
2.0)`` returned after 2.0 s). A sink waiting 0.2 s that way added up to 0.2 s to every row's
latency, and the benchmark's watcher (0.05 s) up to 50 ms to every measured event.
``take_available`` waits only while nothing is there, then takes what has already been fetched:
one message at a time when it trickles in, full batches under load (they pile up meanwhile).
"""

from __future__ import annotations

from typing import Any


def take_available(consumer: Any, max_messages: int, wait_s: float) -> list[Any]:
    """Up to ``max_messages`` messages: waits up to ``wait_s`` for the first, none for the rest."""
    first = consumer.poll(wait_s)
    if first is None:
        return []
    if max_messages <= 1:
        return [first]
    return [first, *consumer.consume(num_messages=max_messages - 1, timeout=0)]
