"""The exactly-once fixes to faust (streams/faust_fixes.py), on their own: a commit waits for
the input in hand and for every table write made so far; an input that faust drops before the
agent applied it is not acknowledged (so not committed) but handed back to be fetched again."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from streams import faust_fixes


class FakeConsumer:
    """Just what the patched methods touch: faust's Consumer attributes, no Kafka."""

    def __init__(self, app: Any, assigned: set[TP]) -> None:
        self.app = app
        self.assigned = assigned
        self._unacked_messages: set[Any] = set()
        self._waiting_for_ack: asyncio.Future[None] | None = None
        self.in_transaction = True
        self.committed: list[dict[TP, int]] = []

    def assignment(self) -> set[TP]:
        return self.assigned


class Message:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.topic, self.tp, self.offset, self.acked = topic, TP(topic, partition), offset, False


def message(topic: str, partition: int, offset: int) -> Message:
    return Message(topic, partition, offset)


def test_an_unapplied_input_is_not_acknowledged_but_handed_back(monkeypatch: pytest.MonkeyPatch) -> None:
    app = SimpleNamespace()
    tp = TP("payment.requests", 1)
    acked: list[int] = []
    refused: list[Message] = []
    last_applied = {"offset": 10}
    monkeypatch.setattr(faust_fixes, "_original_ack", lambda self, m: acked.append(m.offset) or True)
    faust_fixes.install_ack_guard(app, {"payment.requests"}, lambda t, o: o <= last_applied["offset"], refused.append)
    consumer = FakeConsumer(app, {tp})

    applied_msg, dropped = message("payment.requests", 1, 10), message("payment.requests", 1, 11)
    consumer._unacked_messages.add(dropped)
    assert faust_fixes._ack_applied_only(consumer, applied_msg) is True
    assert faust_fixes._ack_applied_only(consumer, dropped) is False
    assert acked == [10] and refused == [dropped]
    assert dropped not in consumer._unacked_messages  # a rebalance does not wait for it

    # Once applied (the gap healer read it back), acknowledging it again goes through, so
    # faust's offsets for the partition are contiguous again and its transaction can commit.
    last_applied["offset"] = 12
    assert faust_fixes._ack_applied_only(consumer, dropped) is True
    assert acked == [10, 11]

    # Another topic, or a partition no longer ours, is acknowledged as faust would.
    other = message("elsewhere", 1, 99)
    revoked = message("payment.requests", 2, 50)
    assert faust_fixes._ack_applied_only(consumer, other) and faust_fixes._ack_applied_only(consumer, revoked)
    assert acked == [10, 11, 99, 50] and len(refused) == 1


def test_a_commit_waits_for_the_input_in_hand_and_its_table_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> list[str]:
        app = SimpleNamespace()
        consumer = FakeConsumer(app, set())
        order: list[str] = []

        async def original_commit(self: Any, offsets: Any, start_new_transaction: bool = True) -> bool:
            order.append("commit")
            return True

        monkeypatch.setattr(faust_fixes, "_original_commit_offsets", original_commit)
        write: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        faust_fixes.pending_changelog_writes(app).track(write)

        async def agent_input() -> None:
            async with faust_fixes.commit_lock(app):
                order.append("input starts")
                await asyncio.sleep(0.05)  # an await in the middle of an input: the timer fires
                order.append("input ends")

        async def table_write_delivered() -> None:
            await asyncio.sleep(0.1)
            order.append("write delivered")
            write.set_result(None)

        agent = asyncio.ensure_future(agent_input())
        await asyncio.sleep(0.01)
        delivered = asyncio.ensure_future(table_write_delivered())
        await faust_fixes._commit_offsets_between_inputs(consumer, {TP("t", 0): 1})
        await asyncio.gather(agent, delivered)
        return order

    assert asyncio.run(scenario()) == ["input starts", "input ends", "write delivered", "commit"]


def test_a_commit_refuses_to_go_without_its_table_writes() -> None:
    async def scenario() -> None:
        app = SimpleNamespace()
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        faust_fixes.pending_changelog_writes(app).track(done)
        faust_fixes.pending_changelog_writes(app).track(never)
        done.set_result(None)
        await faust_fixes.wait_for_changelog_writes(app, timeout=0.05)

    with pytest.raises(RuntimeError, match="not delivered"):
        asyncio.run(scenario())



