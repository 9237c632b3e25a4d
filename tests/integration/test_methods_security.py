"""Saved payment methods, encryption at rest, the card-data guard, the audit chain and customer
erasure, on the real stack: the session worker, the event sink, and the session's vault and
audit sinks (`paystream customers sink`, `paystream audit sink`; tests/conftest.py) as subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import string
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry.avro import AvroDeserializer

from agents.methods import MethodDirectory
from paystream import stack
from paystream.core.sensitive import find_pan, luhn_valid, scan
from tests.conftest import API_KEY, Proc
from tests.support.kafka_tools import (
    EVENTS,
    REQUESTS,
    TERMINAL_TYPES,
    Collector,
    OrderServiceProducer,
    create_cmd,
    envelope,
)

ROOT = Path(__file__).resolve().parents[2]


def uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def secret_token() -> str:
    """A simulated-gateway token (approves) that appears nowhere else: easy to look for."""
    return "pm_itest_" + "".join(random.choices(string.ascii_letters, k=24))


def fresh_pan() -> str:
    """A random Luhn-valid 16-digit number, so finding it anywhere means this test leaked it."""
    body = "4" + "".join(random.choices(string.digits, k=14))
    check = next(d for d in string.digits if luhn_valid(body + d))
    return body + check


def add_method(method_id: str, customer: str, token: str) -> dict[str, Any]:
    return envelope(method_id, "AddPaymentMethod", {
        "customer_id": customer, "gateway": "simulated", "gateway_token": token, "brand": "visa", "last4": "4242",
        "exp_month": 12, "exp_year": 2031, "fingerprint": "fp_itest"})


def pay_with(method_id: str, customer: str, amount: int = 1000) -> dict[str, Any]:
    pid = uid("pay_saved")
    return create_cmd(pid, amount=amount, token=None, saved_method_id=method_id, customer_id=customer)


def terminal(collector: Collector, cmd: dict[str, Any]) -> dict[str, Any]:
    key, cid = cmd["payment_id"], cmd["command_id"]
    assert collector.wait_terminal({key: {cid}}, timeout=60), f"no result for {cmd['command']['-type']}"
    [event] = [e for e in collector.by_payment[key]
               if e["causation_command_id"] == cid and e["_type"] in TERMINAL_TYPES]
    return event


def rejected_reason(event: dict[str, Any]) -> str | None:
    return event["event"][1]["reason"] if event["_type"] == "CommandRejected" else None


def wait_pg(dsn: str, sql: str, params: tuple[Any, ...], check: Any, timeout: float = 60) -> list[tuple[Any, ...]]:
    deadline = time.monotonic() + timeout
    rows: list[tuple[Any, ...]] = []
    while time.monotonic() < deadline:
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(sql, params).fetchall()  # type: ignore[arg-type]
        if check(rows):
            return rows
        time.sleep(0.5)
    raise AssertionError(f"Postgres never showed it: {sql} {params} -> {rows}")


def read_topic(bootstrap: str, topic: str) -> Iterator[Any]:
    """Every message now in ``topic`` (read_uncommitted: aborted writes count too)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"scan-{uuid.uuid4()}",
                         "enable.auto.commit": False, "isolation.level": "read_uncommitted"})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {}
        tps = []
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
                tps.append(TopicPartition(topic, p, low))
        if not tps:
            return
        consumer.assign(tps)
        done: set[int] = set()
        deadline = time.monotonic() + 60
        while len(done) < len(ends) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 1.0):
                if msg.error() is not None:
                    continue
                yield msg
                if msg.offset() >= ends[msg.partition()] - 1:
                    done.add(msg.partition())
            for p, high in ends.items():  # transaction markers can end a partition
                if p not in done and consumer.position([TopicPartition(topic, p)])[0].offset >= high:
                    done.add(p)
    finally:
        consumer.close()


