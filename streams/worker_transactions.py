"""Exactly-once with one transactional producer per worker (KIP-447), not one per partition.

faust gives every input partition a transactional producer of its own (transactional id
``<app>-<group>-<partition>``): a zombie (a worker that lost its partitions without knowing it)
is fenced when the partition's new owner starts a producer under the same id. The price is paid
on every commit: each partition's producer sends AddOffsetsToTxn, TxnOffsetCommit and EndTxn,
and each batch a produce request per partition. ``python -m bench.rates --rates 600`` with one
producer for the worker's four partitions: commits' transaction phase 7.6-11.2 ms against
13.0-16.7 ms, event p99 lower in most runs (median 260 against 383 ms; docs/performance.md,
Session 12).

With ``PAYSTREAM_EOS_TRANSACTIONS=worker`` (the default) every partition of a worker shares one transaction
under a stable id (``<app>-worker-<worker id>``) and zombies are fenced the KIP-447 way: the
transaction's input offsets are committed with TxnOffsetCommit v3, which carries the consumer
group generation and member id, and the group coordinator refuses a member that is no longer in
the group or a generation that is over. A refused commit fails the transaction (its outputs are
aborted) and stops the worker, whose inputs the partitions' new owners apply again.

What this changes besides (each handled here):

* faust commits nothing when partitions are revoked; their producers are closed and the next
  owner's producer fences their open transactions. One shared transaction cannot be left open
  for another worker to abort, so it is committed at revocation, while the group generation
  that owned the partitions is still the current one (eager rebalancing revokes before
  rejoining).
* A worker killed outright leaves its open transaction to the transaction timeout
  (``transaction_timeout_ms``, default 10 s here against aiokafka's 60 s): until then
  read_committed consumers of the partitions it wrote to (the sink, a new owner's changelog
  reads) wait at that transaction. A worker restarted under the same worker id aborts it at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any

from aiokafka.errors import ProducerFenced
from aiokafka.errors import for_code as kafka_error_for_code
from aiokafka.producer import sender as aiokafka_sender
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import CompactArray, CompactString, Int16, Int32, Int64, Schema, TaggedFields
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

log = logging.getLogger("paystream.transactions")

# --- TxnOffsetCommit v3 (KIP-447): the offsets of a transaction with the group member's identity ---


class TxnOffsetCommitResponseV3(Response):  # type: ignore[misc]  # aiokafka's protocol classes are untyped
    API_KEY = 28
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("topics", CompactArray(
            ("name", CompactString("utf-8")),
            ("partitions", CompactArray(("partition_index", Int32), ("error_code", Int16), ("tags", TaggedFields))),
            ("tags", TaggedFields),
        )),
        ("tags", TaggedFields),
    )


class TxnOffsetCommitRequestV3(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 28
    API_VERSION = 3
    RESPONSE_TYPE = TxnOffsetCommitResponseV3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("group_id", CompactString("utf-8")),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("generation_id", Int32),
        ("member_id", CompactString("utf-8")),
        ("group_instance_id", CompactString("utf-8")),  # nullable: None without static membership
        ("topics", CompactArray(
            ("name", CompactString("utf-8")),
            ("partitions", CompactArray(
                ("partition_index", Int32),
                ("committed_offset", Int64),
                ("committed_leader_epoch", Int32),  # -1: unknown
                ("committed_metadata", CompactString("utf-8")),
                ("tags", TaggedFields),
            )),
            ("tags", TaggedFields),
        )),
        ("tags", TaggedFields),
    )


GroupMember = tuple[int, str, str | None]  # generation id, member id, group instance id


class TxnOffsetCommitKip447(Request[TxnOffsetCommitRequestV3]):  # type: ignore[misc]
    """Builds TxnOffsetCommit v3; a broker without it (before Kafka 2.5) fails the commit."""

    API_KEY = 28

    def __init__(self, transactional_id: str, group_id: str, producer_id: int, producer_epoch: int,
                 member: GroupMember, topics: list[tuple[str, list[tuple[int, int, str]]]]) -> None:
        self.args = (transactional_id, group_id, producer_id, producer_epoch, member, topics)

    def build(self, request_struct_class: type[TxnOffsetCommitRequestV3]) -> TxnOffsetCommitRequestV3:
        tid, group, pid, epoch, (generation, member_id, instance_id), topics = self.args
        return request_struct_class(
            tid, group, pid, epoch, generation, member_id, instance_id,
            [(topic, [(p, offset, -1, metadata, {}) for p, offset, metadata in parts], {}) for topic, parts in topics],
            {},
        )


# group id -> the consumer group member committing its offsets (registered by a worker in
# "worker" mode; other groups commit with faust's and aiokafka's TxnOffsetCommit v0 as before)
_MEMBERS: dict[str, Callable[[], GroupMember | None]] = {}

# Error codes with which the group coordinator refuses a member's commit: this worker is not the
# partitions' owner in the group's current generation (a zombie, or a rebalance it missed):
# ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, REBALANCE_IN_PROGRESS, FENCED_INSTANCE_ID.
GROUP_FENCED_CODES = frozenset({22, 25, 27, 82})


class GroupFenced(ProducerFenced):  # type: ignore[misc]  # aiokafka's errors are untyped
    """The group coordinator refused the transaction's offsets: faust stops the worker as for a
    fenced producer (``TransactionManager.commit`` crashes the app on ``ProducerFenced``)."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def __str__(self) -> str:
        return self.message


