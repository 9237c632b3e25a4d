"""The agents of a paystream worker, installed on a faust app.

* ``payments``: one agent over the three co-partitioned inputs of a payment —
  ``payment.requests`` (commands), the internal gateway-replies topic and ``payment.webhooks``
  (verified notifications). It decodes, lets ``PaymentProcessor`` decide, and sends events and
  gateway calls; with exactly_once, table writes, outputs and the input offset commit together.
* ``gateway``: carries out gateway calls in concurrent batches, so slow gateway calls of some
  payments never hold up the others; replies go back to ``payments`` keyed by payment id.
* ``reconciler``: a timer asking the gateway about every outcome that is still unknown.

Poison input (not Avro, unknown schema id, truncated) goes to ``payment.deadletter`` with
error headers; a well-framed command that breaks the contract becomes ``CommandRejected``.
Nothing raises out of the loop: a bug in one message dead-letters that message only.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import faust

from agents import fraud as af
from agents.gateway import (
    GatewayExecutor,
    execute,
    executor_options,
    reply_bytes,
    reply_input,
    reply_latency,
)
from agents.methods import MethodDirectory
from agents.processor import (
    Output,
    PaymentProcessor,
    PaymentRecord,
    may_need_watch,
    method_aad,
    needs_watch,
    notification_input,
    unseal_call,
    verdict_input,
)
from agents.routing import load_routing_file, make_router
from gateway_clients.protocol import PaymentGateway
from paystream import metrics
from paystream.config import Settings
from paystream.core import commands as cmds
from paystream.core import events as evs
from paystream.core import fraud as fr
from paystream.core.machine import FraudHoldStatus, reconcile_effects
from paystream.core.methods import DetachAtGateway
from paystream.core.sensitive import find_pan, redact, scan
from paystream.security import audit as au
from paystream.security.crypto import KeyRing
from streams import topics
from streams.avro import AvroCodec, DecodeError, RegistryUnavailable
from streams.input_guard import (
    GapReader,
    InputGuard,
    PartitionLost,
    send_in_input_transaction,
    set_current_event,
    transactional_id,
)
from tables import codec
from tables.batched import BatchWrites, changelog_writer

log = logging.getLogger("paystream.agents")

CE_SOURCE = "paystream"
Event = faust.EventT[bytes]  # an input message of the payments agent (raw bytes)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@functools.lru_cache(maxsize=256)
def _ce_time(occurred_at_ms: int) -> bytes:
    # The events of one input share their time: formatted once, not once per event.
    return datetime.fromtimestamp(occurred_at_ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z").encode()


@functools.lru_cache(maxsize=64)
def _ce_type(event_type: str) -> bytes:
    return f"io.paystream.{event_type}".encode()


_CE_SOURCE = CE_SOURCE.encode()


def cloudevent_headers(ev: evs.PaymentEvent) -> list[tuple[str, bytes]]:
    """CloudEvents binary-mode headers, so generic tooling can route payment.events."""
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", ev.event_id.encode()),
        ("ce_type", _ce_type(evs.event_type(ev.body))),
        ("ce_source", _CE_SOURCE),
        ("ce_time", _ce_time(ev.occurred_at)),
        ("ce_subject", ev.payment_id.encode()),
        ("content-type", b"application/avro"),
    ]


@dataclass
class Wiring:
    settings: Settings
    codecs: Mapping[str, AvroCodec]
    gateways: Mapping[str, PaymentGateway]


def load_keyring(s: Settings) -> KeyRing | None:
    """The encryption keys from the settings; ``None`` (with a warning) when none is configured."""
    keys = s.encryption_keys.get_secret_value() if s.encryption_keys is not None else ""
    ring = KeyRing.load(keys, s.encryption_current_key_id, s.encryption_keys_file)
    if ring is None:
        log.warning("no encryption keys configured (PAYSTREAM_ENCRYPTION_KEYS[_FILE]): payment methods cannot "
                     "be saved and tokens in tables stay unencrypted")
    return ring


_FAILURES = frozenset({"CommandRejected", "PaymentFailed", "RefundFailed"})
_METHOD_EVENTS = frozenset({"PaymentMethodAdded", "PaymentMethodRemoved"})


def event_audit_record(ev: evs.PaymentEvent, actor: str, origin: str, method_key: bool) -> au.AuditRecord:
    """The audit trail's record of one published event (a state change, or a rejection)."""
    name = evs.event_type(ev.body)
    detail: dict[str, Any] = {"event_id": ev.event_id, "sequence": ev.sequence, "status": ev.status,
                              "causation": ev.causation_command_id}
    body = ev.body
    if isinstance(body, evs.CommandRejected):
        detail.update(reason=body.reason, command_type=body.command_type)
    elif isinstance(body, evs.PaymentFailed):
        detail["decline_code"] = body.decline_code
    elif isinstance(body, evs.PaymentMethodAdded | evs.PaymentMethodRemoved):
        detail["customer_id"] = body.customer_id
    if ev.totals is not None:
        detail["amount"], detail["currency"] = ev.totals.amount, ev.totals.currency
    kind = "payment_method" if method_key or name in _METHOD_EVENTS else "payment"
    return au.AuditRecord(
        audit_id=f"event:{ev.event_id}", occurred_at=ev.occurred_at, actor=actor, action=f"event.{name}",
        resource=f"{kind}:{ev.payment_id}", outcome="failure" if name in _FAILURES else "success",
        origin=origin, detail=detail,
    )


