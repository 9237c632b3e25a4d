"""The command processor: decode → look up state → decide → outputs. No Kafka I/O here.

The faust agent (``agents.payments``) feeds it the three co-partitioned inputs of a payment
(commands, gateway replies, verified webhooks) and sends what it returns. The tables are
passed in as mappings, so the same code runs on faust tables, in faust's test context, and on
plain dicts in unit tests.

Ordering and concurrency: commands of one payment are applied in order. When a command
arrives while a gateway call of the same payment is in flight, it waits in that payment's
queue (in the table, so it survives a crash) and runs when the reply comes back. The gateway
calls themselves are made by another agent (``agents.gateway``) from an internal topic, many
at a time, so a slow gateway call of one payment never holds up the other payments of the
partition.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from paystream.core import commands as cmds
from paystream.core import events as evs
from paystream.core import fraud as fr
from paystream.core import idempotency as idem
from paystream.core.machine import (
    CallGateway,
    Decision,
    FraudVerdictInput,
    Input,
    Notification,
    PaymentState,
    ReconcileResult,
    RequestFraudCheck,
    decide,
    is_busy,
    reconcile_effects,
    totals,
)
from paystream.core.methods import (
    DetachAtGateway,
    SavedMethod,
    decide_method,
    is_method_command,
    resolve_for_payment,
)
from paystream.core.rejections import Rejection, RejectionReason
from paystream.core.sensitive import redact
from paystream.metrics import ORPHAN_CHARGES, ORPHAN_RESOLUTIONS, RECONCILER_RESOLUTIONS
from paystream.security.crypto import CryptoError, is_envelope
from tables import codec
from tables.batched import BatchWrites

log = logging.getLogger("paystream.processor")


@dataclass
class Output:
    """What one input produced; the agent sends it inside the input's transaction."""

    events: list[evs.PaymentEvent] = field(default_factory=list)
    calls: list[CallGateway] = field(default_factory=list)
    vault: list[dict[str, Any]] = field(default_factory=list)  # records for the internal vault topic
    detaches: list[DetachAtGateway] = field(default_factory=list)
    fraud_checks: list[fr.FraudCheckRequest] = field(default_factory=list)  # first hop of each check
    duplicate: bool = False
    queued: bool = False
    ignored: str | None = None


class Sealer(Protocol):
    """Encryption at rest (``paystream.security.crypto.KeyRing``)."""

    def encrypt(self, plaintext: str, aad: str) -> str: ...

    def decrypt(self, envelope: str, aad: str) -> str: ...


_OPENED_MAX: Final = 4096  # envelopes whose plaintext a processor keeps until its batch ends


def seal_call(sealer: Sealer | None, call: CallGateway) -> CallGateway:
    """The call as it travels on the gateway-calls topic: its token sealed (encrypted under the
    payment's id), never in clear. A new payment's first call carries the command's plaintext."""
    token = call.payment_method_token
    if token is None or sealer is None or is_envelope(token):
        return call
    return dataclasses.replace(call, payment_method_token=sealer.encrypt(token, payment_aad(call.payment_id)))


def unseal_call(sealer: Sealer | None, call: CallGateway) -> CallGateway:
    """The call with the plaintext token the gateway needs, opened just before the call is made."""
    token = call.payment_method_token
    if token is None or sealer is None or not is_envelope(token):
        return call
    try:
        return dataclasses.replace(call, payment_method_token=sealer.decrypt(token, payment_aad(call.payment_id)))
    except CryptoError:
        log.error("the sealed token of payment %s does not decrypt (key missing?)", call.payment_id)
        return call


def method_aad(method_id: str) -> str:
    """Associated data of a saved method's token: its ciphertext only opens for this method."""
    return f"payment_method:{method_id}"


def payment_aad(payment_id: str) -> str:
    """Associated data of the token a payment's state keeps for retries after a restart."""
    return f"payment:{payment_id}"


def vault_record(method: SavedMethod) -> dict[str, Any]:
    """What the vault sink stores for a method: masked card data, and the token only sealed."""
    return {
        "kind": "payment_method",
        "method_id": method.method_id,
        "customer_id": method.customer_id,
        "gateway": method.gateway,
        "status": method.status.value,
        "sealed_token": method.sealed_token,
        "brand": method.brand,
        "last4": method.last4,
        "exp_month": method.exp_month,
        "exp_year": method.exp_year,
        "fingerprint": method.fingerprint,
        "version": method.version,
        "created_at": method.created_at,
        "updated_at": method.updated_at,
        "removed_at": method.removed_at,
    }


