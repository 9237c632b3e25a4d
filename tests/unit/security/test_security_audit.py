"""Audit trail: records never carry card data; the hash chain shows edits, insertions and removals."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from paystream.security.audit import (
    GENESIS_HASH,
    AuditRecord,
    ChainedRow,
    chain_hash,
    decode_message,
    decode_record,
    encode_record,
    encode_records,
    next_row,
    verify_chain,
)


def _record(i: int) -> AuditRecord:
    return AuditRecord(audit_id=f"au:{i}", occurred_at=1_700_000_000_000 + i, actor="api:key1",
                       action="payment.create", resource=f"payment:p{i}", outcome="accepted",
                       origin="http:203.0.113.7", detail={"amount": 1000 + i, "currency": "EUR", "n": [1, "x"]})


def _chain(n: int) -> list[ChainedRow]:
    rows, prev = [], GENESIS_HASH
    for i in range(1, n + 1):
        row = next_row(i, _record(i), prev)
        rows.append(row)
        prev = row.hash
    return rows


def test_an_intact_chain_verifies() -> None:
    rows = _chain(5)
    assert verify_chain(rows, head_seq=5, head_hash=rows[-1].hash) == (5, None)
    assert verify_chain([], head_seq=0, head_hash=GENESIS_HASH) == (0, None)


def test_hash_is_sha256_of_prev_hash_and_the_canonical_row() -> None:
    row = _chain(1)[0]
    canonical = json.dumps({k: v for k, v in dataclasses.asdict(row).items() if k != "hash"},
                           sort_keys=True, separators=(",", ":")).encode()
    assert row.hash == chain_hash(GENESIS_HASH, canonical)


@pytest.mark.parametrize("field", ["actor", "outcome", "occurred_at", "detail", "resource"])
def test_an_edited_field_is_detected_at_that_row(field: str) -> None:
    rows = _chain(6)
    value = {"occurred_at": 1, "detail": {"amount": 1}}.get(field, "forged")
    rows[3] = dataclasses.replace(rows[3], **{field: value})
    checked, broken = verify_chain(rows, 6, rows[-1].hash)
    assert broken is not None and (broken.seq, broken.problem) == (4, "edited") and checked == 3


def test_a_deleted_row_is_detected() -> None:
    rows = _chain(6)
    del rows[2]
    _, broken = verify_chain(rows, 6, rows[-1].hash)
    assert broken is not None and (broken.seq, broken.problem) == (3, "removed")


def test_rows_deleted_at_the_end_are_detected_against_the_head() -> None:
    rows = _chain(6)
    _, broken = verify_chain(rows[:4], 6, rows[-1].hash)
    assert broken is not None and (broken.seq, broken.problem) == (5, "removed")


def test_a_forged_row_is_detected_whether_or_not_its_hash_is_recomputed() -> None:
    rows = _chain(4)
    forged = dataclasses.replace(_record(99), audit_id="au:forged")
    # Renumbered into the middle, hash recomputed: the next genuine row no longer links to it.
    inserted = [*rows[:2], next_row(3, forged, rows[1].hash),
                *[dataclasses.replace(r, seq=r.seq + 1) for r in rows[2:]]]
    _, broken = verify_chain(inserted, 4, rows[-1].hash)
    assert broken is not None and broken.problem == "inserted_or_reordered" and broken.seq == 4
    # Appended behind the writer's back with a valid hash: the head row shows it.
    appended = [*rows, next_row(5, forged, rows[-1].hash)]
    _, broken = verify_chain(appended, 4, rows[-1].hash)
    assert broken is not None and (broken.seq, broken.audit_id) == (5, "au:forged")
    # Appended with a made-up hash.
    bogus = [*rows, dataclasses.replace(next_row(5, forged, rows[-1].hash), hash="f" * 64)]
    _, broken = verify_chain(bogus, 5, "f" * 64)
    assert broken is not None and (broken.seq, broken.problem) == (5, "edited")


def test_swapped_rows_are_detected() -> None:
    rows = _chain(4)
    rows[1], rows[2] = dataclasses.replace(rows[2], seq=2), dataclasses.replace(rows[1], seq=3)
    _, broken = verify_chain(rows, 4, rows[-1].hash)
    assert broken is not None and broken.seq == 2


def test_records_never_carry_card_data() -> None:
    record = AuditRecord(
        audit_id="au:1", occurred_at=1, actor="api:k", action="payment.create", resource="payment:p",
        outcome="rejected", origin="http:1.2.3.4 card 4242 4242 4242 4242",
        detail={"note": "pan 4111111111111111", "cvv": "123", "nested": {"cvc2": 987, "n": 4242424242424242},
                "4000056655665556": "key is a pan", "ok": 12},
    )
    wire = encode_record(record)
    for secret in ("4242 4242 4242 4242", "4111111111111111", "4242424242424242", "4000056655665556", '"123"',
                   "987"):
        assert secret.encode() not in wire
    decoded = decode_record(wire)
    assert decoded.detail["ok"] == 12 and decoded.detail["cvv"] == "[REDACTED]"


@pytest.mark.parametrize("bad", [b"[]", b'{"audit_id": 1}', b'{"audit_id":"a","occurred_at":"x","actor":"a",'
                                 b'"action":"a","resource":"r","outcome":"o","origin":"o"}', b"not json"])
def test_malformed_wire_records_are_refused(bad: bytes) -> None:
    with pytest.raises(ValueError):
        decode_record(bad)


def _event_record(n: int, **changes: Any) -> AuditRecord:
    base = AuditRecord(audit_id=f"event:{n}", occurred_at=1_700_000_000_000 + n, actor="paystream-worker",
                       action="event.PaymentCreated", resource=f"payment:p{n}", outcome="success",
                       origin=f"kafka:payment.requests/3@{n}", detail={"sequence": n, "amount": 1250})
    return dataclasses.replace(base, **changes)


def test_a_batch_message_carries_its_records_in_order() -> None:
    records = [_event_record(n) for n in range(5)]
    wire = encode_records([encode_record(r) for r in records])
    decoded, errors = decode_message(wire)
    assert (decoded, errors) == (records, [])
    # a single record is still a message of its own
    assert decode_message(encode_record(records[2])) == ([records[2]], [])


def test_a_malformed_record_in_a_batch_costs_that_record_only() -> None:
    good = [_event_record(1), _event_record(2)]
    wire = b"[" + encode_record(good[0]) + b',{"audit_id":"x"},7,' + encode_record(good[1]) + b"]"
    decoded, errors = decode_message(wire)
    assert decoded == good
    assert len(errors) == 2 and all(e.startswith("audit record:") for e in errors)
    with pytest.raises(ValueError):
        decode_message(b"[not json")


def test_the_sink_scrubs_batched_records_again() -> None:
    # a producer that skipped the scrub: the sink's decoding redacts anyway (it trusts no producer)
    raw = json.dumps([{"audit_id": "a", "occurred_at": 1, "actor": "x", "action": "y", "resource": "r",
                       "outcome": "success", "origin": "card 4111111111111111", "detail": {"cvv": "123"}}]).encode()
    decoded, errors = decode_message(raw)
    assert errors == [] and "4111111111111111" not in decoded[0].origin and decoded[0].detail["cvv"] == "[REDACTED]"