def test_the_wait_ends_when_the_last_pending_write_is_delivered_failed_or_not() -> None:
    async def scenario() -> list[str]:
        app = SimpleNamespace()
        loop = asyncio.get_running_loop()
        writes: list[asyncio.Future[None]] = [loop.create_future() for _ in range(3)]
        for w in writes:
            faust_fixes.pending_changelog_writes(app).track(w)
        order: list[str] = []

        async def deliver() -> None:
            for n, w in enumerate(writes):
                await asyncio.sleep(0.02)
                order.append(f"write {n} done")
                if n == 1:
                    w.set_exception(RuntimeError("broker said no"))  # a failed write is done too
                else:
                    w.set_result(None)

        task = asyncio.ensure_future(deliver())
        await faust_fixes.wait_for_changelog_writes(app, timeout=5)
        order.append("wait over")
        await task
        await faust_fixes.wait_for_changelog_writes(app, timeout=0.01)  # nothing pending: at once
        return order

    assert asyncio.run(scenario()) == ["write 0 done", "write 1 done", "write 2 done", "wait over"]


class FakeTxnProducer:
    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None:
        self.log.append(f"{self.name} offsets {dict(offsets)} {group_id}")
        await asyncio.sleep(0.02)

    async def commit_transaction(self) -> None:
        await asyncio.sleep(0.02)
        if self.fail:
            raise RuntimeError(f"{self.name} fenced")
        self.log.append(f"{self.name} committed")

    async def begin_transaction(self) -> None:
        self.log.append(f"{self.name} begun")


def test_the_partitions_transactions_commit_together_and_a_failure_still_surfaces() -> None:
    async def scenario(fail: bool) -> list[str]:
        log: list[str] = []
        producers = {"app-0": FakeTxnProducer("p0", log), "app-1": FakeTxnProducer("p1", log, fail=fail)}
        owner = SimpleNamespace(_trn_locks={tid: asyncio.Lock() for tid in producers},
                                _transaction_producers=producers)
        offsets = {"app-0": {TP("t", 0): 5}, "app-1": {TP("t", 1): 7}}
        await faust_fixes._commit_transactions_concurrently(owner, offsets, "app")
        return log

    log = asyncio.run(scenario(fail=False))
    # Both partitions sent their offsets before either committed: one round of round trips, not two.
    assert log[:2] == ["p0 offsets {TP(topic='t', partition=0): 5} app",
                       "p1 offsets {TP(topic='t', partition=1): 7} app"]
    assert set(log[2:]) == {"p0 committed", "p0 begun", "p1 committed", "p1 begun"}

    with pytest.raises(RuntimeError, match="p1 fenced"):
        asyncio.run(scenario(fail=True))


def test_no_commit_after_an_input_stopped_half_way(monkeypatch: pytest.MonkeyPatch) -> None:
    commits: list[dict[TP, int]] = []

    async def original_commit(self: Any, offsets: Any, start_new_transaction: bool = True) -> bool:
        commits.append(dict(offsets))
        return True

    monkeypatch.setattr(faust_fixes, "_original_commit_offsets", original_commit)

    async def scenario(stopping: bool) -> bool:
        app = SimpleNamespace(should_stop=stopping, crashed=False)
        consumer = FakeConsumer(app, set())

        async def agent_input() -> None:
            async with faust_fixes.commit_lock(app):
                faust_fixes.begin_input(app)
                await asyncio.sleep(10)  # events sent, table writes pending: then the task is cancelled
                faust_fixes.end_input(app)

        agent = asyncio.ensure_future(agent_input())
        await asyncio.sleep(0.01)
        agent.cancel()
        with pytest.raises(asyncio.CancelledError):
            await agent
        return await faust_fixes._commit_offsets_between_inputs(consumer, {TP("t", 0): 1})

    # On the way out (stop or crash) the half-applied input's transaction is left to be fenced.
    assert asyncio.run(scenario(stopping=True)) is False
    # A running worker stops instead of committing it (its supervisor restarts it from the last commit).
    with pytest.raises(RuntimeError, match="interrupted half-way"):
        asyncio.run(scenario(stopping=False))
    assert commits == []

    async def whole_input() -> bool:
        app = SimpleNamespace(should_stop=False, crashed=False)
        async with faust_fixes.commit_lock(app):
            faust_fixes.begin_input(app)
            faust_fixes.end_input(app)
        return await faust_fixes._commit_offsets_between_inputs(FakeConsumer(app, set()), {TP("t", 0): 2})

    assert asyncio.run(whole_input()) is True and commits == [{TP("t", 0): 2}]


