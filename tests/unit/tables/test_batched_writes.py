"""``tables.batched.BatchWrites``: a batch's writes reach the table once per key, at its end,
under the input that made the last write (faust's current event decides the changelog's
partition and transaction), and never for a transaction lost to a rebalance."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

import pytest
from faust.streams import current_event
from faust.types import TP

from streams.input_guard import set_current_event
from tables.batched import BatchWrites
from tests.support.fake_inputs import TOPIC, Ev, Msg
from tests.support.fake_inputs import TxnApp as FakeApp


class RecordingTable(dict[str, Any]):
    """A dict that remembers, for every write, the event faust would route its changelog by."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.writes: list[tuple[str, Any, Any]] = []

    def __setitem__(self, key: str, value: Any) -> None:
        self.writes.append((key, value, current_event()))
        super().__setitem__(key, value)


def flush(batch: BatchWrites, lost: Collection[str | None] = ()) -> set[str | None]:
    return asyncio.run(batch.flush(lost))


def write(batch: BatchWrites, event: Ev, key: str, value: Any) -> None:
    set_current_event(event)
    batch[key] = value


def test_reads_see_the_batch_and_the_table_gets_one_write_per_key_under_its_last_writer() -> None:
    table = RecordingTable({"old": {"v": 0}})
    batch = BatchWrites(FakeApp(), table)
    e1, e2, e3 = Ev(Msg(TOPIC, 0, 5)), Ev(Msg(TOPIC, 1, 9)), Ev(Msg(TOPIC, 0, 6))
    write(batch, e1, "p1", {"status": "authorized"})
    write(batch, e2, "p2", {"status": "created"})
    write(batch, e3, "p1", {"status": "succeeded"})
    assert batch.get("p1") == {"status": "succeeded"} and batch["p2"] == {"status": "created"}
    assert batch.get("old") == {"v": 0} and batch.get("missing") is None
    assert sorted(batch) == ["old", "p1", "p2"] and len(batch) == 3
    assert table.writes == []  # nothing reached the table (nor its changelog) yet
    set_current_event(Ev(Msg(TOPIC, 7, 1)))  # whatever the stream moved on to
    assert flush(batch) == set()
    assert table.writes == [("p1", {"status": "succeeded"}, e3), ("p2", {"status": "created"}, e2)]
    assert batch.dirty == {} and table["p1"] == {"status": "succeeded"}
    assert flush(batch) == set() and len(table.writes) == 2  # the next batch starts empty


def test_writes_of_a_lost_transaction_are_dropped_the_others_kept() -> None:
    table = RecordingTable()
    batch = BatchWrites(FakeApp(), table)
    write(batch, Ev(Msg(TOPIC, 0, 1)), "p0", 0)
    write(batch, Ev(Msg(TOPIC, 1, 1)), "p1", 1)
    assert flush(batch, lost={"ps-0-1"}) == set()
    assert dict(table) == {"p0": 0}


def test_deletes_go_straight_through() -> None:
    table = RecordingTable({"a": 1})
    batch = BatchWrites(FakeApp(), table)
    write(batch, Ev(Msg(TOPIC, 0, 1)), "b", 2)
    del batch["a"]
    del batch["b"]
    with pytest.raises(KeyError):
        del batch["c"]
    assert flush(batch) == set() and dict(table) == {} and table.writes == []


def test_objects_are_encoded_once_when_read_as_values_or_flushed() -> None:
    encoded: list[str] = []

    def encode(obj: dict[str, int]) -> dict[str, int]:
        encoded.append("x")
        return {"v": obj["v"] * 10}

    table = RecordingTable()
    batch = BatchWrites(FakeApp(), table, encode=encode)
    e1, e2 = Ev(Msg(TOPIC, 0, 1)), Ev(Msg(TOPIC, 0, 2))
    set_current_event(e1)
    batch.put_object("p", {"v": 1})
    set_current_event(e2)
    batch.put_object("p", {"v": 2})  # written twice in the batch: encoded at most once
    assert batch.get_object("p") == {"v": 2} and encoded == []
    assert batch.get("p") == {"v": 20} and batch["p"] == {"v": 20} and encoded == ["x"]
    batch.put_object("q", {"v": 3})
    assert flush(batch) == set() and len(encoded) == 2
    assert table.writes == [("p", {"v": 20}, e2), ("q", {"v": 30}, e2)]
    assert batch.get_object("p") is None  # after the batch: the table's value, decoded by its reader
    with pytest.raises(TypeError):
        BatchWrites(FakeApp(), table).put_object("p", {"v": 1})


# --- changelog_writer: the changelog record straight into the input partition's transaction ---

