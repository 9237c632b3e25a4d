"""The `paystream` CLI against the real stack, run as a user runs it (a subprocess, the stack's
environment): stack status/up/down, db migrate, send create/capture/refund/cancel, status and
tail. `worker`, `sink`, `customers sink` and `audit sink` are the session fixtures' own
processes (tests/conftest.py); `schemas check` is tests/integration/test_schema_contracts.py;
`audit verify` is tests/integration/test_methods_security.py."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from paystream import stack
from sinks.migrate import discover
from tests.conftest import ROOT, Proc
from tests.support.kafka_tools import Collector

SERVICES = ("postgres", "kafka", "registry", "stripe-mock", "simgw")


def cli(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "paystream.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def status_lines(out: str) -> dict[str, str]:
    """`stack status` lines: service → state."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^(\S+)\s+(healthy|unhealthy|down)\b", out, re.M)}


# --- stack ----------------------------------------------------------------------------------


def test_stack_status_up_and_down_from_the_cli(stack_env: dict[str, str]) -> None:
    out = cli(stack_env, "stack", "status")
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_lines(out.stdout) == dict.fromkeys(SERVICES, "healthy")

    up = cli(stack_env, "stack", "up")  # idempotent: healthy services are left alone, setup re-runs
    assert up.returncode == 0, up.stdout + up.stderr
    assert "[setup] topics created:" in up.stdout and "migrations applied: 0" in up.stdout

    # One service down and up again: stripe-mock (stateless, up in a second; the simulated gateway
    # would lose its in-memory ledger, which later tests read).
    try:
        down = cli(stack_env, "stack", "down", "stripe-mock")
        assert down.returncode == 0, down.stdout + down.stderr
        out = cli(stack_env, "stack", "status")
        assert out.returncode == 1, "status must fail while a service is down"
        assert status_lines(out.stdout) == {**dict.fromkeys(SERVICES, "healthy"), "stripe-mock": "down"}
        up = cli(stack_env, "stack", "up", "stripe-mock")
        assert up.returncode == 0, up.stdout + up.stderr
        assert re.search(r"stripe-mock +up in", up.stdout), up.stdout
    finally:
        if stack.status()["stripe-mock"] != "healthy":
            stack.up(["stripe-mock"])
    out = cli(stack_env, "stack", "status")
    assert out.returncode == 0 and status_lines(out.stdout) == dict.fromkeys(SERVICES, "healthy"), out.stdout


# --- db migrate -----------------------------------------------------------------------------


@pytest.fixture
def empty_database(pg_dsn: str) -> Iterator[str]:
    name = f"cli_migrate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{pg_dsn.rsplit('/', 1)[0]}/{name}"  # the stack's DSN names its database last
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_db_migrate_applies_every_migration_once(stack_env: dict[str, str], empty_database: str) -> None:
    env = {**stack_env, "PAYSTREAM_POSTGRES_DSN": empty_database}
    names = [m.name for m in discover()]
    first = cli(env, "db", "migrate")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"applied {len(names)} migration(s): {names}"
    again = cli(env, "db", "migrate")
    assert again.returncode == 0 and again.stdout.strip() == "applied 0 migration(s): []"
    with psycopg.connect(empty_database) as conn:
        rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert rows == [(m.version, m.name) for m in discover()]
    assert {"payments", "payment_events", "payment_transactions", "audit_log", "payment_methods"} <= tables


# --- send, status, tail ----------------------------------------------------------------------