@dataclass
class PaymentRecord:
    """A payment's entry in the ``payments`` table."""

    state: PaymentState | None = None
    sequence: int = 0  # last event sequence published for this payment id
    queue: list[dict[str, Any]] = field(default_factory=list)  # commands waiting for a gateway reply
    partition: int = 0  # the payment's partition (same number on every payment topic)

    def to_json(self) -> dict[str, Any]:
        return {"state": codec.to_plain(self.state), "sequence": self.sequence, "queue": self.queue,
                "partition": self.partition}

    def copy(self) -> PaymentRecord:
        """A record that shares nothing mutable with this one (``state`` is immutable)."""
        return PaymentRecord(state=self.state, sequence=self.sequence, queue=list(self.queue),
                             partition=self.partition)

    @classmethod
    def from_json(cls, value: dict[str, Any] | None) -> PaymentRecord:
        if not value:
            return cls()
        state = codec.from_plain(PaymentState, value["state"]) if value.get("state") else None
        return cls(state=state, sequence=value.get("sequence", 0), queue=list(value.get("queue", [])),
                   partition=value.get("partition", 0))


def needs_watch(state: PaymentState | None) -> bool:
    """Whether the reconciler has something to do for this state: an operation whose outcome
    is unknown (``reconcile_effects``) or a payment held by a fraud check."""
    if state is None:
        return False
    if state.fraud is not None:
        return True
    if state.pending is None and not state.refunds and not state.orphans:
        return False  # nothing reconcile_effects could list (most payments): no calls built to see it
    return bool(reconcile_effects(state))


_WATCHED_REFUND = "pending"
_WATCHED_ORPHANS = frozenset({"suspected", "rechecking"})


def may_need_watch(value: Any) -> bool:
    """A cheap, conservative ``needs_watch`` on a table value as stored (plain JSON, not decoded
    into the machine's dataclasses): False only when ``needs_watch`` is certainly False (no
    fraud hold, no pending call with an unknown outcome, no pending refund, no orphan to check).
    The reconciler's full scan runs it over every payment of the table; decoding each one took
    the event loop for seconds with a large table."""
    if not isinstance(value, dict):
        return value is not None
    st = value.get("state")
    if not isinstance(st, dict):
        return st is not None
    if st.get("fraud") is not None:
        return True
    pending = st.get("pending")
    if pending is not None and (not isinstance(pending, dict) or pending.get("outcome_unknown", True)):
        return True
    refunds, orphans = st.get("refunds") or [], st.get("orphans") or []
    return (any(not isinstance(r, dict) or r.get("status", _WATCHED_REFUND) == _WATCHED_REFUND for r in refunds)
            or any(not isinstance(o, dict) or o.get("status", "suspected") in _WATCHED_ORPHANS for o in orphans))


def note_orphans(payment_id: str, decision: Decision) -> None:
    """Orphan charges found and settled: counted, and logged (an error when paystream gave up)."""
    for body in decision.events:
        if isinstance(body, evs.OrphanChargeDetected):
            ORPHAN_CHARGES.inc()
            log.warning("payment %s: orphan charge %s at %s under superseded key %s (%d %s); %s it",
                        redact(payment_id), body.orphan_gateway_ref, body.orphan_gateway, body.orphan_key,
                        body.amount, body.currency, "voiding" if body.action == "void" else "refunding")
        elif isinstance(body, evs.OrphanChargeResolved):
            ORPHAN_RESOLUTIONS.labels(body.outcome).inc()
            if body.outcome == "failed":
                log.error("payment %s: orphan charge %s at %s NOT released (%s): %s; release it by hand",
                          redact(payment_id), body.orphan_gateway_ref, body.orphan_gateway, body.action, body.reason)
            else:
                log.info("payment %s: orphan charge %s at %s %s", redact(payment_id), body.orphan_gateway_ref,
                         body.orphan_gateway, body.outcome)


