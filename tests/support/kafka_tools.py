"""Test-side Kafka tools that share nothing with the workers but the ``.avsc`` files: a plain
confluent-kafka producer of Avro commands (as the Order Service would write them) and a
read_committed collector of result events."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

AVRO = Path(__file__).resolve().parents[2] / "avro"
REQUESTS, EVENTS, DEADLETTER, WEBHOOKS = "payment.requests", "payment.events", "payment.deadletter", "payment.webhooks"
NS = "io.paystream.commands."


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def create_cmd(payment_id: str, amount: int = 1999, currency: str = "USD", token: str | None = "tok_visa",
               capture_method: str = "automatic", command_id: str | None = None, **extra: Any) -> dict[str, Any]:
    body = {
        "order_id": f"ord_{payment_id}", "customer_id": "cus_test", "amount": amount, "currency": currency,
        "payment_method_token": token, "saved_method_id": None, "capture_method": capture_method,
        "gateway": None, "metadata": {}, "customer_ip": None, "customer_email": None, "shipping_country": None,
    }
    body.update(extra)
    return envelope(payment_id, "CreatePayment", body, command_id)


def envelope(payment_id: str, kind: str, body: dict[str, Any], command_id: str | None = None) -> dict[str, Any]:
    return {"command_id": command_id or f"cmd-{uuid.uuid4()}", "payment_id": payment_id, "issued_at": now_ms(),
            "origin": "order-service-test", "command": {"-type": NS + kind, **body}}


FATAL_RETRIES = 20  # fresh producers tried after fatal errors before a flush gives up


class OrderServiceProducer:
    """The Order Service of the tests: an idempotent confluent-kafka producer of commands.

    A fatal producer error is survived as librdkafka says a client must: a new producer, and
    the messages not yet acknowledged sent again (commands are idempotent by command id). Seen
    after the kafka-kill chaos scenario: a new producer's very first record refused with
    OUT_OF_ORDER_SEQUENCE_NUMBER (base seq 0), its producer id apparently handed out again by the
    restarted KRaft broker; the shared producer then failed every later test's set-up.
    """

    def __init__(self, bootstrap: str, registry_url: str) -> None:
        self.registry = SchemaRegistryClient({"url": registry_url})
        self.ser = AvroSerializer(self.registry, (AVRO / "payment_command.avsc").read_text(),
                                  conf={"auto.register.schemas": False})
        self.bootstrap = bootstrap
        self.producer = self._new_producer()
        self.ctx = SerializationContext(REQUESTS, MessageField.VALUE)
        self.unflushed: list[tuple[str, bytes, bytes]] = []  # sent since the last successful flush

    def _new_producer(self) -> Producer:
        return Producer({"bootstrap.servers": self.bootstrap, "partitioner": "murmur2_random",
                         "enable.idempotence": True, "linger.ms": 2})

    def send(self, cmd: dict[str, Any]) -> dict[str, Any]:
        value = self.ser(cmd, self.ctx)
        assert value is not None
        self.send_raw(cmd["payment_id"].encode(), value)
        return cmd

    def send_raw(self, key: bytes, value: bytes, topic: str = REQUESTS) -> None:
        self.unflushed.append((topic, key, value))
        try:
            self.producer.produce(topic, key=key, value=value)
            self.producer.poll(0)
        except KafkaException as exc:
            if not exc.args[0].fatal():
                raise
            # The next flush replaces the producer and sends everything unflushed again.

    def encode(self, cmd: dict[str, Any]) -> bytes:
        out = self.ser(cmd, self.ctx)
        assert out is not None
        return out

    def flush(self) -> None:
        for attempt in range(FATAL_RETRIES):
            try:
                if attempt:  # the last producer failed fatally: a new one sends the unflushed again
                    self.producer = self._new_producer()
                    for topic, key, value in self.unflushed:
                        self.producer.produce(topic, key=key, value=value)
                assert self.producer.flush(30) == 0
                self.unflushed.clear()
                return
            except KafkaException as exc:
                if not exc.args[0].fatal():
                    raise
        raise AssertionError(f"{FATAL_RETRIES} producers in a row failed fatally")


def _end_offsets(consumer: Consumer, topic: str) -> list[TopicPartition]:
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    tps = []
    for p in parts:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        tps.append(TopicPartition(topic, p, high))
    return tps


class Collector:
    """Reads a topic with read_committed from the offsets it had when created."""

    def __init__(self, bootstrap: str, registry_url: str, topic: str = EVENTS, from_beginning: bool = False) -> None:
        self.topic = topic
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4()}",
                                  "isolation.level": "read_committed", "enable.auto.commit": False,
                                  "auto.offset.reset": "earliest"})
        tps = _end_offsets(self.consumer, topic)
        if from_beginning:
            tps = [TopicPartition(topic, tp.partition, 0) for tp in tps]
        self.consumer.assign(tps)
        self.de = AvroDeserializer(SchemaRegistryClient({"url": registry_url}), return_record_name=True)
        self.ctx = SerializationContext(topic, MessageField.VALUE)
        self.records: list[dict[str, Any]] = []
        self.raw: list[Any] = []
        self.by_payment: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def poll(self, seconds: float = 0.5) -> None:
        for msg in self.consumer.consume(1000, seconds):
            if msg.error() is not None:
                continue
            self.raw.append(msg)
            if self.topic == EVENTS:
                value = self.de(msg.value(), self.ctx)
                value["_type"] = value["event"][0].rsplit(".", 1)[-1]
                value["_partition"] = msg.partition()
                value["_headers"] = dict(msg.headers() or [])
                self.records.append(value)
                self.by_payment[value["payment_id"]].append(value)

    def wait(self, done: Any, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll(0.3)
            if done(self):
                return True
        return False

    def wait_terminal(self, command_ids: dict[str, set[str]], timeout: float = 60.0) -> bool:
        """Until every command id has a terminal event (by causation), per TERMINAL set."""
        def done(c: Collector) -> bool:
            return all(cid in c.terminal_causations() for cids in command_ids.values() for cid in cids)
        return self.wait(done, timeout)

    def terminal_causations(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for r in self.records:
            if is_terminal_record(r):
                counts[r["causation_command_id"]] += 1
        return counts

    def close(self) -> None:
        self.consumer.close()


# Written out here rather than imported, so the checker does not trust the code it checks.
TERMINAL_TYPES = {
    "PaymentSucceeded", "PaymentAuthorized", "PaymentRequiresAction", "PaymentFailed", "PaymentCanceled",
    "PaymentOutcomeUnknown", "CommandRejected", "RefundProcessed", "RefundFailed", "PaymentMethodAdded",
    "PaymentMethodRemoved",
}


def is_terminal_record(record: dict[str, Any]) -> bool:
    """Whether an event (as the Collector reads it) ends its causation command (I2).

    By type, except ``FraudDecision``: an active (not shadow) ``review`` decision ends the
    CreatePayment it was made for (a human decides later, by ReleasePayment/RejectPayment/
    CancelPayment); allow/block decisions and shadow decisions are progress."""
    if record["_type"] == "FraudDecision":
        body = record["event"][1]
        return body["decision"] == "review" and not body["shadow"]
    return record["_type"] in TERMINAL_TYPES
