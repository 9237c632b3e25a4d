"""The Postgres sink on the real stack: gateway replies in payment_transactions, and a Postgres
outage in the middle of a run — the worker keeps publishing, the sink waits (visibly: /ready,
metrics) and catches up without loss or duplicates (I7)."""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.error
import urllib.request
import uuid
from typing import Any

import psycopg

from paystream import stack
from tests.conftest import Proc
from tests.support.i7 import read_events, wait_i7
from tests.support.kafka_tools import Collector, OrderServiceProducer, create_cmd, envelope
from tests.support.waits import wait_for

MIX = ["tok_visa", "tok_mastercard", "tok_decline_insufficient_funds", "tok_decline_expired_card", "tok_3ds"]


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def sink_get(sink: Proc, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{sink.env['PAYSTREAM_SINK_METRICS_PORT']}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError:  # not listening yet (the process is starting)
        return 0, ""


def metric(sink: Proc, name: str) -> float:
    _, text = sink_get(sink, "/metrics")
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def postgres_down() -> None:
    """Stop the stack's Postgres and wait until it is gone.

    ``SERVICES["postgres"].down()`` signals the pid it recorded, which is ``runuser``'s when the
    stack runs as root: runuser turns SIGINT into a *smart* shutdown (which waits for clients
    such as the sink to disconnect) and SIGKILLs the postmaster later. So the postmaster (its pid
    is the first line of postmaster.pid) gets the fast shutdown itself first.
    """
    pidfile = stack.pg_data() / "postmaster.pid"
    if pidfile.exists():
        postmaster = int(pidfile.read_text().split()[0])
        os.kill(postmaster, signal.SIGINT)
        wait_for(lambda: not stack.pid_alive(postmaster), 30, "postmaster exit")
    stack.SERVICES["postgres"].down()
    assert stack.SERVICES["postgres"].status() == "down"


def send_mix(producer: OrderServiceProducer, prefix: str, n: int) -> dict[str, set[str]]:
    sent: dict[str, set[str]] = {}
    for i in range(n):
        pid = uid(prefix)
        sent[pid] = {producer.send(create_cmd(pid, amount=1000 + i, token=MIX[i % len(MIX)]))["command_id"]}
    producer.flush()
    return sent


def transactions(dsn: str, ids: list[str]) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT payment_id, kind, operation, idempotency_key, attempt, gateway, gateway_ref, status, "
            "decline_code, error_code, latency_ms FROM payment_transactions WHERE payment_id = ANY(%s) "
            "ORDER BY payment_id, created_at, kind", (ids,)).fetchall()


def test_sink_is_ready_and_reports_postgres_up(sink: Proc) -> None:
    wait_for(lambda: sink_get(sink, "/ready")[0] == 200, 60, "sink ready")
    _, body = sink_get(sink, "/ready")
    assert json.loads(body) == {"ready": True, "reasons": []}
    assert sink_get(sink, "/health")[0] == 200
    assert metric(sink, "paystream_sink_postgres_up") == 1.0