def test_each_agent_guards_its_own_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    """The payments agent and the fraud agents install one guard each; a message is judged by
    the guard of its own topic (a fraud check is not refused by the payments agent's offsets)."""
    app = SimpleNamespace()
    acked: list[tuple[str, int]] = []
    refused: list[tuple[str, Message]] = []
    monkeypatch.setattr(faust_fixes, "_original_ack", lambda self, m: acked.append((m.topic, m.offset)) or True)
    faust_fixes.install_ack_guard(app, {"payment.requests"}, lambda t, o: o <= 5,
                                  lambda m: refused.append(("payments", m)))
    faust_fixes.install_ack_guard(app, {"paystream-fraud-checks", "paystream-fraud-admin"}, lambda t, o: o <= 1,
                                  lambda m: refused.append(("fraud", m)))
    consumer = FakeConsumer(app, {TP("payment.requests", 0), TP("paystream-fraud-checks", 0)})

    assert faust_fixes._ack_applied_only(consumer, message("payment.requests", 0, 3)) is True
    assert faust_fixes._ack_applied_only(consumer, message("paystream-fraud-checks", 0, 1)) is True
    dropped_check = message("paystream-fraud-checks", 0, 3)  # applied by payments' measure, not by fraud's
    assert faust_fixes._ack_applied_only(consumer, dropped_check) is False
    assert acked == [("payment.requests", 3), ("paystream-fraud-checks", 1)]
    assert refused == [("fraud", dropped_check)]


def test_recovery_seeks_a_negative_offset_to_the_changelog_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """faust maps only -1 to 0; no offset (None, seen for a GlobalTable's standby after a
    rebalance during recovery) or one below -1 made aiokafka raise and the worker exit."""
    sought: list[dict[TP, int]] = []

    class Consumer:
        async def seek_wait(self, offsets: dict[TP, int]) -> None:
            sought.append(dict(offsets))

    from collections import Counter

    standby, other, fresh, below = (TP("paystream-fraud-blocklist-changelog", 0), TP("x-changelog", 1), TP("y", 2),
                                    TP("z", 3))
    offsets: Counter[TP] = Counter({other: 41, fresh: -1, below: -2})
    offsets[standby] = None  # type: ignore[assignment]  # what the crashed recovery was given
    asyncio.run(faust_fixes._seek_offsets_not_negative(SimpleNamespace(), Consumer(), {standby, other, fresh, below},
                                                       offsets, "standby"))
    assert sought == [{standby: 0, other: 41, fresh: 0, below: 0}]


