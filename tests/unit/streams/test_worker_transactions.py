"""streams/worker_transactions.py without a broker: the TxnOffsetCommit v3 request's bytes, and
what "worker" mode changes in a faust app (one transactional id for every partition, the
transaction timeout of its producer). tests/integration/test_kip447_fencing.py checks the
fencing itself against Kafka."""

from __future__ import annotations

from io import BytesIO
from types import SimpleNamespace
from typing import Any

import pytest

from paystream.config import Settings
from streams import worker_transactions as wt
from streams.app import create_app
from streams.input_guard import transactional_id


def test_the_v3_request_carries_the_member_and_reads_back_the_same() -> None:
    request = wt.TxnOffsetCommitKip447("tid-1", "group-1", 42, 3, (7, "member-a", None),
                                       [("payment.requests", [(0, 100, ""), (2, 5, "m")])])
    struct = request.prepare({28: (0, 4)})
    assert isinstance(struct, wt.TxnOffsetCommitRequestV3) and struct.FLEXIBLE_VERSION
    decoded = wt.TxnOffsetCommitRequestV3.SCHEMA.decode(BytesIO(struct.encode()))
    assert decoded[:7] == ("tid-1", "group-1", 42, 3, 7, "member-a", None)
    [(topic, parts, _)] = decoded[7]
    assert topic == "payment.requests"
    assert [p[:4] for p in parts] == [(0, 100, -1, ""), (2, 5, -1, "m")]


def test_a_broker_without_v3_is_not_sent_an_older_request_that_would_not_fence() -> None:
    request = wt.TxnOffsetCommitKip447("t", "g", 1, 0, (1, "m", None), [])
    with pytest.raises(NotImplementedError):
        request.prepare({28: (0, 2)})


@pytest.mark.parametrize(("code", "fenced"), [(22, True), (25, True), (27, True), (82, True), (0, False)])
def test_the_group_coordinators_refusals_fail_the_transaction(code: int, fenced: bool) -> None:
    errors: list[BaseException] = []
    committed: list[tuple[object, ...]] = []
    txn = SimpleNamespace(error_transaction=errors.append, offset_committed=lambda *a: committed.append(a),
                          transactional_id="t")
    sender = SimpleNamespace(_txn_manager=txn, _retry_backoff=0.1)
    from aiokafka import TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    handler = wt._Kip447OffsetsHandler(sender, {TopicPartition("in", 0): OffsetAndMetadata(9, "")}, "g")
    handler._member = (4, "member-a", None)
    response = wt.TxnOffsetCommitResponseV3(0, [("in", [(0, code, {})], {})], {})
    assert handler.handle_response(response) is None
    if fenced:
        [exc] = errors
        assert isinstance(exc, wt.GroupFenced) and "generation 4, member member-a" in str(exc)
        assert committed == []
    else:
        assert errors == [] and committed == [(TopicPartition("in", 0), 9, "g")]


def _event(topic: str, partition: int) -> SimpleNamespace:
    return SimpleNamespace(message=SimpleNamespace(topic=topic, partition=partition))


def _worker_app(settings: Settings) -> object:
    app = create_app(settings)
    app.in_worker = True  # as `faust worker` sets it: faust's transactions are a worker's
    return app


def test_worker_mode_gives_every_partition_the_workers_one_transaction() -> None:
    app: Any = _worker_app(Settings(kafka_bootstrap="127.0.0.1:9", eos_transactions="worker", worker_id="w7",
                                    transaction_timeout_s=12))
    assert wt.worker_tid(app) == "paystream-worker-w7"
    assert {transactional_id(app, _event("payment.requests", p)) for p in range(4)} == {"paystream-worker-w7"}
    assert app.producer._settings_extra()["transaction_timeout_ms"] == 12_000
    assert wt._MEMBERS["paystream"] is not None


def test_partition_mode_keeps_fausts_transactional_ids() -> None:
    assert Settings(kafka_bootstrap="127.0.0.1:9").eos_transactions == "worker"  # the default
    app: Any = _worker_app(Settings(kafka_bootstrap="127.0.0.1:9", app_id="parts", eos_transactions="partition"))
    assert wt.worker_tid(app) is None
    assert "transaction_timeout_ms" not in app.producer._settings_extra()


class _Producers:
    def __init__(self) -> None:
        self._transaction_producers: dict[str, object] = {}
        self.calls: list[tuple[str, str]] = []

    async def maybe_begin_transaction(self, tid: str) -> None:
        self.calls.append(("begin", tid))
        self._transaction_producers[tid] = object()

    async def stop_transaction(self, tid: str) -> None:
        self.calls.append(("stop", tid))
        self._transaction_producers.pop(tid, None)


def test_a_rebalance_keeps_the_workers_producer_while_it_has_partitions() -> None:
    import asyncio

    app: Any = _worker_app(Settings(kafka_bootstrap="127.0.0.1:9", app_id="rb", eos_transactions="worker",
                                    worker_id="w1"))
    producers = _Producers()
    manager = SimpleNamespace(app=app, producer=producers)

    async def rebalances() -> None:
        await wt._on_rebalance(manager, {1, 2, 3}, set(), {1, 2, 3})  # first assignment: started
        await wt._on_rebalance(manager, {1}, {2, 3}, set())  # two revoked, one kept: the same producer
        await wt._on_rebalance(manager, {1, 4}, set(), {4})
        await wt._on_rebalance(manager, set(), {1, 4}, set())  # nothing left: closed

    asyncio.run(rebalances())
    assert producers.calls == [("begin", "rb-worker-w1"), ("stop", "rb-worker-w1")]
