"""Re-encryption of the sealed gateway tokens in Postgres after a key rotation
(``paystream keys reencrypt``, docs/security.md 3.6/3.7).

A rotation appends a key and makes it current: new envelopes use it, old ones still decrypt.
To retire an old key, every envelope sealed under it has to be sealed again under the current
key. In Postgres that is ``customer_gateway_tokens.token_ciphertext`` (the only column holding
envelopes; ``key_id`` beside it says which key). This module:

* walks the rows whose envelope is not under the current key in ``method_id`` order (keyset
  pagination), one transaction per batch; the batch's rows are locked ``FOR UPDATE SKIP LOCKED``,
  so a vault sink writing the same method at that moment is neither overwritten nor blocked
  (its row is left for the next pass);
* opens each envelope with the ring and the *same* associated data the worker sealed it with
  (``method_aad(method_id)``, i.e. ``payment_method:<id>``) and seals the token again under the
  current key with that AAD, so the worker (and the next re-encryption) opens it as before;
* leaves a row it cannot open (an unknown key id, an envelope that does not decrypt) exactly as
  it is and reports it, so a missing key is never turned into a lost token;
* is idempotent and restartable: a row already under the current key is not selected, so a run
  that was stopped halfway goes on where it stopped and a second run changes nothing.

Kafka is not rewritten (see docs/security.md): the vault topic, the methods' and payments'
changelogs and the gateway-calls topic keep values sealed under the old key until the worker
writes newer ones, so the old key stays in the ring until then.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from agents.processor import method_aad
from paystream.security.crypto import CryptoError, KeyRing, key_id_of

__all__ = ["Failure", "ReencryptReport", "count_by_key", "reencrypt_tokens"]

TABLE = "customer_gateway_tokens"
# The envelope's own key id (``v1:<kid>:...``) is what decrypts; the key_id column is checked too.
_NOT_CURRENT = "(split_part(token_ciphertext, ':', 2) <> %(current)s OR key_id <> %(current)s)"

SELECT_BATCH = f"""
SELECT method_id, token_ciphertext FROM {TABLE}
WHERE {_NOT_CURRENT} AND method_id > %(after)s
ORDER BY method_id LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""

# Compare-and-set on the ciphertext read in this transaction (the row is locked, so it holds;
# the condition documents that only the envelope that was opened is replaced).
UPDATE_ROW = f"""
UPDATE {TABLE} SET token_ciphertext = %(new)s, key_id = %(current)s
WHERE method_id = %(method_id)s AND token_ciphertext = %(old)s
"""


@dataclass(frozen=True, slots=True)
class Failure:
    method_id: str
    key_id: str
    reason: str  # unknown_key | does_not_decrypt | malformed


@dataclass
class ReencryptReport:
    current: str
    dry_run: bool
    before: dict[str, int] = field(default_factory=dict)  # rows per key id at the start
    after: dict[str, int] = field(default_factory=dict)  # rows per key id at the end
    reencrypted: int = 0
    failed: list[Failure] = field(default_factory=list)
    batches: int = 0
    passes: int = 0
    seconds: float = 0.0
    stopped: bool = False

    @property
    def pending(self) -> int:
        """Rows still not under the current key that could be re-encrypted (locked during the run,
        written meanwhile, or the run was stopped): run again."""
        return sum(n for kid, n in self.after.items() if kid != self.current) - len(self.failed)

    @property
    def ok(self) -> bool:
        return not self.failed and self.pending <= 0 and not self.stopped

    def to_json(self) -> dict[str, object]:
        return {"current_key_id": self.current, "dry_run": self.dry_run, "rows_by_key_before": self.before,
                "rows_by_key_after": self.after, "reencrypted": self.reencrypted,
                "failed": [{"method_id": f.method_id, "key_id": f.key_id, "reason": f.reason} for f in self.failed],
                "pending": max(self.pending, 0), "batches": self.batches, "passes": self.passes,
                "stopped": self.stopped, "seconds": round(self.seconds, 3)}


