"""``tables.batched.BatchWrites``: a batch's writes reach the table once per key, at its end,
under the input that made the last write (faust's current event decides the changelog's
partition and transaction), and never for a transaction lost to a rebalance."""

from __future__ import annotations

from typing import Any

import pytest
from faust.streams import current_event

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
    assert batch.flush() == 2
    assert table.writes == [("p1", {"status": "succeeded"}, e3), ("p2", {"status": "created"}, e2)]
    assert batch.dirty == {} and table["p1"] == {"status": "succeeded"}
    assert batch.flush() == 0  # the next batch starts empty


def test_writes_of_a_lost_transaction_are_dropped_the_others_kept() -> None:
    table = RecordingTable()
    batch = BatchWrites(FakeApp(), table)
    write(batch, Ev(Msg(TOPIC, 0, 1)), "p0", 0)
    write(batch, Ev(Msg(TOPIC, 1, 1)), "p1", 1)
    assert batch.flush(lost={"ps-0-1"}) == 1
    assert dict(table) == {"p0": 0}


def test_deletes_go_straight_through() -> None:
    table = RecordingTable({"a": 1})
    batch = BatchWrites(FakeApp(), table)
    write(batch, Ev(Msg(TOPIC, 0, 1)), "b", 2)
    del batch["a"]
    del batch["b"]
    with pytest.raises(KeyError):
        del batch["c"]
    assert batch.flush() == 0 and dict(table) == {}


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
    assert batch.flush() == 2 and len(encoded) == 2
    assert table.writes == [("p", {"v": 20}, e2), ("q", {"v": 30}, e2)]
    assert batch.get_object("p") is None  # after the batch: the table's value, decoded by its reader
    with pytest.raises(TypeError):
        BatchWrites(FakeApp(), table).put_object("p", {"v": 1})
