"""Targeted fixes for faust-streaming 0.15.3 behaviour that breaks a payment service.

Each fix names the symptom we observed, so it can be dropped once faust fixes it upstream.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any, cast

from faust import worker as faust_worker
from faust.tables import base as faust_tables
from faust.tables import recovery as faust_recovery
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.utils.futures import notify

from streams import fast_recovery

log = logging.getLogger("paystream.faust_fixes")

_APPLIED = False
CHANGELOG_DELIVERY_TIMEOUT_S = 20.0  # normally milliseconds; well below the 60 s transaction timeout


async def _highwaters_from_list_offsets(self: Any, partitions: list[TP]) -> Mapping[TP, int]:
    """End offsets from the broker (ListOffsets), under exactly_once too.

    faust asks the consumer's cached ``last_stable_offset`` under exactly_once, which is -1 for
    a partition the consumer has not fetched yet: table recovery after a rebalance then fails
    with ``ConsistencyError: persisted offset ... higher than ... highwater (N > -1)`` and the
    worker stops. aiokafka's ``end_offsets`` honours the consumer's read_committed isolation, so
    it returns the last stable offset the broker knows.
    """
    consumer = self._ensure_consumer()
    return cast(Mapping[TP, int], await consumer.end_offsets(partitions))


# --- Exactly-once: a transaction holds whole inputs, table writes included --------------------
#
# Observed (chaos F10, and on every restart of a test worker: "consumer skipped 31 message(s) of
# paystream-gateway-replies:1"): under exactly_once faust commits each partition's transaction
# on a timer (1) in the middle of an input being applied, and (2) without waiting for the table
# changelog writes, which go through faust's producer buffer (``send_soon``) and are handed to
# the transactional producer later by a background task (the non-transactional path flushes,
# the transactional one does not). So a commit could hold an input's events and consumer offset
# while that input's table writes landed in the next transaction; a worker stopped or killed
# before that one committed came back with tables older than its events, and re-applied inputs
# republished events with sequence numbers already used.
#
# The fix: every agent (payments, fraud, fraud-admin) applies each input under ``commit_lock`` (an asyncio.Lock, FIFO:
# a commit that asks for it runs right after the input in hand, never in its middle), and a
# commit first waits until every changelog write made so far was delivered to the broker (its
# FutureMessage resolved), so it is inside the transaction being committed. Waiting on the
# futures keeps faust's own send order; nothing is re-sent or reordered.


def commit_lock(app: Any) -> asyncio.Lock:
    """The lock that keeps a commit out of the middle of an input being applied."""
    lock: asyncio.Lock | None = getattr(app, "_paystream_commit_lock", None)
    if lock is None:
        lock = asyncio.Lock()
        app._paystream_commit_lock = lock
    return lock


def begin_input(app: Any) -> None:
    """The agent starts applying an input (under ``commit_lock``)."""
    app._paystream_input_open = True


def end_input(app: Any) -> None:
    """The input was applied and acknowledged as a whole, or abandoned with its partition."""
    app._paystream_input_open = False


def input_interrupted(app: Any) -> bool:
    """Whether an input was left half-applied: begun, and neither finished nor abandoned."""
    return bool(getattr(app, "_paystream_input_open", False))


class PendingWrites:
    """Table changelog writes not yet delivered to the broker, and a waiter woken when the last
    one is (``wait_for_changelog_writes``). One ``asyncio.wait`` over every pending write per
    commit cost 2.6 % of the worker's CPU (a callback added to and removed from each)."""

    def __init__(self) -> None:
        self.futures: set[asyncio.Future[Any]] = set()
        self.waiter: asyncio.Future[None] | None = None

    def track(self, fut: asyncio.Future[Any]) -> None:
        self.futures.add(fut)
        fut.add_done_callback(self._done)

    def _done(self, fut: asyncio.Future[Any]) -> None:
        self.futures.discard(fut)
        if not self.futures and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


