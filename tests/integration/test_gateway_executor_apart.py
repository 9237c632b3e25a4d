"""A gateway executor in a process of its own (`paystream gateway-executor`), on the real stack.

It joins the app's gateway-executor consumer group beside the session worker's in-process
executor, gets some of the gateway-calls partitions, and carries out the calls handed over on
them: the payment completes through the replies topic with one charge at the gateway, and the
standalone process's own metrics count the call. Stopped, it leaves its partitions to the
worker's executor (the group rebalances) and nothing handed over meanwhile is lost.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from confluent_kafka.admin import AdminClient

from tests.conftest import Proc, free_port, worker_env
from tests.integration.test_gateway_routing import ledger, terminal
from tests.integration.test_inline_gateway import records_of
from tests.integration.test_web_two_workers import partition_of
from tests.support.kafka_tools import create_cmd
from tests.support.waits import wait_for

APP_ID = os.environ.get("PAYSTREAM_APP_ID", "paystream")
GROUP = f"{APP_ID}-gateway"
CALLS = f"{APP_ID}-gateway-calls"


def assignments(bootstrap: str) -> dict[str, set[int]]:
    """member (client id/member id) -> the gateway-calls partitions it holds, per the group coordinator."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    [desc] = [f.result(10) for f in admin.describe_consumer_groups([GROUP], request_timeout=10).values()]
    return {m.client_id + "/" + m.member_id: {tp.partition for tp in m.assignment.topic_partitions if tp.topic == CALLS}
            for m in desc.members}


def standalone_partitions(held: dict[str, set[int]]) -> set[int]:
    [parts] = [p for member, p in held.items() if member.startswith(f"{APP_ID}-gateway-executor-standalone/")]
    return parts


def calls_made(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("paystream_gateway_calls_total{") and 'operation="authorize"' in line)


@pytest.fixture
def executor(worker, stack_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Proc, int]]:
    port = free_port()
    env = worker_env(stack_env, tmp_path / "data", free_port())
    proc = Proc(["gateway-executor", "--metrics-port", str(port)], env, tmp_path / "executor.log")
    proc.start()
    yield proc, port
    proc.stop()


def pid_on(partitions: set[int], total: int) -> str:
    while True:
        pid = f"apart-{uuid.uuid4().hex[:12]}"
        if partition_of(pid, total) in partitions:
            return pid


def test_a_standalone_executor_serves_the_calls_of_its_partitions(executor, worker, sink, producer, collector,
                                                                   stack_env):
    proc, port = executor
    bootstrap = stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"]
    total = int(os.environ.get("PAYSTREAM_PARTITIONS", "4"))

    def two_members() -> dict[str, set[int]] | None:
        assert proc.alive, proc.log.read_text(errors="replace")[-3000:]
        held = assignments(bootstrap)
        return held if len(held) == 2 and all(held.values()) else None

    held = wait_for(two_members, 90, "the standalone executor to join the gateway group")
    assert any(m.startswith(f"{APP_ID}-gateway-executor-worker/") for m in held), held  # the worker's own
    wait_for(lambda: _metrics_up(port), 30, "the executor's /metrics")
    before = calls_made(port)
    # Payments on the standalone process's partitions only: a slow call made by the worker's own
    # executor would raise the worker's typical latency for the simulated gateway (and make the
    # inline-gateway tests that follow hand their calls over).
    pids = [pid_on(standalone_partitions(held), total) for _ in range(2)]
    cmds = {}
    for pid in pids:
        # tok_slow answers after 2 s: longer than the inline wait, so the call is handed over.
        cmds[pid] = producer.send(create_cmd(pid, amount=2_468, token="tok_slow"))
    producer.flush()
    for pid in pids:
        done = terminal(collector, pid, cmds[pid], timeout=120)
        assert done["_type"] == "PaymentSucceeded", [e["_type"] for e in collector.by_payment[pid]]
        assert records_of(bootstrap, CALLS, pid), "the call went through the gateway-calls topic"
        [charge] = ledger(stack_env, pid)  # the inline try and the executor's call: one charge
        assert (charge["status"], charge["amount_captured"]) == ("succeeded", 2_468)
    # Both calls were made by the standalone process.
    assert calls_made(port) >= before + 2

    # Stopped, its partitions go back to the worker's executor: a call handed over then completes.
    proc.stop()
    wait_for(lambda: len(assignments(bootstrap)) == 1 or None, 60, "the group to shrink to the worker's executor")
    late = pid_on(set(range(total)), total)
    cmd = producer.send(create_cmd(late, amount=1_357, token="tok_slow"))
    producer.flush()
    done = terminal(collector, late, cmd, timeout=120)
    assert done["_type"] == "PaymentSucceeded"
    [charge] = ledger(stack_env, late)
    assert charge["amount_captured"] == 1_357


def _metrics_up(port: int) -> bool:
    try:
        calls_made(port)
        return True
    except httpx.HTTPError:
        return False
