"""Traffic for the chaos runs: Avro commands as the Order Service writes them, a plan of
payments (automatic and manual capture, captures, partial refunds, cancels, declines, 3-D
Secure), exact repeats of some commands, and a live read_committed watcher of payment.events.

Commands are encoded here with fastavro against the schema registered for
``payment.requests-value`` (Confluent framing) and produced with a plain confluent-kafka
producer hashing keys like the Java client (murmur2), as every producer of the topic must.
"""

from __future__ import annotations

import heapq
import io
import json
import random
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fastavro
import httpx
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from chaos.checker import EVENT_RECORD, EVENTS, REQUESTS, TERMINAL, Schemas, Undecodable, _union

CMD_NS = "io.paystream.commands."
DECLINE_TOKENS = ["tok_decline_insufficient_funds", "tok_decline_card_declined", "tok_decline_expired_card",
                  "tok_decline_incorrect_cvc", "tok_decline_fraud", "tok_decline_processing_error"]
CURRENCIES = ["USD", "USD", "EUR", "GBP", "JPY"]
SETTLES_PAYMENT = frozenset({"PaymentAuthorized", "PaymentSucceeded", "PaymentFailed", "PaymentCanceled",
                             "PaymentRequiresAction"})


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Registry:
    """The latest registered schema (id and parsed) of each subject, over HTTP."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=10)

    def latest(self, subject: str) -> tuple[int, Any]:
        r = self.http.get(f"{self.url}/subjects/{subject}/versions/latest")
        r.raise_for_status()
        body = r.json()
        return int(body["id"]), fastavro.parse_schema(json.loads(body["schema"]))


def frame(schema_id: int, schema: Any, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", schema_id))
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def command(payment_id: str, kind: str, body: dict[str, Any], command_id: str | None = None,
            origin: str = "chaos-order-service") -> dict[str, Any]:
    return {"command_id": command_id or f"cmd-{uuid.uuid4()}", "payment_id": payment_id, "issued_at": now_ms(),
            "origin": origin, "command": (CMD_NS + kind, body)}


def create_body(amount: int, currency: str, token: str | None, manual: bool, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "order_id": f"ord-{uuid.uuid4().hex[:12]}", "customer_id": f"cus-{random.randint(1, 5000)}",
        "amount": amount, "currency": currency, "payment_method_token": token, "saved_method_id": None,
        "capture_method": "manual" if manual else "automatic", "gateway": None, "metadata": {},
        "customer_ip": None, "customer_email": None, "shipping_country": None,
    }
    body.update(extra)
    return body


def safe_amount(rng: random.Random) -> int:
    """An amount that does not hit the simulated gateway's amount triggers (x51..x60)."""
    amount = rng.randint(500, 200_000)
    if 51 <= amount % 100 <= 60:
        amount += 20
    return amount


class CommandProducer:
    def __init__(self, bootstrap: str, registry_url: str) -> None:
        self.registry = Registry(registry_url)
        self.schema_id, self.schema = self.registry.latest(f"{REQUESTS}-value")
        self.producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                                  "enable.idempotence": True, "linger.ms": 5, "message.max.bytes": 1_000_000,
                                  "message.timeout.ms": 600_000})
        self.sent = 0
        self.raw_sent = 0
        self.errors: list[str] = []

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))

    def encode(self, cmd: dict[str, Any]) -> bytes:
        return frame(self.schema_id, self.schema, cmd)

    def send(self, cmd: dict[str, Any]) -> bytes:
        value = self.encode(cmd)
        self.send_raw(cmd["payment_id"].encode(), value)
        self.sent += 1
        return value

    def send_raw(self, key: bytes | None, value: bytes | None) -> None:
        while True:
            try:
                self.producer.produce(REQUESTS, key=key, value=value, on_delivery=self._delivered)
                break
            except BufferError:
                self.producer.poll(0.1)
            except KafkaException as exc:  # e.g. message too large: hostile input the client refuses
                self.errors.append(str(exc))
                return
        self.raw_sent += 1
        self.producer.poll(0)

    def flush(self, timeout: float = 120) -> int:
        return int(self.producer.flush(timeout))


# --------------------------------------------------------------------------- the plan


@dataclass(order=True)
class _Due:
    at: float
    seq: int
    action: Callable[[], None] = field(compare=False)


class Scheduler:
    """Runs actions at their due times from one thread (the traffic thread)."""

    def __init__(self) -> None:
        self._heap: list[_Due] = []
        self._seq = 0
        self._lock = threading.Lock()

    def at(self, when: float, action: Callable[[], None]) -> None:
        with self._lock:
            self._seq += 1
            heapq.heappush(self._heap, _Due(when, self._seq, action))

    def run_due(self) -> int:
        n = 0
        while True:
            with self._lock:
                if not self._heap or self._heap[0].at > time.monotonic():
                    return n
                item = heapq.heappop(self._heap)
            item.action()
            n += 1

    def __len__(self) -> int:
        return len(self._heap)