def pending_changelog_writes(app: Any) -> PendingWrites:
    """Table changelog writes not yet delivered to the broker."""
    pending: PendingWrites | None = getattr(app, "_paystream_pending_changelog", None)
    if pending is None:
        pending = PendingWrites()
        app._paystream_pending_changelog = pending
    return pending


_original_send_changelog = faust_tables.Collection.send_changelog
_original_commit_offsets = faust_consumer.Consumer._commit_offsets


def _send_changelog_tracked(self: Any, partition: int | None, key: Any, value: Any,
                            key_serializer: Any = None, value_serializer: Any = None) -> Any:
    fut = _original_send_changelog(self, partition, key, value, key_serializer, value_serializer)
    pending_changelog_writes(self.app).track(fut)
    return fut


async def wait_for_changelog_writes(app: Any, timeout: float = CHANGELOG_DELIVERY_TIMEOUT_S) -> None:
    """Until every table write made so far is delivered (so it is in the open transaction).

    Waiting only until the writes were handed to the transactional producer (aiokafka delivers
    what was appended before EndTxn) was tried in session 3 for speed; a fresh-clone CI run then
    lost a partition's inputs after a SIGKILL (their consumer offsets committed, their
    applied-offsets writes not), cause not established: back to waiting for the broker's
    acknowledgement, which all earlier chaos and CI runs passed with.
    """
    pending = pending_changelog_writes(app)
    if not pending.futures:
        return
    waiter = pending.waiter
    if waiter is None or waiter.done():  # commits run one at a time (commit_lock); never two waiters
        waiter = pending.waiter = asyncio.get_running_loop().create_future()
    try:
        await asyncio.wait_for(asyncio.shield(waiter), timeout)
    except TimeoutError:
        raise RuntimeError(f"{len(pending.futures)} table changelog write(s) not delivered in {timeout:.0f}s: "
                           "refusing to commit a transaction without them") from None


def send_open_batches_now(app: Any) -> int:
    """Close the open record batches of every transactional producer and wake their senders, so
    what an input sent goes to the broker now instead of after the producers' linger.

    A commit waits for the batch's table writes to be acknowledged, and they are sent last: with
    ``producer_linger_ms`` (5 ms) each commit waited out a linger first, with every input waiting
    behind the commit lock (6.4 ms per commit at 10 payments/s, most of it that linger). aiokafka
    does the same itself when it ends a transaction (``flush_for_commit``); nothing more is added
    to these transactions before they end (the commit runs between two inputs). A record sent to
    a closed batch's partition meanwhile waits for it to be drained, as with a full batch.
    Returns how many batches were closed."""
    closed = 0
    for producer in list(getattr(getattr(app, "producer", None), "_transaction_producers", {}).values()):
        accumulator = getattr(producer, "_message_accumulator", None)
        if accumulator is None:
            continue
        here = 0
        for batches in accumulator._batches.values():
            for batch in batches:
                if not batch._builder.closed():
                    batch._builder.close()
                    here += 1
        if here and not accumulator._waiter_future.done():
            accumulator._waiter_future.set_result(None)
        closed += here
    return closed


async def _commit_offsets_between_inputs(self: Any, offsets: Mapping[TP, int],
                                         start_new_transaction: bool = True) -> bool:
    """Commit a transaction only between two inputs, with their table writes inside it."""
    if not self.in_transaction:
        return await _original_commit_offsets(self, offsets, start_new_transaction)
    from paystream import metrics

    async with commit_lock(self.app):
        if input_interrupted(self.app):
            # An input stopped half-way (the agent was cancelled by a crash or a stop in the
            # middle of it): part of its events, table writes or acks are in the open
            # transactions. Committing them published events whose table state was lost (chaos
            # rebalance run: a capture applied twice, sequences 1,2,3,2,3). Never commit them:
            # the partitions' next owner fences these transactions (aborting them) and applies
            # the input again from the last commit.
            if self.app.should_stop or getattr(self.app, "crashed", False):
                log.error("not committing on the way out: an input was interrupted half-way")
                return False
            raise RuntimeError("an input was interrupted half-way: refusing to commit; the worker must restart "
                               "from its last commit")
        with metrics.COMMIT_SECONDS.labels("changelog").time():
            send_open_batches_now(self.app)
            await wait_for_changelog_writes(self.app)
        with metrics.COMMIT_SECONDS.labels("transactions").time():
            return await _original_commit_offsets(self, offsets, start_new_transaction)


