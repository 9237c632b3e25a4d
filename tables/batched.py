"""A table whose writes within one batch of inputs reach it once per key, at the batch's end.

A payment usually changes twice in the batch its command arrives in (created and authorized by
the command; captured and succeeded by the inline gateway reply), and every write to a faust
table is one record on its changelog. ``BatchWrites`` keeps the batch's writes in front of the
table (reads see them at once) and writes each key's last value when the batch ends, in the
transaction of the input that made that write: one changelog record per payment and batch
instead of one per change, with the same state committed.

The changelog record of a key goes to the partition (and, with exactly_once, the transaction) of
the input that wrote it last, as if that input had written the table itself: each write is
flushed under its input as faust's current event. Writes whose transaction was lost to a
rebalance are dropped with the batch's other outputs (the partition's new owner applies the
inputs again).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, MutableMapping
from typing import Any

from faust.streams import current_event

from streams.input_guard import set_current_event, transactional_id


class BatchWrites(MutableMapping[str, Any]):
    """``table`` behind a write buffer that ``flush`` empties at the end of every batch."""

    def __init__(self, app: Any, table: MutableMapping[str, Any]) -> None:
        self.app, self.table = app, table
        self.dirty: dict[str, tuple[Any, Any]] = {}  # key -> (the input that wrote it last, value)

    def __getitem__(self, key: str) -> Any:
        written = self.dirty.get(key)
        if written is not None:
            return written[1]
        return self.table[key]

    def get(self, key: str, default: Any = None) -> Any:
        written = self.dirty.get(key)
        if written is not None:
            return written[1]
        return self.table.get(key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        self.dirty[key] = (current_event(), value)

    def __delitem__(self, key: str) -> None:
        # Rare (nothing deletes payments today): straight through, after any buffered write.
        written = self.dirty.pop(key, None)
        if written is None and key not in self.table:
            raise KeyError(key)
        if key in self.table:
            del self.table[key]

    def __iter__(self) -> Iterator[str]:
        yield from self.dirty
        yield from (k for k in self.table if k not in self.dirty)

    def __len__(self) -> int:
        return len(self.table) + sum(1 for k in self.dirty if k not in self.table)

    def flush(self, lost: Collection[str | None] = ()) -> int:
        """Write the batch's last value of every key to the table (and its changelog), each under
        the input that wrote it; skip those of transactions in ``lost``. Returns the writes made."""
        dirty, self.dirty = self.dirty, {}
        written = 0
        for key, (event, value) in dirty.items():
            if lost and transactional_id(self.app, event) in lost:
                continue
            if event is not None:
                set_current_event(event)
            self.table[key] = value
            written += 1
        return written