class FakeProducer:
    """An aiokafka transactional producer: ``send`` appends and returns the delivery future."""

    def __init__(self, error: Exception | None = None) -> None:
        self.sent: list[tuple[str, bytes, bytes, int]] = []
        self.futures: list[asyncio.Future[Any]] = []
        self.error = error

    async def send(self, topic: str, value: bytes, *, key: bytes, partition: int, timestamp_ms: int | None = None,
                   headers: Any = None) -> asyncio.Future[Any]:
        if self.error is not None:
            raise self.error
        self.sent.append((topic, value, key, partition))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        return fut


class Delivered:
    """What aiokafka's delivery future resolves to (the fields faust's callback reads)."""

    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.topic_partition, self.offset = TP(topic, partition), offset


class PersistRecorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, TP, int]] = []

    def persist_offset_on_commit(self, store: Any, tp: TP, offset: int) -> None:
        self.calls.append((store, tp, offset))


def faust_table() -> tuple[Any, Any]:
    """A real faust app and table (no broker is contacted): the serialisers under test are its own."""
    import faust

    app = faust.App("batched-test", broker="kafka://127.0.0.1:1", store="memory://")
    return app, app.Table("payments", default=None, key_type=str)


class DirectApp(FakeApp):
    def __init__(self, producers: dict[str, FakeProducer], in_transaction: bool = True) -> None:
        super().__init__(in_transaction=in_transaction)
        self.producer = type("P", (), {"_transaction_producers": producers})()
        self.tables = PersistRecorder()


def test_a_direct_write_sends_faust_s_own_bytes_in_the_input_s_transaction_then_stores_it() -> None:
    from streams.faust_fixes import pending_changelog_writes
    from tables.batched import changelog_writer

    async def go() -> None:
        _, table = faust_table()
        producers = {"ps-0-3": FakeProducer()}
        app = DirectApp(producers)
        value = {"state": {"status": "succeeded", "amount": 1250}, "partition": 3}
        faust_says = table.changelog_topic.as_future_message(key="pay-1", value=value).message
        write = changelog_writer(app, table)
        await write(Ev(Msg(TOPIC, 3, 41)), "pay-1", value)
        ((topic, sent_value, sent_key, partition),) = producers["ps-0-3"].sent
        assert (topic, partition) == (table.changelog_topic.get_topic_name(), 3)
        assert (sent_key, sent_value) == (faust_says.key, faust_says.value)  # byte for byte
        assert table.data["pay-1"] == value
        pending = pending_changelog_writes(app)
        assert pending.futures  # the commit waits for the broker's acknowledgement
        producers["ps-0-3"].futures[0].set_result(Delivered(topic, 3, 977))
        await asyncio.sleep(0)
        assert not pending.futures
        assert app.tables.calls == [(table.data, TP(topic, 3), 977)]  # rocksdb persists it at the commit

    asyncio.run(go())


def test_a_direct_write_to_a_closed_transaction_is_partition_lost_and_stores_nothing() -> None:
    from aiokafka.errors import KafkaError

    from streams.input_guard import PartitionLost
    from tables.batched import changelog_writer

    async def go() -> None:
        _, table = faust_table()
        for producers in ({}, {"ps-0-2": FakeProducer(KafkaError("transaction aborted"))}):
            write = changelog_writer(DirectApp(producers), table)
            with pytest.raises(PartitionLost):
                await write(Ev(Msg(TOPIC, 2, 5)), "pay-2", {"v": 1})
            assert "pay-2" not in table.data

    asyncio.run(go())


def test_a_batch_drops_the_rest_of_a_transaction_lost_while_flushing_and_reports_it() -> None:
    from streams.input_guard import PartitionLost

    written: list[str] = []

    async def write(event: Ev, key: str, value: Any) -> None:
        if event.message.partition == 1:
            raise PartitionLost("ps-0-1")
        written.append(key)

    batch = BatchWrites(FakeApp(), {}, write=write)
    for n, (partition, key) in enumerate([(0, "a"), (1, "b"), (1, "c"), (2, "d")]):
        write_event = Ev(Msg(TOPIC, partition, n))
        set_current_event(write_event)
        batch[key] = n
    assert flush(batch) == {"ps-0-1"}
    assert written == ["a", "d"]


def test_outside_exactly_once_a_direct_writer_writes_the_faust_way() -> None:
    from tables.batched import changelog_writer

    table = RecordingTable()
    event = Ev(Msg(TOPIC, 0, 1))
    asyncio.run(changelog_writer(DirectApp({}, in_transaction=False), table)(event, "k", 7))
    assert table.writes == [("k", 7, event)]
