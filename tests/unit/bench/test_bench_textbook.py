"""The textbook agent's per-message pipeline (bench/textbook.py) on plain dict tables and the
in-process simulated gateway: the same payment logic and terminal events as the real worker."""

from __future__ import annotations

import asyncio

from agents.payments import cloudevent_headers
from agents.processor import PaymentProcessor
from agents.routing import load_routing_file, make_router
from bench.load import TERMINAL_CE_TYPES, CommandFactory
from bench.textbook import TextbookPipeline
from gateway_clients.simulated.client import InProcessSimulatedGateway
from gateway_clients.simulated.engine import SimulatedGatewayEngine
from paystream.core import events as evs


def pipeline() -> tuple[TextbookPipeline, list[evs.PaymentEvent], dict[str, object]]:
    gateways = {"simulated": InProcessSimulatedGateway(SimulatedGatewayEngine(), timeout_s=5)}
    payments: dict[str, object] = {}
    processor = PaymentProcessor(payments, {}, router=make_router(load_routing_file(), gateways))
    published: list[evs.PaymentEvent] = []

    async def publish(ev: evs.PaymentEvent) -> None:
        published.append(ev)

    return TextbookPipeline(processor, gateways, 5.0, publish), published, payments


def test_a_bench_payment_is_created_authorized_in_process_and_succeeds() -> None:
    pipe, published, payments = pipeline()
    cmd = CommandFactory().create("tptextbook", 0)
    sent = asyncio.run(pipe.handle(cmd, partition=2))
    assert sent == 3
    assert [evs.event_type(e.body) for e in published] == ["PaymentCreated", "PaymentCaptured", "PaymentSucceeded"]
    assert [e.sequence for e in published] == [1, 2, 3]
    assert all(e.payment_id == cmd["payment_id"] for e in published)
    ce_type = dict(cloudevent_headers(published[-1]))["ce_type"]
    assert ce_type in TERMINAL_CE_TYPES  # what the bench's watcher times
    succeeded = published[-1]
    assert succeeded.totals is not None and succeeded.totals.captured == cmd["command"]["amount"]
    assert payments[cmd["payment_id"]]["state"]["status"] == "succeeded"  # type: ignore[index]


def test_a_redelivered_command_publishes_nothing_more() -> None:
    pipe, published, _ = pipeline()
    cmd = CommandFactory().create("tptextbook", 1)
    asyncio.run(pipe.handle(cmd, partition=0))
    assert asyncio.run(pipe.handle(cmd, partition=0)) == 0
    assert len(published) == 3 and pipe.events == 3


def test_a_command_that_breaks_the_contract_is_skipped() -> None:
    pipe, published, _ = pipeline()
    cmd = CommandFactory().create("tptextbook", 2)
    del cmd["command_id"]
    assert asyncio.run(pipe.handle(cmd, partition=0)) == 0
    assert published == []