# --- Exactly-once: the partitions' transactions commit together ---------------------------------
#
# Observed (py-spy --gil on a benchmark worker, 2026-11-26: the worker held the GIL less than half
# of the time while a backlog waited): faust commits the transaction of each partition one after
# the other, each AddOffsetsToTxn + TxnOffsetCommit + EndTxn round trips, so a commit cost a dozen
# broker round trips with every input waiting (the commit lock). Each partition has its own
# transactional producer and lock, so their commits are independent: run them concurrently.


async def _commit_transactions_concurrently(self: Any, tid_to_offset_map: Mapping[str, Mapping[TP, int]],
                                            group_id: str, start_new_transaction: bool = True) -> None:
    async def commit_one(transactional_id: str, offsets: Mapping[TP, int]) -> None:
        async with self._trn_locks[transactional_id]:
            producer = self._transaction_producers.get(transactional_id)
            if producer is None:
                log.warning("commit invoked for unknown transaction %s", transactional_id)
                return
            await producer.send_offsets_to_transaction(offsets, group_id)
            await producer.commit_transaction()
            if start_new_transaction:
                await producer.begin_transaction()

    results = await asyncio.gather(*(commit_one(tid, offsets) for tid, offsets in tid_to_offset_map.items()),
                                   return_exceptions=True)
    # Every partition's commit ran to its end; then the first failure surfaces as faust expects
    # (a fenced producer or a failed commit stops the worker, whose partitions start over).
    for result in results:
        if isinstance(result, BaseException):
            raise result


# --- No input acknowledged unless it was applied --------------------------------------------
#
# Observed (CI: three commands sent while the worker was down never got an event; restarts log
# "consumer skipped 1 message(s) of payment.requests:0"): faust's stream drops a message that was
# fetched under an older consumer generation, or while flow control is suspended around a
# rebalance, *and acknowledges it*, so its offset is committed and nobody ever applies it. Our
# gap healer only noticed when a later message came on the same partition. Here the consumer
# refuses to acknowledge an input its agent has not applied while its partition is still
# assigned, and the partition is sought back to that offset, so the message is fetched again and
# applied (the agent's applied-offsets guard skips anything re-fetched twice). The agents'
# side of this lives in streams/input_guard.py (payments agent and fraud agents alike).

_original_ack = faust_consumer.Consumer.ack

AckGuard = tuple[Callable[[TP, int], bool], Callable[[Any], None]]


def install_ack_guard(app: Any, topics: Collection[str], applied: Callable[[TP, int], bool],
                      on_refused: Callable[[Any], None]) -> None:
    """Only acknowledge messages of ``topics`` that ``applied(tp, offset)`` says were applied.

    ``on_refused(message)`` gets each refused message: the caller must later either acknowledge
    it again through ``app.consumer.ack(message)`` once it is applied (by the gap healer, say)
    or seek its partition back so it is fetched again. Until one of them happens, faust commits
    nothing more on that partition (its offsets must stay contiguous), so its transaction stays
    open and would time out. Each agent installs its own guard for its own input topics
    (``streams.input_guard.InputGuard``); a topic has at most one.
    """
    guards: dict[str, AckGuard] | None = getattr(app, "_paystream_ack_guards", None)
    if guards is None:
        guards = {}
        app._paystream_ack_guards = guards
    for topic in topics:
        guards[topic] = (applied, on_refused)


