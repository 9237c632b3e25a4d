"""Carrying out gateway calls: ``CallGateway`` effect → gateway client → reply for the machine.

Errors are classified once, here, into the machine's vocabulary: a timeout or anything we
cannot interpret is UNKNOWN (the reconciler asks the gateway later), never a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway_clients.protocol import (
    ChargeNotFoundError,
    GatewayResult,
    IdempotencyConflictError,
    OutcomeUnknownError,
    PaymentGateway,
    PermanentGatewayError,
    RetryableGatewayError,
)
from paystream.config import Settings
from paystream.core.machine import CallGateway, GatewayOperation, GatewayReply, ReconcileResult, ReplyStatus
from paystream.core.resilience import (
    BreakerConfig,
    BreakerState,
    CallHealth,
    CircuitBreaker,
    RetryPolicy,
    backoff_delay,
)
from paystream.metrics import (
    GATEWAY_CALLS,
    GATEWAY_CIRCUIT_STATE,
    GATEWAY_CIRCUIT_TRANSITIONS,
    GATEWAY_LATENCY,
    GATEWAY_RETRIES,
    child,
)
from paystream.transport import KafkaTarget, as_kafka

log = logging.getLogger("paystream.gateway")


def reconciled_operation(call: CallGateway) -> str:
    """The operation a retrieve call asks about, from its key ``ps-<payment>-<op>-<attempt>``;
    a void or refund of an orphan charge is ``void_orphan`` / ``refund_orphan``.

    Refund keys carry ``refund:<refund_id>``; payment ids may contain dashes, refund ids not.
    """
    if call.orphan_of is not None and call.operation in (GatewayOperation.CANCEL, GatewayOperation.REFUND):
        return "void_orphan" if call.operation is GatewayOperation.CANCEL else "refund_orphan"
    if call.operation is not GatewayOperation.RETRIEVE:
        return call.operation.value
    if call.refund_id is not None:
        return GatewayOperation.REFUND.value
    parts = call.idempotency_key.rsplit("-", 2)
    op = parts[1].split(":", 1)[0] if len(parts) == 3 else ""
    return op if op in {o.value for o in GatewayOperation} else GatewayOperation.RETRIEVE.value


def _reply(call: CallGateway, status: ReplyStatus, result: GatewayResult | None = None,
           message: str | None = None, *, error_code: str | None = None,
           latency_ms: int | None = None, tries: int = 1, unavailable: bool = False) -> dict[str, Any]:
    """The reply record: ``input`` is decoded into the machine's dataclass by field name, so
    anything else (for the sink's payment_transactions) goes into the sibling ``meta``."""
    fields: dict[str, Any] = {
        "idempotency_key": call.idempotency_key,
        "status": status.value,
        "gateway_ref": result.gateway_ref if result else None,
        "amount_authorized": result.amount_authorized if result else None,
        "amount_captured": result.amount_captured if result else None,
        "amount_refunded": result.amount_refunded if result else None,
        "decline_code": result.decline_code.value if result and result.decline_code else None,
        "message": message,
    }
    meta = {
        "gateway": call.gateway,
        "operation": reconciled_operation(call),
        "attempt": call.attempt,
        "latency_ms": latency_ms,
        "error_code": error_code,
        "tries": tries,  # calls made under this key by this reply (retries after "nothing done")
        "replied_at": time.time_ns() // 1_000_000,
    }
    if call.operation is GatewayOperation.RETRIEVE:
        return {"kind": "reconcile", "payment_id": call.payment_id, "meta": meta,
                "input": {"reconciliation_id": f"rc-{call.idempotency_key}", **fields}}
    fields["operation"] = call.operation.value
    fields["action_url"] = result.action_url if result else None
    if unavailable:
        fields["unavailable"] = True
    return {"kind": "reply", "payment_id": call.payment_id, "meta": meta, "input": fields}


async def _invoke(gw: PaymentGateway, call: CallGateway) -> GatewayResult:
    op = call.operation
    if op is GatewayOperation.AUTHORIZE:
        assert call.payment_method_token is not None
        return await gw.authorize(
            payment_id=call.payment_id, amount=call.amount, currency=call.currency,
            payment_method_token=call.payment_method_token, capture=call.capture,
            idempotency_key=call.idempotency_key, metadata={"payment_id": call.payment_id},
        )
    assert call.gateway_ref is not None or op is GatewayOperation.RETRIEVE
    if op is GatewayOperation.CAPTURE:
        return await gw.capture(gateway_ref=call.gateway_ref or "", amount=call.amount, currency=call.currency,
                                idempotency_key=call.idempotency_key)
    if op is GatewayOperation.CANCEL:
        return await gw.cancel(gateway_ref=call.gateway_ref or "", idempotency_key=call.idempotency_key)
    if op is GatewayOperation.REFUND:
        return await gw.refund(gateway_ref=call.gateway_ref or "", refund_id=call.refund_id or "",
                               amount=call.amount, currency=call.currency, idempotency_key=call.idempotency_key)
    return await gw.retrieve(idempotency_key=call.idempotency_key)


@dataclass(frozen=True, slots=True)
class _Try:
    """One call made to the gateway, classified once."""

    status: ReplyStatus
    result: GatewayResult | None = None
    message: str | None = None
    error_code: str | None = None
    same_key_may_help: bool = False  # retryable, and the gateway did not store the answer

    @property
    def health(self) -> CallHealth | None:
        """What the try says about the gateway (None: nothing new, e.g. a replayed answer)."""
        if self.status is ReplyStatus.RETRYABLE_ERROR:
            return CallHealth.FAILED if self.same_key_may_help else None
        if self.error_code in ("timeout", "outcome_unknown"):
            return CallHealth.FAILED
        if self.error_code == "unexpected_error":
            return None  # our bug, not the gateway's health
        return CallHealth.OK


async def _try_once(gw: PaymentGateway, call: CallGateway, timeout_s: float) -> _Try:
    try:
        # ``asyncio.timeout`` bounds the call in the caller's task; ``wait_for`` (Python 3.11)
        # made a second task per call for it, 3 % of a worker's CPU with the inline calls.
        async with asyncio.timeout(timeout_s):
            result = await _invoke(gw, call)
        return _Try(ReplyStatus(result.status.value), result)
    except (OutcomeUnknownError, IdempotencyConflictError, TimeoutError) as exc:
        return _Try(ReplyStatus.UNKNOWN, None, type(exc).__name__, _ERROR_CODES.get(type(exc), "outcome_unknown"))
    except ChargeNotFoundError:
        return _Try(ReplyStatus.NOT_FOUND, error_code="not_found")
    except RetryableGatewayError as exc:
        # A replayed failure comes back for this key every time: only a new attempt's key helps.
        replayed = bool(getattr(exc, "replayed", False))
        return _Try(ReplyStatus.RETRYABLE_ERROR, None, str(exc)[:200],
                    "retryable_replayed" if replayed else "retryable_error", same_key_may_help=not replayed)
    except PermanentGatewayError as exc:
        return _Try(ReplyStatus.PERMANENT_ERROR, None, str(exc)[:200], "permanent_error")
    except Exception as exc:  # a bug or an unexpected answer: we cannot know what happened
        log.exception("gateway call %s failed unexpectedly", call.idempotency_key)
        return _Try(ReplyStatus.UNKNOWN, None, type(exc).__name__, "unexpected_error")


async def execute(
    gateways: Mapping[str, PaymentGateway],
    call: CallGateway,
    timeout_s: float,
    *,
    retry: RetryPolicy | None = None,
    breakers: Breakers | None = None,
    disabled: frozenset[str] = frozenset(),
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
    unseal: Callable[[CallGateway], CallGateway] | None = None,
    limits: GatewayLimits | None = None,
) -> dict[str, Any]:
    """One gateway call, each try bounded in time; returns the reply record for the internal topic.

    A ``RetryableGatewayError`` (nothing was charged) is tried again under the *same*
    idempotency key after an exponential backoff with full jitter, up to ``retry.max_tries``
    tries, unless the gateway replayed a stored failure for the key (then another try under it
    cannot succeed). Only then does the machine hear ``retryable_error`` (and decide on a new
    attempt with a new key). Timeouts and unknown outcomes are never retried here.

    With ``breakers``, a try is only made while the gateway's circuit lets it through; otherwise
    the reply is ``retryable_error`` with ``unavailable`` set (``circuit_open``): the call was not
    made, nothing was charged. The same holds for an authorization at a gateway switched off
    (``disabled``); captures, cancels, refunds and retrieves still reach a switched-off gateway,
    which holds the money of its existing payments.

    ``unseal`` opens the call's sealed token for the gateway client, in memory only: the
    gateway-calls topic never carries it in clear. With ``limits``, each try waits for one of
    the gateway's in-flight slots (never held during a backoff sleep).
    """
    gw = gateways.get(call.gateway)
    if gw is None:
        return _reply(call, ReplyStatus.PERMANENT_ERROR, message=f"gateway {call.gateway!r} is not configured",
                      error_code="gateway_not_configured", latency_ms=0)
    if call.gateway in disabled and call.operation is GatewayOperation.AUTHORIZE:
        GATEWAY_CALLS.labels(call.gateway, call.operation.value, "not_made").inc()
        return _reply(call, ReplyStatus.RETRYABLE_ERROR, message=f"gateway {call.gateway!r} is switched off",
                      error_code="gateway_disabled", latency_ms=0, tries=0, unavailable=True)
    policy = retry or _NO_RETRY
    opened = unseal(call) if unseal is not None else call
    t0 = time.monotonic()
    tries = 0
    while True:
        if breakers is not None and not breakers.allow(call.gateway):
            GATEWAY_CALLS.labels(call.gateway, call.operation.value, "not_made").inc()
            return _reply(call, ReplyStatus.RETRYABLE_ERROR, message=f"circuit of gateway {call.gateway!r} is open",
                          error_code="circuit_open", latency_ms=round((time.monotonic() - t0) * 1000), tries=tries,
                          unavailable=True)
        async with limits.slot(call.gateway) if limits is not None else contextlib.nullcontext():
            started = time.monotonic()
            outcome = await _try_once(gw, opened, timeout_s)
        if limits is not None:
            limits.observe(call.gateway, time.monotonic() - started)
        tries += 1
        child(GATEWAY_LATENCY, call.gateway, call.operation.value).observe(time.monotonic() - started)
        child(GATEWAY_CALLS, call.gateway, call.operation.value, outcome.status.value).inc()
        if breakers is not None:
            breakers.record(call.gateway, outcome.health)
        if not (outcome.same_key_may_help and tries < policy.max_tries):
            break
        delay = backoff_delay(tries - 1, base_s=policy.base_s, cap_s=policy.cap_s, rand=rand)
        GATEWAY_RETRIES.labels(call.gateway, call.operation.value).inc()
        log.info("gateway call %s: %s, try %d of %d again in %.2fs", call.idempotency_key, outcome.error_code,
                 tries + 1, policy.max_tries, delay)
        await sleep(delay)
    elapsed = time.monotonic() - t0
    return _reply(call, outcome.status, outcome.result, outcome.message, error_code=outcome.error_code,
                  latency_ms=round(elapsed * 1000), tries=tries)


_NO_RETRY = RetryPolicy(max_tries=1)


LATENCY_SAMPLE_CAP_S = 0.1  # a try counts at most this much in a gateway's typical latency


def reply_latency(reply: Mapping[str, Any]) -> tuple[str, float] | None:
    """The gateway and the seconds of the one try a reply record reports, for ``GatewayLimits``
    in a worker whose executor runs in other processes (it never sees those calls made). None
    for a reply of several tries (its time includes backoff sleeps) or without a figure."""
    meta = reply.get("meta")
    if not isinstance(meta, Mapping):
        return None
    gateway, latency_ms, tries = meta.get("gateway"), meta.get("latency_ms"), meta.get("tries")
    if not isinstance(gateway, str) or tries != 1 or isinstance(latency_ms, bool) or not isinstance(latency_ms, int):
        return None
    return gateway, max(0, latency_ms) / 1000


class GatewayLimits:
    """At most ``per_gateway`` requests in flight to each gateway (by name), shared by every caller
    given the same instance: the payments agent's inline calls and the executor. Waiting here is
    cheap (an asyncio semaphore); waiting in httpx's connection pool is not (its queue is scanned
    against every connection on each request's completion: quadratic in the queue).

    It also keeps each gateway's typical latency (an exponentially weighted mean of its tries,
    from 0, each try counted at most ``LATENCY_SAMPLE_CAP_S``), so the payments agent makes calls
    inline only to gateways that answer fast. The cap keeps one slow call (a cold first
    connection, one payment's 2 s answer) from marking a fast gateway slow: it takes a few slow
    tries in a row.

    ``caps`` lowers the limit for single gateways: a client states how many calls it serves at
    once as ``max_concurrency`` (the httpx-based ones: their pool of 100 connections), so one
    setting can let 256 calls fly to the simulated gateway without queueing inside httpx."""

    def __init__(self, per_gateway: int, alpha: float = 0.1, caps: Mapping[str, int] | None = None) -> None:
        self.per_gateway = per_gateway
        self.caps = dict(caps or {})
        self.alpha = alpha
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._latency_s: dict[str, float] = {}

    def observe(self, gateway: str, seconds: float) -> None:
        before = self._latency_s.get(gateway, 0.0)
        self._latency_s[gateway] = before + self.alpha * (min(seconds, LATENCY_SAMPLE_CAP_S) - before)

    def typical_latency_s(self, gateway: str) -> float:
        """The gateway's recent typical latency (0 before its first answer)."""
        return self._latency_s.get(gateway, 0.0)

    def slot(self, gateway: str) -> asyncio.Semaphore:
        sem = self._slots.get(gateway)
        if sem is None:
            sem = self._slots[gateway] = asyncio.Semaphore(self.limit(gateway))
        return sem

    def limit(self, gateway: str) -> int:
        """Calls in flight to ``gateway`` at most."""
        return max(1, min(self.per_gateway, self.caps.get(gateway, self.per_gateway)))


def concurrency_caps(gateways: Mapping[str, PaymentGateway]) -> dict[str, int]:
    """Each client's own ``max_concurrency`` (calls it serves at once), where it states one."""
    caps: dict[str, int] = {}
    for name, gw in gateways.items():
        cap = getattr(gw, "max_concurrency", None)
        if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0:
            caps[name] = cap
    return caps

_STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class Breakers:
    """One circuit breaker per gateway name (made on first use), exported as metrics."""

    def __init__(self, config: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._by_gateway: dict[str, CircuitBreaker] = {}

    def get(self, gateway: str) -> CircuitBreaker:
        breaker = self._by_gateway.get(gateway)
        if breaker is None:
            breaker = self._by_gateway[gateway] = CircuitBreaker(self.config, self.clock)
            GATEWAY_CIRCUIT_STATE.labels(gateway).set(0)
        return breaker

    def state(self, gateway: str) -> BreakerState:
        return self.get(gateway).state

    def allow(self, gateway: str) -> bool:
        """May a call to ``gateway`` be made now? (Half-open: this call is the probe.)"""
        breaker = self.get(gateway)
        before = breaker.state
        allowed = breaker.allow()
        self._changed(gateway, before, breaker.state)
        return allowed

    def record(self, gateway: str, health: CallHealth | None) -> None:
        if health is None:
            return
        breaker = self.get(gateway)
        before = breaker.state
        breaker.record(health)
        self._changed(gateway, before, breaker.state)

    def _changed(self, gateway: str, before: BreakerState, after: BreakerState) -> None:
        if after is before:
            return
        GATEWAY_CIRCUIT_STATE.labels(gateway).set(_STATE_VALUE[after])
        GATEWAY_CIRCUIT_TRANSITIONS.labels(gateway, after.value).inc()
        level = logging.WARNING if after is BreakerState.OPEN else logging.INFO
        log.log(level, "circuit of gateway %s: %s -> %s", gateway, before.value, after.value)



# Normalised error codes for the sink's payment_transactions (declines have their own code).
_ERROR_CODES: dict[type[BaseException], str] = {
    TimeoutError: "timeout",
    OutcomeUnknownError: "outcome_unknown",
    IdempotencyConflictError: "idempotency_conflict",
}


def executor_options(settings: Settings, gateways: Mapping[str, PaymentGateway] | None = None) -> dict[str, Any]:
    """The executor's retry, breaker and switched-off settings, as keyword arguments of
    ``GatewayExecutor``; the in-flight limits follow ``gateways``' own caps."""
    breakers = None
    if settings.gateway_breaker_enabled:
        breakers = Breakers(BreakerConfig(
            failures=settings.gateway_breaker_failures, failure_rate=settings.gateway_breaker_failure_rate,
            window=settings.gateway_breaker_window, cooldown_s=settings.gateway_breaker_cooldown_s,
        ))
    return {
        "retry": RetryPolicy(max_tries=settings.gateway_retry_max_tries, base_s=settings.gateway_retry_base_s,
                             cap_s=settings.gateway_retry_cap_s),
        "breakers": breakers,
        "disabled": settings.disabled_gateways(),
        "limits": GatewayLimits(settings.gateway_max_in_flight, caps=concurrency_caps(gateways or {})),
    }


def reply_input(value: Mapping[str, Any]) -> GatewayReply | ReconcileResult:
    from tables import codec

    cls = ReconcileResult if value.get("kind") == "reconcile" else GatewayReply
    result: GatewayReply | ReconcileResult = codec.from_plain(cls, value["input"])
    return result


def reply_bytes(reply: Mapping[str, Any]) -> bytes:
    """A gateway reply as the JSON of the gateway-replies and gateway-outcomes topics. orjson:
    0.4 against 5.2 µs for a reply with ``json.dumps`` (2 % of the worker's CPU with two inline
    calls per payment); its compact UTF-8 JSON reads back the same. What orjson refuses (a key
    that is not text, an integer beyond 64 bits) goes the standard library's way."""
    try:
        return orjson.dumps(reply)
    except TypeError:
        return json.dumps(reply).encode()


class GatewayExecutor:
    """Consumes the internal gateway-calls topic and carries the calls out, many at a time.

    It is deliberately not a faust agent: faust's transactional sends only cover topics of the
    consuming agent's own partition group, and a call's outcome must be fed back however long
    the gateway takes. So this is a plain read_committed consumer with an idempotent producer:
    at-least-once, made safe by the deterministic gateway idempotency keys (a repeated call is
    replayed by the gateway, never repeated) and by the state machine ignoring a reply whose
    key is not the payment's pending one. Each reply goes to the partition its call came from,
    which is the payment's partition.

    Calls of a partition run concurrently (up to ``max_in_flight``); offsets are committed up to
    the oldest call not yet answered, so a slow call holds back only the commit, not the work.
    A call waiting for its next try (backoff after "nothing done, retry") is one of those tasks:
    it sleeps in its own task and holds one in-flight slot, never the other calls.
    """

    def __init__(self, *, bootstrap: KafkaTarget, group: str, calls_topic: str, replies_topic: str,
                 gateways: Mapping[str, PaymentGateway], timeout_s: float, max_in_flight: int = 256,
                 retry: RetryPolicy | None = None, breakers: Breakers | None = None,
                 disabled: frozenset[str] = frozenset(),
                 unseal: Callable[[CallGateway], CallGateway] | None = None,
                 limits: GatewayLimits | None = None, client_id: str | None = None) -> None:
        self.kafka = as_kafka(bootstrap)
        self.client_id = client_id  # names this executor's consumer in the group (None: aiokafka's)
        self.group = group
        self.calls_topic = calls_topic
        self.replies_topic = replies_topic
        self.gateways = gateways
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.retry = retry
        self.unseal = unseal
        self.breakers = breakers
        self.disabled = disabled
        self.limits = limits
        self.done = 0

    async def run(self) -> None:
        from collections import deque

        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
        from aiokafka.errors import (
            CommitFailedError,
            IllegalGenerationError,
            IllegalStateError,
            KafkaError,
            RebalanceInProgressError,
        )
        from aiokafka.structs import OffsetAndMetadata

        from tables import codec

        named = {"client_id": self.client_id} if self.client_id else {}
        consumer = AIOKafkaConsumer(
            self.calls_topic, **self.kafka.aiokafka(), **named, group_id=self.group,
            isolation_level="read_committed", enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=10_000, heartbeat_interval_ms=3_000,  # a killed worker's calls move on soon
        )
        producer = AIOKafkaProducer(**self.kafka.aiokafka(), enable_idempotence=True, acks="all",
                                    linger_ms=1)
        await consumer.start()
        await producer.start()
        window: dict[TopicPartition, deque[tuple[int, asyncio.Task[None]]]] = {}
        slots = asyncio.Semaphore(self.max_in_flight)

        async def handle(tp: TopicPartition, value: bytes) -> None:
            try:
                call = codec.decode(CallGateway, value)
                reply = await execute(self.gateways, call, self.timeout_s, retry=self.retry,
                                      breakers=self.breakers, disabled=self.disabled, unseal=self.unseal,
                                      limits=self.limits)
                await producer.send_and_wait(self.replies_topic, reply_bytes(reply),
                                             key=call.payment_id.encode(), partition=tp.partition)
                self.done += 1
            finally:
                slots.release()

        async def commit_ready() -> None:
            offsets = {}
            for tp, q in window.items():
                last = None
                while q and q[0][1].done():
                    offset, task = q.popleft()
                    if task.exception() is not None:
                        # Not answered: keep the offset uncommitted; a restart retries it.
                        log.error("gateway call at %s:%d failed: %r", tp, offset, task.exception())
                        q.appendleft((offset, task))
                        break
                    last = offset
                if last is not None:
                    offsets[tp] = OffsetAndMetadata(last + 1, "")
            owned = consumer.assignment()
            # A partition revoked since its calls were fetched is another worker's now: its
            # offsets are not ours to commit (aiokafka raises IllegalStateError for them, which
            # stopped the worker in a chaos rebalance run).
            offsets = {tp: offset for tp, offset in offsets.items() if tp in owned}
            if offsets:
                try:
                    await consumer.commit(offsets)
                except (CommitFailedError, IllegalGenerationError, IllegalStateError, RebalanceInProgressError) as exc:
                    # The group rebalanced: these partitions may belong to another worker now,
                    # which redoes their uncommitted calls (the gateway replays them by key).
                    log.warning("gateway executor commit skipped after a rebalance: %s", type(exc).__name__)
            for tp in [tp for tp in window if tp not in owned]:
                window.pop(tp)  # revoked: its answers still go out, its offsets are not ours

        try:
            while True:
                try:
                    batches = await consumer.getmany(timeout_ms=20, max_records=self.max_in_flight)
                except KafkaError as exc:
                    log.warning("gateway executor fetch failed (%s); retrying", type(exc).__name__)
                    await asyncio.sleep(1)
                    continue
                for tp, records in batches.items():
                    q = window.setdefault(tp, deque())
                    for rec in records:
                        await slots.acquire()
                        q.append((rec.offset, asyncio.ensure_future(handle(tp, rec.value))))
                await commit_ready()
        finally:
            for q in window.values():
                for _, task in q:
                    task.cancel()
            await consumer.stop()
            await producer.stop()
