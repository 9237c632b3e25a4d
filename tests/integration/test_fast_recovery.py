"""Table recovery read in bulk (streams/fast_recovery.py) against a real broker.

A changelog written the way an exactly_once worker writes it (committed transactions, aborted
ones, a tombstone, a transaction marker as the last offset) must give, through the tail probe
and the bulk loader, exactly the table a read_committed reader replaying every record builds,
and the probe must name the offset of the last committed record, not the marker after it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import faust
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as CTP
from confluent_kafka.admin import AdminClient, NewTopic
from faust.types import TP

from streams import fast_recovery


def _make_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(name, partitions, 1, config={"cleanup.policy": "compact"})]).values():
        fut.result(30)


def _write(bootstrap: str, topic: str) -> dict[tuple[int, int], tuple[bytes, bytes | None]]:
    """Four transactions over two partitions: commit, abort, commit (with a tombstone), abort.
    Returns every committed record by (partition, offset)."""
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"tx-{topic}", "linger.ms": 5})
    producer.init_transactions(30)
    committed: dict[tuple[int, int], tuple[bytes, bytes | None]] = {}

    def txn(records: list[tuple[int, str, Any]], commit: bool) -> None:
        delivered: list[tuple[int, int, bytes, bytes | None]] = []
        producer.begin_transaction()
        for partition, key, value in records:
            k = json.dumps(key).encode()
            v = None if value is None else json.dumps(value).encode()

            def on_delivery(err: Any, msg: Any, k: bytes = k, v: bytes | None = v) -> None:
                assert err is None, err
                delivered.append((msg.partition(), msg.offset(), k, v))

            producer.produce(topic, value=v, key=k, partition=partition, on_delivery=on_delivery)
        producer.flush(30)
        if commit:
            producer.commit_transaction(30)
            for partition, offset, k, v in delivered:
                committed[(partition, offset)] = (k, v)
        else:
            producer.abort_transaction(30)

    txn([(p, f"k{p}-{i}", {"v": i, "round": 1}) for p in (0, 1) for i in range(3000)], commit=True)
    txn([(p, f"k{p}-{i}", {"v": -1, "round": "aborted"}) for p in (0, 1) for i in range(0, 3000, 7)], commit=False)
    txn([(0, "k0-5", None), (0, "k0-6", {"v": 6, "round": 2}), (1, "k1-9", {"v": 9, "round": 2})], commit=True)
    txn([(0, "k0-6", {"v": -6, "round": "aborted"})], commit=False)  # partition 0 ends in an abort marker
    return committed


def _expected(committed: dict[tuple[int, int], tuple[bytes, bytes | None]], partition: int) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for (p, _), (k, v) in sorted(committed.items()):
        if p != partition:
            continue
        key = json.loads(k)
        if v is None:
            table.pop(key, None)
        else:
            table[key] = json.loads(v)
    return table


def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe", "isolation.level": "read_committed"})
    try:
        return {p: c.get_watermark_offsets(CTP(topic, p), timeout=10)[1] for p in (0, 1)}
    finally:
        c.close()


def test_probe_and_bulk_load_rebuild_the_committed_table(stack_env):
    bootstrap = stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"]
    app_id = f"fastrec-{uuid.uuid4().hex[:8]}"
    app = faust.App(app_id, broker=f"kafka://{bootstrap}", store="memory://")
    table = app.Table("t", key_type=str, default=None)
    topic = table.changelog_topic.get_topic_name()
    _make_topic(bootstrap, topic, 2)
    committed = _write(bootstrap, topic)
    ends = _end_offsets(bootstrap, topic)
    last_committed = {p: max(o for (pp, o) in committed if pp == p) for p in (0, 1)}
    # The end of each partition lies past its last committed record: markers (and aborted records).
    assert all(ends[p] > last_committed[p] + 1 for p in (0, 1)), (ends, last_committed)

    async def run() -> tuple[dict[TP, int], dict[TP, int], int]:
        tps = {TP(topic, p): ends[p] for p in (0, 1)}
        probed = await fast_recovery.last_committed_offsets({"bootstrap_servers": bootstrap}, tps)
        # Load partition 1 from the start; partition 0 from offset 999 on, on top of what a store
        # already held up to 999 (a kept local store), then check both tables.
        for (p, o), (k, v) in sorted(committed.items()):
            if p == 0 and o <= 999:
                assert v is not None
                table.data[json.loads(k)] = json.loads(v)
        applied_events: list[int] = []

        async def counting_apply(t: Any, events: list[Any]) -> None:
            applied_events.extend(e.message.offset for e in events)
            t.apply_changelog_batch(events)

        ranges = {TP(topic, 0): fast_recovery.LoadRange(table, 999, probed[TP(topic, 0)]),
                  TP(topic, 1): fast_recovery.LoadRange(table, -1, probed[TP(topic, 1)])}
        held = await fast_recovery.load_changelogs({"bootstrap.servers": bootstrap}, ranges, apply=counting_apply)
        return probed, held, len(applied_events)

    probed, held, n_applied = asyncio.run(run())
    assert probed == {TP(topic, p): last_committed[p] for p in (0, 1)}
    assert held == probed  # each partition up to its last committed record, not the marker after it
    # Aborted records are never applied; records below the kept store's offset are not read again.
    assert n_applied == sum(1 for (p, o) in committed if p == 1 or o > 999)
    expected = {**_expected(committed, 0), **_expected(committed, 1)}
    got = dict(table.data.items())
    assert got == expected
    assert "k0-5" not in got and got["k0-6"] == {"v": 6, "round": 2} and got["k1-9"]["round"] == 2
    assert all(v["round"] != "aborted" for v in got.values())


def test_probe_of_an_empty_and_a_marker_only_partition(stack_env):
    bootstrap = stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"]
    topic = f"fastrec-empty-{uuid.uuid4().hex[:8]}"
    _make_topic(bootstrap, topic, 2)
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"tx-{topic}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, key=b'"a"', value=b"1", partition=1)
    producer.flush(30)
    producer.abort_transaction(30)  # partition 1: an aborted record and its marker, nothing committed
    ends = _end_offsets(bootstrap, topic)
    assert ends == {0: 0, 1: 2}
    probed = asyncio.run(fast_recovery.last_committed_offsets(
        {"bootstrap_servers": bootstrap}, {TP(topic, 0): ends[0], TP(topic, 1): ends[1]}))
    assert probed == {TP(topic, 0): -1, TP(topic, 1): -1}  # nothing to recover in either
