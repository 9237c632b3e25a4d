"""Fraud velocity state across workers, restarts and kills, on the real stack (issue #8).

Workers run as subprocesses with PAYSTREAM_FRAUD_ENABLED=true and the rules of
fixtures/fraud-rules.velocity.yaml (per customer more than 3, per IP more than 2 payments in a
10-minute window → review). The counts are checked three ways, all from outside the workers:

* the active ``FraudDecision`` of every payment on ``payment.events`` (read_committed): which
  rules fired, so how many payments of a key were counted before it;
* the verdicts on ``<app>-fraud-verdicts`` (read_committed): exactly one per payment;
* the committed windowed counts in the ``fraud-count-10m`` changelog: per key, equal to the
  number of distinct payments (a payment counted twice, or lost, shows there).

A payment's check hops from the payment's partition to its customer's and its IP's partition
(keys ``customer:<id>``, ``ip:<addr>``); the keys are chosen to cover every partition, so each
worker counts for keys whose payments another worker accepted. The verdict timeout is set far
beyond the tests' waits, so a lost check shows as a missing decision, never as a timeout review.

The session worker, if it runs, is stopped meanwhile (same app id, as in test_fraud.py).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka.partitioner import murmur2
from confluent_kafka import Consumer, TopicPartition

from tests.conftest import Worker, free_port
from tests.integration.test_end_to_end import check_sequences
from tests.support.kafka_tools import Collector, OrderServiceProducer, create_cmd
from tests.support.session import session_worker_paused

FIXTURES = Path(__file__).parent / "fixtures"
APP_ID = os.environ.get("PAYSTREAM_APP_ID", "paystream")
PARTITIONS = int(os.environ.get("PAYSTREAM_PARTITIONS", "4"))
CUSTOMER_MAX, IP_MAX = 3, 2  # fixtures/fraud-rules.velocity.yaml
WINDOW = "10m"


def partition_of(key: str) -> int:
    """The partition the workers' producer (aiokafka's default partitioner) sends a key to."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % PARTITIONS


def values_on_every_partition(kind: str, make: Callable[[], str]) -> list[str]:
    """One fresh value per partition for keys ``<kind>:<value>`` (index = partition)."""
    found: dict[int, str] = {}
    while len(found) < PARTITIONS:
        value = make()
        found.setdefault(partition_of(f"{kind}:{value}"), value)
    return [found[p] for p in range(PARTITIONS)]


def new_customers() -> list[str]:
    return values_on_every_partition("customer", lambda: f"cus_vel_{uuid.uuid4().hex[:10]}")


def new_ips() -> list[str]:
    # Documentation prefix (RFC 3849) with a random part: fresh per run, so earlier runs inside
    # the window do not add to the counts. These are strings in a message; nothing connects.
    return values_on_every_partition("ip", lambda: f"2001:db8:{uuid.uuid4().hex[:4]}::{uuid.uuid4().hex[:4]}")


def payment(customer: str, ip: str | None) -> dict[str, Any]:
    return create_cmd(f"pay_vel_{uuid.uuid4().hex[:12]}", amount=1234, customer_id=customer, customer_ip=ip)


# --- workers --------------------------------------------------------------------------------


class Workers:
    """Fraud workers of one test, each with its own fresh data dir; all stopped at the end."""

    def __init__(self, stack_env: dict[str, str], producer: OrderServiceProducer, tmp: Path) -> None:
        self.stack_env, self.producer, self.tmp = stack_env, producer, tmp
        self.started: list[Worker] = []

    def start(self, name: str) -> Worker:
        port = free_port()
        env = {**os.environ, **self.stack_env, "PAYSTREAM_DATADIR": str(self.tmp / f"{name}-data"),
               "PAYSTREAM_WEB_PORT": str(port), "PYTHONUNBUFFERED": "1", "PAYSTREAM_GATEWAY_TIMEOUT_S": "5",
               "PAYSTREAM_FRAUD_ENABLED": "true",
               "PAYSTREAM_FRAUD_RULES_FILE": str(FIXTURES / "fraud-rules.velocity.yaml"),
               "PAYSTREAM_FRAUD_VERDICT_TIMEOUT_S": "900"}
        env.pop("PAYSTREAM_FRAUD_CANDIDATE_RULES_FILE", None)
        assert not (self.tmp / f"{name}-data").exists()  # empty local state
        w = Worker(env, self.tmp / f"{name}.log", self.producer, port)
        w.start()
        self.started.append(w)
        return w

    def stop_all(self) -> None:
        for w in self.started:
            w.stop()