AUDIT_BATCH_MAX_RECORDS = 256  # records per message (a worker's are ~0.5 KB each)
AUDIT_BATCH_MAX_BYTES = 512 * 1024  # well below Kafka's 1 MB message limit, whatever the records hold


class AuditBatches:
    """The audit records of a batch of inputs, sent as one message per input partition (a JSON
    array, ``audit.encode_batch``) in that partition's transaction when the batch ends, instead
    of one message per event: three fewer records per payment to produce, and to consume in the
    audit sink, and one card-data pre-check and one JSON encoding per message. A batch whose
    transaction is lost to a rebalance loses its records with it (the new owner applies its
    inputs again and records them)."""

    def __init__(self, app: faust.App, topic: str, *, max_records: int = AUDIT_BATCH_MAX_RECORDS,
                 max_bytes: int = AUDIT_BATCH_MAX_BYTES,
                 send: Callable[..., Awaitable[Any]] = send_in_input_transaction) -> None:
        self.app, self.topic, self._send_fn = app, topic, send
        self.max_records, self.max_bytes = max_records, max_bytes
        # (transactional id, partition) -> the first input of the batch there, and its records
        self.pending: dict[tuple[str | None, int], tuple[Any, list[au.AuditRecord]]] = {}

    async def add(self, event: Any, record: au.AuditRecord) -> None:
        key = (transactional_id(self.app, event), event.message.partition)
        entry = self.pending.get(key)
        if entry is None:
            entry = self.pending[key] = (event, [])
        entry[1].append(record)
        if len(entry[1]) >= self.max_records:
            del self.pending[key]
            await self._send(*entry)

    async def flush(self, lost: set[str | None]) -> set[str | None]:
        """Send what the batch gathered; returns the transactions lost meanwhile."""
        pending, self.pending = self.pending, {}
        newly_lost: set[str | None] = set()
        for (tid, _), (first, records) in pending.items():
            if tid in lost or tid in newly_lost:
                continue
            try:
                await self._send(first, records)
            except PartitionLost as exc:
                newly_lost.add(tid)
                log.warning("partition lost to a rebalance while sending a batch's audit records (%s)", exc)
        return newly_lost

    async def _send(self, first: Any, records: list[au.AuditRecord]) -> None:
        value = au.encode_batch(records)
        if len(value) > self.max_bytes and len(records) > 1:  # unusually large records: in halves
            half = len(records) // 2
            await self._send(first, records[:half])
            await self._send(first, records[half:])
            return
        m = first.message
        key = f"kafka:{m.topic}/{m.partition}@{m.offset}".encode()
        await self._send_fn(self.app, first, self.topic, key, value, m.partition)


FRAUD_TIMEOUT_RULE = "fraud_check_timeout"
INLINE = "inline"  # meta.applied of a gateway reply applied in the batch that made the call
INLINE_ROUNDS = 3  # rounds of inline calls per batch (authorize, then capture, then one more)