def test_gateway_replies_are_stored_once_per_attempt(worker, sink, producer: OrderServiceProducer,
                                                     collector: Collector, stack_env: dict[str, str],
                                                     pg_dsn: str) -> None:
    visa, declined, manual, timeout = uid("tx-visa"), uid("tx-decl"), uid("tx-man"), uid("tx-timeout")
    cmds = {
        visa: producer.send(create_cmd(visa)),
        declined: producer.send(create_cmd(declined, token="tok_decline_insufficient_funds")),
        manual: producer.send(create_cmd(manual, capture_method="manual")),
        timeout: producer.send(create_cmd(timeout, token="tok_timeout_1")),  # lost answer, lost again
    }
    producer.flush()
    assert collector.wait_terminal({p: {c["command_id"]} for p, c in cmds.items() if p != timeout}, 60)
    capture = producer.send(envelope(manual, "CapturePayment", {"amount": None, "currency": None}))
    producer.flush()
    assert collector.wait_terminal({manual: {capture["command_id"]}}, 60)

    ids = [visa, declined, manual, timeout]

    def settled() -> list[tuple[Any, ...]] | None:
        rows = transactions(pg_dsn, ids)
        timeout_rows = [r for r in rows if r[0] == timeout]
        done = {r[0] for r in rows} == set(ids) and any(r[1] == "reconcile" and r[7] == "captured"
                                                          for r in timeout_rows)
        return rows if done and len([r for r in rows if r[0] == manual]) == 2 else None

    rows = wait_for(settled, 90, "payment_transactions rows (the timeout one reconciled)")
    by = {(r[0], r[1], r[2]): r for r in rows}
    assert len(by) == len(rows), "one row per attempt and kind"

    v = by[(visa, "reply", "authorize")]
    assert (v[3], v[4], v[5], v[7]) == (f"ps-{visa}-authorize-0", 0, "simulated", "captured")
    assert v[6] and v[10] is not None and v[10] >= 0

    d = by[(declined, "reply", "authorize")]
    assert (d[7], d[8], d[9]) == ("declined", "insufficient_funds", None)

    assert by[(manual, "reply", "authorize")][7] == "authorized"
    c = by[(manual, "reply", "capture")]
    assert (c[3], c[4], c[7]) == (f"ps-{manual}-capture-1", 1, "captured")

    t = by[(timeout, "reply", "authorize")]
    assert t[7] == "unknown" and t[9] in ("timeout", "outcome_unknown")
    r = by[(timeout, "reconcile", "authorize")]
    assert (r[3], r[7]) == (t[3], "captured")  # the same attempt, looked up later

    events = read_events(stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"], stack_env["PAYSTREAM_SCHEMA_REGISTRY_URL"], ids)
    assert wait_i7(pg_dsn, events, 60) == []


def test_postgres_outage_sink_catches_up_without_loss_or_duplicates(
        worker, sink: Proc, producer: OrderServiceProducer, collector: Collector, stack_env: dict[str, str],
        pg_dsn: str) -> None:
    pg = stack.SERVICES["postgres"]
    wait_for(lambda: sink_get(sink, "/ready")[0] == 200, 60, "sink ready before the outage")
    before = send_mix(producer, "pgo-before", 10)
    assert collector.wait_terminal(before, 60)
    retries_before = metric(sink, "paystream_sink_retries_total")

    postgres_down()
    try:
        during = send_mix(producer, "pgo-during", 15)
        # The worker does not need Postgres: every command gets its result while it is down.
        assert collector.wait_terminal(during, 60), "worker stalled while Postgres was down"
        assert all(collector.by_payment[p] for p in during)

        # The sink waits, alive but not ready, and says so.
        _, body = wait_for(lambda: (r := sink_get(sink, "/ready"))[0] == 503 and r, 30, "sink not ready")
        assert any("postgres" in reason for reason in json.loads(body)["reasons"]), body
        assert sink_get(sink, "/health")[0] == 200
        assert sink.alive
        assert metric(sink, "paystream_sink_postgres_up") == 0.0
        wait_for(lambda: metric(sink, "paystream_sink_retries_total") > retries_before, 30, "retries counted")
        # 0 at the first failed write (the outage starts then), growing from the next one on.
        wait_for(lambda: metric(sink, "paystream_sink_postgres_down_seconds") > 0, 30, "outage duration shown")
    finally:
        pg.up()

    ids = list(before) + list(during)
    events = read_events(stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"], stack_env["PAYSTREAM_SCHEMA_REGISTRY_URL"], ids)
    assert set(events) == set(ids)
    assert wait_i7(pg_dsn, events, 90) == []
    with psycopg.connect(pg_dsn) as conn:
        total, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM payment_events WHERE payment_id = ANY(%s)",
            (ids,)).fetchone()
        replies = conn.execute(
            "SELECT count(*), count(DISTINCT (idempotency_key, kind)) FROM payment_transactions "
            "WHERE payment_id = ANY(%s)", (ids,)).fetchone()
    assert total == distinct == sum(len(v) for v in events.values())
    assert replies is not None and replies[0] == replies[1] and replies[0] >= len(ids)
    wait_for(lambda: sink_get(sink, "/ready")[0] == 200, 30, "sink ready again")
    assert metric(sink, "paystream_sink_postgres_up") == 1.0
    assert metric(sink, "paystream_sink_postgres_down_seconds") == 0.0
