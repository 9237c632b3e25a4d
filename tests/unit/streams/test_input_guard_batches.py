"""The payments agent's batches (``InputGuard.apply_batch``, streams/input_guard.py).

A batch applies the inputs already delivered in offset order, runs the handler's end-of-batch work
(inline gateway calls), then writes each partition's last applied offset once. What must hold:
redeliveries inside a batch are skipped; each table write lands in the partition (faust's current
event) of the input it is for, never in the last input's; a partition whose transaction was lost
to a rebalance gets no write and no further input; the others are unaffected.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from faust.streams import current_event
from faust.types import TP

from streams.input_guard import InputGuard, PartitionLost
from tests.support.fake_inputs import TOPIC, FakeAssignor, FakeConf, ev


class FakeConsumer:
    def __init__(self, partitions: set[int]) -> None:
        self.partitions = partitions

    def assignment(self) -> set[TP]:
        return {TP(TOPIC, p) for p in self.partitions}

    def highwater(self, tp: TP) -> int:
        return 10_000


class FakeApp:
    in_transaction = True

    def __init__(self, partitions: set[int]) -> None:
        self.consumer = FakeConsumer(partitions)
        self.assignor = FakeAssignor()
        self.conf = FakeConf()


@dataclass
class RecordingTable:
    """A dict that records, for each write, the partition of faust's current event."""

    data: dict[str, int] = field(default_factory=dict)
    writes: list[tuple[str, int, int]] = field(default_factory=list)  # key, value, current event's partition

    def get(self, key: str) -> int | None:
        return self.data.get(key)

    def __setitem__(self, key: str, value: int) -> None:
        ev = current_event()
        assert ev is not None, "a table write outside of any input"
        self.writes.append((key, value, ev.message.partition))
        self.data[key] = value


def guard(app: FakeApp, table: RecordingTable, handled: list[tuple[int, int]], *, lose: set[int] = frozenset(),
          lost_at_end: set[str | None] | None = None, ends: list[set[str | None]] | None = None) -> InputGuard:
    ends = ends if ends is not None else []

    async def handle(event: Any) -> None:
        m = event.message
        if m.partition in lose:
            raise PartitionLost(f"ps-0-{m.partition}")
        handled.append((m.partition, m.offset))

    async def end(lost_while_applied: set[str | None]) -> set[str | None]:
        ends.append(set(lost_while_applied))
        return set(lost_at_end or ())

    return InputGuard(app, table, [TOPIC], handle, gaps=None, max_batch=100,  # type: ignore[arg-type]
                      on_batch_end=end)


def test_one_write_per_partition_in_the_partition_of_its_input_and_redeliveries_skipped() -> None:
    app, table, handled = FakeApp({0, 1}), RecordingTable({f"{TOPIC}:1": 6}), []
    g = guard(app, table, handled)
    batch = [ev(0, 3), ev(1, 6), ev(1, 7), ev(0, 4), ev(0, 4), ev(1, 8)]
    asyncio.run(g.apply_batch(batch))
    # 1:6 was applied before (the table says so), 0:4 came twice in the batch: each skipped.
    assert handled == [(0, 3), (1, 7), (0, 4), (1, 8)]
    # The last input of the batch is on partition 1: partition 0's write must still land on 0.
    assert sorted(table.writes) == [(f"{TOPIC}:0", 4, 0), (f"{TOPIC}:1", 8, 1)]


def test_a_partition_lost_while_applying_gets_no_write_and_no_later_input() -> None:
    app, table, handled = FakeApp({0, 1}), RecordingTable(), []
    ends: list[set[str | None]] = []
    g = guard(app, table, handled, lose={0}, ends=ends)
    asyncio.run(g.apply_batch([ev(0, 1), ev(1, 1), ev(0, 2), ev(1, 2)]))
    assert handled == [(1, 1), (1, 2)]
    assert table.writes == [(f"{TOPIC}:1", 2, 1)]
    # the end of the batch is told, so it drops what it deferred for that partition
    assert ends == [{"ps-0-0"}]


def test_a_partition_lost_during_the_end_of_the_batch_gets_no_write() -> None:
    app, table, handled = FakeApp({0, 1}), RecordingTable(), []
    g = guard(app, table, handled, lost_at_end={"ps-0-1"})
    asyncio.run(g.apply_batch([ev(0, 1), ev(1, 1)]))
    assert handled == [(0, 1), (1, 1)]
    assert table.writes == [(f"{TOPIC}:0", 1, 0)]


def test_inputs_of_a_partition_revoked_while_buffered_are_left_to_the_new_owner() -> None:
    app, table, handled = FakeApp({1}), RecordingTable(), []
    g = guard(app, table, handled)
    asyncio.run(g.apply_batch([ev(0, 1), ev(1, 1)]))
    assert handled == [(1, 1)] and table.writes == [(f"{TOPIC}:1", 1, 1)]


def test_applied_offsets_through_a_writer_land_per_partition_and_a_lost_one_is_left_unrecorded() -> None:
    app, table, handled = FakeApp({0, 1, 2}), RecordingTable(), []
    recorded: list[tuple[str, int, int]] = []

    async def write(event: Any, key: str, offset: int) -> None:
        if event.message.partition == 2:
            raise PartitionLost("ps-0-2")  # its transaction was closed by a rebalance meanwhile
        recorded.append((key, offset, event.message.partition))
        table.data[key] = offset  # what the writer does to the store once the record is sent

    g = InputGuard(app, table, [TOPIC], lambda e: _handled(handled, e), gaps=None,  # type: ignore[arg-type]
                   max_batch=100, write=write)
    asyncio.run(g.apply_batch([ev(0, 1), ev(1, 5), ev(2, 9), ev(0, 2)]))
    assert handled == [(0, 1), (1, 5), (2, 9), (0, 2)]
    assert sorted(recorded) == [(f"{TOPIC}:0", 2, 0), (f"{TOPIC}:1", 5, 1)]
    # nothing says partition 2's input was applied: the ack guard keeps it for the new owner
    assert not g.applied(ev(2, 9).message.tp, 9) and g.applied(ev(0, 2).message.tp, 2)


async def _handled(handled: list[tuple[int, int]], event: Any) -> None:
    handled.append((event.message.partition, event.message.offset))
