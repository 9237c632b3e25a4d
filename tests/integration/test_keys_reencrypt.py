"""``paystream keys reencrypt`` on real Postgres (a scratch database, migrated): tokens sealed under
k1 by the vault sink's own write path, a rotation to k2, the command re-encrypts them in batches
under k2 with the same associated data, a second run changes nothing, a row under a key the ring
does not have is reported and left as it was, a stopped run resumes, a row locked by a writer
is skipped and done by the next run, and the run is on the audit topic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from agents.processor import method_aad
from paystream.security.crypto import KeyRing, generate_key_entry, key_id_of, parse_key_entries
from sinks.migrate import migrate
from sinks.reencrypt import reencrypt_tokens
from sinks.schema import scratch_database
from sinks.vault import write_vault_batch
from streams import topics

ROOT = Path(__file__).resolve().parents[2]
K0, K1, K2 = (generate_key_entry(k) for k in ("k0", "k1", "k2"))


def ring(*entries: str, current: str) -> KeyRing:
    return KeyRing(keys=dict(e for entry in entries for e in parse_key_entries(entry)), current=current)


def vault_record(method_id: str, sealed: str) -> tuple[bytes, bytes]:
    value = {"kind": "payment_method", "method_id": method_id, "customer_id": "cus_reenc", "gateway": "simulated",
             "status": "active", "sealed_token": sealed, "brand": "visa", "last4": "4242", "exp_month": 12,
             "exp_year": 2031, "fingerprint": "fp_reenc", "version": 1, "created_at": 1_700_000_000_000,
             "updated_at": 1_700_000_000_000}
    return method_id.encode(), json.dumps(value).encode()


def seal_methods(dsn: str, keyring: KeyRing, count: int, prefix: str) -> dict[str, str]:
    """``count`` saved methods stored through the vault sink's write path; method id -> token."""
    tokens = {f"{prefix}_{i:05d}": f"pm_{uuid.uuid4().hex}" for i in range(count)}
    records = [vault_record(m, keyring.encrypt(t, method_aad(m))) for m, t in tokens.items()]
    with psycopg.connect(dsn) as conn:
        assert write_vault_batch(conn, records) == count
    return tokens


