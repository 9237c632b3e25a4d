"""The metrics the dashboard and the alerts read appear, with the labels they were declared with,
after real traffic: on the worker, the event sink, the vault sink and the audit sink (each
scraped over HTTP as Prometheus does)."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gateway_clients.simulated.webhooks import sign_payload
from paystream.config import Settings
from paystream.core.commands import KNOWN_GATEWAYS
from tests.conftest import ROOT, Proc
from tests.integration.test_web_edge import simulated_event
from tests.support.kafka_tools import Collector, OrderServiceProducer, create_cmd, envelope

sys.path.insert(0, str(ROOT / "tests" / "unit" / "ops"))
from ops_helpers import known_metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    text = httpx.get(url, timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of ``name`` over the series whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(ls) for (n, ls), _ in samples.items() if n == name]


def assert_declared_labels(samples: Samples, where: str) -> None:
    """Every paystream_* series carries exactly the labels its metric was declared with (what
    the dashboard and alert tests in tests/unit/ops check the queries against)."""
    known = known_metrics()
    wrong = sorted({f"{n} {sorted(dict(ls))}" for (n, ls), _ in samples.items() if n.startswith("paystream_")
                    and (n not in known or {k for k, _ in ls} != known[n])})
    assert not wrong, f"{where}: series unknown to tests/unit/ops/ops_helpers.py or with other labels: {wrong}"


def until(what: str, check: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"not seen within {timeout}s: {what}")


def port(proc: Proc, setting: str) -> int:
    return int(proc.env.get(f"PAYSTREAM_{setting.upper()}", Settings.model_fields[setting].default))


def test_worker_and_sink_metrics_after_payments(worker: Any, sink: Proc, producer: OrderServiceProducer,
                                                collector: Collector) -> None:
    worker_url = f"http://127.0.0.1:{worker.web_port}/metrics"
    sink_url = f"http://127.0.0.1:{port(sink, 'sink_metrics_port')}/metrics"
    until("the sink's /metrics", lambda: _answers(sink_url))
    w0, s0 = scrape(worker_url), scrape(sink_url)

    ok, declined = f"met_ok_{uuid.uuid4().hex[:8]}", f"met_decl_{uuid.uuid4().hex[:8]}"
    cmds = [producer.send(create_cmd(ok, amount=2_000, currency="EUR")),
            producer.send(create_cmd(declined, amount=700, currency="USD", token="tok_decline_insufficient_funds"))]
    producer.flush()
    assert collector.wait_terminal({c["payment_id"]: {c["command_id"]} for c in cmds}, 90)
    assert collector.by_payment[ok][-1]["_type"] == "PaymentSucceeded"
    assert collector.by_payment[declined][-1]["_type"] == "PaymentFailed"

    w1 = scrape(worker_url)
    assert_declared_labels(w1, "worker")
    # payments by status and gateway; amounts by currency
    assert value(w1, "paystream_payments_total", status="succeeded") >= value(
        w0, "paystream_payments_total", status="succeeded") + 1
    assert value(w1, "paystream_payments_total", status="failed") >= value(
        w0, "paystream_payments_total", status="failed") + 1
    assert {s["gateway"] for s in series(w1, "paystream_payments_total")} <= {*KNOWN_GATEWAYS, "-", "other"}
    assert value(w1, "paystream_amount_minor_total", currency="EUR") >= value(
        w0, "paystream_amount_minor_total", currency="EUR") + 2_000
    # gateway calls by outcome and latency histograms, per gateway and operation
    assert value(w1, "paystream_gateway_calls_total", gateway="simulated", operation="authorize",
                 status="declined") >= value(w0, "paystream_gateway_calls_total", gateway="simulated",
                                             operation="authorize", status="declined") + 1
    count = value(w1, "paystream_gateway_latency_seconds_count", gateway="simulated", operation="authorize")
    assert count >= value(w0, "paystream_gateway_latency_seconds_count", gateway="simulated",
                          operation="authorize") + 2
    assert value(w1, "paystream_gateway_latency_seconds_bucket", gateway="simulated", operation="authorize",
                 le="+Inf") == count
    # commands and events by type
    assert value(w1, "paystream_commands_total", type="CreatePayment", outcome="accepted") >= value(
        w0, "paystream_commands_total", type="CreatePayment", outcome="accepted") + 2
    assert value(w1, "paystream_events_total", type="PaymentFailed") >= value(
        w0, "paystream_events_total", type="PaymentFailed") + 1
    # unknown outcomes (gauges) and faust's consumer offsets per partition, the lag's two halves
    assert ("paystream_unknown_outcomes_pending", frozenset()) in w1
    assert ("paystream_unknown_outcome_oldest_age_seconds", frozenset()) in w1
    for name in ("paystream_topic_partition_end_offset", "paystream_topic_partition_offset_commited"):
        assert "payment.requests" in {s["topic"] for s in series(w1, name)}, name

    # the sink: events stored, batch latency, lag per partition, Postgres up
    def sink_caught_up() -> bool:
        s1 = scrape(sink_url)
        return value(s1, "paystream_sink_events_total") >= value(s0, "paystream_sink_events_total") + 4
    until("the sink storing the new events", sink_caught_up)
    s1 = scrape(sink_url)
    assert_declared_labels(s1, "sink")
    assert value(s1, "paystream_sink_batch_seconds_count") > value(s0, "paystream_sink_batch_seconds_count")
    assert value(s1, "paystream_sink_postgres_up") == 1
    partitions = {s["partition"] for s in series(s1, "paystream_sink_lag_messages")}
    assert partitions and all(p.isdigit() for p in partitions)


def test_webhook_verification_failures_are_counted(worker: Any) -> None:
    url = f"http://127.0.0.1:{worker.web_port}"
    raw = json.dumps(simulated_event("pay_forged", "payment.succeeded", "succeeded", 2500, "simpay_x")).encode()
    before = scrape(f"{url}/metrics")
    forged = httpx.post(f"{url}/webhooks/simulated", content=raw, timeout=10,
                        headers={"Simgw-Signature": sign_payload(raw, ["not-the-secret"], int(time.time()))})
    assert forged.status_code == 401, forged.text
    bad = httpx.post(f"{url}/webhooks/simulated", content=b"[1, 2", timeout=10,
                     headers={"Simgw-Signature": sign_payload(b"[1, 2", ["not-the-secret"], int(time.time()))})
    assert bad.status_code in (400, 401), bad.text
    after = scrape(f"{url}/metrics")
    assert_declared_labels(after, "worker")
    assert value(after, "paystream_webhooks_rejected_total", gateway="simulated", reason="signature") >= value(
        before, "paystream_webhooks_rejected_total", gateway="simulated", reason="signature") + 1
    assert value(after, "paystream_webhooks_rejected_total", gateway="simulated") == value(
        before, "paystream_webhooks_rejected_total", gateway="simulated") + 2
    assert {s["reason"] for s in series(after, "paystream_webhooks_rejected_total")} <= {
        "signature", "payload", "unparseable"}


def test_vault_and_audit_sink_metrics_after_real_records(worker: Any, vault_sink: Proc, audit_sink: Proc,
                                                         producer: OrderServiceProducer,
                                                         collector: Collector) -> None:
    vault_url = f"http://127.0.0.1:{port(vault_sink, 'vault_sink_metrics_port')}/metrics"
    audit_url = f"http://127.0.0.1:{port(audit_sink, 'audit_sink_metrics_port')}/metrics"
    for url in (vault_url, audit_url):
        until(f"{url} answering", lambda u=url: _answers(u))
    v0, a0 = scrape(vault_url), scrape(audit_url)

    # A saved payment method (a vault record) and a payment (audit records for its events).
    method = f"pm_met_{uuid.uuid4().hex[:10]}"
    add = producer.send(envelope(method, "AddPaymentMethod", {
        "customer_id": "cus_metrics", "gateway": "simulated", "gateway_token": "pm_itest_metrics", "brand": "visa",
        "last4": "4242", "exp_month": 12, "exp_year": 2031, "fingerprint": "fp_metrics"}))
    pay = producer.send(create_cmd(f"met_audit_{uuid.uuid4().hex[:8]}"))
    producer.flush()
    assert collector.wait_terminal({add["payment_id"]: {add["command_id"]}, pay["payment_id"]: {pay["command_id"]}},
                                   90)
    assert collector.by_payment[method][-1]["_type"] == "PaymentMethodAdded"

    for url, kind, before in ((vault_url, "vault", v0), (audit_url, "audit", a0)):
        until(f"the {kind} sink storing new records",
              lambda u=url, k=kind, b=before: value(scrape(u), "paystream_topic_sink_records_total", sink=k)
              > value(b, "paystream_topic_sink_records_total", sink=k))
        after = scrape(url)
        assert_declared_labels(after, f"{kind} sink")
        assert value(after, "paystream_topic_sink_batch_seconds_count", sink=kind) > value(
            before, "paystream_topic_sink_batch_seconds_count", sink=kind)
        assert value(after, "paystream_topic_sink_postgres_up", sink=kind) == 1
        assert value(after, "paystream_topic_sink_last_commit_timestamp_seconds", sink=kind) > 0
        lag = series(after, "paystream_topic_sink_lag_messages")
        assert lag and {s["sink"] for s in lag} == {kind} and all(s["partition"].isdigit() for s in lag), lag
        # each sink shows its own series only
        assert not any(n.startswith("paystream_sink_") for n, _ in after)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
