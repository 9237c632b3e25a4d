"""Reading batches from confluent-kafka consumers without waiting for a batch to fill.

``Consumer.consume(n, timeout)`` returns when ``n`` messages are in or when ``timeout`` has
passed: under light load every batch waits the whole timeout (measured: one message, ``consume(1000,
2.0)`` returned after 2.0 s). A sink waiting 0.2 s that way added up to 0.2 s to every row's
latency, and the benchmark's watcher (0.05 s) up to 50 ms to every measured event.
``take_available`` waits only while nothing is there, then takes what has already been fetched
(or arrives within ``linger_s`` of the first message): under light load a batch leaves at most
``linger_s`` after its first message, under heavy load full batches leave at once.

A linger of 0 gives the lowest latency and the most batches: the benchmark's watcher uses it (it
measures when events become visible; ``paystream tail``'s reader keeps ``consume(500, 1.0)``).
The sinks linger (``PAYSTREAM_SINK_BATCH_LINGER_S``, 0.2 s):
a batch costs them a Postgres transaction and an offset commit, and on the benchmark's two cores
lingering 0.05 s took CPU the worker needed (its idle commits fell from 147 to 51 in 10 s at
25 % load; event p50 82 → 124 ms, p99 at 75 % load 2.2 → 3.1 s).
"""

from __future__ import annotations

from typing import Any


def take_available(consumer: Any, max_messages: int, wait_s: float, linger_s: float = 0.0) -> list[Any]:
    """Up to ``max_messages`` messages: waits up to ``wait_s`` for the first, then at most
    ``linger_s`` for the rest (0: only what is already fetched)."""
    first = consumer.poll(wait_s)
    if first is None:
        return []
    if max_messages <= 1:
        return [first]
    return [first, *consumer.consume(num_messages=max_messages - 1, timeout=linger_s)]