def rows(dsn: str) -> dict[str, tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        return {m: (c, k) for m, c, k in conn.execute(
            "SELECT method_id, token_ciphertext, key_id FROM customer_gateway_tokens")}


@pytest.fixture
def db(pg_dsn: str) -> Iterator[str]:
    with scratch_database(pg_dsn, "ps_reenc_test") as dsn:
        migrate(dsn)
        yield dsn


def cli(stack_env: dict[str, str], dsn: str, keys_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack_env, "PAYSTREAM_POSTGRES_DSN": dsn, "PAYSTREAM_ENCRYPTION_KEYS_FILE": str(keys_file),
           "PAYSTREAM_ENCRYPTION_KEYS": "", "PAYSTREAM_ENCRYPTION_CURRENT_KEY_ID": "k2"}
    return subprocess.run([sys.executable, "-m", "paystream.cli", "keys", "reencrypt", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)


def audit_records(stack_env: dict[str, str], actor: str) -> list[dict[str, Any]]:
    """keys.reencrypt records of ``actor`` on the audit topic (read to its end)."""
    topic = topics.audit("paystream")
    consumer = Consumer({"bootstrap.servers": stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"],
                         "group.id": f"reenc-{uuid.uuid4()}", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        while any(tp.offset < ends[tp.partition] for tp in consumer.position(
                [TopicPartition(topic, p) for p in parts]) if ends[tp.partition] > 0):
            assert time.monotonic() < deadline, "the audit topic was not read to its end"
            for m in consumer.consume(1000, 1.0):
                if m.error() is None:
                    value = json.loads(m.value())
                    for record in value if isinstance(value, list) else [value]:  # a worker's batch: an array
                        if record.get("action") == "keys.reencrypt" and record.get("actor") == f"admin:{actor}":
                            out.append(record)
    finally:
        consumer.close()
    return out


def test_reencrypt_after_rotation_seals_every_token_under_the_current_key(
        db: str, stack_env: dict[str, str], tmp_path: Path) -> None:
    old = seal_methods(db, ring(K1, current="k1"), 1203, "pm_k1")  # 3 batches of 500
    unknown = seal_methods(db, ring(K0, current="k0"), 1, "pm_k0")  # a key the new ring does not have
    current = seal_methods(db, ring(K2, current="k2"), 4, "pm_k2")  # already under k2
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"{K1}\n{K2}\n")  # rotated: k2 appended and current, k1 still decrypts
    new_ring = ring(K1, K2, current="k2")
    before = rows(db)
    actor = f"itest-reenc-{uuid.uuid4().hex[:8]}"

    dry = cli(stack_env, db, keys_file, "--dry-run", "--json", "--actor", actor)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["rows_by_key_before"] == {"k0": 1, "k1": 1203, "k2": 4}
    assert rows(db) == before  # a dry run writes nothing

    run = cli(stack_env, db, keys_file, "--json", "--batch-size", "500", "--actor", actor)
    assert run.returncode == 1, run.stderr  # the k0 row could not be re-encrypted: reported, exit 1
    report = json.loads(run.stdout)
    assert report["reencrypted"] == 1203 and report["pending"] == 0
    assert report["failed"] == [{"method_id": "pm_k0_00000", "key_id": "k0", "reason": "unknown_key"}]
    assert report["rows_by_key_after"] == {"k0": 1, "k2": 1207}

    after = rows(db)
    assert after["pm_k0_00000"] == before["pm_k0_00000"]  # untouched, still opens with k0
    assert ring(K0, current="k0").decrypt(after["pm_k0_00000"][0], method_aad("pm_k0_00000")) == unknown["pm_k0_00000"]
    for method_id, token in {**old, **current}.items():
        envelope, key_id = after[method_id]
        assert key_id == "k2" and key_id_of(envelope) == "k2"
        # Same associated data: the worker (method_aad) opens it, as the same token.
        assert new_ring.decrypt(envelope, method_aad(method_id)) == token
    for method_id in current:
        assert after[method_id] == before[method_id]  # already current: not rewritten
    assert all(after[m][0] != before[m][0] for m in old)

    again = cli(stack_env, db, keys_file, "--json", "--actor", actor)
    assert again.returncode == 1 and json.loads(again.stdout)["reencrypted"] == 0
    assert rows(db) == after  # a second run changes nothing

    audited = audit_records(stack_env, actor)
    assert [(a["detail"]["dry_run"], a["detail"]["reencrypted"], a["outcome"]) for a in audited] == [
        (True, 0, "success"), (False, 1203, "failure"), (False, 0, "failure")]
    assert audited[1]["detail"]["rows_by_key"] == {"k0": 1, "k1": 1203, "k2": 4}
    assert audited[1]["resource"] == "customer_gateway_tokens" and audited[1]["detail"]["current_key_id"] == "k2"


def test_a_stopped_run_resumes_and_a_row_locked_by_a_writer_is_left_for_the_next_run(db: str) -> None:
    tokens = seal_methods(db, ring(K1, current="k1"), 250, "pm_stop")
    new_ring = ring(K1, K2, current="k2")

    batches = 0

    def stop_after_two() -> bool:
        nonlocal batches
        batches += 1
        return batches > 2  # checked before each batch: two batches of 50, then stop

    first = reencrypt_tokens(db, new_ring, batch_size=50, stop=stop_after_two)
    assert first.stopped and first.reencrypted == 100 and not first.ok
    assert first.after == {"k1": 150, "k2": 100}

    # A writer (the vault sink, say) holds one of the remaining rows: skipped, not waited for.
    locked = "pm_stop_00200"
    with psycopg.connect(db) as writer:
        writer.execute("SELECT 1 FROM customer_gateway_tokens WHERE method_id = %s FOR UPDATE", (locked,))
        second = reencrypt_tokens(db, new_ring, batch_size=50, max_passes=1)
        assert second.reencrypted == 149 and second.pending == 1 and not second.ok and not second.failed
        writer.rollback()

    third = reencrypt_tokens(db, new_ring, batch_size=50)
    assert third.ok and third.reencrypted == 1 and third.after == {"k2": 250}
    for method_id, (envelope, key_id) in rows(db).items():
        assert key_id == "k2" and new_ring.decrypt(envelope, method_aad(method_id)) == tokens[method_id]