class Traffic:
    """Sustained payments: creates at ``rate`` per second; captures, cancels and refunds follow
    a few seconds later without waiting for results (paystream queues a payment's commands)."""

    def __init__(self, producer: CommandProducer, prefix: str, rng: random.Random, *,
                 three_ds_share: float = 0.0, fault_token_share: float = 0.0, repeat_share: float = 0.02) -> None:
        self.p = producer
        self.prefix = prefix
        self.rng = rng
        self.three_ds_share = three_ds_share
        self.fault_token_share = fault_token_share
        self.repeat_share = repeat_share
        self.sched = Scheduler()
        self.commands: dict[str, str] = {}  # command_id -> command type (what the driver sent)
        self.payments = 0
        self.kinds: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _send(self, cmd: dict[str, Any]) -> None:
        with self._lock:
            self.commands[cmd["command_id"]] = cmd["command"][0].rsplit(".", 1)[-1]
        value = self.p.send(cmd)
        if self.rng.random() < self.repeat_share:
            # The Order Service retrying: the same bytes again, a little later.
            key = cmd["payment_id"].encode()
            self.sched.at(time.monotonic() + self.rng.uniform(0.05, 3.0), lambda: self._repeat(key, value))

    def _repeat(self, key: bytes, value: bytes) -> None:
        self.p.send_raw(key, value)
        self.kinds["repeat"] += 1

    def later(self, delay: float, cmd_factory: Callable[[], dict[str, Any]]) -> None:
        self.sched.at(time.monotonic() + delay, lambda: self._send(cmd_factory()))

    def new_payment(self) -> str:
        rng = self.rng
        self.payments += 1
        pid = f"{self.prefix}-{self.payments:06d}-{uuid.uuid4().hex[:6]}"
        amount, currency = safe_amount(rng), rng.choice(CURRENCIES)
        roll = rng.random()
        if roll < self.three_ds_share:
            manual = rng.random() < 0.4
            self.kinds["3ds-manual" if manual else "3ds"] += 1
            self._send(command(pid, "CreatePayment", create_body(amount, currency, "tok_3ds", manual)))
            if manual:  # captured once authenticated (rejected while requires_action: still a result)
                self.later(rng.uniform(4, 8), lambda: command(pid, "CapturePayment",
                                                               {"amount": None, "currency": None}))
            return pid
        roll = rng.random()
        if roll < self.fault_token_share:
            token = rng.choice(["tok_timeout", "tok_5xx", "tok_slow"])
            self.kinds[token] += 1
            self._send(command(pid, "CreatePayment", create_body(amount, currency, token, rng.random() < 0.3)))
            return pid
        if roll < 0.08:
            self.kinds["decline"] += 1
            self._send(command(pid, "CreatePayment",
                               create_body(amount, currency, rng.choice(DECLINE_TOKENS), rng.random() < 0.5)))
            if rng.random() < 0.3:  # a capture of a declined payment: CommandRejected
                self.later(rng.uniform(0.5, 2), lambda: command(pid, "CapturePayment",
                                                                 {"amount": None, "currency": None}))
            return pid
        if roll < 0.38:
            self._manual(pid, amount, currency)
            return pid
        self.kinds["automatic"] += 1
        self._send(command(pid, "CreatePayment", create_body(amount, currency, "tok_visa", False)))
        self._refunds(pid, amount, currency, start=rng.uniform(0.5, 3))
        return pid

    def _manual(self, pid: str, amount: int, currency: str) -> None:
        rng = self.rng
        self._send(command(pid, "CreatePayment", create_body(amount, currency, "tok_visa", True)))
        r = rng.random()
        delay = rng.uniform(0.3, 3)
        if r < 0.45:
            self.kinds["manual-capture"] += 1
            self.later(delay, lambda: command(pid, "CapturePayment", {"amount": None, "currency": None}))
            self._refunds(pid, amount, currency, start=delay + rng.uniform(0.3, 2))
        elif r < 0.7:
            self.kinds["manual-partial-capture"] += 1
            captured = max(1, amount // 2)
            self.later(delay, lambda: command(pid, "CapturePayment", {"amount": captured, "currency": currency}))
            self._refunds(pid, captured, currency, start=delay + rng.uniform(0.3, 2))
        elif r < 0.9:
            self.kinds["manual-cancel"] += 1
            self.later(delay, lambda: command(pid, "CancelPayment", {"reason": "order_canceled"}))
        else:
            self.kinds["manual-left-authorized"] += 1

    def _refunds(self, pid: str, captured: int, currency: str, start: float) -> None:
        rng = self.rng
        r = rng.random()
        if r < 0.35:
            n = 1 if rng.random() < 0.6 else 2
            for i in range(n):
                part = max(1, captured // (3 + i))
                rid = f"re-{uuid.uuid4().hex[:10]}"
                self.later(start + i * rng.uniform(0.2, 1.5), lambda part=part, rid=rid: command(
                    pid, "RefundPayment", {"refund_id": rid, "amount": part, "currency": currency,
                                           "reason": "requested_by_customer"}))
            self.kinds["partial-refund"] += n
        elif r < 0.40:
            rid = f"re-{uuid.uuid4().hex[:10]}"
            self.later(start, lambda: command(pid, "RefundPayment", {"refund_id": rid, "amount": None,
                                                                     "currency": None, "reason": None}))
            self.kinds["full-refund"] += 1


# --------------------------------------------------------------------------- watching results


class EventWatcher(threading.Thread):
    """Reads payment.events (read_committed) from the window start and keeps counters: which
    command ids have their terminal event, the last status per payment."""

    def __init__(self, bootstrap: str, registry_url: str, since: dict[int, int], prefix: str,
                 on_event: Callable[[dict[str, Any], str], None] | None = None) -> None:
        super().__init__(daemon=True, name="chaos-events")
        self.bootstrap, self.since, self.prefix = bootstrap, since, prefix
        self.schemas = Schemas(registry_url)
        self.on_event = on_event
        self.events = 0
        self.terminal: dict[str, list[str]] = {}  # causation -> terminal-capable event types seen
        self.causations: set[str] = set()
        self.last_status: dict[str, str] = {}
        self.open_unknown: dict[str, set[str]] = {}  # payment -> operations whose outcome is unknown
        self.by_type: Counter[str] = Counter()
        self.last_event_at = time.monotonic()
        self._stop = threading.Event()

    def run(self) -> None:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"chaos-watch-{uuid.uuid4()}",
                             "isolation.level": "read_committed", "enable.auto.commit": False,
                             "auto.offset.reset": "earliest"})
        parts = consumer.list_topics(EVENTS, timeout=15).topics[EVENTS].partitions
        consumer.assign([TopicPartition(EVENTS, p, self.since.get(p, 0)) for p in parts])
        try:
            while not self._stop.is_set():
                for m in consumer.consume(2000, 0.3):
                    if m.error() is not None:
                        continue
                    try:
                        name, value = self.schemas.decode(m.value())
                    except Undecodable:
                        continue
                    if name != EVENT_RECORD:
                        continue
                    etype, _ = _union(value.get("event"))
                    self.events += 1
                    self.last_event_at = time.monotonic()
                    self.by_type[etype or "?"] += 1
                    cause = value.get("causation_command_id")
                    if cause:
                        self.causations.add(cause)
                        self.terminal.setdefault(cause, []).append(etype or "?")
                    pid = value["payment_id"]
                    if value.get("status") is not None:
                        self.last_status[pid] = value["status"]
                    if etype == "PaymentOutcomeUnknown":
                        self.open_unknown.setdefault(pid, set()).add(_union(value["event"])[1]["operation"])
                    elif pid in self.open_unknown:
                        ops = self.open_unknown[pid]
                        ops.discard("refund" if etype in ("RefundProcessed", "RefundFailed") else "")
                        if etype in SETTLES_PAYMENT:
                            ops -= {"authorize", "capture", "cancel"}
                        if not ops:
                            del self.open_unknown[pid]
                    if self.on_event is not None:
                        self.on_event(value, etype or "?")
        finally:
            consumer.close()

    def stop(self) -> None:
        self._stop.set()

    def answered(self, commands: dict[str, str]) -> int:
        """How many of ``commands`` (id -> type) have a terminal event."""
        n = 0
        for cid, ctype in list(commands.items()):
            types = self.terminal.get(cid)
            if types and any(t in TERMINAL.get(ctype, ()) for t in types):
                n += 1
        return n

    def unresolved(self) -> int:
        """Payments of this run still waiting for the gateway, a webhook or the reconciler:
        status processing, unknown or requires_action, or a refund whose outcome is unknown."""
        waiting = {pid for pid, s in list(self.last_status.items())
                   if pid.startswith(self.prefix) and s in ("unknown", "processing", "requires_action")}
        waiting |= {pid for pid in list(self.open_unknown) if pid.startswith(self.prefix)}
        return len(waiting)
