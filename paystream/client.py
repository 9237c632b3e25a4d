"""A small producer of payment commands and reader of results, as the Order Service would
use them: confluent-kafka with the Avro wire format against the schema registry."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from paystream.config import Settings
from streams import topics
from streams.avro import codecs, registry_client

NS = "io.paystream.commands."


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def command(payment_id: str, kind: str, body: dict[str, Any], command_id: str | None = None,
            origin: str = "cli") -> dict[str, Any]:
    return {
        "command_id": command_id or str(uuid.uuid4()),
        "payment_id": payment_id,
        "issued_at": now_ms(),
        "origin": origin,
        "command": {"-type": NS + kind, **body},
    }


def create_payment(payment_id: str, *, amount: int, currency: str, token: str | None = "tok_visa",
                   order_id: str | None = None, customer_id: str = "cus_demo", capture_method: str = "automatic",
                   gateway: str | None = None, saved_method_id: str | None = None,
                   metadata: dict[str, str] | None = None, command_id: str | None = None,
                   origin: str = "cli") -> dict[str, Any]:
    return command(payment_id, "CreatePayment", {
        "order_id": order_id or f"ord_{payment_id}",
        "customer_id": customer_id,
        "amount": amount,
        "currency": currency,
        "payment_method_token": token,
        "saved_method_id": saved_method_id,
        "capture_method": capture_method,
        "gateway": gateway,
        "metadata": metadata or {},
        "customer_ip": None,
        "customer_email": None,
        "shipping_country": None,
    }, command_id, origin)


class CommandProducer:
    def __init__(self, settings: Settings) -> None:
        self.codec = codecs(registry_client(settings.registry_conf()))[topics.REQUESTS]
        # murmur2_random is the Java client's (and aiokafka's) key hashing; librdkafka's default
        # (consistent_random, CRC32) would put a payment's commands in another partition than
        # its webhooks and replies.
        self.producer = Producer(settings.kafka_connection().librdkafka(
            {"enable.idempotence": True, "linger.ms": 5, "partitioner": "murmur2_random"}))

    def send(self, cmd: dict[str, Any]) -> None:
        self.producer.produce(topics.REQUESTS, key=cmd["payment_id"].encode(), value=self.codec.encode(cmd))
        self.producer.poll(0)

    def flush(self, timeout: float = 30) -> None:
        if self.producer.flush(timeout) != 0:
            raise RuntimeError("commands not delivered to Kafka in time")


class EventReader:
    """Reads payment.events with read_committed from the beginning (no group commits)."""

    def __init__(self, settings: Settings, group: str | None = None, from_end: bool = False) -> None:
        self.codec = codecs(registry_client(settings.registry_conf()))[topics.EVENTS]
        self.consumer = Consumer(settings.kafka_connection().librdkafka({
            "group.id": group or f"paystream-reader-{uuid.uuid4()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }))
        md = self.consumer.list_topics(topics.EVENTS, timeout=10)
        parts = md.topics[topics.EVENTS].partitions
        tps = []
        for p in parts:
            start = self.consumer.get_watermark_offsets(TopicPartition(topics.EVENTS, p), timeout=10)[1] if from_end \
                else 0
            tps.append(TopicPartition(topics.EVENTS, p, start))
        self.consumer.assign(tps)

    def poll(self, timeout: float = 0.5) -> Iterator[dict[str, Any]]:
        for msg in self.consumer.consume(500, timeout):
            if msg.error() is None:
                yield self.codec.decode(msg.value())

    def close(self) -> None:
        self.consumer.close()


def event_type(value: dict[str, Any]) -> str:
    name: str = value["event"][0]
    return name.rsplit(".", 1)[-1]
