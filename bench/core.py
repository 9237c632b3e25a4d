"""`python -m bench.core [--payments N] [--profile]`: paystream's own CPU per payment, without Kafka.

What the payments agent does for one CreatePayment with the in-process simulated gateway, in
one process, on plain dicts instead of faust tables: Avro-decode the command and check it
(validation, card data, publishable ids), decide, seal the token, call the gateway, apply the
reply, and encode what would be published (events in Avro with CloudEvents headers, their audit
records, 256 to a message as the worker batches them, the applied reply). No broker, registry (a
fixed schema id), database or faust: the figure is the part of a worker's CPU per payment that
is our code, and it moves only when our code does (the full benchmark's rates move ±15 % with
the machine). ``--profile`` prints cProfile's top entries (cProfile roughly doubles the figure).

The worker's whole CPU per payment, Kafka included, is the ``worker CPU ms/payment`` column of
``python -m bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import time
from typing import Any

from streams.avro import AvroCodec
from streams.topics import AVRO_TOPICS


def _offline_codec(topic_name: str) -> AvroCodec:
    topic = next(t for t in AVRO_TOPICS if t.topic == topic_name)
    codec = AvroCodec(None, topic)  # type: ignore[arg-type]  # never asks the registry:
    codec._prefix, codec._own_id = b"\0\0\0\0\1", 1  # schema id 1, as if registered
    return codec


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the measurement; returns the figure and how many events of each type were encoded."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--payments", type=int, default=5000)
    parser.add_argument("--profile", action="store_true", help="print cProfile's top 30 entries by own time")
    args = parser.parse_args(argv)

    from agents.gateway import execute, reply_bytes, reply_input
    from agents.payments import cloudevent_headers, event_audit_record
    from agents.processor import PaymentProcessor, PaymentRecord
    from agents.routing import load_routing_file, make_router
    from bench.load import CommandFactory
    from gateway_clients.simulated.client import InProcessSimulatedGateway
    from gateway_clients.simulated.engine import SimulatedGatewayEngine
    from paystream.config import get_settings
    from paystream.core import commands as cmds
    from paystream.core import events as evs
    from paystream.security import audit as au
    from paystream.security.crypto import KeyRing
    from paystream.worker import build_gateways
    from tables.batched import BatchWrites

    settings = get_settings()
    gateways = build_gateways(settings)
    # The simulated gateway in this process (as a worker runs it with PAYSTREAM_SIMGW_IN_PROCESS),
    # set here, not through the environment: importing this module must not change what the
    # processes a test session starts afterwards talk to.
    gateways["simulated"] = InProcessSimulatedGateway(SimulatedGatewayEngine(), timeout_s=settings.gateway_timeout_s)
    keyring = KeyRing(keys={"bench": os.urandom(32)}, current="bench")  # tokens sealed as in a worker
    # The payments and idempotency tables behind a batch's write buffer, as in the worker (flushed
    # every 256 payments).
    payments = BatchWrites(None, {}, encode=PaymentRecord.to_json)
    idempotency = BatchWrites(None, {})
    processor = PaymentProcessor(
        payments, idempotency, sealer=keyring,
        router=make_router(load_routing_file(settings.routing_rules_file), gateways, settings.disabled_gateways()),
    )
    requests, events = _offline_codec("payment.requests"), _offline_codec("payment.events")
    factory = CommandFactory()
    warmup = min(500, args.payments)
    values = [requests.encode(factory.create("core", i)) for i in range(args.payments + warmup)]
    origin = "kafka:payment.requests/0@1"
    encoded: dict[str, int] = {}
    audit: list[Any] = []  # the worker sends a batch's audit records as one message (AuditBatches)

    def publish(out: Any) -> None:
        for ev in out.events:
            name = evs.event_type(ev.body)
            encoded[name] = encoded.get(name, 0) + 1
            events.encode(evs.to_avro(ev))
            cloudevent_headers(ev)
            audit.append(event_audit_record(ev, "order-service-bench", origin, False))
        if len(audit) >= 256:
            au.encode_batch(audit)
            audit.clear()

    async def one(value: bytes) -> None:
        command = cmds.from_avro(requests.decode(value))
        cmds.unpublishable_ids(command)
        out = processor.handle_command(command, time.time_ns() // 1_000_000, 0)
        publish(out)
        calls = list(out.calls)
        while calls:
            call = calls.pop(0)
            reply = await execute(gateways, call, 5.0, unseal=processor.unseal_inline)
            applied = processor.handle_input(call.payment_id, reply_input(reply), time.time_ns() // 1_000_000, 0)
            reply_bytes(reply)  # the applied reply, as the worker publishes it
            publish(applied)
            calls.extend(applied.calls)

    async def run(batch: list[bytes]) -> None:
        for n, value in enumerate(batch, 1):
            await one(value)
            if n % 256 == 0:
                processor.forget_opened()  # as the worker does at each batch's end
                await payments.flush()
                await idempotency.flush()
        await payments.flush()
        await idempotency.flush()

    loop = asyncio.new_event_loop()
    loop.run_until_complete(run(values[:warmup]))
    profiler = cProfile.Profile() if args.profile else None
    started = time.process_time()
    if profiler is not None:
        profiler.enable()
    loop.run_until_complete(run(values[warmup:]))
    if profiler is not None:
        profiler.disable()
    cpu_s = time.process_time() - started
    loop.close()
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    cpu_us = 1e6 * cpu_s / args.payments
    print(f"{args.payments} payments: {cpu_us:.0f} µs of CPU per payment in paystream's own "
          f"code (no Kafka{', under cProfile' if profiler else ''}); events: {encoded}")
    return {"payments": args.payments + warmup, "cpu_us_per_payment": cpu_us, "events": encoded}


if __name__ == "__main__":
    main()
