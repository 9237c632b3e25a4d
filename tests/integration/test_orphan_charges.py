"""Orphan charges on the real stack (issue #4, "nothing is ever charged twice").

The simulated gateway's ``tok_5xx_after_charge_1`` charges the payment's first authorization and
answers 500 "nothing was charged, retry" (a lie; replayed for retries under the key). paystream
gives attempt 0 up and charges again under attempt 1: two charges at the gateway. The
reconciler asks the gateway about the abandoned key, finds the charge and refunds it under
``<key>-refund``; the payment itself stays succeeded with its own charge. A second delivery of
the stale answer that found the orphan changes nothing: no second refund.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import httpx
import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.integration.test_end_to_end import check_sequences, uid
from tests.integration.test_gateway_routing import ledger, terminal
from tests.support.kafka_tools import create_cmd
from tests.support.waits import wait_for

APP_ID = os.environ.get("PAYSTREAM_APP_ID", "paystream")
REPLIES = f"{APP_ID}-gateway-replies"


def bodies(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e["event"][1] for e in events if e["_type"] == kind]


def replies_of(bootstrap: str, pid: str) -> list[Any]:
    """The gateway-replies records of one payment (read_committed, from the start)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4()}",
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(REPLIES, timeout=10).topics[REPLIES].partitions
        tps = [TopicPartition(REPLIES, p, 0) for p in parts]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
        consumer.assign(tps)
        out, seen = [], dict.fromkeys(ends, -1)
        while any(seen[p] < ends[p] - 1 for p in ends if ends[p] > 0):
            for m in consumer.consume(500, 0.5):
                if m.error() is None:
                    seen[m.partition()] = m.offset()
                    if m.key() == pid.encode():
                        out.append(m)
        return out
    finally:
        consumer.close()


