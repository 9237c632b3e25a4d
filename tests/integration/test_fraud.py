"""Fraud checks on the real stack (issue #8): a worker started with PAYSTREAM_FRAUD_ENABLED=true,
small rule files (tests/integration/fixtures/fraud-rules*.yaml), commands from a plain
confluent-kafka producer, events read back read_committed, the simulated gateway's ledger and
the worker's /metrics.

The fraud worker uses the normal app id (the payment topics are shared), so the session worker
is stopped while it runs and started again afterwards (as test_chaos_short.py does).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, Worker, free_port
from tests.integration.test_end_to_end import check_sequences
from tests.support.kafka_tools import Collector, OrderServiceProducer, create_cmd, envelope, is_terminal_record
from tests.support.session import session_worker_paused

FIXTURES = Path(__file__).parent / "fixtures"


def uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def fraud_worker(stack_env: dict[str, str], producer: OrderServiceProducer, request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    with session_worker_paused(request):
        yield from _fraud_worker(stack_env, producer, tmp_path_factory)


def _fraud_worker(stack_env: dict[str, str], producer: OrderServiceProducer,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    tmp = tmp_path_factory.mktemp("fraud-worker")
    port = free_port()
    env = {**os.environ, **stack_env, "PAYSTREAM_DATADIR": str(tmp / "data"), "PAYSTREAM_WEB_PORT": str(port),
           "PYTHONUNBUFFERED": "1", "PAYSTREAM_GATEWAY_TIMEOUT_S": "5",
           "PAYSTREAM_FRAUD_ENABLED": "true",
           "PAYSTREAM_FRAUD_RULES_FILE": str(FIXTURES / "fraud-rules.yaml"),
           "PAYSTREAM_FRAUD_CANDIDATE_RULES_FILE": str(FIXTURES / "fraud-rules.candidate.yaml"),
           "PAYSTREAM_FRAUD_VERDICT_TIMEOUT_S": "20"}
    w = Worker(env, tmp / "worker.log", producer, port)
    w.start()
    try:
        w.wait_ready()
        yield w
    finally:
        w.stop()


def ledger(stack_env: dict[str, str], pid: str) -> list[dict[str, Any]]:
    data = httpx.get(f"{stack_env['PAYSTREAM_SIMGW_URL']}/v1/ledger", timeout=10).json()["data"]
    return [c for c in data if c.get("payment_id") == pid]


def metric(worker: Worker, name: str, **labels: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = ",".join(sorted(line[len(name) + 1:line.index("}")].split(",")))
        if got == want:
            total += float(line.rsplit(" ", 1)[1])
    return total


def body(event: dict[str, Any]) -> dict[str, Any]:
    return dict(event["event"][1])


def fraud_decisions(events: list[dict[str, Any]], shadow: bool) -> list[dict[str, Any]]:
    return [body(e) for e in events if e["_type"] == "FraudDecision" and body(e)["shadow"] is shadow]


def wait_terminals(collector: Collector, cmds: list[dict[str, Any]], timeout: float = 60) -> None:
    wanted = {c["command_id"] for c in cmds}
    ok = collector.wait(lambda c: wanted <= set(c.terminal_causations()), timeout)
    assert ok, {c["payment_id"]: [e["_type"] for e in collector.by_payment[c["payment_id"]]] for c in cmds}


def test_a_burst_reaches_review_and_a_release_authorizes_it_with_shadow_decisions(
        fraud_worker: Worker, producer: OrderServiceProducer, collector: Collector, stack_env: dict[str, str]) -> None:
    customer = uid("cus_burst")
    creates = [producer.send(create_cmd(uid("pay_burst"), amount=1500 + i, customer_id=customer)) for i in range(4)]
    producer.flush()
    wait_terminals(collector, creates)

    by_pid = {c["payment_id"]: collector.by_payment[c["payment_id"]] for c in creates}
    reviewed, allowed = [], []
    for pid, events in by_pid.items():
        check_sequences(events)
        (active,) = fraud_decisions(events, shadow=False)
        (shadow,) = fraud_decisions(events, shadow=True)  # the candidate's, published and never deciding
        assert events[0]["_type"] == "PaymentCreated"
        (reviewed if active["decision"] == "review" else allowed).append(pid)
        if active["decision"] == "review":
            assert active["rules"] == ["customer_count_1m"]
            assert [e["_type"] for e in events] == ["PaymentCreated", "FraudDecision", "FraudDecision"]
            assert events[-1]["status"] == "processing" and ledger(stack_env, pid) == []
        else:
            assert active == {"decision": "allow", "rules": [], "shadow": False}
            assert events[-1]["_type"] == "PaymentSucceeded"
        # The candidate reviews from the second payment on: its own decisions, not the active ones.
        assert shadow["decision"] in ("allow", "review") and shadow["shadow"] is True
    # Counted in order on the customer's partition: the 3rd and 4th payment exceed max_count 2.
    assert len(allowed) == 2 and len(reviewed) == 2, {p: fraud_decisions(e, False) for p, e in by_pid.items()}
    shadow_reviews = sum(fraud_decisions(e, True)[0]["decision"] == "review" for e in by_pid.values())
    assert shadow_reviews == 3  # max_count 1: everything but the first
    # Exactly one terminal per CreatePayment (I2), the review decision for the held ones.
    terminals = collector.terminal_causations()
    assert all(terminals[c["command_id"]] == 1 for c in creates)

    # A reviewer releases one: it is authorized (and captured) under the release's command id.
    released, rejected = reviewed
    release = producer.send(envelope(released, "ReleasePayment", {"released_by": "analyst-7", "note": None}))
    reject = producer.send(envelope(rejected, "RejectPayment", {"rejected_by": "analyst-7", "reason": "ring"}))
    again = producer.send(envelope(allowed[0], "ReleasePayment", {"released_by": "analyst-7", "note": None}))
    producer.flush()
    wait_terminals(collector, [release, reject, again])
    events = collector.by_payment[released]
    check_sequences(events)
    assert events[-1]["_type"] == "PaymentSucceeded" and events[-1]["causation_command_id"] == release["command_id"]
    assert [c["status"] for c in ledger(stack_env, released)] != []
    events = collector.by_payment[rejected]
    check_sequences(events)
    assert events[-1]["_type"] == "PaymentFailed" and body(events[-1])["decline_code"] == "fraud_suspected"
    assert ledger(stack_env, rejected) == []  # no gateway call for a rejected payment
    not_held = collector.by_payment[allowed[0]][-1]
    assert not_held["_type"] == "CommandRejected" and body(not_held)["reason"] == "payment_not_in_review"

    assert metric(fraud_worker, "paystream_fraud_rule_reviewed_total", rule="customer_count_1m", mode="active") >= 2
    assert metric(fraud_worker, "paystream_fraud_rule_fired_total", rule="customer_count_1m_strict",
                  mode="shadow") >= 3
    assert metric(fraud_worker, "paystream_fraud_decisions_total", decision="allow", mode="active",
                  ruleset="itest-active-1") >= 2


def test_a_blocklisted_customer_is_blocked_without_a_gateway_call(
        fraud_worker: Worker, producer: OrderServiceProducer, collector: Collector, stack_env: dict[str, str]) -> None:
    customer = uid("cus_blocked")
    before = metric(fraud_worker, "paystream_fraud_blocklist_commands_total", op="add", kind="customer",
                    outcome="applied")
    cli = subprocess.run([sys.executable, "-m", "paystream.cli", "fraud", "block", "--customer", customer,
                          "--actor", "analyst-7", "--reason", "chargeback ring"],
                         env=fraud_worker.env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    deadline = time.monotonic() + 30
    while metric(fraud_worker, "paystream_fraud_blocklist_commands_total", op="add", kind="customer",
                 outcome="applied") <= before:
        assert time.monotonic() < deadline, "the blocklist command was not applied"
        time.sleep(0.5)

    blocked = producer.send(create_cmd(uid("pay_blocked"), customer_id=customer))
    fine = producer.send(create_cmd(uid("pay_fine"), customer_id=uid("cus_fine")))
    producer.flush()
    wait_terminals(collector, [blocked, fine])

    events = collector.by_payment[blocked["payment_id"]]
    check_sequences(events)
    assert [e["_type"] for e in events] == ["PaymentCreated", "FraudDecision", "FraudDecision", "PaymentFailed"]
    assert fraud_decisions(events, shadow=False) == [{"decision": "block", "rules": ["blocklisted"], "shadow": False}]
    assert fraud_decisions(events, shadow=True)[0]["decision"] == "block"
    failed = events[-1]
    assert body(failed)["decline_code"] == "fraud_suspected" and failed["status"] == "failed"
    assert failed["causation_command_id"] == blocked["command_id"] and is_terminal_record(failed)
    assert ledger(stack_env, blocked["payment_id"]) == []  # the gateway never saw it

    assert collector.by_payment[fine["payment_id"]][-1]["_type"] == "PaymentSucceeded"
    assert len(ledger(stack_env, fine["payment_id"])) >= 1
    assert metric(fraud_worker, "paystream_fraud_rule_blocked_total", rule="blocklisted", mode="active") >= 1