@pytest.fixture
def workers(stack_env: dict[str, str], producer: OrderServiceProducer, request: pytest.FixtureRequest,
            tmp_path: Path) -> Iterator[Workers]:
    with session_worker_paused(request):
        ws = Workers(stack_env, producer, tmp_path)
        try:
            yield ws
        finally:
            ws.stop_all()


def metric_sum(worker: Worker, name: str) -> float:
    """A counter summed over all its labels, from the worker's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def commands_applied(worker: Worker) -> float:
    try:
        return metric_sum(worker, "paystream_commands_total")
    except httpx.ConnectError:  # still starting: its web server is not up yet
        return 0.0


def wait_all_own_partitions(producer: OrderServiceProducer, collector: Collector, members: list[Worker],
                            timeout: float = 150) -> None:
    """Until every worker of ``members`` has applied a command (the group has settled with each
    of them owning partitions): probe payments on every partition of payment.requests."""
    deadline = time.monotonic() + timeout
    while True:
        probes = [producer.send(create_cmd(pid)) for pid in values_on_every_partition_raw()]
        producer.flush()
        wanted = {p["command_id"] for p in probes}
        collector.wait(lambda c, wanted=wanted: wanted <= set(c.terminal_causations()), 30)
        if all(commands_applied(w) > 0 for w in members):
            return
        dead = [w for w in members if not w.alive]
        assert not dead, "a worker exited:\n" + "\n".join(w.log.read_text(errors="replace")[-4000:] for w in dead)
        assert time.monotonic() < deadline, "the workers did not share the partitions in time"
        time.sleep(1)


def values_on_every_partition_raw() -> list[str]:
    """Probe payment ids, one per partition of payment.requests (keyed by payment id)."""
    found: dict[int, str] = {}
    while len(found) < PARTITIONS:
        pid = f"probe-{uuid.uuid4().hex[:10]}"
        found.setdefault((murmur2(pid.encode()) & 0x7FFFFFFF) % PARTITIONS, pid)
    return list(found.values())


# --- what the tests read back -------------------------------------------------------------------


def active_decisions(collector: Collector, pid: str) -> list[dict[str, Any]]:
    return [dict(e["event"][1]) for e in collector.by_payment[pid]
            if e["_type"] == "FraudDecision" and not e["event"][1]["shadow"]]


def wait_decided(collector: Collector, cmds: list[dict[str, Any]], timeout: float = 120) -> None:
    ok = collector.wait(lambda c: all(active_decisions(c, cmd["payment_id"]) for cmd in cmds), timeout)
    assert ok, {cmd["payment_id"]: [e["_type"] for e in collector.by_payment[cmd["payment_id"]]]
                for cmd in cmds if not active_decisions(collector, cmd["payment_id"])}


def drain(topic: str, bootstrap: str, *, from_offsets: dict[int, int] | None = None,
          idle_s: float = 3.0) -> list[Any]:
    """Every committed record of ``topic`` (from the start, or from ``from_offsets``), read
    until nothing new came for ``idle_s``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4()}",
                         "isolation.level": "read_committed", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, (from_offsets or {}).get(p, 0)) for p in parts])
        out: list[Any] = []
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle_s:
            batch = [m for m in consumer.consume(500, 0.5) if m.error() is None]
            if batch:
                out += batch
                quiet_since = time.monotonic()
        return out
    finally:
        consumer.close()