class _Kip447OffsetsHandler(aiokafka_sender.TxnOffsetCommitHandler):  # type: ignore[misc]
    """aiokafka's handler of a transaction's offsets, sending v3 for a registered group."""

    def create_request(self) -> Any:
        member_of = _MEMBERS.get(self._group_id)
        member = member_of() if member_of is not None else None
        if member is None:
            return super().create_request()  # not a worker-mode group: v0, as aiokafka does
        self._member = member
        txn = self._sender._txn_manager
        by_topic: dict[str, list[tuple[int, int, str]]] = {}
        for tp, offset in sorted(self._offsets.items()):
            by_topic.setdefault(tp.topic, []).append((tp.partition, offset.offset, offset.metadata))
        return TxnOffsetCommitKip447(txn.transactional_id, self._group_id, txn.producer_id, txn.producer_epoch,
                                     member, list(by_topic.items()))

    def handle_response(self, resp: Any) -> Any:
        if not isinstance(resp, TxnOffsetCommitResponseV3):
            return super().handle_response(resp)
        for topic, partitions, _ in resp.topics:
            for partition, code, _ in partitions:
                if code in GROUP_FENCED_CODES:
                    generation, member_id, _ = self._member
                    exc = GroupFenced(f"the group coordinator refused the offsets of {topic}:{partition} "
                                      f"(generation {generation}, member {member_id}): error {code} "
                                      f"({kafka_error_for_code(code).__name__})")
                    log.error("%s: the transaction is aborted and the worker stops", exc)
                    self._sender._txn_manager.error_transaction(exc)
                    return None

        # the same answer in v0's shape, for aiokafka's handling of every other error
        as_v0 = SimpleNamespace(errors=[(topic, [(p, code) for p, code, _ in partitions])
                                        for topic, partitions, _ in resp.topics])
        return super().handle_response(as_v0)


def register_member(group_id: str, member: Callable[[], GroupMember | None]) -> None:
    """Commit the offsets of ``group_id``'s transactions as ``member()`` (KIP-447)."""
    _MEMBERS[group_id] = member


def faust_member(app: Any) -> Callable[[], GroupMember | None]:
    """The faust consumer's group membership (read from its aiokafka coordinator)."""

    def member() -> GroupMember | None:
        thread = getattr(app.consumer, "_thread", None)
        consumer = getattr(thread, "_consumer", None)
        coordinator = getattr(consumer, "_coordinator", None)
        if coordinator is None or getattr(coordinator, "generation", -1) < 0:
            return None
        return coordinator.generation, coordinator.member_id, getattr(coordinator, "_group_instance_id", None)

    return member


# --- faust: one transactional id for every partition of the worker -----------------------------


