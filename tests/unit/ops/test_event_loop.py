"""The worker's event loop implementation (PAYSTREAM_EVENT_LOOP): which loop the worker's
processes get, and that faust's consumer runs on it. The worker runs on uvloop by default, so the
integration suite and the chaos scenarios exercise it on the real stack."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvloop

from paystream.config import Settings
from paystream.worker import use_event_loop


@pytest.fixture(autouse=True)
def _asyncio_policy_after() -> Any:
    yield
    asyncio.set_event_loop_policy(None)


def test_uvloop_is_the_default_and_makes_every_new_loop_a_libuv_loop() -> None:
    assert Settings(kafka_bootstrap="127.0.0.1:9").event_loop == "uvloop"
    use_event_loop("uvloop")
    loop = asyncio.new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_asyncio_puts_asyncios_own_loop_back() -> None:
    use_event_loop("uvloop")
    use_event_loop("asyncio")
    loop = asyncio.new_event_loop()
    try:
        assert not isinstance(loop, uvloop.Loop) and isinstance(loop, asyncio.BaseEventLoop)
    finally:
        loop.close()


def test_faust_consumer_in_the_loop_runs_its_calls_on_uvloop() -> None:
    from streams.app import create_app

    use_event_loop("uvloop")

    async def calls() -> None:
        app: Any = create_app(Settings(kafka_bootstrap="127.0.0.1:9", app_id="uv-calls", consumer_in_loop=True))
        thread = app.consumer._thread
        assert isinstance(thread.thread_loop, uvloop.Loop)

        async def where() -> asyncio.AbstractEventLoop:
            await asyncio.sleep(0)
            return asyncio.get_running_loop()

        assert await thread.call_thread(where) is asyncio.get_running_loop()

    asyncio.run(calls())
