"""KIP-447 fencing on the real broker (streams/worker_transactions.py).

With ``PAYSTREAM_EOS_TRANSACTIONS=worker`` a worker's partitions share one transactional
producer, so a zombie is no longer fenced by a partition's transactional id: the transaction's
offsets go to the group coordinator as TxnOffsetCommit v3, with the committing member's group
generation and member id, and the coordinator refuses a member whose generation is over. These
tests use aiokafka's consumer and transactional producer as the worker does, against Kafka:

* a member of the current generation commits its outputs and offsets together;
* after the group rebalanced (a second member joined), the same member's old generation is
  refused: the commit raises ``GroupFenced``, the transaction's record is never visible to a
  read_committed reader and the group's committed offset does not move;
* a member id the group never had is refused too;
* a group not registered for v3 still commits with aiokafka's own request (faust's
  per-partition mode is untouched).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from confluent_kafka.admin import AdminClient, NewTopic

from streams import worker_transactions as wt


def _topic(bootstrap: str, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(name, 1, 1)]).values():
        f.result(30)


async def _consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                         isolation_level="read_committed", auto_offset_reset="earliest",
                         session_timeout_ms=10_000, heartbeat_interval_ms=500)
    await c.start()
    # joined once it holds its partitions
    for _ in range(200):
        await c.getmany(timeout_ms=100)
        if c.assignment():
            break
    return c


def _member(c: AIOKafkaConsumer) -> wt.GroupMember:
    coord: Any = c._coordinator
    return coord.generation, coord.member_id, None


async def _commit(bootstrap: str, tid: str, out: str, value: bytes, tp: TopicPartition, offset: int,
                  group: str) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=tid, acks="all", enable_idempotence=True)
    await p.start()
    try:
        await p.begin_transaction()
        await p.send_and_wait(out, value)
        await p.send_offsets_to_transaction({tp: OffsetAndMetadata(offset, "")}, group)
        await p.commit_transaction()
    finally:
        await p.stop()


async def _visible(bootstrap: str, topic: str) -> list[bytes]:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False)
    await c.start()
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        await c.seek_to_beginning(tp)
        out: list[bytes] = []
        for _ in range(15):
            for records in (await c.getmany(timeout_ms=200)).values():
                out.extend(r.value for r in records if r.value is not None)
        return out
    finally:
        await c.stop()


def _committed(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    """The group's committed offset, asked of the coordinator (a consumer's own answer is cached)."""
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka import TopicPartition as CTP

    admin = AdminClient({"bootstrap.servers": bootstrap})
    request = [ConsumerGroupTopicPartitions(group, [CTP(tp.topic, tp.partition)])]
    [result] = [f.result(10) for f in admin.list_consumer_group_offsets(request, require_stable=True).values()]
    [part] = result.topic_partitions
    return None if part.offset < 0 else int(part.offset)


@pytest.fixture
def names(stack_env: dict[str, str]) -> tuple[str, str, str, str]:
    bootstrap = stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"]
    run = uuid.uuid4().hex[:8]
    inp, out = f"wt-in-{run}", f"wt-out-{run}"
    _topic(bootstrap, inp)
    _topic(bootstrap, out)
    wt.apply()
    return bootstrap, inp, out, f"wt-group-{run}"


def test_the_current_member_commits_and_an_old_generation_is_fenced(names: tuple[str, str, str, str]) -> None:
    bootstrap, inp, out, group = names
    tp = TopicPartition(inp, 0)

    async def scenario() -> None:
        a = await _consumer(bootstrap, inp, group)
        b = None
        try:
            first = _member(a)
            member: list[wt.GroupMember] = [first]
            wt.register_member(group, lambda: member[0])
            await _commit(bootstrap, f"wt-{group}-a", out, b"committed", tp, 5, group)
            assert _committed(bootstrap, group, tp) == 5
            assert await _visible(bootstrap, out) == [b"committed"]

            # A second member joins: the group moves to a new generation (a keeps polling, so it
            # rejoins too). A commit under a's old generation is a zombie's.
            b = AIOKafkaConsumer(inp, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                                 session_timeout_ms=10_000, heartbeat_interval_ms=500)
            await b.start()
            for _ in range(300):
                await asyncio.gather(a.getmany(timeout_ms=50), b.getmany(timeout_ms=50))
                if _member(a)[0] > first[0] and _member(b)[0] == _member(a)[0]:
                    break
            assert _member(a)[0] > first[0], "the group did not rebalance"
            with pytest.raises(wt.GroupFenced, match="refused the offsets"):
                await _commit(bootstrap, f"wt-{group}-a", out, b"zombie", tp, 9, group)
            assert _committed(bootstrap, group, tp) == 5
            assert await _visible(bootstrap, out) == [b"committed"]

            # A member id the group never had: refused as well.
            member[0] = (_member(a)[0], f"nobody-{uuid.uuid4().hex[:6]}", None)
            with pytest.raises(wt.GroupFenced):
                await _commit(bootstrap, f"wt-{group}-a", out, b"stranger", tp, 11, group)

            # The member as it is now commits again (same transactional id: the aborted
            # transactions left nothing behind).
            member[0] = _member(a) if a.assignment() else _member(b)
            await _commit(bootstrap, f"wt-{group}-a", out, b"again", tp, 12, group)
            assert _committed(bootstrap, group, tp) == 12
            assert await _visible(bootstrap, out) == [b"committed", b"again"]
        finally:
            wt._MEMBERS.pop(group, None)
            await a.stop()
            if b is not None:
                await b.stop()

    asyncio.run(scenario())


def test_an_unregistered_group_commits_as_aiokafka_does(names: tuple[str, str, str, str]) -> None:
    bootstrap, inp, out, group = names
    tp = TopicPartition(inp, 0)

    async def scenario() -> None:
        a = await _consumer(bootstrap, inp, group)
        try:
            assert group not in wt._MEMBERS
            await _commit(bootstrap, f"wt-{group}-v0", out, b"v0", tp, 3, group)
            assert _committed(bootstrap, group, tp) == 3
            assert await _visible(bootstrap, out) == [b"v0"]
        finally:
            await a.stop()

    asyncio.run(scenario())
