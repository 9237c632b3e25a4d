"""streams/inloop_consumer.py without a broker: which consumer "thread" a faust app gets, that the
in-loop one runs every delegated call in the caller's own loop and thread, and that it starts and
stops without a thread. The worker runs this way by default, so the integration suite and the
chaos scenarios exercise it on the real stack; the chaos scenarios in faust's layout
(tests/integration/test_chaos_short.py) keep the threaded consumer covered."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka

from paystream.config import Settings
from streams.app import create_app
from streams.inloop_consumer import InLoopConsumerThread


def _consumer_thread(in_loop: bool, app_id: str) -> Any:
    app: Any = create_app(Settings(kafka_bootstrap="127.0.0.1:9", app_id=app_id, consumer_in_loop=in_loop))
    return app.consumer._thread


def test_the_setting_chooses_where_each_apps_consumer_runs() -> None:
    async def build() -> None:
        loop = asyncio.get_running_loop()
        in_loop = _consumer_thread(True, "il-a")
        threaded = _consumer_thread(False, "il-b")  # the patch is global, the choice per app
        assert type(in_loop) is InLoopConsumerThread and in_loop.thread_loop is loop
        assert type(threaded) is faust_aiokafka.AIOKafkaConsumerThread and threaded.thread_loop is not loop
        threaded.thread_loop.close()

    asyncio.run(build())
    assert Settings(kafka_bootstrap="127.0.0.1:9").consumer_in_loop is True  # the worker's default


def test_delegated_calls_run_in_the_callers_loop_and_thread() -> None:
    async def calls() -> None:
        thread = _consumer_thread(True, "il-calls")
        me = threading.get_ident()
        loop = asyncio.get_running_loop()

        async def coroutine(x: int) -> tuple[int, asyncio.AbstractEventLoop, int]:
            return threading.get_ident(), asyncio.get_running_loop(), x

        def plain(x: int, *, y: int) -> tuple[int, int]:  # aiokafka's subscribe and seek are plain calls
            return threading.get_ident(), x + y

        def refuses() -> None:
            raise KeyError("nope")

        assert await thread.call_thread(coroutine, 1) == (me, loop, 1)
        assert await thread.call_thread(plain, 2, y=3) == (me, 5)
        with pytest.raises(KeyError):
            await thread.call_thread(refuses)
        cast_ran: list[int] = []

        async def cast(x: int) -> None:
            cast_ran.append(x)

        await thread.cast_thread(cast, 7)
        await asyncio.sleep(0)
        assert cast_ran == [7]

    asyncio.run(calls())


class _Client:
    """Stands in for the aiokafka consumer (which would need a broker): records where it ran."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    async def start(self) -> None:
        self.events.append(("start", threading.get_ident()))

    async def stop(self) -> None:
        self.events.append(("stop", threading.get_ident()))


def test_it_starts_and_stops_in_the_loop_without_a_thread() -> None:
    client = _Client()

    async def lifecycle() -> None:
        thread = _consumer_thread(True, "il-life")
        thread._create_consumer = lambda loop: client
        threads_before = threading.active_count()
        await thread.start()
        assert thread._thread is None and threading.active_count() == threads_before
        assert thread.method_queue.started
        await asyncio.wait_for(thread.stop(), 5)  # no thread to signal the end of its shutdown
        assert thread.method_queue.should_stop and thread._stopped.is_set()

    asyncio.run(lifecycle())
    me = threading.get_ident()
    assert client.events == [("start", me), ("stop", me)]