class PaymentProcessor:
    def __init__(
        self,
        payments: MutableMapping[str, Any],
        idempotency: MutableMapping[str, Any],
        *,
        idempotency_retention_ms: int = 7 * 24 * 3600 * 1000,
        methods: MutableMapping[str, Any] | None = None,
        sealer: Sealer | None = None,
        method_lookup: Callable[[str], Mapping[str, Any] | None] | None = None,
        router: Callable[[cmds.CreatePayment, bool], tuple[str, ...] | Rejection] | None = None,
        fraud_enabled: bool = False,
    ) -> None:
        self.payments = payments
        # A batch's writes of the payments table, when it is one (agents.payments): records go in
        # and come back out as objects within the batch.
        self._batch = payments if isinstance(payments, BatchWrites) and payments.encode is not None else None
        self.idempotency = idempotency
        self.retention_ms = idempotency_retention_ms
        # Saved methods of this worker's partitions (authoritative), keyed by method id.
        self.methods: MutableMapping[str, Any] = methods if methods is not None else {}
        self.sealer = sealer
        # Any method, whatever its partition (the local table first, then the directory).
        self.method_lookup = method_lookup or self.methods.get
        # The route of a new payment (agents.routing); None: the command's gateway or the default.
        self.router = router
        # New payments wait for the fraud check's verdict before their authorization.
        self.fraud_enabled = fraud_enabled
        # Payment ids saved by this process whose state the reconciler must look at (an outcome
        # unknown, a fraud hold): its timer reads these instead of decoding the whole table
        # every tick. Entries recovered from the changelog are found by its periodic full scan.
        self.watched: set[str] = set()
        # Envelopes this processor sealed lately, with their plaintext (bounded; emptied by
        # ``forget_opened`` at each batch's end): a new payment's token is sealed once for its
        # state and that same envelope rides on its first gateway call (same key, same
        # associated data), and an inline call opens it without decrypting it again.
        self._opened: dict[str, str] = {}

    # ---------------------------------------------------------------- records

    def load(self, payment_id: str, partition: int) -> PaymentRecord:
        recent = self._batch.get_object(payment_id) if self._batch is not None else None
        if recent is not None:  # saved earlier in this batch: a copy, not a decode of its JSON
            record: PaymentRecord = recent.copy()
        else:
            record = PaymentRecord.from_json(self.payments.get(payment_id))
        record.partition = partition
        return record

    def save(self, payment_id: str, record: PaymentRecord) -> None:
        if self._batch is not None:
            # Encoded once at the batch's end (or when someone reads it as JSON before), not per save.
            self._batch.put_object(payment_id, record.copy())
        else:
            self.payments[payment_id] = record.to_json()
        if needs_watch(record.state):
            self.watched.add(payment_id)
        else:
            self.watched.discard(payment_id)

    def _emit(self, record: PaymentRecord, payment_id: str, decision: Decision, now: int, out: Output,
              extra: tuple[evs.EventBody, ...] = ()) -> None:
        state = decision.state
        for body in (*decision.events, *extra):
            record.sequence += 1
            out.events.append(
                evs.PaymentEvent(
                    event_id=evs.event_id(payment_id, record.sequence),
                    payment_id=payment_id,
                    order_id=state.order_id if state else None,
                    sequence=record.sequence,
                    occurred_at=now,
                    causation_command_id=decision.causation_id,
                    status=state.status.value if state else None,
                    totals=totals(state) if state else None,
                    body=body,
                )
            )
        out.calls.extend(self._seal_call(e, record.state) for e in decision.effects if isinstance(e, CallGateway))

    def _seal_call(self, call: CallGateway, state: PaymentState | None) -> CallGateway:
        """``seal_call``, reusing the envelope the payment's state got in this batch when it
        holds the same token (the same key and associated data: one encryption, not two)."""
        token = call.payment_method_token
        if token is None or self.sealer is None or is_envelope(token):
            return call
        kept = state.payment_method_token if state is not None and state.payment_id == call.payment_id else None
        if kept is not None and self._opened.get(kept) == token:
            return dataclasses.replace(call, payment_method_token=kept)
        sealed = seal_call(self.sealer, call)
        self._remember(sealed.payment_method_token, token)
        return sealed

    def _remember(self, envelope: str | None, plaintext: str) -> None:
        if envelope is None:
            return
        if len(self._opened) >= _OPENED_MAX:
            self._opened.clear()
        self._opened[envelope] = plaintext

    def unseal_inline(self, call: CallGateway) -> CallGateway:
        """``unseal_call`` for a call of this batch: an envelope sealed here opens from memory."""
        token = call.payment_method_token
        plaintext = self._opened.get(token) if token is not None else None
        if plaintext is not None:
            return dataclasses.replace(call, payment_method_token=plaintext)
        return unseal_call(self.sealer, call)

    def forget_opened(self) -> None:
        """Drop the plaintexts of the envelopes sealed so far (at each batch's end)."""
        self._opened.clear()

    def _reject(self, record: PaymentRecord, command: cmds.Command, rejection: Rejection, now: int,
                out: Output) -> None:
        body = evs.command_rejected(rejection, cmds.command_type(command))
        decision = Decision(state=record.state, causation_id=command.command_id)
        self._emit(record, command.payment_id, decision, now, out, extra=(body,))

    # ---------------------------------------------------------------- inputs

    def handle_command(self, command: cmds.Command, now: int, partition: int = 0) -> Output:
        out = Output()
        record = self.load(command.payment_id, partition)
        key = f"{command.payment_id}|{command.command_id}"
        fp = cmds.fingerprint(command)
        seen = self.idempotency.get(key)
        stored = codec.from_plain(idem.IdempotencyRecord, seen) if seen else None
        verdict = idem.apply_idempotency(stored, command.command_id, fp)
        if isinstance(verdict, idem.Duplicate):
            out.duplicate = True  # the original outcome stands; nothing new is published
            return out
        if isinstance(verdict, idem.Reused):
            self._reject(record, command, verdict.rejection, now, out)
            self.save(command.payment_id, record)
            return out
        self.idempotency[key] = codec.to_plain(
            idem.IdempotencyRecord(command_id=command.command_id, fingerprint=fp, payment_id=command.payment_id,
                                   recorded_at=now)
        )
        if is_busy(record.state):
            record.queue.append(cmds.to_avro(command))
            self.save(command.payment_id, record)
            out.queued = True
            return out
        self._apply(record, command, now, out)
        self._drain(record, now, out)
        self.save(command.payment_id, record)
        return out

    def handle_undecodable(self, payment_id: str, command_id: str | None, detail: str, now: int,
                           partition: int = 0) -> Output:
        """A well-framed Avro command whose content breaks the contract: CommandRejected, not a crash."""
        out = Output()
        record = self.load(payment_id, partition)
        # The decoder's message may quote the offending value: never publish card data (I6).
        body = evs.CommandRejected(reason=RejectionReason.INVALID_FIELD.value, detail=redact(detail)[:300],
                                   command_type=None)
        self._emit(record, payment_id, Decision(state=record.state, causation_id=command_id), now, out, extra=(body,))
        self.save(payment_id, record)
        return out

    def handle_input(self, payment_id: str, inp: Input, now: int, partition: int = 0) -> Output:
        """A gateway reply, a reconciliation result or a verified notification."""
        out = Output()
        record = self.load(payment_id, partition)
        decision = decide(record.state, inp, now)
        if isinstance(inp, ReconcileResult):
            RECONCILER_RESOLUTIONS.labels(inp.status.value, 'ignored' if decision.ignored else 'applied').inc()
        if decision.ignored:
            out.ignored = decision.ignored
            return out
        note_orphans(payment_id, decision)
        record.state = decision.state
        self._emit(record, payment_id, decision, now, out)
        self._drain(record, now, out)
        self.save(payment_id, record)
        return out

    def _apply(self, record: PaymentRecord, command: cmds.Command, now: int, out: Output) -> None:
        if is_method_command(command):
            self._apply_method(record, command, now, out)
            return
        body = command.body
        route: tuple[str, ...] = ()
        method: SavedMethod | None = None
        if isinstance(body, cmds.CreatePayment) and record.state is None:
            if self.methods.get(command.payment_id) is not None:
                rejection = Rejection(RejectionReason.PAYMENT_ALREADY_EXISTS, "the id is a saved payment method's")
                self._reject(record, command, rejection, now, out)
                return
            saved = body.saved_method_id is not None and body.payment_method_token is None
            valid = cmds.validate(command) is None
            if saved and valid:
                resolved = self._resolve_saved_method(body)
                if isinstance(resolved, Rejection):
                    self._reject(record, command, resolved, now, out)
                    return
                command = dataclasses.replace(command, body=resolved[0])
                method = resolved[1]
            if valid and self.router is not None and isinstance(command.body, cmds.CreatePayment):
                routed = self.router(command.body, saved)
                if isinstance(routed, Rejection):
                    self._reject(record, command, routed, now, out)
                    return
                route = routed
        decision = decide(record.state, command, now, route=route, fraud_check=self.fraud_enabled)
        if decision.rejection is not None:
            self._reject(record, command, decision.rejection, now, out)
            return
        record.state = self._sealed_state(decision.state)
        self._emit(record, command.payment_id, decision, now, out)
        if any(isinstance(e, RequestFraudCheck) for e in decision.effects):
            # The check carries what the rules need, never the token; ``now`` is the instant
            # every window of this payment is computed from.
            out.fraud_checks.append(fr.check_request(
                command, now, record.partition,
                fingerprint=method.fingerprint if method is not None else None,
            ))

    def _sealed_state(self, state: PaymentState | None) -> PaymentState | None:
        """Tables keep gateway tokens encrypted, bound to the payment (encryption at rest)."""
        if state is None or self.sealer is None:
            return state
        token = state.payment_method_token
        if token is None or is_envelope(token):
            return state
        sealed = self.sealer.encrypt(token, payment_aad(state.payment_id))
        self._remember(sealed, token)
        return dataclasses.replace(state, payment_method_token=sealed)

    def _resolve_saved_method(self, body: cmds.CreatePayment) -> tuple[cmds.CreatePayment, SavedMethod] | Rejection:
        """The CreatePayment with the saved method's token (and gateway) and the method, or why
        it cannot be used."""
        method_id = body.saved_method_id or ""
        raw = self.method_lookup(method_id)
        method = codec.from_plain(SavedMethod, dict(raw)) if raw else None
        rejection = resolve_for_payment(method, body.customer_id)
        if rejection is not None or method is None:
            return rejection or Rejection(RejectionReason.PAYMENT_METHOD_NOT_FOUND)
        if body.gateway is not None and body.gateway != method.gateway:
            return Rejection(RejectionReason.INVALID_FIELD, "gateway differs from the saved method's gateway")
        if self.sealer is None:
            return Rejection(RejectionReason.ENCRYPTION_UNAVAILABLE, "no encryption key is configured")
        try:
            token = self.sealer.decrypt(method.sealed_token or "", method_aad(method_id))
        except CryptoError:
            log.error("the sealed token of saved method %s does not decrypt (key missing?)", method_id)
            return Rejection(RejectionReason.PAYMENT_METHOD_NOT_FOUND, "the saved payment method could not be opened")
        resolved = dataclasses.replace(body, payment_method_token=token, saved_method_id=None, gateway=method.gateway)
        return resolved, method

    def _apply_method(self, record: PaymentRecord, command: cmds.Command, now: int, out: Output) -> None:
        """A payment-method command: the pure ``core.methods`` decides; events share the
        key's sequence in ``payments`` (a method id never is a payment id)."""
        method_id = command.payment_id
        raw = self.methods.get(method_id)
        state = codec.from_plain(SavedMethod, raw) if raw else None
        body = command.body
        if record.state is not None:
            rejection = Rejection(RejectionReason.PAYMENT_ALREADY_EXISTS, "the id is a payment's")
            self._reject(record, command, rejection, now, out)
            return
        sealed: str | None = None
        if isinstance(body, cmds.AddPaymentMethod) and self.sealer is not None and cmds.validate(command) is None:
            sealed = self.sealer.encrypt(body.gateway_token, method_aad(method_id))
        decision = decide_method(state, command, sealed, now)
        if decision.rejection is not None or decision.state is None:
            self._reject(record, command, decision.rejection or Rejection(RejectionReason.INVALID_FIELD), now, out)
            return
        self.methods[method_id] = codec.to_plain(decision.state)
        self._emit(record, method_id, Decision(state=None, causation_id=decision.causation_id), now, out,
                   extra=decision.events)
        out.vault.append(vault_record(decision.state))
        out.detaches.extend(decision.effects)

    def _drain(self, record: PaymentRecord, now: int, out: Output) -> None:
        """Run queued commands while no gateway call is in flight."""
        while record.queue and (record.state is None or (record.state.pending is None and not is_busy(record.state))):
            command = cmds.from_avro(record.queue.pop(0))
            self._apply(record, command, now, out)

    def expire_idempotency(self, now: int) -> int:
        """Forget command ids older than the retention; returns how many were dropped."""
        stale = [k for k, v in list(self.idempotency.items()) if now - v["recorded_at"] > self.retention_ms]
        for k in stale:
            del self.idempotency[k]
        return len(stale)


def notification_input(value: dict[str, Any]) -> tuple[str, Notification]:
    """payment.webhooks record (Avro) → the machine's Notification."""
    data = {
        "notification_id": value["notification_id"],
        "kind": value["kind"],
        "gateway_ref": value.get("gateway_ref"),
        "amount": value.get("amount"),
        "currency": value.get("currency"),
        "refund_id": value.get("refund_id"),
        "dispute_id": value.get("dispute_id"),
        "decline_code": value.get("decline_code"),
        "reason": value.get("raw_status"),
    }
    return value["payment_id"], codec.from_plain(Notification, data)


def verdict_input(verdict: fr.FraudVerdict) -> FraudVerdictInput:
    """The fraud agent's verdict → the machine's input (the FraudDecision bodies it publishes)."""
    bodies = fr.to_events(fr.ShadowOutcome(active=verdict.outcome, candidate=verdict.shadow))
    return FraudVerdictInput(command_id=verdict.command_id, decision=bodies[0],
                             shadow=bodies[1] if len(bodies) > 1 else None)