def worker_tid(app: Any) -> str | None:
    """The worker's one transactional id in "worker" mode (None: one per partition, faust's way)."""
    tid: str | None = getattr(app, "_paystream_worker_tid", None)
    return tid


_original_send = faust_consumer.TransactionManager.send
_original_commit = faust_consumer.TransactionManager.commit
_original_revoked = faust_consumer.TransactionManager.on_partitions_revoked
_original_on_rebalance = faust_consumer.TransactionManager.on_rebalance
_original_settings_extra = faust_aiokafka.Producer._settings_extra


async def _send(self: Any, topic: str, key: Any, value: Any, partition: Any, timestamp: Any, headers: Any, *,
                transactional_id: str | None = None) -> Any:
    tid = worker_tid(self.app)
    if tid is None:
        return await _original_send(self, topic, key, value, partition, timestamp, headers,
                                    transactional_id=transactional_id)
    p = self.consumer.key_partition(topic, key, partition)
    return await self.producer.send(topic, key, value, p, timestamp, headers,
                                    transactional_id=tid if p is not None else None)


async def _commit(self: Any, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
    tid = worker_tid(self.app)
    if tid is None:
        return bool(await _original_commit(self, offsets, start_new_transaction))
    if offsets:
        try:
            await self.producer.commit_transactions({tid: dict(offsets)}, self.app.conf.id,
                                                    start_new_transaction=start_new_transaction)
        except ProducerFenced as exc:
            log.warning("transaction %s fenced: %s", tid, exc)
            await self.app.crash(exc)
    return True


async def _on_partitions_revoked(self: Any, revoked: Any) -> None:
    await _original_revoked(self, revoked)
    if worker_tid(self.app) is not None and revoked:
        # The shared transaction holds the revoked partitions' work: commit it now, under the
        # generation that still owns them (nobody else could abort it for us).
        await self.app.consumer.commit()


async def _on_rebalance(self: Any, assigned: Any, revoked: Any, newly_assigned: Any) -> None:
    tid = worker_tid(self.app)
    if tid is None:
        await _original_on_rebalance(self, assigned, revoked, newly_assigned)
        return
    # One producer for the worker's life while it has partitions: closing it for a partition
    # revoked would lose the open transaction of the partitions it keeps.
    if assigned:
        if tid not in self.producer._transaction_producers:
            log.info("starting transactional producer %s for %d partitions", tid, len(assigned))
            await self.producer.maybe_begin_transaction(tid)
    elif tid in self.producer._transaction_producers:
        log.info("no partitions left: closing transactional producer %s", tid)
        await self.producer.stop_transaction(tid)


def _settings_extra(self: Any) -> Mapping[str, Any]:
    extra = dict(_original_settings_extra(self))
    timeout_ms = getattr(self.app, "_paystream_transaction_timeout_ms", None)
    if timeout_ms is not None and self.app.in_transaction:
        extra["transaction_timeout_ms"] = timeout_ms
    return extra


_APPLIED = False


def apply() -> None:
    """Install the patches (each does faust's or aiokafka's own thing unless an app or group
    is in "worker" mode)."""
    global _APPLIED
    if _APPLIED:
        return
    aiokafka_sender.TxnOffsetCommitHandler = _Kip447OffsetsHandler
    tm = faust_consumer.TransactionManager
    tm.send = _send  # type: ignore[method-assign]
    tm.commit = _commit  # type: ignore[method-assign]
    tm.on_partitions_revoked = _on_partitions_revoked  # type: ignore[method-assign]
    tm.on_rebalance = _on_rebalance  # type: ignore[method-assign]
    faust_aiokafka.Producer._settings_extra = _settings_extra  # type: ignore[method-assign]
    _APPLIED = True


def use_worker_transactions(app: Any, worker_id: str, transaction_timeout_ms: int) -> str:
    """Put ``app`` in "worker" mode: one transaction for all its partitions; returns its id."""
    apply()
    tid = f"{app.conf.id}-worker-{worker_id}"
    app._paystream_worker_tid = tid
    app._paystream_transaction_timeout_ms = transaction_timeout_ms
    register_member(app.conf.id, faust_member(app))
    return tid