def end_offsets(topic: str, bootstrap: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4()}"})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    finally:
        consumer.close()


def window_counts(bootstrap: str, keys: set[str]) -> dict[str, int]:
    """Per key: the largest committed count of any window in the fraud-count changelog (the
    window holding all of a test's payments: they are minutes apart at most)."""
    latest: dict[tuple[str, str], int] = {}
    for m in drain(f"{APP_ID}-fraud-count-{WINDOW}-changelog", bootstrap, idle_s=2.0):
        key, window = json.loads(m.key())
        if key in keys and m.value() is not None:
            latest[(key, json.dumps(window))] = int(json.loads(m.value()))
    out: dict[str, int] = defaultdict(int)
    for (key, _), count in latest.items():
        out[key] = max(out[key], count)
    return dict(out)


def verdicts_by_payment(bootstrap: str, since: dict[int, int], pids: set[str]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for m in drain(f"{APP_ID}-fraud-verdicts", bootstrap, from_offsets=since, idle_s=2.0):
        pid = json.loads(m.value())["payment_id"]
        if pid in pids:
            counts[pid] += 1
    return dict(counts)


def check_rule_counts(collector: Collector, cmds: list[dict[str, Any]]) -> None:
    """Each payment has exactly one active decision, and per customer (per IP) the rule fired
    for exactly the payments beyond the threshold, whichever order they were counted in."""
    fired: dict[tuple[str, str], int] = defaultdict(int)
    seen: dict[tuple[str, str], int] = defaultdict(int)
    for cmd in cmds:
        body = cmd["command"]
        (decision,) = active_decisions(collector, cmd["payment_id"])
        assert decision["decision"] == ("review" if decision["rules"] else "allow"), decision
        assert set(decision["rules"]) <= {"customer_count_10m", "ip_count_10m"}, decision
        for rule, dim, value in (("customer_count_10m", "customer", body["customer_id"]),
                                 ("ip_count_10m", "ip", body["customer_ip"])):
            if value is None:
                continue
            seen[(dim, value)] += 1
            fired[(dim, value)] += rule in decision["rules"]
    for (dim, value), n in seen.items():
        limit = CUSTOMER_MAX if dim == "customer" else IP_MAX
        assert fired[(dim, value)] == max(0, n - limit), (dim, value, n, fired[(dim, value)])


def check_outcomes(collector: Collector, cmds: list[dict[str, Any]]) -> None:
    """One terminal result per CreatePayment (I2): allowed ones reach the gateway's answer,
    held ones stop at the review decision; sequences without gaps or repeats (I5)."""
    terminals = collector.terminal_causations()
    for cmd in cmds:
        events = collector.by_payment[cmd["payment_id"]]
        check_sequences(events)
        assert terminals[cmd["command_id"]] == 1, [e["_type"] for e in events]
        (decision,) = active_decisions(collector, cmd["payment_id"])
        if decision["decision"] == "review":
            assert events[-1]["_type"] == "FraudDecision" and events[-1]["status"] == "processing"
        else:
            assert events[-1]["_type"] == "PaymentSucceeded", [e["_type"] for e in events]


# --- the tests ---------------------------------------------------------------------------------


def test_velocity_count_is_recovered_from_the_changelog_by_a_fresh_worker_after_a_kill(
        workers: Workers, producer: OrderServiceProducer, collector: Collector, stack_env: dict[str, str]) -> None:
    """Worker A counts two payments of a customer and is SIGKILLed; worker B starts with an
    empty data dir, so the count can only come from the changelog: the 3rd payment is allowed
    (3 is not more than 3) and the 4th and 5th are reviewed by the customer rule."""
    customer = f"cus_vel_{uuid.uuid4().hex[:10]}"
    a = workers.start("a")
    a.wait_ready()
    before_a = [payment(customer, None) for _ in range(2)]
    for cmd in before_a:  # one at a time: the decisions below depend on the order of counting
        producer.send(cmd)
        producer.flush()
        wait_decided(collector, [cmd])
    assert [active_decisions(collector, c["payment_id"])[0]["decision"] for c in before_a] == ["allow", "allow"]

    a.kill()
    assert not a.alive
    b = workers.start("b")
    b.wait_ready()
    after = [payment(customer, None) for _ in range(3)]
    for cmd in after:
        producer.send(cmd)
        producer.flush()
        wait_decided(collector, [cmd])
    decisions = [active_decisions(collector, c["payment_id"])[0] for c in after]
    assert decisions == [
        {"decision": "allow", "rules": [], "shadow": False},  # the 3rd in the window: at the threshold
        {"decision": "review", "rules": ["customer_count_10m"], "shadow": False},  # 4th: over it
        {"decision": "review", "rules": ["customer_count_10m"], "shadow": False},
    ]
    all_cmds = before_a + after
    assert collector.wait(lambda c: all(c.terminal_causations().get(x["command_id"]) for x in all_cmds), 60)
    check_outcomes(collector, all_cmds)
    assert window_counts(stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"], {f"customer:{customer}"}) == {
        f"customer:{customer}": 5}


def test_two_workers_count_each_key_once_across_a_rebalance(
        workers: Workers, producer: OrderServiceProducer, collector: Collector, stack_env: dict[str, str]) -> None:
    """Worker A alone counts the first half of 16 payments; worker B joins (the group
    rebalances, B rebuilds its partitions' windows from the changelogs); the second half is
    counted by whichever worker owns each customer's and IP's partition. Every key's count is
    the number of its payments, and each rule fired for exactly the payments beyond its limit.
    Recorded hops replayed afterwards are dropped (the agent remembers which payments it
    counted per key), so the counts stay."""
    bootstrap = stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"]
    customers, ips = new_customers(), new_ips()
    # 4 customers x 4 payments, 4 IPs x 4 payments; the IP of a payment is on another
    # partition than its customer, so every check crosses partitions (and so, workers).
    cmds = [payment(customers[j % 4], ips[(j + 1) % 4]) for j in range(16)]
    first, second = cmds[:8], cmds[8:]  # 2 per customer and per IP in each half
    verdicts_since = end_offsets(f"{APP_ID}-fraud-verdicts", bootstrap)
    checks_since = end_offsets(f"{APP_ID}-fraud-checks", bootstrap)

    a = workers.start("a")
    a.wait_ready()
    for cmd in first:
        producer.send(cmd)
    producer.flush()
    wait_decided(collector, first)
    assert all(active_decisions(collector, c["payment_id"])[0]["decision"] == "allow" for c in first)

    b = workers.start("b")
    wait_all_own_partitions(producer, collector, [a, b])
    decided_before = {w: metric_sum(w, "paystream_fraud_decisions_total") for w in (a, b)}
    for cmd in second:
        producer.send(cmd)
    producer.flush()
    wait_decided(collector, second)
    assert collector.wait(lambda c: all(c.terminal_causations().get(x["command_id"]) for x in cmds), 60)

    check_rule_counts(collector, cmds)  # customers: the 4th reviewed; IPs: the 3rd and 4th
    check_outcomes(collector, cmds)
    keys = {f"customer:{c}" for c in customers} | {f"ip:{i}" for i in ips}
    assert window_counts(bootstrap, keys) == {k: 4 for k in keys}
    pids = {c["payment_id"] for c in cmds}
    assert verdicts_by_payment(bootstrap, verdicts_since, pids) == {p: 1 for p in pids}
    # Both workers decided payments of the second half (the last hop, the IP's partition, is
    # spread over both); B's counts for keys it took over came from the changelogs.
    assert all(metric_sum(w, "paystream_fraud_decisions_total") > decided_before[w] for w in (a, b)), decided_before

    # A replay of recorded hops: the first hop (key customer:...) of four payments, produced
    # again exactly as recorded (key, value, timestamp), as a redelivery at new offsets would
    # be. Their owners drop them: no count changes, no second verdict.
    replayed = {c["payment_id"] for c in cmds[:4]}
    recorded = [m for m in drain(f"{APP_ID}-fraud-checks", bootstrap, from_offsets=checks_since, idle_s=2.0)
                if m.key().startswith(b"customer:") and json.loads(m.value())["payment_id"] in replayed]
    assert len(recorded) == 4
    dropped_before = sum(metric_sum(w, "paystream_fraud_duplicate_hops_total") for w in (a, b))
    for m in recorded:
        producer.producer.produce(m.topic(), key=m.key(), value=m.value(), timestamp=m.timestamp()[1])
    producer.flush()
    deadline = time.monotonic() + 60
    while sum(metric_sum(w, "paystream_fraud_duplicate_hops_total") for w in (a, b)) < dropped_before + 4:
        assert time.monotonic() < deadline, "the replayed hops were not dropped as duplicates"
        time.sleep(0.5)
    assert window_counts(bootstrap, keys) == {k: 4 for k in keys}
    assert verdicts_by_payment(bootstrap, verdicts_since, pids) == {p: 1 for p in pids}


def test_a_worker_killed_mid_stream_loses_and_doubles_no_count(
        workers: Workers, producer: OrderServiceProducer, collector: Collector, stack_env: dict[str, str]) -> None:
    """Two workers; 20 payments sent at a steady pace; worker A is SIGKILLed while they flow
    and a fresh A' (empty data dir) joins. Every payment gets exactly one verdict and one active
    FraudDecision, reaches its terminal result, and every key's windowed count equals its
    number of distinct payments: hops re-applied after the kill count nothing twice."""
    bootstrap = stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"]
    customers, ips = new_customers(), new_ips()
    cmds = [payment(customers[j % 4], ips[(j + 1) % 4]) for j in range(20)]  # 5 per customer, 5 per IP
    verdicts_since = end_offsets(f"{APP_ID}-fraud-verdicts", bootstrap)

    a = workers.start("a")
    b = workers.start("b")
    a.wait_ready()
    wait_all_own_partitions(producer, collector, [a, b])

    killed = threading.Event()

    def send_all() -> None:
        for j, cmd in enumerate(cmds):
            producer.send(cmd)
            producer.flush()
            if j == 7:
                killed.wait(30)
            time.sleep(0.25)

    sender = threading.Thread(target=send_all)
    sender.start()
    # Kill A once it is applying this test's payments (the first of them decided): its open
    # transactions (counts, forwards, verdicts of the hops in hand) are lost with it.
    assert collector.wait(lambda c: any(active_decisions(c, x["payment_id"]) for x in cmds[:8]), 60)
    a.kill()
    killed.set()
    a2 = workers.start("a2")
    sender.join(60)
    assert not sender.is_alive()

    wait_decided(collector, cmds, timeout=150)
    assert collector.wait(lambda c: all(c.terminal_causations().get(x["command_id"]) for x in cmds), 60)
    check_rule_counts(collector, cmds)  # customers: 4th and 5th reviewed; IPs: 3rd to 5th
    check_outcomes(collector, cmds)
    keys = {f"customer:{c}" for c in customers} | {f"ip:{i}" for i in ips}
    assert window_counts(bootstrap, keys) == {k: 5 for k in keys}
    pids = {c["payment_id"] for c in cmds}
    assert verdicts_by_payment(bootstrap, verdicts_since, pids) == {p: 1 for p in pids}
    assert a2.alive and b.alive
    print("after the kill:", {name: {m: metric_sum(w, m) for m in (
        "paystream_fraud_duplicate_hops_total", "paystream_input_ack_refused_total",
        "paystream_input_redelivered_total", "paystream_input_gaps_healed_total")}
        for name, w in (("b", b), ("a2", a2))})
