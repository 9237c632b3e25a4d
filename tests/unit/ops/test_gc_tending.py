"""The worker's garbage-collector tending (``paystream.metrics.tend_gc``): live objects are
frozen out of the collector's generations at each interval, and a full unfrozen collection
runs at the longer interval, timed in ``paystream_gc_pause_seconds{generation="full"}``."""

from __future__ import annotations

import asyncio
import gc
import weakref

from paystream import metrics


def _count(generation: str) -> float:
    for family in metrics.GC_PAUSE.collect():
        for sample in family.samples:
            if sample.name.endswith("_count") and sample.labels.get("generation") == generation:
                return sample.value
    return 0.0


def test_frozen_garbage_survives_collections_until_the_full_one() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a reference cycle: only the collector frees it

    async def main() -> tuple[bool, bool, float]:
        before = _count("full")
        task = asyncio.ensure_future(metrics.tend_gc(0.01, 0.3))
        gc.disable()  # no automatic collection frees the node before a freeze takes it
        try:
            await asyncio.sleep(0.02)
            node = Node()
            ref = weakref.ref(node)
            del node
            await asyncio.sleep(0.05)  # frozen with everything else alive
            gc.collect()  # an ordinary full collection does not walk frozen objects
            alive_after_collect = ref() is not None
            await asyncio.sleep(0.4)  # the tending's full collection unfroze and collected
            return alive_after_collect, ref() is None, _count("full") - before
        finally:
            task.cancel()
            gc.enable()
            gc.unfreeze()

    alive_after_collect, reclaimed, fulls = asyncio.run(main())
    assert alive_after_collect  # the freeze kept the collector off it
    assert reclaimed  # the periodic full collection freed it
    assert fulls >= 1


def test_the_young_generation_threshold_is_set_and_zero_keeps_cpython_s() -> None:
    import gc

    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        metrics.tune_gc(0)
        assert gc.get_threshold() == (700, 10, 10)
        metrics.tune_gc(20_000)
        assert gc.get_threshold() == (20_000, 10, 10)  # the older generations' thresholds kept
        from paystream.config import Settings

        assert Settings().gc_young_threshold == 20_000  # the worker's default (docs/performance.md)
    finally:
        gc.set_threshold(*before)
