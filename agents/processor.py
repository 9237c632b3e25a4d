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

import logging
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from paystream.core import commands as cmds
from paystream.core import events as evs
from paystream.core import idempotency as idem
from paystream.core.machine import (
    CallGateway,
    Decision,
    Input,
    Notification,
    PaymentState,
    decide,
    totals,
)
from paystream.core.rejections import Rejection, RejectionReason
from tables import codec

log = logging.getLogger("paystream.processor")


@dataclass
class Output:
    """What one input produced; the agent sends it inside the input's transaction."""

    events: list[evs.PaymentEvent] = field(default_factory=list)
    calls: list[CallGateway] = field(default_factory=list)
    duplicate: bool = False
    queued: bool = False
    ignored: str | None = None


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

    @classmethod
    def from_json(cls, value: dict[str, Any] | None) -> PaymentRecord:
        if not value:
            return cls()
        state = codec.from_plain(PaymentState, value["state"]) if value.get("state") else None
        return cls(state=state, sequence=value.get("sequence", 0), queue=list(value.get("queue", [])),
                   partition=value.get("partition", 0))


class PaymentProcessor:
    def __init__(
        self,
        payments: MutableMapping[str, Any],
        idempotency: MutableMapping[str, Any],
        *,
        idempotency_retention_ms: int = 7 * 24 * 3600 * 1000,
    ) -> None:
        self.payments = payments
        self.idempotency = idempotency
        self.retention_ms = idempotency_retention_ms

    # ---------------------------------------------------------------- records

    def load(self, payment_id: str, partition: int) -> PaymentRecord:
        record = PaymentRecord.from_json(self.payments.get(payment_id))
        record.partition = partition
        return record

    def save(self, payment_id: str, record: PaymentRecord) -> None:
        self.payments[payment_id] = record.to_json()

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
        out.calls.extend(e for e in decision.effects if isinstance(e, CallGateway))

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
        if record.state is not None and record.state.pending is not None and not record.state.pending.outcome_unknown:
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
        body = evs.CommandRejected(reason=RejectionReason.INVALID_FIELD.value, detail=detail[:300], command_type=None)
        self._emit(record, payment_id, Decision(state=record.state, causation_id=command_id), now, out, extra=(body,))
        self.save(payment_id, record)
        return out

    def handle_input(self, payment_id: str, inp: Input, now: int, partition: int = 0) -> Output:
        """A gateway reply, a reconciliation result or a verified notification."""
        out = Output()
        record = self.load(payment_id, partition)
        decision = decide(record.state, inp, now)
        if decision.ignored:
            out.ignored = decision.ignored
            return out
        record.state = decision.state
        self._emit(record, payment_id, decision, now, out)
        self._drain(record, now, out)
        self.save(payment_id, record)
        return out

    def _apply(self, record: PaymentRecord, command: cmds.Command, now: int, out: Output) -> None:
        decision = decide(record.state, command, now)
        if decision.rejection is not None:
            self._reject(record, command, decision.rejection, now, out)
            return
        record.state = decision.state
        self._emit(record, command.payment_id, decision, now, out)

    def _drain(self, record: PaymentRecord, now: int, out: Output) -> None:
        """Run queued commands while no gateway call is in flight."""
        while record.queue and (record.state is None or record.state.pending is None):
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