def all_topics(bootstrap: str) -> list[str]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"list-{uuid.uuid4()}"})
    try:
        return sorted(t for t in consumer.list_topics(timeout=10).topics if not t.startswith("__"))
    finally:
        consumer.close()


def message_bytes(msg: Any) -> bytes:
    parts = [msg.key() or b"", msg.value() or b""]
    parts += [v or b"" for _, v in (msg.headers() or [])]
    return b"\x00".join(parts)


def pg_dump(dsn: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    proc = subprocess.run(
        [str(stack._pg_bin() / "pg_dump"), "-h", str(info.get("host", "127.0.0.1")), "-p", str(info.get("port", 5432)),
         "-U", str(info.get("user", "postgres")), "--data-only", str(info.get("dbname", "paystream"))],
        capture_output=True, text=True, timeout=120, check=True)
    return proc.stdout


def cli(stack_env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "paystream.cli", *args], env={**os.environ, **stack_env},
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


# --- saved methods ----------------------------------------------------------------------------


def test_saved_method_lifecycle_keeps_the_token_off_events_and_encrypted_in_postgres(
        worker: Any, sink: Any, vault_sink: Proc, producer: OrderServiceProducer, collector: Collector,
        pg_dsn: str, stack_env: dict[str, str]) -> None:
    method_id, customer, token = uid("pm"), uid("cus"), secret_token()
    added = terminal(collector, send(producer, add_method(method_id, customer, token)))
    assert added["_type"] == "PaymentMethodAdded" and added["sequence"] == 1
    assert added["event"][1]["last4"] == "4242" and added["event"][1]["customer_id"] == customer

    # Postgres: masked data in payment_methods, the token only as ciphertext.
    rows = wait_pg(pg_dsn, "SELECT t.token_ciphertext, t.key_id, m.status, m.last4, m.brand FROM payment_methods m "
                           "JOIN customer_gateway_tokens t USING (method_id) WHERE method_id = %s", (method_id,), bool)
    ciphertext, key_id, status, last4, brand = rows[0]
    assert ciphertext.startswith(f"v1:{key_id}:") and token not in ciphertext
    assert (status, last4, brand) == ("active", "4242", "visa")

    # Every worker's directory (the methods table's changelog) sees it, sealed only.
    seen = asyncio.run(directory_entry(stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"], method_id))
    assert seen is not None and seen["customer_id"] == customer and seen["status"] == "active"
    assert seen["sealed_token"].startswith("v1:") and token not in json.dumps(seen)

    # Paying with it, as its customer: the simulated gateway gets the real token and approves.
    ok = producer.send(pay_with(method_id, customer))
    other = producer.send(pay_with(method_id, uid("cus_other")))
    producer.flush()
    assert terminal(collector, ok)["_type"] == "PaymentSucceeded"
    assert rejected_reason(terminal(collector, other)) == "customer_mismatch"

    # Removing it: removed, its token gone from Postgres, and it cannot be used any more.
    removed = terminal(collector, send(producer, envelope(method_id, "RemovePaymentMethod", {"customer_id": customer})))
    assert removed["_type"] == "PaymentMethodRemoved" and removed["sequence"] == 2
    late = terminal(collector, send(producer, pay_with(method_id, customer)))
    assert rejected_reason(late) == "payment_method_removed"
    again = terminal(collector, send(producer, envelope(method_id, "RemovePaymentMethod", {"customer_id": customer})))
    assert rejected_reason(again) == "payment_method_removed" and again["sequence"] == 3
    wait_pg(pg_dsn, "SELECT m.status, (SELECT count(*) FROM customer_gateway_tokens t WHERE t.method_id = m.method_id) "
                    "FROM payment_methods m WHERE method_id = %s", (method_id,),
            lambda rows: rows == [("removed", 0)])
    # ... and detached at its gateway too (the worker opens the sealed token just for the call).
    detached_url = f"{stack_env['PAYSTREAM_SIMGW_URL']}/v1/payment_methods/{token}"
    deadline = time.monotonic() + 60
    while not httpx.get(detached_url, timeout=5).json()["detached"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert httpx.get(detached_url, timeout=5).json() == {"object": "payment_method", "detached": True}

    # Data minimization: the token is on no event (raw bytes of every event, headers included),
    # and no event carries anything that looks like a card number: key, headers and every field
    # of the decoded record (the raw Avro binary is not text: a length byte can read as a digit).
    bootstrap = stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"]
    decode = AvroDeserializer(producer.registry)
    scanned = 0
    for msg in read_topic(bootstrap, EVENTS):
        raw = message_bytes(msg)
        assert token.encode() not in raw
        # Integers are amounts and epoch-ms timestamps (one 13-digit timestamp in ten is
        # Luhn-valid): every text field of the record is checked, and the key and headers.
        assert not scan(decode(msg.value(), None), integers=False), (msg.topic(), msg.partition(), msg.offset())
        text = "\x00".join([(msg.key() or b"").decode("latin-1"),
                            *[(v or b"").decode("latin-1") for _, v in (msg.headers() or [])]])
        assert not find_pan(text), (msg.topic(), msg.partition(), msg.offset())
        scanned += 1
    assert scanned > 0
    # The internal topics around a gateway call carry it sealed only: the call is made with the
    # token opened in memory, inline by the payments agent or by the executor from the sealed
    # gateway-calls record; the payment's state keeps it sealed for retries after a restart.
    for topic in ("paystream-gateway-calls", "paystream-payments-changelog", "paystream-gateway-outcomes",
                  "paystream-gateway-replies"):
        records = list(read_topic(bootstrap, topic))
        assert not any(token.encode() in message_bytes(msg) for msg in records), topic
        assert records or topic == "paystream-gateway-calls", f"{topic} is empty: nothing was checked"
    # ... nor in any Postgres table.
    assert token not in pg_dump(pg_dsn)


async def directory_entry(bootstrap: str, method_id: str) -> dict[str, Any] | None:
    directory = MethodDirectory(bootstrap, "paystream-payment-methods-changelog")
    task = asyncio.ensure_future(directory.run())
    try:
        deadline = time.monotonic() + 30
        while directory.get(method_id) is None and time.monotonic() < deadline:
            await directory.refresh(1.0)
        return directory.get(method_id)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def send(producer: OrderServiceProducer, cmd: dict[str, Any]) -> dict[str, Any]:
    producer.send(cmd)
    producer.flush()
    return cmd


# --- card-data guard -----------------------------------------------------------------------------


def test_card_number_in_a_command_is_rejected_and_found_nowhere(
        worker: Any, sink: Any, vault_sink: Proc, audit_sink: Proc, producer: OrderServiceProducer,
        collector: Collector, pg_dsn: str, stack_env: dict[str, str]) -> None:
    pan = fresh_pan()
    grouped = " ".join(pan[i:i + 4] for i in range(0, 16, 4))
    in_metadata = send(producer, create_cmd(uid("pay_pan"), metadata={"note": f"card {grouped} thanks"}))
    cvv = send(producer, create_cmd(uid("pay_cvv"), metadata={"cvv2": "737"}))
    as_token = send(producer, add_method(uid("pm_pan"), uid("cus"), pan))
    for cmd in (in_metadata, cvv, as_token):
        event = terminal(collector, cmd)
        assert rejected_reason(event) == "sensitive_data_rejected"
        assert pan not in str(event) and grouped not in str(event)
    time.sleep(3)  # let the sinks and the audit trail take whatever they would take

    bootstrap = stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"]
    needles = [pan.encode(), grouped.encode()]
    checked = []
    for topic in all_topics(bootstrap):
        if topic == REQUESTS:
            continue  # where the sender put it; paystream never copies it out
        for msg in read_topic(bootstrap, topic):
            raw = message_bytes(msg)
            assert not any(n in raw for n in needles), f"card number found in {topic}@{msg.offset()}"
        checked.append(topic)
    assert EVENTS in checked and any(t.endswith("-audit") for t in checked)
    dump = pg_dump(pg_dsn)
    assert pan not in dump and grouped not in dump
    log = worker.log.read_text(errors="replace")
    assert pan not in log and grouped not in log


# --- the edge's audit hook, and the chain --------------------------------------------------------


def test_audit_trail_records_state_changes_and_api_calls_and_its_chain_verifies(
        worker: Any, sink: Any, vault_sink: Proc, audit_sink: Proc, producer: OrderServiceProducer,
        collector: Collector, pg_dsn: str, stack_env: dict[str, str]) -> None:
    method_id, customer = uid("pm"), uid("cus")
    terminal(collector, send(producer, add_method(method_id, customer, secret_token())))
    with httpx.Client(base_url=f"http://127.0.0.1:{worker.web_port}", timeout=30,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        assert c.get(f"/customers/{customer}/payment-methods").status_code == 200
        assert c.get("/payments/does-not-exist", headers={"Authorization": "Bearer wrong"}).status_code == 401
    rows = wait_pg(pg_dsn, "SELECT actor, action, outcome, origin, resource FROM audit_log WHERE resource IN (%s, %s) "
                           "ORDER BY seq", (f"payment_method:{method_id}", f"customer:{customer}"),
                   lambda r: len(r) >= 2)
    by_action = {r[1]: r for r in rows}
    assert by_action["event.PaymentMethodAdded"][0] == "order-service-test"
    assert by_action["event.PaymentMethodAdded"][3].startswith("kafka:payment.requests/")
    assert by_action["payment_method.list"][0] == "itest" and by_action["payment_method.list"][2] == "ok"
    wait_pg(pg_dsn, "SELECT 1 FROM audit_log WHERE action = 'payment.read' AND outcome = 'rejected' "
                    "AND detail->>'reason' = 'unauthenticated'", (), bool)

    result = cli(stack_env, "audit", "verify", "--actor", "itest")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "intact" in result.stdout


def test_audit_verify_detects_an_edited_a_deleted_and_a_forged_row(
        worker: Any, audit_sink: Proc, pg_dsn: str, stack_env: dict[str, str]) -> None:
    wait_pg(pg_dsn, "SELECT count(*) FROM audit_log", (), lambda r: r[0][0] >= 5)
    audit_sink.stop()  # nothing appends while the log is tampered with (and restored)
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            last = conn.execute("SELECT last_seq, last_hash FROM audit_chain_head").fetchone()
            assert last is not None
            target = max(2, last[0] // 2)
            original = conn.execute("SELECT * FROM audit_log WHERE seq = %s", (target,)).fetchone()
            assert original is not None

            conn.execute("UPDATE audit_log SET outcome = 'forged' WHERE seq = %s", (target,))
            result = cli(stack_env, "audit", "verify", "--no-record")
            assert result.returncode == 1 and f"BROKEN at row #{target} (edited" in result.stderr, result.stderr
            conn.execute("UPDATE audit_log SET outcome = %s WHERE seq = %s", (original[6], target))

            conn.execute("DELETE FROM audit_log WHERE seq = %s", (target,))
            result = cli(stack_env, "audit", "verify", "--no-record")
            assert result.returncode == 1 and f"BROKEN at row #{target} (removed" in result.stderr, result.stderr
            conn.execute("INSERT INTO audit_log VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                         (*original[:8], psycopg.types.json.Jsonb(original[8]), *original[9:]))

            # A forged row appended with a correctly computed hash: the head row exposes it.
            from paystream.security.audit import AuditRecord, next_row

            forged = next_row(last[0] + 1, AuditRecord("forged:1", 1, "admin:mallory", "payment.refund",
                                                       "payment:x", "success", "psql", {}), last[1])
            conn.execute("INSERT INTO audit_log (seq, audit_id, occurred_at, actor, action, resource, outcome, origin, "
                         "detail, prev_hash, hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, '{}', %s, %s)",
                         (forged.seq, forged.audit_id, forged.occurred_at, forged.actor, forged.action,
                          forged.resource, forged.outcome, forged.origin, forged.prev_hash, forged.hash))
            result = cli(stack_env, "audit", "verify", "--no-record")
            assert result.returncode == 1 and f"BROKEN at row #{forged.seq}" in result.stderr, result.stderr
            assert "forged:1" in result.stderr
            conn.execute("DELETE FROM audit_log WHERE audit_id = 'forged:1'")

        result = cli(stack_env, "audit", "verify", "--no-record")
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        audit_sink.start()


# --- erasure ---------------------------------------------------------------------------------------


def test_customer_erasure_forgets_methods_and_tokens_but_keeps_payments(
        worker: Any, sink: Any, vault_sink: Proc, audit_sink: Proc, producer: OrderServiceProducer,
        collector: Collector, pg_dsn: str, stack_env: dict[str, str]) -> None:
    customer = uid("cus_erase")
    methods = [uid("pm_erase") for _ in range(2)]
    tokens = [secret_token() for _ in methods]
    for method_id, token in zip(methods, tokens, strict=True):
        assert terminal(collector, send(producer, add_method(method_id, customer, token)))["_type"] == \
            "PaymentMethodAdded"
    paid = send(producer, pay_with(methods[0], customer))
    assert terminal(collector, paid)["_type"] == "PaymentSucceeded"
    wait_pg(pg_dsn, "SELECT count(*) FROM customer_gateway_tokens WHERE customer_id = %s", (customer,),
            lambda r: r[0][0] == 2)
    wait_pg(pg_dsn, "SELECT status FROM payments WHERE payment_id = %s", (paid["payment_id"],),
            lambda r: r == [("succeeded",)])

    result = cli(stack_env, "customers", "erase", customer, "--actor", "itest-dpo", "--wait", "90")
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"erased": 2' in result.stdout

    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT status, brand, last4, exp_month, exp_year, fingerprint FROM payment_methods "
                            "WHERE customer_id = %s", (customer,)).fetchall()
        assert rows == [("erased", None, None, None, None, None)] * 2
        assert conn.execute("SELECT count(*) FROM customer_gateway_tokens WHERE customer_id = %s",
                            (customer,)).fetchone() == (0,)
        # Financial records stay: the payment and its events.
        assert conn.execute("SELECT status FROM payments WHERE payment_id = %s",
                            (paid["payment_id"],)).fetchone() == ("succeeded",)
        assert conn.execute("SELECT count(*) FROM payment_events WHERE payment_id = %s",
                            (paid["payment_id"],)).fetchone()[0] >= 2  # type: ignore[index]
    for method_id in methods:
        collector.wait(lambda c, m=method_id: any(e["_type"] == "PaymentMethodRemoved"
                                                  for e in c.by_payment[m]), 30)
        erased = [e for e in collector.by_payment[method_id] if e["_type"] == "PaymentMethodRemoved"]
        assert erased and erased[0]["event"][1]["erased"] is True
        assert erased[0]["causation_command_id"] == f"erase-{method_id}"
    late = terminal(collector, send(producer, pay_with(methods[1], customer)))
    assert rejected_reason(late) == "payment_method_removed", late
    # The erasure itself is audited (who asked, outcome).
    rows = wait_pg(pg_dsn, "SELECT action, actor, outcome FROM audit_log WHERE resource = %s ORDER BY seq",
                   (f"customer:{customer}",), lambda r: len(r) >= 2)
    assert ("customer.erase", "admin:itest-dpo", "success") in rows
    dump = pg_dump(pg_dsn)
    assert not any(t in dump for t in tokens)
    # Running it again finds nothing left to erase.
    again = cli(stack_env, "customers", "erase", customer, "--actor", "itest-dpo", "--wait", "5")
    assert again.returncode == 0 and '"methods": 0' in again.stdout
