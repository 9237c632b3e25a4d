"""A table whose writes within one batch of inputs reach it once per key, at the batch's end.

A payment usually changes twice in the batch its command arrives in (created and authorized by
the command; captured and succeeded by the inline gateway reply), and every write to a faust
table is one record on its changelog. ``BatchWrites`` keeps the batch's writes in front of the
table (reads see them at once) and writes each key's last value when the batch ends, in the
transaction of the input that made that write: one changelog record per payment and batch
instead of one per change, with the same state committed.

The changelog record of a key goes to the partition (and, with exactly_once, the transaction) of
the input that wrote it last, as if that input had written the table itself. Writes whose
transaction was lost to a rebalance are dropped with the batch's other outputs (the partition's
new owner applies the inputs again).

How a write reaches the table is ``write``: by default faust's own way (the input as faust's
current event, ``table[key] = value``); ``changelog_writer`` sends the changelog record straight
into the input partition's transaction instead (see there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, MutableMapping
from typing import Any

from faust.streams import current_event

from streams.faust_fixes import pending_changelog_writes
from streams.input_guard import (
    PartitionLost,
    TableWrite,
    faust_writer,
    send_in_input_transaction,
    transactional_id,
)

log = logging.getLogger("paystream.tables")

def changelog_writer(app: Any, table: Any) -> TableWrite:
    """A faust table's write with its changelog record sent straight into the transaction of
    the input's partition, as the agents' own outputs are (``send_in_input_transaction``).

    faust sends a table's changelog records through its producer buffer: a record at a time
    from one background task, each wrapped in a ``FutureMessage`` and taking faust's
    per-transaction lock, so at a commit the inputs waited (commit lock held) while hundreds of
    them trickled out (~80 ms per commit in a burst, ~8 % of the worker's CPU). Here the record
    is serialised as faust would (the changelog topic's own key and value serialisers: the
    same bytes, read back the same way by recovery), appended to the partition's transactional
    producer at once, and tracked like faust's (``faust_fixes.pending_changelog_writes``): the
    commit still waits for the broker to acknowledge it. Once acknowledged, its offset is noted
    for the local store (rocksdb) to persist when the partition commits, as faust's
    ``_on_changelog_sent`` does. Then the store gets the value. Outside exactly_once (no
    transaction), faust's own write.
    """
    pending = pending_changelog_writes(app)
    fallback = faust_writer(table)
    changelog: list[Any] = []  # the changelog topic and its name, on the first write (faust makes it lazily)

    def persist_on_commit(fut: Any) -> None:
        if not fut.cancelled() and fut.exception() is None:
            sent = fut.result()
            app.tables.persist_offset_on_commit(table.data, sent.topic_partition, sent.offset)

    async def write(event: Any, key: str, value: Any) -> None:
        tid = transactional_id(app, event)
        if tid is None:
            await fallback(event, key, value)
            return
        if not changelog:
            changelog.extend((table.changelog_topic, table.changelog_topic.get_topic_name()))
        topic, name = changelog
        key_bytes, _ = topic.prepare_key(key, table.key_serializer)
        value_bytes, _ = topic.prepare_value(value, table.value_serializer)
        fut = await send_in_input_transaction(app, event, name, key_bytes, value_bytes, event.message.partition)
        pending.track(fut)
        fut.add_done_callback(persist_on_commit)
        table.data[key] = value

    return write


class BatchWrites(MutableMapping[str, Any]):
    """``table`` behind a write buffer that ``flush`` empties at the end of every batch.

    A writer may also buffer an object (``put_object``) whose table value ``encode`` makes: it is
    encoded once, when first read as a value or at the flush, however often it was written, and
    its writer reads it back as the object (``get_object``) without decoding the table value.
    The object must not change after ``put_object`` (the payments processor puts a copy).
    """

    def __init__(self, app: Any, table: MutableMapping[str, Any],
                 encode: Callable[[Any], Any] | None = None, write: TableWrite | None = None) -> None:
        self.app, self.table, self.encode = app, table, encode
        self.write = write if write is not None else faust_writer(table)
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

    async def flush(self, lost: Collection[str | None] = ()) -> set[str | None]:
        """Write the batch's last value of every key to the table (and its changelog), each under
        the input that wrote it; skip those of transactions in ``lost``. Returns the transactions
        lost to a rebalance meanwhile (their remaining writes are dropped too)."""
        dirty, self.dirty = self.dirty, {}
        skipped, newly_lost = set(lost), set()
        for key, entry in dirty.items():
            event = entry[0]
            if skipped and transactional_id(self.app, event) in skipped:
                continue
            try:
                await self.write(event, key, self._value(entry))
            except PartitionLost as exc:
                tid = transactional_id(self.app, event)
                skipped.add(tid)
                newly_lost.add(tid)
                log.warning("partition lost to a rebalance while writing a batch's table changes (%s)", exc)
        return newly_lost
