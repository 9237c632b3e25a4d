"""Load for the benchmark: CreatePayment commands as the Order Service writes them (Avro against
the registry, murmur2 key hashing), a burst producer, an open-loop sender, and a watcher that
notes when each payment's terminal event becomes visible to a read_committed subscriber.

The watcher reads only the key and the CloudEvents ``ce_type`` header of each event (no Avro
decoding), so the observer costs little CPU next to what it measures.
"""

from __future__ import annotations

import random
import string
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from confluent_kafka import TIMESTAMP_CREATE_TIME, Consumer, Producer, TopicPartition

from paystream.client import create_payment
from paystream.config import Settings
from paystream.consuming import take_available
from paystream.core.events import TERMINAL_EVENTS
from streams import topics
from streams.avro import AvroCodec, codecs, registry_client

TERMINAL_CREATE = sorted(TERMINAL_EVENTS["CreatePayment"])
TERMINAL_CE_TYPES = {f"io.paystream.{name}".encode() for name in TERMINAL_CREATE}
CURRENCIES = (("USD", 0.55), ("EUR", 0.3), ("GBP", 0.1), ("JPY", 0.05))
TOKENS = (("tok_visa", 0.7), ("tok_mastercard", 0.3))
COUNTRIES = ("US", "DE", "FR", "GB", "NL", "ES", "IT", "JP")


def phase_of(payment_id: str) -> str:
    """Payment ids are ``<phase>_<n>_<letters>``; the watcher counts per phase."""
    return payment_id.split("_", 1)[0]


class CommandFactory:
    """Realistic CreatePayment commands with ids free of long digit runs (the card-data guard
    rejects 12+ digit runs) and amounts that never hit the simulated gateway's amount
    triggers (``amount % 100`` in 51..60): every payment is approved in one authorize call."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)

    def _letters(self, n: int) -> str:
        return "".join(self.rng.choices(string.ascii_lowercase, k=n))

    def _amount(self, currency: str) -> int:
        major = min(max(self.rng.lognormvariate(3.6, 0.9), 1.0), 5_000.0)  # median ≈ 37 units
        amount = int(major) if currency == "JPY" else int(major * 100)
        amount = max(amount, 50)
        if 51 <= amount % 100 <= 60:
            amount += 20
        return amount

    def create(self, phase: str, n: int) -> dict[str, Any]:
        currency = self.rng.choices([c for c, _ in CURRENCIES], [w for _, w in CURRENCIES])[0]
        token = self.rng.choices([t for t, _ in TOKENS], [w for _, w in TOKENS])[0]
        pid = f"{phase}_{n:06d}_{self._letters(8)}"
        customer = f"cus_{self._letters(10)}"
        cmd = create_payment(
            pid, amount=self._amount(currency), currency=currency, token=token,
            order_id=f"ord_{self._letters(12)}", customer_id=customer, origin="order-service-bench",
            metadata={"cart_id": f"cart_{self._letters(10)}", "channel": self.rng.choice(("web", "ios", "android"))},
        )
        body = cmd["command"]
        body["customer_email"] = f"{customer}@example.com"
        body["customer_ip"] = f"203.0.113.{self.rng.randint(1, 254)}"
        body["shipping_country"] = self.rng.choice(COUNTRIES)
        return cmd


class CommandSender:
    """A confluent-kafka producer of encoded commands with the Java client's key hashing."""

    def __init__(self, settings: Settings, codec: AvroCodec | None = None) -> None:
        self.codec = codec or codecs(registry_client(settings.schema_registry_url))[topics.REQUESTS]
        self.producer = Producer({
            "bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True, "linger.ms": 5,
            "partitioner": "murmur2_random", "queue.buffering.max.messages": 1_000_000,
        })

    def encode(self, cmd: dict[str, Any]) -> tuple[bytes, bytes]:
        return cmd["payment_id"].encode(), self.codec.encode(cmd)

    def send_raw(self, key: bytes, value: bytes, topic: str = topics.REQUESTS) -> None:
        while True:
            try:
                self.producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.producer.poll(0)

    def burst(self, messages: Sequence[tuple[bytes, bytes]], topic: str = topics.REQUESTS) -> float:
        """Produce every message as fast as the client goes; returns when all are acknowledged
        (wall-clock seconds it took)."""
        t0 = time.time()
        for key, value in messages:
            self.send_raw(key, value, topic)
        self.flush()
        return time.time() - t0

    def flush(self, timeout: float = 60) -> None:
        if self.producer.flush(timeout) != 0:
            raise RuntimeError("commands not delivered to Kafka in time")


def open_loop(sender: CommandSender, factory: CommandFactory, phase: str, rate_per_s: float, count: int,
              on_tick: Callable[[int], None] | None = None) -> dict[str, float]:
    """Send ``count`` commands at a fixed rate, whatever happens downstream (open loop), and
    return each payment's *intended* send time: measuring from the schedule rather than from
    the actual send keeps a stalled sender from hiding latency (coordinated omission)."""
    intended: dict[str, float] = {}
    interval = 1.0 / rate_per_s
    t0 = time.time() + 0.05
    for i in range(count):
        due = t0 + i * interval
        cmd = factory.create(phase, i)
        key, value = sender.encode(cmd)
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        sender.send_raw(key, value)
        intended[cmd["payment_id"]] = due
        if on_tick is not None and i % 50 == 0:
            on_tick(i)
    sender.flush()
    return intended


