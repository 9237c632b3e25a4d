"""faust's Kafka consumer in the worker's own event loop, not in a thread of its own.

faust's aiokafka driver runs the consumer in a dedicated thread with its own event loop
(``AIOKafkaConsumerThread``, a mode ``ServiceThread``): every fetch, commit, seek and position
query is a call queued to that thread and a future resolved back in the main loop, each hop a
self-pipe write and a wake-up of the other loop, and the two threads take turns on the GIL.
A py-spy profile at 300 payments/s put a third of the worker's busy samples in that thread,
much of it socket writes and epoll of those hand-overs (docs/performance.md, Session 9), and an
input the idle agent waited for was 34-79 ms old when it got it at 600/s.

With ``PAYSTREAM_CONSUMER_IN_LOOP=true`` the same ``AIOKafkaConsumerThread`` runs as an ordinary
service of the main loop: ``call_thread`` awaits the call directly, no thread is started, and the
aiokafka consumer (its fetcher, heartbeats and group coordination) lives in the worker's loop.
Everything else of faust's consumer is unchanged, the rebalance callbacks included (they still go
through the consumer's method queue, now a task of the same loop).

Measured (``python -m bench.rates``, alternating with the thread; docs/performance.md, Session
13): at 475 payments/s event p50 / p99 47 / 101-122 ms against 54-57 / 129-162 ms, the worker at
73-74 % of a core against 81-82 %; bursts and recovery unchanged.

The price: the consumer's heartbeats share the loop with the agent, so a step of the loop that
held it longer than the session timeout (10 s) would cost the worker its partitions. The
worker's longest steps are a batch's apply (tens of ms) and recovery's bulk loads, which yield
between chunks.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

_APPLIED = False
_original_new_consumer_thread = faust_aiokafka.Consumer._new_consumer_thread


class InLoopConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """``AIOKafkaConsumerThread`` as a plain service of the loop that owns the consumer."""

    # No thread signals the end of its own shutdown: Service.stop must not wait for it.
    wait_for_shutdown = False

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        loop = kwargs.get("loop")
        # ServiceThread runs the service in thread_loop; make that the caller's loop.
        super().__init__(consumer, thread_loop=loop, **kwargs)
        # ServiceThread only closes a loop it created; this one is the worker's.
        self._close_thread_loop_on_stop = False

    async def start(self) -> None:
        # ServiceThread.start would start a thread running _serve(); do _serve's start here.
        assert not self._thread_started.is_set()
        self._thread_started.set()
        await self._default_start()
        await self.on_thread_started()

    async def on_stop(self) -> None:
        # What the thread did at its end (_shutdown_thread): stop the method queue, then the
        # aiokafka consumer (leaving the group).
        await super().on_stop()
        await self.on_thread_stop()

    # ServiceThread leaves these to the thread's own shutdown; in the loop, Service's do it.
    def _stopped_set(self) -> None:
        self._stopped.set()

    async def _stop_children(self) -> None:
        await self._default_stop_children()

    async def _stop_futures(self) -> None:
        await self._default_stop_futures()

    async def _stop_exit_stacks(self) -> None:
        await self._default_stop_exit_stacks()

    async def call_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # As the thread's method queue does: some of the calls are plain functions
        # (aiokafka's subscribe, seek), the others coroutines.
        result = fun(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def cast_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        result = fun(*args, **kwargs)
        if inspect.isawaitable(result):
            self.add_future(result)


def _new_consumer_thread(self: Any) -> Any:
    if getattr(self.app, "_paystream_consumer_in_loop", False):
        return InLoopConsumerThread(self, loop=self.loop, beacon=self.beacon)
    return _original_new_consumer_thread(self)


def apply() -> None:
    global _APPLIED
    if _APPLIED:
        return
    faust_aiokafka.Consumer._new_consumer_thread = _new_consumer_thread  # type: ignore[method-assign]
    _APPLIED = True


def use_consumer_in_loop(app: Any) -> None:
    """Make ``app``'s consumer run in its event loop (call before the app starts)."""
    apply()
    app._paystream_consumer_in_loop = True