def sent(out: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert out.returncode == 0, out.stdout + out.stderr
    result: dict[str, str] = json.loads(out.stdout)
    assert result["payment_id"] and result["command_id"]
    return result


def result_of(collector: Collector, payment_id: str, command_id: str, timeout: float = 90) -> dict[str, Any]:
    def done(c: Collector) -> bool:
        return any(e["causation_command_id"] == command_id for e in c.by_payment[payment_id])

    assert collector.wait(done, timeout), [e["_type"] for e in collector.by_payment[payment_id]]
    return [e for e in collector.by_payment[payment_id] if e["causation_command_id"] == command_id][-1]


def stored_sequence(dsn: str, payment_id: str, sequence: int, timeout: float = 60) -> None:
    """Until the sink has stored the payment's row up to ``sequence``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT last_sequence FROM payments WHERE payment_id = %s", (payment_id,)).fetchone()
        if row is not None and row[0] >= sequence:
            return
        time.sleep(0.3)
    raise AssertionError(f"{payment_id} not stored up to #{sequence} after {timeout}s")


def test_send_create_capture_refund_and_status(stack_env: dict[str, str], worker: Any, sink: Proc,
                                               collector: Collector, pg_dsn: str) -> None:
    created = sent(cli(stack_env, "send", "create", "--amount", "2500", "--currency", "EUR", "--manual"))
    pid = created["payment_id"]
    assert result_of(collector, pid, created["command_id"])["_type"] == "PaymentAuthorized"

    capture = sent(cli(stack_env, "send", "capture", pid, "--amount", "1500"))
    assert capture["payment_id"] == pid
    captured = result_of(collector, pid, capture["command_id"])
    assert captured["_type"] == "PaymentSucceeded" and captured["totals"][1]["captured"] == 1500

    refund = sent(cli(stack_env, "send", "refund", pid, "--amount", "400"))
    refunded = result_of(collector, pid, refund["command_id"])
    assert refunded["_type"] == "RefundProcessed" and refunded["totals"][1]["refunded"] == 400

    last = collector.by_payment[pid][-1]["sequence"]
    stored_sequence(pg_dsn, pid, last)
    out = cli(stack_env, "status", pid)
    assert out.returncode == 0, out.stderr
    head, *events = out.stdout.strip().splitlines()
    assert head.startswith(f"{pid}: {last_status(collector, pid)} ")
    assert "amount=2500 EUR authorized=2500 captured=1500 refunded=400" in head and f"(sequence {last})" in head
    assert [int(line.split()[0]) for line in events] == list(range(1, last + 1))
    kinds = [line.split()[1] for line in events]
    assert kinds[0] == "PaymentCreated" and {"PaymentAuthorized", "PaymentSucceeded", "RefundProcessed"} <= set(kinds)
    assert any(line.split()[1] == "RefundProcessed" and line.endswith(f"caused by {refund['command_id']}")
               for line in events), events


def last_status(collector: Collector, payment_id: str) -> str:
    return str(next(e["status"] for e in reversed(collector.by_payment[payment_id]) if e.get("status")))


def test_send_cancel(stack_env: dict[str, str], worker: Any, collector: Collector) -> None:
    created = sent(cli(stack_env, "send", "create", "--amount", "990", "--currency", "USD", "--manual"))
    pid = created["payment_id"]
    assert result_of(collector, pid, created["command_id"])["_type"] == "PaymentAuthorized"
    cancel = sent(cli(stack_env, "send", "cancel", pid))
    canceled = result_of(collector, pid, cancel["command_id"])
    assert canceled["_type"] == "PaymentCanceled" and canceled["status"] == "canceled"


def test_status_of_an_unknown_payment_is_a_clear_error(stack_env: dict[str, str]) -> None:
    out = cli(stack_env, "status", f"pay_never_{uuid.uuid4().hex[:8]}")
    assert out.returncode == 1 and "no payment pay_never_" in out.stderr and "Traceback" not in out.stderr


def _lines(stream: Any, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


def test_tail_shows_new_events_as_readable_lines(stack_env: dict[str, str], worker: Any) -> None:
    # SIGINT back to its default in the child: a test run started in the background (nohup, `&`)
    # ignores SIGINT, its children inherit that, and Python then never raises KeyboardInterrupt.
    proc = subprocess.Popen([sys.executable, "-m", "paystream.cli", "tail"], env={**os.environ, **stack_env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    out: queue.Queue[str] = queue.Queue()
    err: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, out), daemon=True).start()
    threading.Thread(target=_lines, args=(proc.stderr, err), daemon=True).start()
    try:
        # tail says when it is positioned at the end; events after that line are shown
        first_err = [err.get(timeout=120)]
        while "following payment.events from now" not in first_err[-1]:
            first_err.append(err.get(timeout=120))
        created = sent(cli(stack_env, "send", "create", "--amount", "1234", "--currency", "USD"))
        pid = created["payment_id"]
        seen: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any("PaymentSucceeded" in line for line in seen):
            try:
                line = out.get(timeout=1)
            except queue.Empty:
                continue
            if pid in line:
                seen.append(line.rstrip("\n"))
        assert [line.split()[3] for line in seen][:1] == ["PaymentCreated"], seen
        succeeded = next(line for line in seen if "PaymentSucceeded" in line)
        assert re.match(rf"^\d\d:\d\d:\d\d {pid} +#\d+ +PaymentSucceeded +succeeded +12\.34 USD captured 12\.34 USD$",
                        succeeded), succeeded
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, "Ctrl-C ends tail quietly"
