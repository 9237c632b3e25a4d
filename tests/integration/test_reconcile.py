"""Outcome unknown → reconciled: a gateway that charges but never answers in time must end as
the charge it really made, never as a failure, and never as a second charge (I1)."""

from __future__ import annotations

import httpx

from tests.integration.test_end_to_end import check_sequences, uid
from tests.integration.test_ops_metrics import scrape, value
from tests.support.kafka_tools import create_cmd


def test_timeout_becomes_unknown_then_the_reconciler_finds_the_charge(worker, producer, collector, stack_env):
    metrics_url = f"http://127.0.0.1:{worker.web_port}/metrics"
    resolved_before = value(scrape(metrics_url), "paystream_reconciler_resolutions_total", outcome="applied")
    pid = uid("timeout")
    # tok_timeout_1: the answer is lost, and so is the first replay under the key: the inline try
    # is abandoned after gateway_inline_wait_ms, the executor's repeat times out too.
    cmd = producer.send(create_cmd(pid, amount=4_321, token="tok_timeout_1"))
    producer.flush()
    # The worker gives up waiting after its gateway timeout: unknown, not failed.
    assert collector.wait(lambda c: any(e["_type"] == "PaymentOutcomeUnknown" for e in c.by_payment[pid]), 90)
    unknown = next(e for e in collector.by_payment[pid] if e["_type"] == "PaymentOutcomeUnknown")
    assert unknown["causation_command_id"] == cmd["command_id"] and unknown["status"] == "unknown"
    # The reconciler asks the gateway by idempotency key and settles the payment.
    assert collector.wait(lambda c: c.by_payment[pid][-1]["status"] == "succeeded", 90), \
        [e["_type"] for e in collector.by_payment[pid]]
    events = collector.by_payment[pid]
    check_sequences(events)
    assert not any(e["_type"] == "PaymentFailed" for e in events)
    settled = events[-1]
    assert settled["causation_command_id"] != cmd["command_id"]  # caused by the reconciliation
    assert settled["totals"][1]["captured"] == 4_321
    # I1: exactly one charge for this payment in the gateway's own ledger.
    ledger = httpx.get(f"{stack_env['PAYSTREAM_SIMGW_URL']}/v1/ledger", timeout=10).json()["data"]
    charges = [c for c in ledger if c.get("payment_id") == pid]
    assert len(charges) == 1 and charges[0]["amount_captured"] == 4_321
    # The dashboard's reconciler panel: the finding that settled it, counted by the gateway's answer.
    after = scrape(metrics_url)
    assert value(after, "paystream_reconciler_resolutions_total", outcome="applied") >= resolved_before + 1
    assert value(after, "paystream_reconciler_resolutions_total", status="captured", outcome="applied") >= 1
