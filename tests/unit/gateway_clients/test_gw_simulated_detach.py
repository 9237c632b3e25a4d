"""Detaching a saved method at the simulated gateway: idempotent, through the HTTP server and in process."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway_clients.protocol import PermanentGatewayError
from gateway_clients.simulated.client import InProcessSimulatedGateway, SimulatedGatewayClient
from gateway_clients.simulated.engine import SimulatedGatewayEngine
from gateway_clients.simulated.server import start_server


def test_engine_detach_is_idempotent() -> None:
    engine = SimulatedGatewayEngine()
    assert not engine.is_detached("tok_saved_1")
    assert engine.detach_payment_method("tok_saved_1", "ps-pm_1-detach") is True
    assert engine.detach_payment_method("tok_saved_1", "ps-pm_1-detach") is False
    assert engine.is_detached("tok_saved_1") and not engine.is_detached("tok_saved_2")


def test_in_process_client_detaches() -> None:
    engine = SimulatedGatewayEngine()
    asyncio.run(InProcessSimulatedGateway(engine).detach_payment_method(payment_method_token="tok_a",
                                                                        idempotency_key="ps-pm_a-detach"))
    assert engine.is_detached("tok_a")


def test_http_client_detaches_through_the_server_and_refuses_a_path_changing_token() -> None:
    async def main() -> None:
        server = await start_server(SimulatedGatewayEngine(), host="127.0.0.1", port=0)
        try:
            async with SimulatedGatewayClient(server.url) as client:
                await client.detach_payment_method(payment_method_token="tok_b", idempotency_key="ps-pm_b-detach")
                await client.detach_payment_method(payment_method_token="tok_b", idempotency_key="ps-pm_b-detach")
                with pytest.raises(PermanentGatewayError) as raised:
                    await client.detach_payment_method(payment_method_token="../payments",
                                                       idempotency_key="ps-pm_c-detach")
                assert "payments" not in str(raised.value)  # the token is never echoed
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{server.url}/v1/payment_methods/tok_b")).json()["detached"] is True
        finally:
            await server.close()

    asyncio.run(main())