def count_by_key(conn: psycopg.Connection) -> dict[str, int]:
    """Rows per key id of their envelope (what ``--dry-run`` prints)."""
    rows = conn.execute(f"SELECT split_part(token_ciphertext, ':', 2), count(*) FROM {TABLE} GROUP BY 1 ORDER BY 1")
    return {str(kid): int(n) for kid, n in rows}


def _open(ring: KeyRing, method_id: str, envelope: str) -> tuple[str | None, Failure | None]:
    try:
        kid = key_id_of(envelope)
    except CryptoError:
        return None, Failure(method_id, "?", "malformed")
    if kid not in ring.keys:
        return None, Failure(method_id, kid, "unknown_key")
    try:
        return ring.decrypt(envelope, method_aad(method_id)), None
    except CryptoError:
        return None, Failure(method_id, kid, "does_not_decrypt")


def _one_pass(conn: psycopg.Connection, ring: KeyRing, report: ReencryptReport, batch_size: int,
              progress: Callable[[int], None], stop: Callable[[], bool]) -> int:
    """One keyset walk over the rows not under the current key; returns rows re-encrypted."""
    done, after = 0, ""
    failed = {f.method_id for f in report.failed}
    while not stop():
        with conn.transaction():
            rows = conn.execute(SELECT_BATCH, {"current": ring.current, "after": after,
                                               "limit": batch_size}).fetchall()
            if not rows:
                return done
            changed, new_failures = 0, 0
            for method_id, envelope in rows:
                token, failure = _open(ring, method_id, envelope)
                if failure is not None:
                    if method_id not in failed:  # left as it is; reported once
                        report.failed.append(failure)
                        failed.add(method_id)
                        new_failures += 1
                    continue
                assert token is not None
                new = ring.encrypt(token, method_aad(method_id))
                cur = conn.execute(UPDATE_ROW, {"new": new, "current": ring.current, "method_id": method_id,
                                                "old": envelope})
                changed += cur.rowcount
            after = rows[-1][0]
        report.batches += 1
        report.reencrypted += changed
        done += changed
        progress(changed + new_failures)
    report.stopped = True
    return done


def reencrypt_tokens(dsn: str, ring: KeyRing, *, batch_size: int = 500, dry_run: bool = False,
                     max_passes: int = 3, on_total: Callable[[int], None] = lambda _n: None,
                     progress: Callable[[int], None] = lambda _n: None,
                     stop: Callable[[], bool] = lambda: False) -> ReencryptReport:
    """Seal every token not under ``ring.current`` again under it (see the module's doc).

    ``on_total`` is told how many rows are to do, ``progress`` how many were handled per batch
    (re-encrypted, or reported for the first time). A pass that leaves rows behind (locked by a writer meanwhile) is
    followed by another, up to ``max_passes``.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    t0 = time.monotonic()
    report = ReencryptReport(current=ring.current, dry_run=dry_run)
    with psycopg.connect(dsn) as conn:
        with conn.transaction():
            report.before = count_by_key(conn)
        if dry_run:
            report.after = dict(report.before)
            # Which of them this ring could open is not checked: a dry run reads no plaintext.
            report.seconds = time.monotonic() - t0
            return report
        on_total(sum(n for kid, n in report.before.items() if kid != ring.current))
        while report.passes < max_passes and not report.stopped:
            report.passes += 1
            if _one_pass(conn, ring, report, batch_size, progress, stop) == 0:
                break
            with conn.transaction():
                left = sum(n for kid, n in count_by_key(conn).items() if kid != ring.current)
            if left <= len(report.failed):
                break
        with conn.transaction():
            report.after = count_by_key(conn)
    report.seconds = time.monotonic() - t0
    return report


def key_counts_text(counts: dict[str, int], current: str) -> str:
    return ", ".join(f"{kid}{' (current)' if kid == current else ''}: {n}" for kid, n in sorted(counts.items())) \
        or "no rows"