def _ack_applied_only(self: Any, message: Any) -> bool:
    guards: dict[str, AckGuard] | None = getattr(self.app, "_paystream_ack_guards", None)
    guard = guards.get(message.topic) if guards else None
    if guard is not None and not message.acked:
        applied, on_refused = guard
        tp = message.tp
        if not applied(tp, message.offset) and tp in self.assignment():
            self._unacked_messages.discard(message)
            notify(self._waiting_for_ack)  # a rebalance waiting for the stream to drain goes on
            on_refused(message)
            return False
    return _original_ack(self, message)


# --- Logging: no terminal spinner under the root logger ----------------------------------------
#
# Observed (py-spy on a benchmark worker run with ``--loglevel warn``, 2026-11-26): 20 % of the
# worker's CPU went into creating, redacting and discarding DEBUG records of aiokafka (a
# Logger.debug per produce request and response). At WARN and above faust's Worker installs a
# terminal progress spinner as a handler of the root logger and sets the root logger to DEBUG,
# so that every record spins it; our JSON handler drops them, but only after each was built.
# A worker's output is JSON lines for a log collector, not a terminal: no spinner.


def _no_spinner_handler(self: Any, logger: logging.Logger, level: int) -> None:
    self.spinner = None


# --- Recovery never seeks to a negative offset -------------------------------------------------
#
# Observed (tests/integration/test_fraud_workers.py, two fraud-enabled workers started together):
# "[Recovery]: Crashed reason=ValueError('Offset must be a positive integer')" in the standby
# seek of ``Recovery._restart_recovery``, and the worker exits. A GlobalTable (the fraud
# blocklist) gets standby partitions on every worker even with ``table_standby_replicas=0``, and
# a rebalance during recovery left no offset (None; logged by this fix for the blocklist's
# changelog partitions) for them; faust only maps -1 (read nothing yet) to 0. None or anything
# below 0 means "nothing read": the changelog is read from its start, which for a compacted
# changelog rebuilds the same table.

_original_seek_offsets = faust_recovery.Recovery._seek_offsets


async def _seek_offsets_not_negative(self: Any, consumer: Any, tps: Any, offsets: Any, title: str) -> None:
    for tp in tps:
        if offsets[tp] is None or offsets[tp] < -1:
            log.warning("recovery: %s offset %s of %s is not an offset: reading its changelog from the start",
                        title, offsets[tp], tp)
            offsets[tp] = -1
    await _original_seek_offsets(self, consumer, tps, offsets, title)


# --- Recovery does not roll back a partition the worker keeps across a rebalance (F16) ------------
#
# Observed (short chaos ``rebalance``, 1 run in 3: "2x RefundProcessed caused by cmd-…; sequences
# [1, 2, 3, 4, 4, 5]", both copies committed; reproduced with transaction/recovery logging): a
# worker applies inputs into its open transaction; a rebalance starts; faust's
# ``Consumer.on_partitions_revoked`` drops the acknowledged, not yet committed offsets *before*
# the app's revocation commit, which then commits nothing ("IN_TRANSACTION -> IN_TRANSACTION" at
# the next assignment), so the transaction stays open across the rebalance. For a partition the
# worker keeps, faust then "recovers" the table again from the last offset it recovered before:
# it re-reads the changelog records committed since then (its own writes) up to the last stable
# offset, which stops before the open transaction, and writes those older values over the
# in-memory table (applied offset 202 -> 201, the payment's state one event back). The stream is
# sought back to the committed offset, the inputs of the open transaction are taken for new and
# applied again from the older state, into the same transaction: both copies commit.
#
# The fix: a changelog partition whose table state this worker holds completely (its recovery
# finished, and it stayed assigned through every generation since) is not re-read when it is
# kept: every record up to its last stable offset was written by this worker, and the memory has
# them and the open transaction's writes on top. A partition newly assigned, one whose recovery
# was interrupted, or any partition after a generation this worker missed (it was out of the
# group, so another worker may have written) is recovered as faust does.