def ignored_replies(worker: Any) -> float:
    text = httpx.get(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith('paystream_inputs_ignored_total{kind="reply"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_charge_behind_a_lying_5xx_is_refunded_once_and_the_payment_keeps_its_own(
    worker, sink, producer, collector, stack_env, pg_dsn
):
    pid = uid("orphan")
    orphan_key = f"ps-{pid}-authorize-0"
    cmd = producer.send(create_cmd(pid, amount=2_345, token="tok_5xx_after_charge_1"))
    producer.flush()
    succeeded = terminal(collector, pid, cmd)
    assert succeeded["_type"] == "PaymentSucceeded", [e["_type"] for e in collector.by_payment[pid]]
    own_ref = succeeded["event"][1]["gateway_ref"]

    # The reconciler looks up the abandoned key, finds the charge, refunds it.
    assert collector.wait(lambda c: bodies(c.by_payment[pid], "OrphanChargeResolved"), 90), \
        [e["_type"] for e in collector.by_payment[pid]]
    events = collector.by_payment[pid]
    check_sequences(events)
    [detected] = bodies(events, "OrphanChargeDetected")
    [resolved] = bodies(events, "OrphanChargeResolved")
    assert (detected["orphan_key"], detected["orphan_gateway"], detected["action"], detected["amount"]) == (
        orphan_key, "simulated", "refund", 2_345)
    assert detected["orphan_gateway_ref"] != own_ref
    assert (resolved["outcome"], resolved["orphan_gateway_ref"]) == ("refunded", detected["orphan_gateway_ref"])
    # The payment's own state never moved: succeeded, its own charge, nothing refunded.
    for e in events[events.index(succeeded):]:
        totals = e["totals"][1]
        assert e["status"] == "succeeded" and (totals["captured"], totals["refunded"]) == (2_345, 0)
    assert not any(e["_type"] in ("PaymentFailed", "RefundProcessed") for e in events)

    # The gateway's ledger: two charges, the orphan refunded in full: one net charge.
    charges = ledger(stack_env, pid)
    assert len(charges) == 2
    [orphan] = [c for c in charges if orphan_key in c["idempotency_keys"]]
    [own] = [c for c in charges if c is not orphan]
    assert orphan["id"] == detected["orphan_gateway_ref"] and own["id"] == own_ref
    assert (orphan["status"], orphan["amount_captured"], orphan["amount_refunded"]) == ("refunded", 2_345, 2_345)
    assert [(r["refund_id"], r["status"]) for r in orphan["refunds"]] == [("orphan_0_0", "succeeded")]
    assert f"{orphan_key}-refund" in orphan["idempotency_keys"]
    assert (own["status"], own["amount_refunded"]) == ("succeeded", 0)
    assert sum(c["amount_captured"] - c["amount_refunded"] for c in charges) == 2_345

    # Postgres: both events, the refund call as a 'refund_orphan' transaction, the payment row untouched.
    def stored() -> Any:
        with psycopg.connect(pg_dsn) as conn:
            types = [r[0] for r in conn.execute(
                "SELECT event_type FROM payment_events WHERE payment_id = %s ORDER BY sequence", (pid,))]
            tx = conn.execute(
                "SELECT operation, status, gateway_ref, idempotency_key FROM payment_transactions "
                "WHERE payment_id = %s AND kind = 'reply' AND operation = 'refund_orphan'", (pid,)).fetchall()
            row = conn.execute("SELECT status, captured, refunded, gateway_ref FROM payments WHERE payment_id = %s",
                               (pid,)).fetchone()
        return (types, tx, row) if "OrphanChargeResolved" in types and tx else None

    types, tx, row = wait_for(stored, 60, "the orphan's events and transaction in Postgres")
    assert types == [e["_type"] for e in events]
    assert tx == [("refund_orphan", "refunded", orphan["id"], f"{orphan_key}-refund")]
    assert row == ("succeeded", 2_345, 0, own_ref)

    # A second delivery of the stale answer that found the orphan (the lookup under attempt 0's
    # key reporting "captured"): ignored, no second refund.
    stale = [m for m in replies_of(stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"], pid)
             if b'"kind":"reconcile"' in m.value().replace(b" ", b"") and orphan_key.encode() in m.value()
             and b'"captured"' in m.value()]
    assert stale, "the reconciler's finding is on the replies topic"
    before = ignored_replies(worker)
    again = Producer({"bootstrap.servers": stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"]})
    again.produce(REPLIES, stale[0].value(), key=stale[0].key(), partition=stale[0].partition())
    again.flush(10)
    wait_for(lambda: ignored_replies(worker) > before, 60, "the worker to read the redelivered reply")
    collector.poll(1.0)
    assert len(bodies(collector.by_payment[pid], "OrphanChargeDetected")) == 1
    assert len(bodies(collector.by_payment[pid], "OrphanChargeResolved")) == 1
    [orphan_now] = [c for c in ledger(stack_env, pid) if orphan_key in c["idempotency_keys"]]
    assert len(orphan_now["refunds"]) == 1 and orphan_now["amount_refunded"] == 2_345


def test_a_payment_that_failed_gets_every_orphan_refunded_and_stays_failed(worker, producer, collector, stack_env):
    # Every attempt charges and says "nothing charged": the payment fails (processing_error),
    # and no money is kept for it: each attempt's charge is refunded.
    pid = uid("orphan-failed")
    cmd = producer.send(create_cmd(pid, amount=1_234, token="tok_5xx_after_charge"))
    producer.flush()
    failed = terminal(collector, pid, cmd)
    assert failed["_type"] == "PaymentFailed" and failed["event"][1]["decline_code"] == "processing_error"
    attempts = len(ledger(stack_env, pid))
    assert attempts >= 2  # MAX_GATEWAY_ATTEMPTS charges, one per abandoned key

    assert collector.wait(lambda c: len(bodies(c.by_payment[pid], "OrphanChargeResolved")) == attempts, 120), \
        [e["_type"] for e in collector.by_payment[pid]]
    events = collector.by_payment[pid]
    check_sequences(events)
    assert {b["outcome"] for b in bodies(events, "OrphanChargeResolved")} == {"refunded"}
    assert all(e["status"] == "failed" for e in events[events.index(failed):])
    charges = ledger(stack_env, pid)
    assert all(c["status"] == "refunded" and c["amount_refunded"] == c["amount_captured"] == 1_234 for c in charges)
    assert sum(c["amount_captured"] - c["amount_refunded"] for c in charges) == 0