def test_recovery_does_not_roll_back_a_partition_kept_through_a_rebalance(monkeypatch: pytest.MonkeyPatch) -> None:
    """F16: a kept partition's changelog up to its last stable offset holds only this worker's own
    writes, which its memory has, with the open transaction's on top; re-reading them rolled the
    table back (applied offset 202 -> 201) and the open transaction's inputs were applied twice.
    A newly assigned partition, or any after a generation the worker missed, is read as faust does."""
    import faust

    app = faust.App("t-f16", broker="kafka://127.0.0.1:1", processing_guarantee="exactly_once")
    recovery = app.tables.recovery
    kept, fresh = TP("paystream-applied-offsets-changelog", 3), TP("paystream-applied-offsets-changelog", 1)
    actives = {kept}
    monkeypatch.setattr(app.assignor, "assigned_actives", lambda: set(actives))

    async def on_rebalance(self: Any, assigned: Any, revoked: Any, newly: Any, generation_id: int = 0) -> None:
        app.consumer_generation_id = generation_id
        self.active_tps = set(actives)

    async def recovery_completed(self: Any, generation_id: int = 0) -> None:
        return None

    class Consumer:
        async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
            return {tp: 0 for tp in tps}

    monkeypatch.setattr(faust_fixes, "_original_recovery_on_rebalance", on_rebalance)
    monkeypatch.setattr(faust_fixes, "_original_on_recovery_completed", recovery_completed)

    async def start_offsets(generation: int, assigned: set[TP], newly: set[TP], revoked: set[TP] = frozenset(),
                            last_read: int = 100, highwater: int = 140) -> dict[TP, int]:
        """The offsets recovery starts reading after (faust reads from there to the highwater)."""
        await faust_fixes._on_rebalance_keeping_held(recovery, assigned, set(revoked), newly, generation)
        for tp in assigned:
            recovery.active_offsets[tp] = last_read
            recovery.active_highwaters[tp] = highwater
        await faust_fixes._build_offsets_keeping_held(recovery, Consumer(), set(assigned), recovery.active_offsets,
                                                      "active")
        return {tp: recovery.active_offsets[tp] for tp in assigned}

    async def scenario() -> None:
        # Generation 5: newly assigned, read from where faust would; its recovery completes.
        assert await start_offsets(5, {kept}, {kept}) == {kept: 100}
        await faust_fixes._on_recovery_completed_tracked(recovery, 5)
        # Generation 6 keeps it: nothing below the last stable offset is read again.
        assert await start_offsets(6, {kept}, set()) == {kept: 140}
        # Generation 7 adds a partition: that one is read, the kept one still not.
        actives.add(fresh)
        assert await start_offsets(7, {kept, fresh}, {fresh}) == {kept: 140, fresh: 100}
        # The recovery of generation 7 is interrupted (a newer generation was under way):
        # the new partition is not complete, so generation 8 goes on reading it.
        app.consumer_generation_id = 8
        await faust_fixes._on_recovery_completed_tracked(recovery, 7)
        assert await start_offsets(8, {kept, fresh}, set()) == {kept: 140, fresh: 100}
        await faust_fixes._on_recovery_completed_tracked(recovery, 8)
        assert await start_offsets(9, {kept, fresh}, set()) == {kept: 140, fresh: 140}
        # Generation 11: the worker missed 10 (out of the group; another may have written): read all.
        assert await start_offsets(11, {kept, fresh}, set()) == {kept: 100, fresh: 100}

    asyncio.run(scenario())


def test_a_commit_sends_the_lingering_batches_of_the_transactional_producers_at_once() -> None:
    """Against aiokafka's own accumulator (the pinned version's internals): a record appended
    with a long linger is ready for the sender only once ``send_open_batches_now`` closed its
    batch, and the sender is woken; a producer with nothing open is left alone."""

    async def scenario() -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.structs import TopicPartition

        busy = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", linger_ms=60_000)
        idle = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", linger_ms=60_000)
        try:
            acc = busy._message_accumulator
            tp = TopicPartition("app-payments-changelog", 2)
            await acc.add_message(tp, b"k", b"v", timeout=1)
            batch = acc._batches[tp][0]
            assert batch.remaining_linger() is not None  # would wait out the linger
            # the sender, having found only lingering batches, waits on a fresh future
            acc._waiter_future = asyncio.get_running_loop().create_future()
            idle_waiter = idle._message_accumulator._waiter_future = asyncio.get_running_loop().create_future()
            app = SimpleNamespace(producer=SimpleNamespace(_transaction_producers={"t-0": busy, "t-1": idle}))

            assert faust_fixes.send_open_batches_now(app) == 1
            assert batch.remaining_linger() is None  # ready for the sender now
            assert acc._waiter_future.done()  # and the sender is woken
            assert not idle_waiter.done()
            assert faust_fixes.send_open_batches_now(app) == 0  # already closed: nothing to do
        finally:
            for producer in (busy, idle):
                producer._message_accumulator._closed = True

    asyncio.run(scenario())