_original_recovery_on_rebalance = faust_recovery.Recovery.on_rebalance
_original_on_recovery_completed = faust_recovery.Recovery.on_recovery_completed
_original_build_offsets = faust_recovery.Recovery._build_offsets


def held_partitions(recovery: Any) -> set[TP]:
    """Active changelog partitions whose table state this worker holds completely."""
    held: set[TP] | None = getattr(recovery, "_paystream_held", None)
    if held is None:
        held = set()
        recovery._paystream_held = held
    return held


async def _on_rebalance_keeping_held(self: Any, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP],
                                     generation_id: int = 0) -> None:
    held = held_partitions(self)
    last = getattr(self, "_paystream_generation", None)
    if last is None or generation_id != last + 1:
        held.clear()  # a generation without this worker: another one may have written the partitions
    actives = set(self.app.assignor.assigned_actives())
    held.intersection_update(actives & (set(assigned) - set(revoked) - set(newly_assigned)))
    self._paystream_generation = generation_id
    await _original_recovery_on_rebalance(self, assigned, revoked, newly_assigned, generation_id)


async def _on_recovery_completed_tracked(self: Any, generation_id: int = 0) -> None:
    actives = set(self.active_tps)
    await _original_on_recovery_completed(self, generation_id)
    if generation_id == self.app.consumer_generation_id:
        held_partitions(self).update(actives)


async def _build_offsets_keeping_held(self: Any, consumer: Any, tps: Any, destination: Any, title: str) -> None:
    await _original_build_offsets(self, consumer, tps, destination, title)
    if title != "active":
        return
    for tp in held_partitions(self) & set(tps):
        highwater = self.active_highwaters.get(tp)
        if highwater is not None and destination[tp] is not None and destination[tp] < highwater:
            log.info("recovery: %s kept through the rebalance, its table state is in memory: not re-reading "
                     "offsets %d..%d (this worker's own writes)", tp, destination[tp] + 1, highwater)
            destination[tp] = highwater


# --- Recovery under exactly_once ends at the last committed record, not ten seconds later ------
#
# Observed (every restart and every rebalance of an exactly_once worker, `python -m bench`:
# "restart, 7,647 payments in the table: 17.7 s to /ready", against 3.5 s for a first start;
# worker log at info: "Resuming flow" at 11.5 s, then nothing until "Aborted tx until highwater"
# at 26.8 s): faust recovers a changelog partition up to its end offset minus one. Under
# exactly_once the last offset of a changelog partition is a transaction marker (commit or
# abort), which a read_committed consumer never delivers, so the last offset is never "read";
# faust notices only after its changelog queue stayed empty for two 5-second timeouts, then
# takes the consumer position as done. Every restart and rebalance stalled the partitions for
# 10-15 s, whatever the table size.
#
# Shortening faust's timeout would race records still in flight between the consumer and the
# recovery queue (faust then drops them: their offset is below the one it jumped to). Instead
# the target itself is made exact: before recovery reads, a read_committed probe reads the tail
# of each changelog partition (the last ``CHANGELOG_TAIL_WINDOW`` offsets before its end) and
# the recovery target becomes the offset of the last record a read_committed consumer will
# deliver there, so recovery ends the moment that record is applied. A partition whose tail
# holds no committed record (a long run of aborted transactions) keeps faust's target and its
# slow detection. The probe needs the Kafka client settings, which ``create_app`` leaves on the
# app (``set_changelog_probe``); without them faust's own behaviour is kept.

_original_build_highwaters = faust_recovery.Recovery._build_highwaters


def set_changelog_probe(app: Any, kafka: Any) -> None:
    """Let recovery read changelogs itself with this ``KafkaConnection`` (tail probes, bulk loads)."""
    app._paystream_probe_kwargs = kafka.aiokafka()
    app._paystream_loader_conf = kafka.librdkafka()