class TerminalWatcher:
    """A read_committed subscriber of payment.events, in a thread: the wall-clock time each
    payment's first terminal event became visible, and how many events each phase produced."""

    def __init__(self, settings: Settings, from_beginning: bool = False) -> None:
        self.consumer = Consumer({
            "bootstrap.servers": settings.kafka_bootstrap, "group.id": "bench-watcher",
            "isolation.level": "read_committed", "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 10,
        })
        md = self.consumer.list_topics(topics.EVENTS, timeout=10)
        tps = []
        for p in md.topics[topics.EVENTS].partitions:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(topics.EVENTS, p), timeout=10)
            tps.append(TopicPartition(topics.EVENTS, p, 0 if from_beginning else max(high, 0)))
        self.consumer.assign(tps)
        self.terminal_at: dict[str, float] = {}
        # when the worker produced that event (its record's CreateTime, stamped by the worker's
        # producer as the batch applied the input): splits a latency into "until applied" and
        # "applied until visible" (the transaction's commit and this consumer's fetch)
        self.terminal_produced_at: dict[str, float] = {}
        self.terminal_type: dict[str, str] = {}  # payment id -> its first terminal event's type
        self.terminal_by_phase: dict[str, int] = defaultdict(int)
        self.events_by_phase: dict[str, int] = defaultdict(int)
        self.events = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="terminal-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                msgs = take_available(self.consumer, 1000, 0.05)
                now = time.time()
                for msg in msgs:
                    if msg.error() is not None:
                        continue
                    self.events += 1
                    pid = (msg.key() or b"").decode()
                    phase = phase_of(pid)
                    self.events_by_phase[phase] += 1
                    ce_type = dict(msg.headers() or []).get("ce_type")
                    if ce_type in TERMINAL_CE_TYPES and pid not in self.terminal_at:
                        self.terminal_at[pid] = now
                        ts_type, ts_ms = msg.timestamp()
                        if ts_type == TIMESTAMP_CREATE_TIME:
                            self.terminal_produced_at[pid] = ts_ms / 1000.0
                        self.terminal_type[pid] = ce_type.decode().rsplit(".", 1)[-1]
                        self.terminal_by_phase[phase] += 1
        finally:
            self.consumer.close()

    def halves(self, sent_at: Mapping[str, float]) -> tuple[list[float], list[float]]:
        """The two halves (ms) of the latencies of the payments in ``sent_at`` (send times, s):
        from sending to the worker producing the terminal event (its CreateTime), and from there
        to this consumer seeing it."""
        applied, visible = [], []
        for pid, sent in sent_at.items():
            produced, seen = self.terminal_produced_at.get(pid), self.terminal_at.get(pid)
            if produced is not None and seen is not None:
                applied.append((produced - sent) * 1000.0)
                visible.append((seen - produced) * 1000.0)
        return applied, visible

    def wait_for(self, phase: str, count: int, timeout: float, tick: Callable[[int], None] | None = None,
                 alive: Callable[[], bool] | None = None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.terminal_by_phase.get(phase, 0)
            if tick is not None:
                tick(done)
            if done >= count:
                return True
            if alive is not None and not alive():
                return False
            time.sleep(0.1)
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


# ------------------------------------------------------------------ Postgres


@dataclass(frozen=True)
class PgProgress:
    rows: int
    first_stored: float | None
    last_stored: float | None


def pg_connect(settings: Settings) -> psycopg.Connection:
    return psycopg.connect(settings.postgres_dsn, autocommit=True)


def pg_terminal_count(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM payment_events WHERE event_type = ANY(%s)",
                       (TERMINAL_CREATE,)).fetchone()
    return int(row[0]) if row else 0


def pg_event_count(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM payment_events").fetchone()
    return int(row[0]) if row else 0


def pg_terminal_stored_at(conn: psycopg.Connection, payment_ids: Sequence[str]) -> dict[str, float]:
    """When each payment's terminal event row was stored (the sink transaction's ``now()``)."""
    rows = conn.execute(
        "SELECT payment_id, extract(epoch FROM min(stored_at))::float8 FROM payment_events "
        "WHERE payment_id = ANY(%s) AND event_type = ANY(%s) GROUP BY payment_id",
        (list(payment_ids), TERMINAL_CREATE),
    ).fetchall()
    return {pid: float(ts) for pid, ts in rows}


def wait_pg(conn: psycopg.Connection, count_fn: Callable[[psycopg.Connection], int], target: int, timeout: float,
            tick: Callable[[int], None] | None = None, poll_s: float = 0.25) -> tuple[bool, float]:
    """Poll until ``count_fn`` reaches ``target``; returns (reached, wall-clock time reached)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = count_fn(conn)
        if tick is not None:
            tick(n)
        if n >= target:
            return True, time.time()
        time.sleep(poll_s)
    return False, time.time()
