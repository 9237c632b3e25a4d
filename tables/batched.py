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

from collections.abc import Callable, Collection, Iterator, MutableMapping
from typing import Any

from faust.streams import current_event

from streams.input_guard import set_current_event, transactional_id


class BatchWrites(MutableMapping[str, Any]):
    """``table`` behind a write buffer that ``flush`` empties at the end of every batch.

    A writer may also buffer an object (``put_object``) whose table value ``encode`` makes: it is
    encoded once, when first read as a value or at the flush, however often it was written, and
    its writer reads it back as the object (``get_object``) without decoding the table value.
    The object must not change after ``put_object`` (the payments processor puts a copy).
    """

    def __init__(self, app: Any, table: MutableMapping[str, Any],
                 encode: Callable[[Any], Any] | None = None) -> None:
        self.app, self.table, self.encode = app, table, encode
        # key -> [the input that wrote it last, the table value (None: not encoded yet), the object]
        self.dirty: dict[str, list[Any]] = {}

    def _value(self, entry: list[Any]) -> Any:
        if entry[1] is None and entry[2] is not None:
            assert self.encode is not None
            entry[1] = self.encode(entry[2])
        return entry[1]

    def __getitem__(self, key: str) -> Any:
        written = self.dirty.get(key)
        if written is not None:
            return self._value(written)
        return self.table[key]

    def get(self, key: str, default: Any = None) -> Any:
        written = self.dirty.get(key)
        if written is not None:
            return self._value(written)
        return self.table.get(key, default)

    def get_object(self, key: str) -> Any:
        """The object this batch put for ``key`` (``put_object``), or None."""
        written = self.dirty.get(key)
        return written[2] if written is not None else None

    def __setitem__(self, key: str, value: Any) -> None:
        self.dirty[key] = [current_event(), value, None]

    def put_object(self, key: str, obj: Any) -> None:
        if self.encode is None:
            raise TypeError("put_object needs an encode function")
        self.dirty[key] = [current_event(), None, obj]

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
        for key, entry in dirty.items():
            event = entry[0]
            if lost and transactional_id(self.app, event) in lost:
                continue
            value = self._value(entry)
            if event is not None:
                set_current_event(event)
            self.table[key] = value
            written += 1
        return written
