"""The fetcher's message hand-over without tasks (streams/faust_fixes.py ``_wait_first_eager``):
a callback that finishes at once is run with no task made; one that suspends is continued
inside faust's own ``wait_first``, so it still completes, still gets its exceptions, and is
still abandoned (cancelled, its cleanup run) when flow control is suspended, as faust does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mode import Service
from mode.utils.locks import Event

from streams import faust_fixes


class Fetching(Service):
    """The two attributes of faust's Consumer the hand-over uses: wait_first and suspend_flow."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = Event()

    async def hand_over(self, callback: Any) -> Any:
        return await faust_fixes._wait_first_eager(self, callback, self.suspend_flow.wait())


def test_a_callback_that_does_not_suspend_runs_without_a_task() -> None:
    async def main() -> tuple[list[int], int]:
        svc = Fetching()
        got: list[int] = []
        made = 0
        loop = asyncio.get_running_loop()
        factory = loop.get_task_factory()

        def counting(loop: Any, coro: Any, **kw: Any) -> Any:
            nonlocal made
            made += 1
            return asyncio.Task(coro, loop=loop, **kw) if factory is None else factory(loop, coro, **kw)

        async def deliver(n: int) -> None:
            got.append(n)

        loop.set_task_factory(counting)
        try:
            for n in range(100):
                await svc.hand_over(deliver(n))
        finally:
            loop.set_task_factory(factory)
        return got, made

    got, made = asyncio.run(main())
    assert got == list(range(100))
    assert made == 0  # faust's wait_first made four tasks per message


def test_a_suspended_callback_is_continued_to_its_end() -> None:
    async def main() -> list[Any]:
        svc = Fetching()
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        queue.put_nowait(0)  # full: the next put suspends
        steps: list[Any] = []

        async def deliver() -> None:
            steps.append("before")
            await queue.put(1)  # suspends until the consumer takes one
            await asyncio.sleep(0)  # a bare yield after the first suspension
            steps.append("after")

        async def take_soon() -> None:
            await asyncio.sleep(0.05)
            steps.append(("took", queue.get_nowait()))

        taker = asyncio.ensure_future(take_soon())
        await asyncio.wait_for(svc.hand_over(deliver()), 5)
        await taker
        steps.append(("left", queue.get_nowait()))
        return steps

    assert asyncio.run(main()) == ["before", ("took", 0), "after", ("left", 1)]


def test_an_exception_after_a_suspension_reaches_the_fetcher() -> None:
    async def main() -> None:
        svc = Fetching()

        async def deliver() -> None:
            await asyncio.sleep(0.01)
            raise ValueError("undecodable")

        await svc.hand_over(deliver())

    with pytest.raises(ValueError, match="undecodable"):
        asyncio.run(main())


def test_flow_suspension_abandons_a_blocked_callback_and_runs_its_cleanup() -> None:
    async def main() -> list[str]:
        svc = Fetching()
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        steps: list[str] = []

        async def deliver() -> None:
            try:
                await never  # e.g. a full queue nobody drains during a rebalance
                steps.append("delivered")
            except asyncio.CancelledError:
                steps.append("cancelled")
                raise
            finally:
                steps.append("cleanup")

        async def rebalance() -> None:
            await asyncio.sleep(0.05)
            svc.suspend_flow.set()

        suspender = asyncio.ensure_future(rebalance())
        await asyncio.wait_for(svc.hand_over(deliver()), 5)
        await asyncio.sleep(0.01)  # the abandoned callback's task runs its cancellation
        await suspender
        return steps

    assert asyncio.run(main()) == ["cancelled", "cleanup"]


def test_while_flow_is_suspended_faust_own_wait_first_is_used() -> None:
    async def main() -> int:
        svc = Fetching()
        svc.suspend_flow.set()
        made = 0
        loop = asyncio.get_running_loop()

        def counting(loop: Any, coro: Any, **kw: Any) -> Any:
            nonlocal made
            made += 1
            return asyncio.Task(coro, loop=loop, **kw)

        async def deliver() -> None:
            return None

        loop.set_task_factory(counting)
        try:
            await svc.hand_over(deliver())
        finally:
            loop.set_task_factory(None)
        await asyncio.sleep(0.01)
        return made

    # Not run directly: faust's wait_first wraps it in its tasks and returns at the flow event.
    assert asyncio.run(main()) >= 2


# --- Commits on idle (streams/input_guard.py IdleCommitter) -------------------------------------


class CountingConsumer:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started: list[float] = []
        self.running = 0
        self.overlapped = False

    async def commit(self) -> bool:
        self.started.append(asyncio.get_running_loop().time())
        self.running += 1
        self.overlapped |= self.running > 1
        await asyncio.sleep(self.seconds)
        self.running -= 1
        return True


class AppWithConsumer:
    def __init__(self, consumer: CountingConsumer) -> None:
        self.consumer = consumer
        self.should_stop = False


def test_idle_commits_coalesce_never_overlap_and_keep_their_gap() -> None:
    from streams.input_guard import IdleCommitter

    async def main() -> CountingConsumer:
        consumer = CountingConsumer(seconds=0.02)
        committer = IdleCommitter(AppWithConsumer(consumer), min_gap_s=0.03)  # type: ignore[arg-type]
        for _ in range(50):  # fifty idle moments at once: one commit
            committer.poke()
        await asyncio.sleep(0.005)  # the first commit is running now
        for _ in range(50):  # fifty more while it runs: one more commit after it, not fifty
            committer.poke()
        assert committer.task is not None
        await committer.task
        committer.poke()  # idle again later: a new commit
        await committer.task
        return consumer

    consumer = asyncio.run(main())
    assert len(consumer.started) == 3
    assert not consumer.overlapped
    gaps = [b - a for a, b in zip(consumer.started, consumer.started[1:], strict=False)]
    assert all(gap >= 0.029 for gap in gaps), gaps


def test_the_input_queue_is_read_from_the_stream_channel() -> None:
    from streams.input_guard import input_queue_empty

    class Chan:
        def __init__(self, n: int) -> None:
            self.queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(n):
                self.queue.put_nowait(i)

    class Stream:
        def __init__(self, n: int) -> None:
            self.channel = Chan(n)

    assert input_queue_empty(Stream(0)) is True
    assert input_queue_empty(Stream(2)) is False
    assert input_queue_empty(object()) is False  # unknown: never taken for idle
