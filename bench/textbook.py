"""The benchmark's second baseline: paystream's payment pipeline written as a textbook faust agent.

One agent over ``payment.requests`` handles one message at a time: Avro-decode the command, let
the same ``PaymentProcessor`` (paystream's pure core, on plain faust tables for payments and
idempotency, as the real worker has them) decide, ``await`` each gateway call it asks for on
the same in-process simulated gateway the real worker uses with
``PAYSTREAM_SIMGW_IN_PROCESS=true``, feed the reply back to the processor, and for every event
``await events_topic.send(...)``, encoded as the real worker does (Avro + CloudEvents headers),
so the benchmark's watcher sees the same terminal events.

What it does not have, on purpose: exactly_once (at_least_once, faust's default), batches
(``stream.take``), sends left in flight, the internal gateway-calls/-replies topics, audit and
vault records, the gap healer, the ack guard, the commit lock, or any tuning of faust. Only what
it needs to run at all is set: the broker, the partition count of the existing topics (faust
refuses tables whose changelog differs from their source), the data directory, and no web
server (nothing reads it; it would only take a port).

Run as the benchmark runs it: ``python -m bench.textbook worker`` with the session's
``PAYSTREAM_*`` environment (app id, broker, registry, data directory).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from agents.gateway import execute, reply_input
from agents.processor import PaymentProcessor, unseal_call
from gateway_clients.protocol import PaymentGateway
from paystream.core import commands as cmds
from paystream.core import events as evs
from paystream.core.machine import CallGateway
from paystream.security.crypto import KeyRing

log = logging.getLogger("bench.textbook")

Publish = Callable[[evs.PaymentEvent], Awaitable[None]]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class TextbookPipeline:
    """One command, start to finish: decide, call the gateway and wait, decide again, publish.

    Gateway calls are made one after the other inside the handling of the command that caused
    them (no internal topics), with ``agents.gateway.execute``: the same classification of
    answers and the same reply record as the real executor, without its retries or breakers.
    """

    def __init__(self, processor: PaymentProcessor, gateways: Mapping[str, PaymentGateway], timeout_s: float,
                 publish: Publish, sealer: KeyRing | None = None) -> None:
        self.processor = processor
        self.gateways = gateways
        self.timeout_s = timeout_s
        self.publish = publish
        self.sealer = sealer
        self.events = 0

    async def handle(self, value: Mapping[str, Any], partition: int) -> int:
        """Apply one decoded ``PaymentCommand``; returns how many events it published."""
        try:
            command = cmds.from_avro(value)
        except cmds.CommandDecodeError as exc:
            log.warning("command not applied: %s", type(exc).__name__)
            return 0
        out = self.processor.handle_command(command, now_ms(), partition)
        published = await self._publish(out.events)
        pending: list[CallGateway] = list(out.calls)
        while pending:
            call = pending.pop(0)
            reply = await execute(self.gateways, call, self.timeout_s,
                                  unseal=lambda c: unseal_call(self.sealer, c))
            out = self.processor.handle_input(call.payment_id, reply_input(reply), now_ms(), partition)
            published += await self._publish(out.events)
            pending.extend(out.calls)
        return published

    async def _publish(self, events: list[evs.PaymentEvent]) -> int:
        for ev in events:
            await self.publish(ev)
        self.events += len(events)
        return len(events)


def build_app(settings: Any) -> Any:
    """The textbook faust app for ``settings`` (a ``paystream.config.Settings``)."""
    import faust

    from agents.payments import cloudevent_headers, load_keyring
    from agents.routing import load_routing_file, make_router
    from paystream.worker import build_gateways
    from streams import topics
    from streams.avro import DecodeError, codecs, registry_client

    kafka = settings.kafka_connection()
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{kafka.bootstrap}",
        broker_credentials=kafka.faust_credentials(),
        processing_guarantee="at_least_once",
        topic_partitions=settings.partitions,
        datadir=settings.datadir,
        web_enabled=False,
    )
    avro = codecs(registry_client(settings.registry_conf()))
    requests = app.topic(topics.REQUESTS, key_serializer="raw", value_serializer="raw")
    events_topic = app.topic(topics.EVENTS, key_serializer="raw", value_serializer="raw")
    payments = app.Table("payments", default=None, key_type=str)
    idempotency = app.Table("idempotency", default=None, key_type=str)
    gateways = build_gateways(settings)  # with PAYSTREAM_SIMGW_IN_PROCESS=true: the in-process simulated gateway
    keyring = load_keyring(settings)
    processor = PaymentProcessor(
        payments, idempotency, idempotency_retention_ms=settings.idempotency_retention_s * 1000, sealer=keyring,
        router=make_router(load_routing_file(settings.routing_rules_file), gateways, settings.disabled_gateways()),
    )

    async def publish(ev: evs.PaymentEvent) -> None:
        value = avro[topics.EVENTS].encode(evs.to_avro(ev))
        await events_topic.send(key=ev.payment_id.encode(), value=value, headers=cloudevent_headers(ev))

    pipeline = TextbookPipeline(processor, gateways, settings.gateway_timeout_s, publish, keyring)

    @app.agent(requests, name="textbook-payments")
    async def textbook_payments(stream: Any) -> None:
        async for event in stream.events():
            try:
                value = avro[topics.REQUESTS].decode(event.message.value)
            except DecodeError as exc:
                log.warning("undecodable command skipped: %s", exc)
                continue
            await pipeline.handle(value, event.message.partition)

    return app


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] != ["worker"]:
        raise SystemExit("usage: python -m bench.textbook worker [--loglevel LEVEL]")
    from paystream.config import get_settings
    from paystream.logs import install_redaction

    install_redaction()
    settings = get_settings()
    app = build_app(settings)
    sys.argv = ["bench-textbook", "worker", *args[1:]]
    app.main()


if __name__ == "__main__":
    main()