def timeout_verdict(record: PaymentRecord, ruleset_version: str) -> fr.FraudVerdict | None:
    """The synthetic ``review`` verdict for a payment whose fraud check has not answered."""
    st = record.state
    if st is None or st.fraud is None or st.fraud.status is not FraudHoldStatus.CHECKING:
        return None
    outcome = fr.FraudOutcome(decision=fr.Decision.REVIEW, rules=(FRAUD_TIMEOUT_RULE,), score=0,
                              ruleset_version=ruleset_version)
    return fr.FraudVerdict(payment_id=st.payment_id, command_id=st.fraud.command_id, partition=record.partition,
                           observed_at=st.fraud.requested_at, outcome=outcome)


def make_executor(s: Settings, gateways: Mapping[str, PaymentGateway], keyring: KeyRing | None,
                  options: Mapping[str, Any] | None = None, *, standalone: bool = False) -> GatewayExecutor:
    """The gateway executor of app ``s.app_id``: in a worker (sharing the inline calls' limits,
    ``options``) or on its own (``standalone``: ``paystream gateway-executor``); every executor of
    an app is one consumer group over the gateway-calls topic, where the client id tells which is
    which."""
    return GatewayExecutor(
        client_id=f"{s.app_id}-gateway-executor-{'standalone' if standalone else 'worker'}",
        bootstrap=s.kafka_connection(), group=f"{s.app_id}-gateway", calls_topic=topics.gateway_calls(s.app_id),
        replies_topic=topics.gateway_replies(s.app_id), gateways=gateways, timeout_s=s.gateway_timeout_s,
        max_in_flight=s.gateway_batch_size, **(options if options is not None else executor_options(s, gateways)),
        unseal=lambda call: unseal_call(keyring, call),
    )


