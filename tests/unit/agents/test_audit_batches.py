"""The payments agent's audit records travel per batch (``agents.payments.AuditBatches``).

What must hold: every record of a batch reaches the audit topic, in order, in one message per
input partition, sent in *that* partition's transaction (never in another input's); a message
never exceeds the size cap; a partition whose transaction was lost to a rebalance sends nothing
(its new owner applies the inputs again), and the other partitions are unaffected.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any

import pytest

from agents.payments import AuditBatches
from paystream.security import audit as au
from streams.input_guard import PartitionLost
from tests.support.fake_inputs import TOPIC, Ev, Msg
from tests.support.fake_inputs import TxnApp as FakeApp


@dataclass
class Sent:
    tid: str | None
    key: bytes
    records: list[au.AuditRecord]
    size: int
    partition: int | None


class Recorder:
    def __init__(self, lose: frozenset[int] = frozenset()) -> None:
        self.sent: list[Sent] = []
        self.lose = lose

    async def __call__(self, app: Any, event: Any, topic: str, key: bytes, value: bytes, partition: int | None) -> None:
        assert topic == "paystream-audit"
        tid = f"ps-0-{event.message.partition}" if app.in_transaction else None
        if event.message.partition in self.lose:
            raise PartitionLost(tid)
        records, errors = au.decode_message(value)
        assert errors == []
        self.sent.append(Sent(tid, key, records, len(value), partition))


def record(partition: int, offset: int, n: int) -> au.AuditRecord:
    return au.AuditRecord(
        audit_id=f"event:{partition}-{offset}-{n}", occurred_at=1_700_000_000_000, actor="paystream-worker",
        action="event.PaymentCreated", resource=f"payment:p{partition}-{offset}", outcome="success",
        origin=f"kafka:{TOPIC}/{partition}@{offset}", detail={"sequence": n})


def run_batch(batches: AuditBatches, inputs: list[tuple[int, int]], per_input: int = 3,
              lost: frozenset[str | None] = frozenset()) -> tuple[set[str | None], list[au.AuditRecord]]:
    added: list[au.AuditRecord] = []

    async def go() -> set[str | None]:
        for partition, offset in inputs:
            for n in range(per_input):
                rec = record(partition, offset, n)
                added.append(rec)
                await batches.add(Ev(Msg(TOPIC, partition, offset)), rec)
        return await batches.flush(set(lost))

    return asyncio.run(go()), added


def test_one_message_per_partition_in_its_own_transaction_with_every_record_in_order() -> None:
    rec = Recorder()
    batches = AuditBatches(FakeApp(), "paystream-audit", send=rec)  # type: ignore[arg-type]
    lost, added = run_batch(batches, [(0, 10), (1, 7), (0, 11), (2, 3), (1, 8), (0, 12)])
    assert lost == set()
    assert len(rec.sent) == 3
    by_partition = {s.partition: s for s in rec.sent}
    for partition, first_offset in ((0, 10), (1, 7), (2, 3)):
        sent = by_partition[partition]
        assert sent.tid == f"ps-0-{partition}"
        assert sent.key == f"kafka:{TOPIC}/{partition}@{first_offset}".encode()
        assert all(r.origin.startswith(f"kafka:{TOPIC}/{partition}@") for r in sent.records)
        assert sent.records == [r for r in added if r.origin.startswith(f"kafka:{TOPIC}/{partition}@")]
    # the next batch starts empty
    assert asyncio.run(batches.flush(set())) == set() and len(rec.sent) == 3


def test_a_message_never_exceeds_the_caps_and_nothing_is_dropped() -> None:
    size = len(au.encode_record(record(0, 0, 0)))
    rec = Recorder()
    by_bytes = AuditBatches(FakeApp(), "paystream-audit", max_bytes=5 * size, send=rec)  # type: ignore[arg-type]
    _, added = run_batch(by_bytes, [(0, offset) for offset in range(10)])  # 30 records
    assert len(rec.sent) >= 6 and all(s.size <= 5 * size for s in rec.sent)
    assert [r for s in rec.sent for r in s.records] == added
    rec = Recorder()
    by_count = AuditBatches(FakeApp(), "paystream-audit", max_records=4, send=rec)  # type: ignore[arg-type]
    _, added = run_batch(by_count, [(0, offset) for offset in range(10)])
    assert [len(s.records) for s in rec.sent] == [4] * 7 + [2]
    assert [r for s in rec.sent for r in s.records] == added


def test_the_batch_encoding_is_the_records_encodings_in_an_array() -> None:
    records = [record(p, o, n) for p in range(2) for o in range(3) for n in range(3)]
    assert au.encode_batch(records) == au.encode_records([au.encode_record(r) for r in records])
    # non-ASCII text: UTF-8 rather than escapes, the same JSON
    accents = [dataclasses.replace(r, actor="caissière", detail={"note": "reçu €"}) for r in records[:3]]
    assert au.decode_message(au.encode_batch(accents)) == (accents, [])
    # what orjson refuses (an integer beyond 64 bits) is encoded the plain way
    huge = [dataclasses.replace(r, detail={"n": 2**70}) for r in records[:2]]
    assert au.encode_batch(huge) == au.encode_records([au.encode_record(r) for r in huge])
    # one record that needs scrubbing: the batch falls back to the record-by-record encoding
    dirty = [*records[:2], dataclasses.replace(records[2], origin="card 4111 1111 1111 1111"), *records[3:]]
    wire = au.encode_batch(dirty)
    assert wire == au.encode_records([au.encode_record(r) for r in dirty]) and b"4111" not in wire


@pytest.mark.parametrize("where", ["before", "during"])
def test_a_lost_partition_sends_nothing_and_the_others_are_unaffected(where: str) -> None:
    rec = Recorder(lose=frozenset({1}) if where == "during" else frozenset())
    batches = AuditBatches(FakeApp(), "paystream-audit", send=rec)  # type: ignore[arg-type]
    already = frozenset({"ps-0-1"}) if where == "before" else frozenset()
    lost, _ = run_batch(batches, [(0, 1), (1, 1), (2, 1)], lost=already)
    assert sorted(s.partition for s in rec.sent) == [0, 2]
    assert lost == ({"ps-0-1"} if where == "during" else set())


def test_at_least_once_keeps_partitions_apart_without_transactions() -> None:
    rec = Recorder()
    batches = AuditBatches(FakeApp(in_transaction=False), "paystream-audit", send=rec)  # type: ignore[arg-type]
    run_batch(batches, [(0, 1), (1, 1), (0, 2)])
    assert sorted((s.partition, len(s.records)) for s in rec.sent) == [(0, 6), (1, 3)]
    assert {s.tid for s in rec.sent} == {None}