async def _build_highwaters_to_last_committed(self: Any, consumer: Any, tps: Any, destination: Any,
                                              title: str) -> None:
    await _original_build_highwaters(self, consumer, tps, destination, title)
    kwargs = getattr(self.app, "_paystream_probe_kwargs", None)
    if kwargs is None or not self.app.in_transaction:
        return
    ends = {tp: destination[tp] + 1 for tp in tps if destination.get(tp) is not None and destination[tp] >= -1}
    if not ends:
        return
    try:
        last = await fast_recovery.last_committed_offsets(kwargs, ends)
    except Exception as exc:  # faust's own target is always safe, only slower
        log.warning("recovery: changelog tails not probed (%s: %s); recovering the %s partitions to their end "
                    "offsets", type(exc).__name__, exc, title)
        return
    moved = 0
    for tp, offset in last.items():
        if offset < destination[tp]:
            destination[tp] = offset
            moved += 1
    log.info("recovery: %d of %d %s changelog partitions end in transaction markers: recovering them up to "
             "their last committed record", moved, len(ends), title)


# --- Recovery reads big changelogs in bulk ----------------------------------------------------------
#
# Observed (python -m bench --recovery-k 200000: 60 s to /ready for 200,000 payments, 6,700
# changelog records/s, py-spy: faust's per-message tasks and waits): faust's recovery delivers
# every changelog record one message at a time. Once faust has computed where each active
# partition's recovery starts and ends, the partitions with much to read are read in bulk by
# ``fast_recovery.load_changelogs`` and applied through the tables' own decode and batch apply;
# faust then starts them at the offset reached and reads only the rest (nothing, normally).


async def _build_offsets_then_bulk_load(self: Any, consumer: Any, tps: Any, destination: Any, title: str) -> None:
    await _build_offsets_keeping_held(self, consumer, tps, destination, title)
    conf = getattr(self.app, "_paystream_loader_conf", None)
    if title != "active" or conf is None:
        return
    ranges: dict[TP, fast_recovery.LoadRange] = {}
    for tp in tps:
        table, after, target = self.tp_to_table.get(tp), destination.get(tp), self.active_highwaters.get(tp)
        if table is None or after is None or target is None or target - after < fast_recovery.BULK_MIN_RECORDS:
            continue
        ranges[tp] = fast_recovery.LoadRange(table, after, target)
    if not ranges:
        return
    started = asyncio.get_running_loop().time()
    total = sum(r.target - r.after for r in ranges.values())
    log.info("recovery: reading %d changelog partition(s) in bulk (up to %d records)", len(ranges), total)
    # Millions of new long-lived dicts: with the collector on, its passes over them while they
    # arrived took 45 % of a million-payment recovery (py-spy, attributed to the JSON parser).
    gc.collect()  # cheap now, before the load: what is garbage goes before the freeze below
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        held = await fast_recovery.load_changelogs(conf, ranges, self.signal_recovery_start.is_set)
    except Exception as exc:  # faust's own recovery reads whatever was not loaded
        log.warning("recovery: bulk read failed (%s: %s); faust's recovery reads the changelogs", type(exc).__name__,
                    exc)
        return
    finally:
        # The tables' values live as long as the worker (plain, acyclic JSON data, freed by
        # reference counting when replaced): out of the collector's generations, so no later
        # collection walks them (a collection here would block the loop for seconds).
        gc.freeze()
        if gc_was_enabled:
            gc.enable()
    for tp, offset in held.items():
        destination[tp] = max(destination[tp], offset)
    log.info("recovery: bulk read of %d partition(s) done in %.1f s", len(ranges),
             asyncio.get_running_loop().time() - started)