def install(app: faust.App, w: Wiring, *, fraud_ruleset_version: str = "") -> dict[str, Any]:
    """The payments agent and its timers. With ``settings.fraud_enabled`` the fraud verdicts
    topic is one more input (the fraud agent itself is installed by ``agents.fraud.install_fraud``)."""
    s = w.settings
    input_topics = [topics.REQUESTS, topics.gateway_replies(s.app_id), topics.WEBHOOKS]
    verdicts_topic_name = topics.fraud_verdicts(s.app_id)
    if s.fraud_enabled:
        input_topics.append(verdicts_topic_name)
    inputs = app.topic(*input_topics, key_serializer="raw", value_serializer="raw")
    checks_topic_name = topics.fraud_checks(s.app_id)
    calls_topic_name = topics.gateway_calls(s.app_id)

    # Keys are payment ids (str); values are JSON (the app's default value serializer).
    payments_table = app.Table("payments", default=None, key_type=str)
    idempotency_table = app.Table("idempotency", default=None, key_type=str)
    # The last offset applied per input partition ("topic:partition" -> offset), written in the
    # same transaction as everything else: see ``guarded`` below.
    applied_offsets = app.Table("applied-offsets", default=None, key_type=str)
    # Saved payment methods by method id (the key of their commands): SavedMethod JSON with the
    # gateway token sealed (AES-GCM, bound to the method id). Every worker also follows this
    # table's changelog in a ``MethodDirectory``, for payments on other partitions.
    methods_table = app.Table("payment-methods", default=None, key_type=str)
    directory = MethodDirectory(s.kafka_connection(), f"{app.conf.id}-payment-methods-changelog")
    keyring = load_keyring(s)
    vault_topic, audit_topic = topics.vault(s.app_id), topics.audit(s.app_id)
    audit_batches = AuditBatches(app, audit_topic)

    def lookup_method(method_id: str) -> Mapping[str, Any] | None:
        local = methods_table.get(method_id)
        return local if local is not None else directory.get(method_id)

    # The processor's writes of a batch reach the tables (and their changelogs, straight into the
    # inputs' transactions) once per key, at the batch's end (``end_batch``); everything else
    # reads the payments table itself.
    batched_payments = BatchWrites(app, payments_table, encode=PaymentRecord.to_json,
                                   write=changelog_writer(app, payments_table))
    batched_idempotency = BatchWrites(app, idempotency_table, write=changelog_writer(app, idempotency_table))
    processor = PaymentProcessor(
        batched_payments, batched_idempotency,
        idempotency_retention_ms=s.idempotency_retention_s * 1000,
        methods=methods_table, sealer=keyring, method_lookup=lookup_method,
        router=make_router(load_routing_file(s.routing_rules_file), w.gateways, s.disabled_gateways()),
        fraud_enabled=s.fraud_enabled,
    )

    async def send(event: Event | None, topic: str, key: bytes | None, value: bytes | None,
                   partition: int | None, headers: list[tuple[str, bytes]] | None = None,
                   timestamp: float | None = None) -> None:
        """Send in the transaction of the input's partition, to the input's partition number.

        faust routes an agent's sends to the transaction of the *destination* topic's partition
        group, and sends to a topic no agent consumes are not transactional at all. Sending
        explicitly in the source partition's transaction makes events, gateway calls, dead
        letters, table writes and the input offset commit (or abort) together. Keeping the
        partition number keeps every message of a payment in one partition across topics.
        """
        await send_in_input_transaction(app, event, topic, key, value, partition, timestamp, headers)

    async def dead_letter(event: Event, stage: str, reason: str, error: str) -> None:
        msg = event.message
        metrics.DEADLETTERS.labels(stage, reason).inc()
        key, value, redacted = msg.key, msg.value, []
        if value is not None and find_pan(value.decode("latin-1")):
            # Never copy card data into another topic (I6): the bytes stay only where the sender put them.
            value, redacted = b"", [("ps_redacted", b"sensitive_data_rejected")]  # empty, never None: Kafka
            # refuses a record with neither key nor value
        if key is not None and (len(key) > 1024 or find_pan(key.decode("latin-1"))):
            key, redacted = None, [*redacted, ("ps_key_redacted", b"1")]
        if key is None and value is None:
            value = b""  # Kafka refuses a record with neither key nor value
        await send(
            event, topics.DEADLETTER, key, value, msg.partition,
            headers=[
                *redacted,
                ("ps_stage", stage.encode()),
                ("ps_reason", reason.encode()),
                ("ps_error", redact(error).encode()[:500]),
                ("ps_source_topic", msg.topic.encode()),
                ("ps_source_partition", str(msg.partition).encode()),
                ("ps_source_offset", str(msg.offset).encode()),
            ],
        )

    def origin_of(event: Event) -> str:
        m = event.message
        return f"kafka:{m.topic}/{m.partition}@{m.offset}"

    async def publish(event: Event, out: Output, actor: str = "paystream-worker",
                      method_key: bool = False) -> None:
        """Events, gateway calls, vault and audit records: all in the input's transaction."""
        partition = event.message.partition
        origin = origin_of(event)
        for ev in out.events:
            value = w.codecs[topics.EVENTS].encode(evs.to_avro(ev))
            await send(event, topics.EVENTS, ev.payment_id.encode(), value, partition, cloudevent_headers(ev))
            name = evs.event_type(ev.body)
            metrics.child(metrics.EVENTS, name).inc()
            if ev.status and name in ("PaymentSucceeded", "PaymentFailed", "PaymentCanceled", "PaymentAuthorized"):
                metrics.payment_reached(ev.status, ev.body)
            await audit_batches.add(event, event_audit_record(ev, actor, origin, method_key))
        for call in out.calls:
            if inline_calls is not None:
                inline_calls.append((event, call))  # made at the end of the batch: see make_inline_calls
                continue
            await send(event, calls_topic_name, call.payment_id.encode(), codec.encode(call), partition)
        for item in out.vault:
            await send(event, vault_topic, item["method_id"].encode(),
                       json.dumps(item, sort_keys=True, separators=(",", ":")).encode(), partition)
        for check in out.fraud_checks:
            # First hop of the check: keyed by its dimension (partition by key hash), Kafka
            # timestamp observed_at (the fraud agent's windows are relative to it).
            msg = af.request_message(check)
            await send(event, checks_topic_name, msg.key, msg.value, msg.partition, timestamp=msg.timestamp_s)
        for effect in out.detaches:
            detach_soon(effect)

    pending_detaches: set[asyncio.Task[None]] = set()

    def detach_soon(effect: DetachAtGateway) -> None:
        task = asyncio.ensure_future(detach(effect))
        pending_detaches.add(task)
        task.add_done_callback(pending_detaches.discard)

    async def detach(effect: DetachAtGateway) -> None:
        """Detach a removed method at its gateway: best effort, after the removal is decided.

        Outside the input's transaction on purpose: a slow gateway must not hold the partition,
        and the key is deterministic, so a retried removal detaches once. The simulated and
        Stripe clients offer ``detach_payment_method``; for a gateway client without it (PayPal,
        Adyen) the detach is recorded as deferred in the audit trail.
        """
        gateway = w.gateways.get(effect.gateway)
        operation = getattr(gateway, "detach_payment_method", None)
        outcome, detail = "deferred", {"reason": "gateway client has no detach operation"}
        if callable(operation) and keyring is not None:
            try:
                token = keyring.decrypt(effect.sealed_token, method_aad(effect.method_id))
                await asyncio.wait_for(operation(payment_method_token=token, idempotency_key=effect.idempotency_key),
                                       s.gateway_timeout_s)
                outcome, detail = "success", {}
            except Exception as exc:  # CryptoError, gateway errors, timeout
                outcome, detail = "failure", {"error": type(exc).__name__}
        record = au.AuditRecord(
            audit_id=f"detach:{effect.idempotency_key}", occurred_at=now_ms(), actor="paystream-worker",
            action="payment_method.detach", resource=f"payment_method:{effect.method_id}", outcome=outcome,
            origin=f"gateway:{effect.gateway}", detail=detail,
        )
        try:
            await app.producer.send(audit_topic, record.resource.encode(), au.encode_record(record), None, None,
                                    None, transactional_id=None)
        except Exception as exc:
            log.warning("audit record of a detach not sent: %s", type(exc).__name__)

    async def decode_with_retry(cdc: AvroCodec, data: bytes) -> dict[str, Any]:
        while True:
            try:
                return cdc.decode(data)
            except RegistryUnavailable:
                log.warning("schema registry unavailable; retrying")
                await asyncio.sleep(1)

    async def on_command(event: Event) -> None:
        try:
            value = await decode_with_retry(w.codecs[topics.REQUESTS], event.message.value or b"")
        except DecodeError as exc:
            await dead_letter(event, "decode", "undecodable", str(exc))
            metrics.COMMANDS.labels("unknown", "deadletter").inc()
            return
        try:
            command = cmds.from_avro(value)
        except cmds.CommandDecodeError as exc:
            pid = value.get("payment_id")
            if not isinstance(pid, str) or not pid:
                await dead_letter(event, "decode", "no_payment_id", str(exc))
                return
            metrics.COMMANDS.labels("unknown", "rejected").inc()
            await publish(event, processor.handle_undecodable(pid, value.get("command_id"), str(exc), now_ms(),
                                                               event.message.partition))
            return
        if bad_ids := cmds.unpublishable_ids(command):
            # Every event of a payment is keyed by its id and names its command: an id we cannot
            # publish (a card number, control characters, kilobytes long) is dead-lettered, never echoed.
            await dead_letter(event, "guard", f"unpublishable_{bad_ids[0]}", f"{bad_ids[0]} cannot be published")
            metrics.COMMANDS.labels(cmds.command_type(command), "deadletter").inc()
            return
        key = event.message.key.decode(errors="replace") if event.message.key else None
        if key != command.payment_id:
            # Keyed elsewhere, the command would miss its payment's partition and state.
            await dead_letter(event, "route", "key_mismatch", "message key differs from payment_id")
            return
        body = command.body
        saved = body.saved_method_id if isinstance(body, cmds.CreatePayment) else None
        if saved and lookup_method(saved) is None:
            await directory.refresh()  # added a moment ago on another worker? read up to the changelog's end
        out = processor.handle_command(command, now_ms(), event.message.partition)
        kind = cmds.command_type(command)
        if out.duplicate:
            metrics.DUPLICATES.inc()
            metrics.COMMANDS.labels(kind, "duplicate").inc()
            log.info("duplicate command %s for %s acknowledged", command.command_id, command.payment_id)
        elif out.queued:
            metrics.QUEUED.inc()
            metrics.COMMANDS.labels(kind, "queued").inc()
        else:
            rejected = any(isinstance(e.body, evs.CommandRejected) for e in out.events)
            metrics.child(metrics.COMMANDS, kind, "rejected" if rejected else "accepted").inc()
        await publish(event, out, actor=redact(command.origin), method_key=kind.endswith("PaymentMethod"))

    gateway_options = executor_options(s, w.gateways)
    limits = gateway_options["limits"]

    async def on_reply(event: Event) -> None:
        value = json.loads(event.message.value or b"{}")
        if not s.gateway_executor_in_worker and (seen := reply_latency(value)) is not None:
            limits.observe(*seen)  # the executor runs elsewhere: learn the gateway's latency from its replies
        out = processor.handle_input(value["payment_id"], reply_input(value), now_ms(), event.message.partition)
        note_ignored("reply", value["payment_id"], out)
        await publish(event, out)

    async def on_webhook(event: Event) -> None:
        try:
            value = await decode_with_retry(w.codecs[topics.WEBHOOKS], event.message.value or b"")
        except DecodeError as exc:
            await dead_letter(event, "decode", "undecodable", str(exc))
            return
        # The edge checks too; card data never travels on (I6). Integers are left out: they are
        # amounts and epoch-ms timestamps, and one 13-digit timestamp in ten is Luhn-valid (F9).
        if scan(value, integers=False):
            await dead_letter(event, "decode", "sensitive_data_rejected", "card data in a notification")
            return
        pid, notification = notification_input(value)
        out = processor.handle_input(pid, notification, now_ms(), event.message.partition)
        note_ignored("webhook", pid, out)
        await publish(event, out, actor=f"gateway:{value.get('gateway', '?')}")

    def note_ignored(kind: str, payment_id: str, out: Output) -> None:
        """A reply or notification that changed nothing: counted and said why (stale, duplicate...)."""
        if out.ignored:
            metrics.INPUTS_IGNORED.labels(kind).inc()
            log.info("%s for %s changed nothing: %s", kind, redact(payment_id), out.ignored)

    async def on_verdict(event: Event) -> None:
        try:
            verdict = af.decode_verdict(event.message.value or b"")
        except Exception as exc:
            await dead_letter(event, "decode", "undecodable", f"{type(exc).__name__}: {exc}")
            return
        out = processor.handle_input(verdict.payment_id, verdict_input(verdict), now_ms(), event.message.partition)
        note_ignored("fraud_verdict", verdict.payment_id, out)
        await publish(event, out, actor="paystream-fraud")

    handlers = {
        topics.REQUESTS: on_command,
        topics.gateway_replies(s.app_id): on_reply,
        topics.WEBHOOKS: on_webhook,
        verdicts_topic_name: on_verdict,
    }

    async def handle(event: Any) -> None:
        try:
            await handlers[event.message.topic](event)
        except PartitionLost:
            raise
        except Exception as exc:  # never let one message stop the worker
            log.exception("processing %s failed", event.message.topic)
            await dead_letter(event, "process", "internal_error", f"{type(exc).__name__}: {exc}")

    outcomes_topic_name = topics.gateway_outcomes(s.app_id)
    # Gateway calls decided by the inputs of the batch in hand (None: calls go to the executor).
    inline_calls: list[tuple[Any, Any]] | None = [] if s.gateway_inline else None
    inline_wait_s = s.gateway_inline_wait_ms / 1000
    inline_max_latency_s = s.gateway_inline_max_latency_ms / 1000

    async def make_inline_calls() -> set[str | None]:
        """Carry out the batch's gateway calls now, concurrently, and apply their replies in the
        batch's transactions; returns the transactions lost to a rebalance meanwhile.

        A call's reply is applied like one from the gateway-replies topic (and published, marked
        applied, on the gateway-outcomes topic, which the sink reads for the transaction history
        and the agent never reads back), so the payment usually completes in
        the transaction of the command that started it: one input and one commit, not two of
        each plus two hops through Kafka. Calls the replies lead to (a capture, a queued command's
        call) are made in the next round. A call not answered within ``gateway_inline_wait_ms``,
        or beyond the last round, goes to the gateway-calls topic as before: the executor makes it
        again under the same idempotency key, so the gateway answers it once (the inline try is
        cancelled; at worst its key is still busy and the outcome is unknown, for the reconciler).
        A crash before the commit aborts the replies with the inputs; the inputs are applied again
        and the gateway replays its answers by key.
        """
        lost: set[str | None] = set()
        if not inline_calls:
            return lost
        deadline = asyncio.get_running_loop().time() + inline_wait_s
        for round_ in range(INLINE_ROUNDS + 1):
            work = list(inline_calls)
            inline_calls.clear()
            if not work:
                break
            tasks: list[asyncio.Future[dict[str, Any]] | None] = [None] * len(work)
            if round_ < INLINE_ROUNDS:
                # A gateway slower than gateway_inline_max_latency_ms gets its calls through the
                # executor at once (None: handed over), so a batch never waits on it.
                tasks = [asyncio.ensure_future(execute(w.gateways, call, s.gateway_timeout_s, **gateway_options,
                                                       unseal=processor.unseal_inline))
                         if limits.typical_latency_s(call.gateway) <= inline_max_latency_s else None
                         for _, call in work]
                started = [t for t in tasks if t is not None]
                wait_s = deadline - asyncio.get_running_loop().time()
                if started and wait_s > 0:
                    await asyncio.wait(started, timeout=wait_s)
            for (event, call), task in zip(work, tasks, strict=True):
                tid = transactional_id(app, event)
                answered = task is not None and task.done() and not task.cancelled() and task.exception() is None
                if task is not None and not task.done():
                    task.cancel()
                if tid in lost:
                    continue
                set_current_event(event)
                partition = event.message.partition
                try:
                    if not answered:
                        if task is None:
                            metrics.GATEWAY_INLINE.labels("slow_gateway").inc()
                        else:
                            metrics.GATEWAY_INLINE.labels("handed_over").inc()
                        await send(event, calls_topic_name, call.payment_id.encode(), codec.encode(call), partition)
                        continue
                    assert task is not None
                    reply = task.result()
                    try:
                        out = processor.handle_input(call.payment_id, reply_input(reply), now_ms(), partition)
                    except Exception:  # a bug: the executor's reply will meet it again, and be dead-lettered
                        log.exception("applying the inline reply of %s failed: handed over", call.idempotency_key)
                        metrics.GATEWAY_INLINE.labels("handed_over").inc()
                        await send(event, calls_topic_name, call.payment_id.encode(), codec.encode(call), partition)
                        continue
                    reply["meta"]["applied"] = INLINE
                    metrics.child(metrics.GATEWAY_INLINE, "applied").inc()
                    await send(event, outcomes_topic_name, call.payment_id.encode(), reply_bytes(reply),
                               partition)
                    note_ignored("reply", call.payment_id, out)
                    await publish(event, out)  # its calls join the next round
                except PartitionLost as exc:
                    lost.add(tid)
                    log.warning("partition lost to a rebalance while applying a gateway reply (%s)", exc)
        inline_calls.clear()
        return lost

    # Each input offset applied exactly once, in order, whatever the consumer delivers: the
    # last applied offset per partition lives in `applied_offsets`, committed with the outputs;
    # redeliveries are skipped, gaps healed, an input faust drops is not acknowledged but
    # fetched again (F11), and inputs are applied between two commits (F10). See
    # streams/input_guard.py; the fraud agents use the same guard.
    async def end_batch(lost: set[str | None]) -> set[str | None]:
        """The batch's inline gateway calls (their replies add audit records and payment changes),
        then its audit records, its payments' last states and its command ids, before the offsets
        and the commit;
        nothing of a transaction lost to a rebalance (``lost``: while the inputs were applied)."""
        if inline_calls is not None:
            lost |= await make_inline_calls()
        processor.forget_opened()  # the plaintext of the batch's sealed tokens, no longer needed
        lost |= await audit_batches.flush(lost)
        lost |= await batched_payments.flush(lost)
        lost |= await batched_idempotency.flush(lost)
        return lost

    guard = InputGuard(app, applied_offsets, inputs.topics, handle, GapReader(s.kafka_connection()),
                       commit_when_idle=s.commit_when_idle, max_batch=s.input_batch_max,
                       on_batch_end=end_batch, write=changelog_writer(app, applied_offsets)).install()

    @app.agent(inputs, name="payments")
    async def payments(stream: faust.StreamT[bytes]) -> None:
        await guard.consume(stream)

    executor = make_executor(s, w.gateways, keyring, gateway_options)

    if s.gateway_executor_in_worker:
        @app.task  # type: ignore[untyped-decorator]  # faust's decorators are untyped
        async def gateway_executor() -> None:
            await executor.run()

    @app.task  # type: ignore[untyped-decorator]  # faust's decorators are untyped
    async def method_directory() -> None:
        await directory.run()

    if s.gc_freeze_interval_s > 0:
        @app.task  # type: ignore[untyped-decorator]  # faust's decorators are untyped
        async def gc_tending() -> None:
            await metrics.tend_gc(s.gc_freeze_interval_s, s.gc_full_interval_s)

    verdict_timeout_ms = int(s.fraud_verdict_timeout_s * 1000)
    timeouts_sent: dict[str, int] = {}  # payment id -> when its synthetic verdict was last sent

    async def fraud_timeout(record: PaymentRecord, now: int) -> None:
        """A fraud check that has not answered in time: a synthetic ``review`` verdict through the
        verdicts topic (never a table write from a timer); the machine ignores whichever of the
        synthetic and the real verdict comes second."""
        st = record.state
        if st is None or st.fraud is None or now - st.fraud.requested_at <= verdict_timeout_ms:
            return
        if now - timeouts_sent.get(st.payment_id, 0) <= verdict_timeout_ms:
            return  # sent, not applied yet
        verdict = timeout_verdict(record, fraud_ruleset_version)
        if verdict is None:
            return
        timeouts_sent[st.payment_id] = now
        af.record_metrics(verdict)
        log.warning("fraud check of %s did not answer in %.0f s: holding it for review", redact(st.payment_id),
                    s.fraud_verdict_timeout_s)
        msg = af.verdict_message(verdict)
        await send(None, verdicts_topic_name, msg.key, msg.value, msg.partition)

    full_scan_every = 12  # ticks: the whole table once a minute, the watched payments every 5 s
    ticks = 0

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]  # faust's decorators are untyped
    async def reconciler() -> None:
        """Ask the gateway about every unknown outcome on this worker's partitions (and, with
        fraud checks on, time out checks that have not answered).

        Decoding every payment of the table each tick cost CPU in proportion to the table (a
        million payments: minutes per tick), so a tick reads only the payments this process
        saved in a state that needs it (``processor.watched``); once a minute a full scan
        finds the ones recovered from the changelog after a restart or a rebalance.
        """
        nonlocal ticks
        now = now_ms()
        full = ticks % full_scan_every == 0
        ticks += 1
        keys = list(payments_table.keys()) if full else list(processor.watched)
        pending, oldest = 0, 0.0
        held: set[str] = set()
        for n, key in enumerate(keys):
            if full and n % 2000 == 1999:
                await asyncio.sleep(0)  # a large table: let the inputs run between slices of the scan
            value = batched_payments.get(key)  # a batch's newer state when one is in progress
            if full and not may_need_watch(value):
                processor.watched.discard(key)
                continue
            record = PaymentRecord.from_json(value)
            st = record.state
            if not needs_watch(st):
                processor.watched.discard(key)
                continue
            assert st is not None
            processor.watched.add(key)
            # Unknown outcomes: the payment's own call, and refunds left pending by a call whose
            # outcome is unknown (those free the payment's slot, so `pending` may be None).
            if s.fraud_enabled and st.fraud is not None:
                held.add(st.payment_id)
                await fraud_timeout(record, now)
                continue
            calls = reconcile_effects(st)
            if not calls:
                continue
            pending += 1
            oldest = max(oldest, (now - st.updated_at) / 1000)
            for call in calls:
                # Outside any input's transaction: a plain send; a repeated retrieve is harmless.
                await send(None, calls_topic_name, call.payment_id.encode(), codec.encode(call), record.partition)
        for payment_id in set(timeouts_sent) - held:
            del timeouts_sent[payment_id]
        metrics.UNKNOWN_PENDING.set(pending)
        metrics.UNKNOWN_OLDEST_AGE.set(oldest)

    @app.timer(interval=600.0)  # type: ignore[untyped-decorator]  # faust's decorators are untyped
    async def expire_idempotency() -> None:
        dropped = processor.expire_idempotency(now_ms())
        if dropped:
            log.info("forgot %d command ids past their retention", dropped)

    return {"payments": payments, "executor": executor, "processor": processor, "payments_table": payments_table,
            "methods_table": methods_table, "directory": directory, "keyring": keyring}
