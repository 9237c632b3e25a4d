"""Gateway calls made inline by the payments agent, on the real stack (issue #10's design work).

The payments agent applies the inputs waiting for it as a batch and carries out the gateway
calls they decide at the end of the batch, concurrently, applying the replies in the same
transaction: a payment usually completes in the commit of the command that started it. A call
not answered within ``gateway_inline_wait_ms`` is handed over to the gateway executor through
the gateway-calls topic, which makes it again under the same idempotency key: still one charge.

What these tests read is what really happened: the internal topics (read_committed), the
simulated gateway's ledger, the worker's metrics and the sink's Postgres rows.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

import httpx
import psycopg
from confluent_kafka import Consumer, TopicPartition

from tests.integration.test_end_to_end import uid
from tests.integration.test_gateway_routing import ledger, terminal
from tests.support.kafka_tools import create_cmd
from tests.support.waits import wait_for

APP_ID = os.environ.get("PAYSTREAM_APP_ID", "paystream")
CALLS = f"{APP_ID}-gateway-calls"
REPLIES = f"{APP_ID}-gateway-replies"
OUTCOMES = f"{APP_ID}-gateway-outcomes"


def records_of(bootstrap: str, topic: str, pid: str, quiet_s: float = 3.0) -> list[dict[str, Any]]:
    """The JSON records of ``topic`` keyed by ``pid`` (read_committed, from the start).

    Read until the topic stays quiet for ``quiet_s``: the last offset of a transactionally
    written partition is a commit marker a read_committed consumer never receives, so "up to the
    high watermark" would never end. What the tests look for was committed before they read."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4()}",
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        last_seen = time.monotonic()
        while time.monotonic() - last_seen < quiet_s:
            assert time.monotonic() < deadline, f"{topic} did not go quiet"
            for m in consumer.consume(500, 0.5):
                if m.error() is None:
                    last_seen = time.monotonic()
                    if m.key() == pid.encode():
                        out.append(json.loads(m.value()))
        return out
    finally:
        consumer.close()


def inline_calls(worker: Any) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=10).text
    out = {"applied": 0.0, "handed_over": 0.0}
    for line in text.splitlines():
        for outcome in out:
            if line.startswith(f'paystream_gateway_inline_calls_total{{outcome="{outcome}"}}'):
                out[outcome] = float(line.rsplit(" ", 1)[1])
    return out


def stored_transactions(dsn: str, pid: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT operation, status, idempotency_key FROM payment_transactions WHERE payment_id = %s "
            "AND kind = 'reply' ORDER BY created_at", (pid,)).fetchall()


def test_a_payment_completes_with_its_gateway_call_made_inline(worker, sink, producer, collector, stack_env,
                                                               pg_dsn):
    bootstrap = stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"]
    before = inline_calls(worker)
    pid = uid("inline")
    cmd = producer.send(create_cmd(pid, amount=4_321, token="tok_visa"))
    producer.flush()
    done = terminal(collector, pid, cmd)
    assert done["_type"] == "PaymentSucceeded", [e["_type"] for e in collector.by_payment[pid]]
    assert inline_calls(worker)["applied"] >= before["applied"] + 1

    # The reply was applied in the batch that made the call: published on the outcomes topic
    # (marked applied inline) for the history, never through the executor's topics.
    [outcome] = records_of(bootstrap, OUTCOMES, pid)
    assert outcome["meta"]["applied"] == "inline"
    assert (outcome["input"]["operation"], outcome["input"]["status"]) == ("authorize", "captured")
    assert outcome["input"]["idempotency_key"] == f"ps-{pid}-authorize-0"
    assert records_of(bootstrap, CALLS, pid) == [] and records_of(bootstrap, REPLIES, pid) == []

    # One charge at the gateway, of the payment's amount; the transaction history has the reply.
    [charge] = ledger(stack_env, pid)
    assert (charge["status"], charge["amount_captured"]) == ("succeeded", 4_321)
    rows = wait_for(lambda: stored_transactions(pg_dsn, pid), 60, "the inline reply in payment_transactions")
    assert rows == [("authorize", "captured", f"ps-{pid}-authorize-0")]


def test_a_call_slower_than_the_inline_wait_is_handed_over_and_charges_once(worker, sink, producer, collector,
                                                                            stack_env, pg_dsn):
    # tok_slow answers after 2 s; the worker waits 0.5 s (gateway_inline_wait_ms) for inline calls.
    bootstrap = stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"]
    before = inline_calls(worker)
    pid = uid("handover")
    cmd = producer.send(create_cmd(pid, amount=1_234, token="tok_slow"))
    producer.flush()
    done = terminal(collector, pid, cmd, timeout=120)
    assert done["_type"] == "PaymentSucceeded", [e["_type"] for e in collector.by_payment[pid]]
    assert inline_calls(worker)["handed_over"] >= before["handed_over"] + 1

    # The call went to the executor, sealed, under the key of the inline try; its answer came
    # back on the replies topic; nothing was applied inline for this payment's authorization.
    calls = records_of(bootstrap, CALLS, pid)
    assert [c["idempotency_key"] for c in calls][:1] == [f"ps-{pid}-authorize-0"]
    assert not any(o["input"].get("operation") == "authorize" for o in records_of(bootstrap, OUTCOMES, pid))
    assert records_of(bootstrap, REPLIES, pid)

    # The inline try and the executor's call reached the gateway under one key: one charge.
    [charge] = ledger(stack_env, pid)
    assert (charge["status"], charge["amount_captured"]) == ("succeeded", 1_234)
    assert f"ps-{pid}-authorize-0" in charge["idempotency_keys"]
    wait_for(lambda: stored_transactions(pg_dsn, pid), 60, "the executor's reply in payment_transactions")