# --- The consumer hands a message over without four tasks per message -----------------------------
#
# Observed (py-spy of a worker recovering 400,000 changelog records at 6,700/s, and of a worker
# under a burst of payments): faust's fetcher delivers each message with
# ``wait_first(callback(message), suspend_flow.wait())``, which wraps the callback, the flow
# event, and the service's stopped and crashed events in four tasks and an ``asyncio.wait`` per
# message; task creation and the wait were most of the recovery's CPU. The callback (the
# conductor putting the event into its channel queue) almost always finishes without
# suspending. So it is first run directly, up to its first suspension: if it finishes, that is
# the whole delivery, no task made. If it suspends (a full queue, flow control, the producer
# buffer), the suspended callback is continued inside faust's own ``wait_first``, so a
# rebalance's flow suspension, a stop or a crash still abandon it exactly as before. Only this
# one call shape (a coroutine and the consumer's own ``suspend_flow.wait()``, no timeout) takes
# the fast path.

_original_wait_first = faust_consumer.Consumer.wait_first


class _Continued:
    """Continues a coroutine that was run outside a task up to its first suspension:
    ``pending`` is what it yielded there (the future it waits on, or None). The task awaiting
    this sees exactly the yields, sends and throws of the coroutine itself."""

    __slots__ = ("coro", "pending")

    def __init__(self, coro: Any, pending: Any) -> None:
        self.coro, self.pending = coro, pending

    def __await__(self) -> Any:
        pending = self.pending
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                self.coro.close()
                raise
            except BaseException as exc:  # thrown in by the task (cancellation): into the coroutine
                try:
                    pending = self.coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                pending = self.coro.send(sent)
            except StopIteration as stop:
                return stop.value


async def _continue(coro: Any, pending: Any) -> Any:
    return await _Continued(coro, pending)


async def _wait_first_eager(self: Any, *coros: Any, timeout: Any = None) -> Any:
    if (len(coros) == 2 and timeout is None and asyncio.iscoroutine(coros[0]) and asyncio.iscoroutine(coros[1])
            and getattr(coros[1], "__qualname__", "") == "Event.wait" and not self.suspend_flow.is_set()):
        work, flow = coros
        try:
            pending = work.send(None)
        except StopIteration:
            flow.close()
            return None  # the fetcher ignores the result
        except BaseException:
            flow.close()
            raise
        return await _original_wait_first(self, _continue(work, pending), flow)
    return await _original_wait_first(self, *coros, timeout=timeout)


def apply() -> None:
    global _APPLIED
    if _APPLIED:
        return
    faust_aiokafka.AIOKafkaConsumerThread._highwaters = _highwaters_from_list_offsets  # type: ignore[method-assign]
    faust_tables.Collection.send_changelog = _send_changelog_tracked  # type: ignore[method-assign]
    faust_consumer.Consumer._commit_offsets = _commit_offsets_between_inputs  # type: ignore[method-assign]
    faust_consumer.Consumer.ack = _ack_applied_only  # type: ignore[method-assign]
    faust_worker.Worker._setup_spinner_handler = _no_spinner_handler  # type: ignore[method-assign]
    faust_aiokafka.Producer.commit_transactions = _commit_transactions_concurrently  # type: ignore[method-assign]
    faust_recovery.Recovery._seek_offsets = _seek_offsets_not_negative  # type: ignore[method-assign]
    faust_recovery.Recovery.on_rebalance = _on_rebalance_keeping_held  # type: ignore[method-assign]
    faust_recovery.Recovery.on_recovery_completed = _on_recovery_completed_tracked  # type: ignore[method-assign]
    faust_recovery.Recovery._build_offsets = _build_offsets_then_bulk_load  # type: ignore[method-assign]
    faust_recovery.Recovery._build_highwaters = _build_highwaters_to_last_committed  # type: ignore[method-assign]
    faust_consumer.Consumer.wait_first = _wait_first_eager  # type: ignore[method-assign]
    _APPLIED = True
