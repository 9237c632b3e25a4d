"""The audit topic → ``audit_log``, one hash chain (``paystream audit sink`` / ``audit verify``).

Records come from the workers (one per published event, in the event's transaction; a batch's
records for one partition travel as one message, a JSON array: ``audit.encode_batch``), the
HTTP edge (every API call and webhook, accepted or rejected) and admin commands. The chain
needs a single order, so appends take a row lock on ``audit_chain_head`` for the whole batch:
any number of sink processes may run, they append one batch at a time. A record whose
``audit_id`` is already stored (a replayed batch) is skipped, so a replay never forks or
lengthens the chain.

``verify`` recomputes every hash in ``seq`` order and compares the end with the head row;
it names the first row edited, inserted or removed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from paystream.security import audit as au
from sinks.vault import SKIPPED, JsonTopicSink, Record

log = logging.getLogger("paystream.sink.audit")

INSERT_ROW = """
INSERT INTO audit_log (seq, audit_id, occurred_at, actor, action, resource, outcome, origin, detail, prev_hash, hash)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""


def append(conn: psycopg.Connection, records: list[au.AuditRecord]) -> int:
    """Append the records not stored yet, in one transaction under the chain's lock."""
    if not records:
        return 0
    with conn.transaction(), conn.cursor() as cur:
        head = cur.execute("SELECT last_seq, last_hash FROM audit_chain_head WHERE id = 1 FOR UPDATE").fetchone()
        if head is None:
            raise RuntimeError("audit_chain_head is missing: run the migrations")
        seq, prev = int(head[0]), str(head[1])
        ids = [r.audit_id for r in records]
        stored = {row[0] for row in cur.execute("SELECT audit_id FROM audit_log WHERE audit_id = ANY(%s)", (ids,))}
        added = 0
        for record in records:
            if record.audit_id in stored:
                continue
            stored.add(record.audit_id)
            seq += 1
            row = au.next_row(seq, record, prev)
            cur.execute(INSERT_ROW, (row.seq, row.audit_id, row.occurred_at, row.actor, row.action, row.resource,
                                     row.outcome, row.origin, json.dumps(row.detail), row.prev_hash, row.hash))
            prev = row.hash
            added += 1
        cur.execute("UPDATE audit_chain_head SET last_seq = %s, last_hash = %s WHERE id = 1", (seq, prev))
    return added


def decode_batch(records: list[Record]) -> list[au.AuditRecord]:
    out = []
    for _, value in records:
        try:
            good, bad = au.decode_message(value or b"")
        except ValueError as exc:
            good, bad = [], [str(exc)]
        out.extend(good)
        for reason in bad:
            log.error("malformed audit record skipped: %s", reason)
            SKIPPED.labels("audit").inc()
    return out


class AuditSink(JsonTopicSink):
    name = "audit sink"
    kind = "audit"

    def write(self, conn: psycopg.Connection, records: list[Record]) -> int:
        return append(conn, decode_batch(records))


# --- verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyReport:
    rows: int
    head_seq: int
    head_hash: str
    broken: au.ChainBreak | None

    @property
    def ok(self) -> bool:
        return self.broken is None


def _rows(conn: psycopg.Connection) -> Iterator[au.ChainedRow]:
    with conn.cursor(name="audit_verify") as cur:  # server-side: the log may be large
        cur.itersize = 5000
        cur.execute("SELECT seq, audit_id, occurred_at, actor, action, resource, outcome, origin, detail, "
                    "prev_hash, hash FROM audit_log ORDER BY seq")
        for r in cur:
            detail: Any = r[8]
            yield au.ChainedRow(seq=int(r[0]), audit_id=r[1], occurred_at=int(r[2]), actor=r[3], action=r[4],
                                resource=r[5], outcome=r[6], origin=r[7],
                                detail=detail if isinstance(detail, dict) else {}, prev_hash=r[9], hash=r[10])


def verify(dsn: str) -> VerifyReport:
    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")  # one snapshot
        head = conn.execute("SELECT last_seq, last_hash FROM audit_chain_head WHERE id = 1").fetchone()
        head_seq, head_hash = (int(head[0]), str(head[1])) if head else (0, au.GENESIS_HASH)
        checked, broken = au.verify_chain(_rows(conn), head_seq, head_hash)
    return VerifyReport(rows=checked, head_seq=head_seq, head_hash=head_hash, broken=broken)
