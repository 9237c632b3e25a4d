"""End to end: the aiohttp simulated gateway server and its aiohttp client, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from gateway_clients import (
    ChargeNotFoundError,
    DeclineCode,
    GatewayStatus,
    IdempotencyConflictError,
    OutcomeUnknownError,
    PermanentGatewayError,
    RetryableGatewayError,
    idempotency_key,
)
from gateway_clients.simulated import (
    SimulatedGatewayClient,
    SimulatedGatewayEngine,
    SimulatorConfig,
)
from gateway_clients.simulated.server import RunningServer, start_server
from gateway_clients.simulated.webhooks import SIGNATURE_HEADER

REPO_ROOT = Path(__file__).resolve().parents[3]

Scenario = Callable[[RunningServer, SimulatedGatewayClient], Awaitable[None]]


def _run(
    scenario: Scenario,
    config: SimulatorConfig | None = None,
    *,
    timeout_s: float = 5.0,
) -> None:
    async def main() -> None:
        server = await start_server(SimulatedGatewayEngine(config))
        try:
            async with SimulatedGatewayClient(server.url, timeout_s=timeout_s) as client:
                await scenario(server, client)
        finally:
            await server.close()

    asyncio.run(main())


def test_full_lifecycle_over_http() -> None:
    async def scenario(server: RunningServer, client: SimulatedGatewayClient) -> None:
        auth = await client.authorize(
            payment_id="pay_1",
            amount=10_000,
            currency="EUR",
            payment_method_token="pm_card_visa",
            capture=False,
            idempotency_key=idempotency_key("pay_1", "authorize", 0),
        )
        assert auth.status is GatewayStatus.AUTHORIZED
        assert auth.latency_ms > 0
        cap = await client.capture(
            gateway_ref=auth.gateway_ref,
            amount=8_000,
            currency="EUR",
            idempotency_key=idempotency_key("pay_1", "capture", 0),
        )
        assert (cap.status, cap.amount_captured) == (GatewayStatus.CAPTURED, 8_000)
        for n, amount in enumerate((3_000, 5_000)):
            refund = await client.refund(
                gateway_ref=auth.gateway_ref,
                refund_id=f"re_{n}",
                amount=amount,
                currency="EUR",
                idempotency_key=idempotency_key("pay_1", f"refund:re_{n}", 0),
            )
            assert refund.status is GatewayStatus.REFUNDED
            assert refund.refund_ref
        with pytest.raises(PermanentGatewayError) as exc:
            await client.refund(
                gateway_ref=auth.gateway_ref,
                refund_id="re_9",
                amount=1,
                currency="EUR",
                idempotency_key=idempotency_key("pay_1", "refund:re_9", 0),
            )
        assert exc.value.http_status == 400
        final = await client.retrieve(gateway_ref=auth.gateway_ref)
        assert final.status is GatewayStatus.REFUNDED
        assert (final.amount_authorized, final.amount_captured, final.amount_refunded) == (10_000, 8_000, 8_000)
        async with httpx.AsyncClient(base_url=server.url) as raw:
            ledger = (await raw.get("/v1/ledger")).json()
        [row] = ledger["data"]
        assert row["payment_id"] == "pay_1"
        assert row["metadata"]["payment_id"] == "pay_1"

    _run(scenario)


def test_cancel_over_http() -> None:
    async def scenario(server: RunningServer, client: SimulatedGatewayClient) -> None:
        auth = await client.authorize(
            payment_id="p",
            amount=100,
            currency="EUR",
            payment_method_token="tok_visa",
            capture=False,
            idempotency_key="k-a",
        )
        canceled = await client.cancel(gateway_ref=auth.gateway_ref, idempotency_key="k-c")
        assert canceled.status is GatewayStatus.CANCELED
        with pytest.raises(PermanentGatewayError):
            await client.capture(gateway_ref=auth.gateway_ref, amount=100, currency="EUR", idempotency_key="k-cap")

    _run(scenario)


def test_decline_over_http_is_a_result() -> None:
    async def scenario(server: RunningServer, client: SimulatedGatewayClient) -> None:
        result = await client.authorize(
            payment_id="p",
            amount=100,
            currency="EUR",
            payment_method_token="tok_decline_expired_card",
            capture=True,
            idempotency_key="k",
        )
        assert result.status is GatewayStatus.DECLINED
        assert result.decline_code is DeclineCode.EXPIRED_CARD

    _run(scenario)


def test_replay_over_http_returns_the_same_charge() -> None:
    async def scenario(server: RunningServer, client: SimulatedGatewayClient) -> None:
        first = await client.authorize(
            payment_id="p",
            amount=100,
            currency="EUR",
            payment_method_token="tok_visa",
            capture=True,
            idempotency_key="k",
        )
        second = await client.authorize(
            payment_id="p",
            amount=100,
            currency="EUR",
            payment_method_token="tok_visa",
            capture=True,
            idempotency_key="k",
        )
        assert second.replayed and not first.replayed
        assert second.gateway_ref == first.gateway_ref
        with pytest.raises(IdempotencyConflictError):
            await client.authorize(
                payment_id="p",
                amount=101,
                currency="EUR",
                payment_method_token="tok_visa",
                capture=True,
                idempotency_key="k",
            )
        assert len(server.engine.ledger()) == 1

    _run(scenario)


def test_5xx_over_http_is_retryable_replayed_and_charges_nothing() -> None:
    async def scenario(server: RunningServer, client: SimulatedGatewayClient) -> None:
        for _ in range(2):  # the second answer is the stored 500, replayed
            with pytest.raises(RetryableGatewayError) as exc:
                await client.authorize(
                    payment_id="p",
                    amount=100,
                    currency="EUR",
                    payment_method_token="tok_5xx",
                    capture=True,
                    idempotency_key="k",
                )
            assert exc.value.http_status == 500
        with pytest.raises(ChargeNotFoundError):
            await client.retrieve(idempotency_key="k")
        assert server.engine.ledger() == []

    _run(scenario)


def test_timeout_is_outcome_unknown_and_lookup_shows_the_charge() -> None:
    async def scenario(server: RunningServer, client: SimulatedGatewayClient) -> None:
        key = idempotency_key("pay_t", "authorize", 0)
        started = time.perf_counter()
        with pytest.raises(OutcomeUnknownError) as exc:
            await client.authorize(
                payment_id="pay_t",
                amount=4_200,
                currency="EUR",
                payment_method_token="tok_timeout",
                capture=True,
                idempotency_key=key,
            )
        assert time.perf_counter() - started < 2.0  # the client's timeout, not the hang
        assert exc.value.idempotency_key == key
        found = await client.retrieve(idempotency_key=key)
        assert found.status is GatewayStatus.CAPTURED
        assert found.amount_captured == 4_200
        again = await client.authorize(
            payment_id="pay_t",
            amount=4_200,
            currency="EUR",
            payment_method_token="tok_timeout",
            capture=True,
            idempotency_key=key,
        )
        assert again.replayed and again.gateway_ref == found.gateway_ref
        assert server.engine.duplicate_charges() == {}
        assert len(server.engine.charges_for_payment("pay_t")) == 1

    _run(scenario, SimulatorConfig(hang_ms=3_000), timeout_s=0.3)


def test_lost_response_via_admin_faults_is_outcome_unknown() -> None:
    async def scenario(server: RunningServer, client: SimulatedGatewayClient) -> None:
        async with httpx.AsyncClient(base_url=server.url) as admin:
            bad = await admin.post("/admin/faults", json={"response_lost_rate": 2})
            assert bad.status_code == 400
            ok = await admin.post("/admin/faults", json={"response_lost_rate": 1.0})
            assert ok.json()["response_lost_rate"] == 1.0
        with pytest.raises(OutcomeUnknownError):
            await client.authorize(
                payment_id="p",
                amount=300,
                currency="EUR",
                payment_method_token="tok_visa",
                capture=True,
                idempotency_key="k",
            )
        found = await client.retrieve(idempotency_key="k")
        assert found.status is GatewayStatus.CAPTURED

    _run(scenario)


def test_connection_refused_is_retryable() -> None:
    async def scenario() -> None:
        async with SimulatedGatewayClient(f"http://127.0.0.1:{_free_port()}") as client:
            with pytest.raises(RetryableGatewayError):
                await client.authorize(
                    payment_id="p",
                    amount=100,
                    currency="EUR",
                    payment_method_token="tok_visa",
                    capture=True,
                    idempotency_key="k",
                )

    asyncio.run(scenario())


def test_read_timeouts_and_disconnects_are_classified() -> None:
    """A real server that accepts the request and then stalls or hangs up: a write has an
    unknown outcome (the gateway may have acted), a read is a plain retry, and a reference that
    would change the URL path is refused before any I/O."""
    seen: list[str] = []

    async def stall(request: web.Request) -> web.Response:
        seen.append(request.path)
        await asyncio.sleep(2)
        return web.json_response({})

    async def hang_up(request: web.Request) -> web.Response:
        seen.append(request.path)
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(0.5)
        return web.json_response({})

    async def scenario() -> None:
        app = web.Application()
        app.router.add_post("/v1/payments/{ref}/cancel", stall)
        app.router.add_get("/v1/payments/{ref}", stall)
        app.router.add_post("/v1/payments", hang_up)
        runner = web.AppRunner(app)
        await runner.setup()
        port = _free_port()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        try:
            async with SimulatedGatewayClient(f"http://127.0.0.1:{port}", timeout_s=0.3) as client:
                with pytest.raises(OutcomeUnknownError):
                    await client.cancel(gateway_ref="simpay_1", idempotency_key="k")
                # a read that timed out changed nothing: plain retry
                with pytest.raises(RetryableGatewayError) as read:
                    await client.retrieve(gateway_ref="simpay_1")
                assert not isinstance(read.value, OutcomeUnknownError)
                with pytest.raises(OutcomeUnknownError):
                    await client.authorize(payment_id="p", amount=100, currency="EUR",
                                           payment_method_token="tok_visa", capture=True, idempotency_key="k2")
                with pytest.raises(PermanentGatewayError):
                    await client.retrieve(gateway_ref="../admin/faults")
        finally:
            await runner.cleanup()
        # every request but the refused one reached the server
        assert seen == ["/v1/payments/simpay_1/cancel", "/v1/payments/simpay_1", "/v1/payments"]

    asyncio.run(scenario())


def test_one_client_serves_successive_event_loops() -> None:
    """The aiohttp session belongs to the loop that made it; a client used from a second loop
    (a test's second ``asyncio.run``, a CLI command) makes a new one instead of failing."""

    async def start() -> RunningServer:
        return await start_server(SimulatedGatewayEngine())

    async def pay(client: SimulatedGatewayClient, url: str, n: int) -> GatewayStatus:
        result = await client.authorize(payment_id=f"p{n}", amount=100, currency="EUR",
                                        payment_method_token="tok_visa", capture=True, idempotency_key=f"k{n}")
        return result.status

    async def both() -> None:
        server = await start()
        try:
            client = SimulatedGatewayClient(server.url)
            # first loop: a thread of its own runs asyncio.run
            first = await asyncio.to_thread(asyncio.run, pay(client, server.url, 1))
            second = await pay(client, server.url, 2)
            await client.aclose()
            assert (first, second) == (GatewayStatus.CAPTURED, GatewayStatus.CAPTURED)
            assert len(server.engine.ledger()) == 2
        finally:
            await server.close()

    asyncio.run(both())


def test_server_rejects_float_amounts_and_missing_keys() -> None:
    async def scenario(server: RunningServer, client: SimulatedGatewayClient) -> None:
        body = {"payment_id": "p", "amount": 10.5, "currency": "EUR", "payment_method": "tok_visa", "capture": True}
        async with httpx.AsyncClient(base_url=server.url) as raw:
            floats = await raw.post("/v1/payments", json=body, headers={"Idempotency-Key": "k"})
            assert floats.status_code == 400
            no_key = await raw.post("/v1/payments", json=body | {"amount": 10})
            assert no_key.status_code == 400
            assert no_key.json()["error"]["code"] == "idempotency_key_required"
            assert (await raw.get("/health")).json() == {"status": "ok"}
        assert server.engine.ledger() == []

    _run(scenario)


def test_3ds_completion_sends_a_signed_webhook() -> None:
    secret = "whsec_test"

    async def main() -> None:
        received: asyncio.Queue[tuple[bytes, dict[str, str]]] = asyncio.Queue()

        async def receive(request: web.Request) -> web.Response:
            await received.put((await request.read(), dict(request.headers)))
            return web.Response(status=204)

        receiver_app = web.Application()
        receiver_app.router.add_post("/hooks", receive)
        receiver = web.AppRunner(receiver_app)
        await receiver.setup()
        site = web.TCPSite(receiver, "127.0.0.1", 0)
        await site.start()
        port = receiver.addresses[0][1]
        server = await start_server(
            SimulatedGatewayEngine(),
            webhook_url=f"http://127.0.0.1:{port}/hooks",
            webhook_secrets=[secret],
        )
        try:
            async with SimulatedGatewayClient(server.url, webhook_secrets=[secret]) as client:
                pending = await client.authorize(
                    payment_id="pay_3ds",
                    amount=900,
                    currency="EUR",
                    payment_method_token="tok_3ds",
                    capture=True,
                    idempotency_key="k",
                )
                assert pending.status is GatewayStatus.REQUIRES_ACTION
                assert pending.action_url is not None
                assert pending.action_url.startswith(server.url)
                async with httpx.AsyncClient() as browser:
                    done = await browser.post(pending.action_url, json={"success": True})
                    assert done.status_code == 200
                types = []
                while "payment.succeeded" not in types:
                    body, headers = await asyncio.wait_for(received.get(), timeout=5)
                    assert SIGNATURE_HEADER in headers
                    note = client.verify_and_parse(body, headers, int(time.time()))
                    types.append(note.event_type)
                assert types == ["payment.requires_action", "payment.succeeded"]
                assert note.payment_id == "pay_3ds"
                assert note.result.status is GatewayStatus.CAPTURED
                assert note.result.amount_captured == 900
        finally:
            await server.close()
            await receiver.cleanup()

    asyncio.run(main())


def test_server_module_runs_from_the_command_line(tmp_path: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT)}
    args = ["--host", "127.0.0.1", "--port", str(port), "--seed", "3", "--latency-ms", "1"]
    log_path = tmp_path / "server.log"
    with (
        log_path.open("wb") as log,
        subprocess.Popen(
            [sys.executable, "-m", "gateway_clients.simulated.server", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        ) as proc,
    ):
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    health = httpx.get(f"{base}/health", timeout=1)
                    break
                except httpx.TransportError:
                    assert proc.poll() is None, log_path.read_text()
                    assert time.monotonic() < deadline, "server did not start"
                    time.sleep(0.1)
            assert health.json() == {"status": "ok"}
            faults = httpx.get(f"{base}/admin/faults").json()
            assert faults["seed"] == 3
            assert faults["latency_mean_ms"] == 1.0
            body = {
                "payment_id": "p",
                "amount": 100,
                "currency": "EUR",
                "payment_method": "tok_visa",
                "capture": True,
            }
            headers = {"Idempotency-Key": "k"}
            payment = httpx.post(f"{base}/v1/payments", headers=headers, json=body)
            assert payment.json()["status"] == "succeeded"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
