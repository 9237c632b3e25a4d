"""HTTP face of the simulated gateway (aiohttp), exposing a ``SimulatedGatewayEngine``.

Run it::

    python -m gateway_clients.simulated.server --host 127.0.0.1 --port 8090 \\
        [--latency-ms 0 --jitter-ms 0 --seed 1 --error-5xx-rate 0 --timeout-rate 0 \\
         --response-lost-rate 0 --stall-rate 0 --stall-ms 1000 --hang-ms 30000 \\
         --webhook-url http://127.0.0.1:8080/webhooks/simulated --webhook-secret whsec_...]

Routes (JSON; POSTs require an ``Idempotency-Key`` header)::

    POST /v1/payments                         {payment_id, amount, currency, payment_method,
                                               capture, metadata}
    POST /v1/payments/{ref}/capture           {amount?, currency?}
    POST /v1/payments/{ref}/cancel            {}
    POST /v1/payments/{ref}/refunds           {refund_id, amount?, currency?}
    POST /v1/payments/{ref}/authenticate      {success: bool}   (completes 3-D Secure)
    GET  /v1/payments/{ref}
    GET  /v1/lookup?idempotency_key=...
    GET  /v1/ledger
    GET  /health
    GET  /admin/faults, POST /admin/faults    {any SimulatorConfig field: value}

Replays carry ``Idempotent-Replayed: true``; every 5xx carries ``Simgw-Should-Retry`` (``true``
only when nothing was done). Webhooks, when configured, are signed as described in
``gateway_clients.simulated.webhooks``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from gateway_clients.simulated.engine import (
    Delivery,
    EngineResponse,
    JsonDict,
    SimulatedGatewayEngine,
    SimulatorConfig,
)
from gateway_clients.simulated.translator import REPLAYED_HEADER, SHOULD_RETRY_HEADER
from gateway_clients.simulated.webhooks import SIGNATURE_HEADER, sign_payload

__all__ = ["RunningServer", "WebhookSender", "create_app", "main", "start_server"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _BadRequest(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class WebhookSender:
    """Posts signed events to one URL from a background task, retrying a few times."""

    def __init__(
        self,
        url: str,
        secrets: Sequence[str],
        *,
        clock: Callable[[], float] = time.time,
        max_attempts: int = 3,
        backoff_s: float = 0.2,
    ) -> None:
        if not secrets:
            raise ValueError("a webhook secret is required to send webhooks")
        self.url = url
        self._secrets = tuple(secrets)
        self._clock = clock
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._queue: asyncio.Queue[JsonDict] = asyncio.Queue()
        self.delivered = 0
        self.failed = 0

    def enqueue(self, events: Sequence[JsonDict]) -> None:
        for event in events:
            self._queue.put_nowait(event)

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while True:
                event = await self._queue.get()
                try:
                    await self._send(session, event)
                finally:
                    self._queue.task_done()

    async def _send(self, session: aiohttp.ClientSession, event: JsonDict) -> None:
        payload = json.dumps(event, separators=(",", ":")).encode("utf-8")
        for attempt in range(1, self._max_attempts + 1):
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign_payload(payload, self._secrets, int(self._clock())),
            }
            try:
                async with session.post(self.url, data=payload, headers=headers) as resp:
                    if resp.status < 300:
                        self.delivered += 1
                        return
                    log.warning("webhook %s got HTTP %s", event.get("id"), resp.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("webhook %s failed: %s", event.get("id"), exc)
            if attempt < self._max_attempts:
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
        self.failed += 1


@dataclass(slots=True)
class _ServerState:
    engine: SimulatedGatewayEngine
    sender: WebhookSender | None
    shutting_down: asyncio.Event = field(default_factory=asyncio.Event)

    def flush_events(self) -> None:
        events = self.engine.drain_events()
        if self.sender is not None:
            self.sender.enqueue(events)

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake up at shutdown so hung responses never block stopping the server."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.shutting_down.wait(), timeout=seconds)


STATE_KEY = web.AppKey("simgw_state", _ServerState)


def create_app(
    engine: SimulatedGatewayEngine,
    *,
    webhook_url: str | None = None,
    webhook_secrets: Sequence[str] = (),
) -> web.Application:
    sender = WebhookSender(webhook_url, webhook_secrets) if webhook_url else None
    app = web.Application(middlewares=[_error_middleware])
    app[STATE_KEY] = _ServerState(engine=engine, sender=sender)
    app.router.add_post("/v1/payments", _create_payment)
    app.router.add_post("/v1/payments/{ref}/capture", _capture)
    app.router.add_post("/v1/payments/{ref}/cancel", _cancel)
    app.router.add_post("/v1/payments/{ref}/refunds", _refund)
    app.router.add_post("/v1/payments/{ref}/authenticate", _authenticate)
    app.router.add_get("/v1/payments/{ref}", _get_payment)
    app.router.add_post("/v1/payment_methods/{token}/detach", _detach_method)
    app.router.add_get("/v1/payment_methods/{token}", _get_method)
    app.router.add_get("/v1/lookup", _lookup)
    app.router.add_get("/v1/ledger", _ledger)
    app.router.add_get("/health", _health)
    app.router.add_get("/admin/faults", _get_faults)
    app.router.add_post("/admin/faults", _set_faults)
    app.on_shutdown.append(_on_shutdown)
    if sender is not None:
        app.cleanup_ctx.append(_webhook_task(sender))
    return app


@dataclass(frozen=True, slots=True)
class RunningServer:
    """A started server; ``url`` is its base URL (the port is real even if 0 was asked)."""

    url: str
    engine: SimulatedGatewayEngine
    runner: web.AppRunner

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_server(
    engine: SimulatedGatewayEngine,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    webhook_url: str | None = None,
    webhook_secrets: Sequence[str] = (),
) -> RunningServer:
    """Start the server inside the running event loop (tests, benchmarks, demos)."""
    app = create_app(engine, webhook_url=webhook_url, webhook_secrets=webhook_secrets)
    runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    url = f"http://{bound_host}:{bound_port}"
    engine.public_base_url = url
    return RunningServer(url=url, engine=engine, runner=runner)


# -- handlers ------------------------------------------------------------------------------


async def _create_payment(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    body = await _json_body(request)
    response = state.engine.authorize(
        payment_id=_str_field(body, "payment_id"),
        amount=_int_field(body, "amount"),
        currency=_str_field(body, "currency"),
        payment_method_token=_str_field(body, "payment_method"),
        capture=_bool_field(body, "capture", default=True),
        idempotency_key=_idempotency_key(request),
        metadata=_metadata_field(body),
    )
    return await _deliver(request, response)


async def _capture(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    body = await _json_body(request)
    response = state.engine.capture(
        gateway_ref=request.match_info["ref"],
        amount=_opt_int_field(body, "amount"),
        currency=_opt_str_field(body, "currency"),
        idempotency_key=_idempotency_key(request),
    )
    return await _deliver(request, response)


async def _cancel(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    await _json_body(request)
    response = state.engine.cancel(gateway_ref=request.match_info["ref"], idempotency_key=_idempotency_key(request))
    return await _deliver(request, response)


async def _refund(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    body = await _json_body(request)
    response = state.engine.refund(
        gateway_ref=request.match_info["ref"],
        refund_id=_str_field(body, "refund_id"),
        amount=_opt_int_field(body, "amount"),
        currency=_opt_str_field(body, "currency"),
        idempotency_key=_idempotency_key(request),
    )
    return await _deliver(request, response)


async def _authenticate(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    body = await _json_body(request)
    response = state.engine.complete_action(
        request.match_info["ref"], success=_bool_field(body, "success", default=True)
    )
    return await _deliver(request, response)


async def _get_payment(request: web.Request) -> web.StreamResponse:
    return await _deliver(request, request.app[STATE_KEY].engine.get_payment(request.match_info["ref"]))


async def _detach_method(request: web.Request) -> web.StreamResponse:
    """Stripe-like ``POST /v1/payment_methods/{token}/detach``: idempotent, 200 either way."""
    engine = request.app[STATE_KEY].engine
    newly = engine.detach_payment_method(request.match_info["token"], _idempotency_key(request))
    return web.json_response({"object": "payment_method", "detached": True, "replayed": not newly})


async def _get_method(request: web.Request) -> web.StreamResponse:
    return web.json_response({"object": "payment_method",
                              "detached": request.app[STATE_KEY].engine.is_detached(request.match_info["token"])})


async def _lookup(request: web.Request) -> web.StreamResponse:
    key = request.query.get("idempotency_key")
    if not key:
        raise _BadRequest("parameter_missing", "idempotency_key query parameter is required")
    return await _deliver(request, request.app[STATE_KEY].engine.lookup(key))


async def _ledger(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[STATE_KEY].engine.ledger_json())


async def _health(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def _get_faults(request: web.Request) -> web.StreamResponse:
    return web.json_response(dataclasses.asdict(request.app[STATE_KEY].engine.config))


async def _set_faults(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    body = await _json_body(request)
    try:
        config = state.engine.update_config(body)
    except (ValueError, TypeError) as exc:
        raise _BadRequest("parameter_invalid", str(exc)) from exc
    log.info("fault config changed: %s", body)
    return web.json_response(dataclasses.asdict(config))


# -- plumbing ------------------------------------------------------------------------------


async def _deliver(request: web.Request, response: EngineResponse) -> web.StreamResponse:
    """Carry out the engine's delivery instructions (delay, dropped connection)."""
    state = request.app[STATE_KEY]
    state.flush_events()
    if response.delay_ms > 0:
        await state.pause(response.delay_ms / 1000.0)
    if response.delivery is Delivery.DROP:
        if request.transport is not None:
            request.transport.abort()
        raise _ConnectionDropped
    headers: dict[str, str] = {}
    if response.replayed:
        headers[REPLAYED_HEADER] = "true"
    if response.status_code >= 500:
        headers[SHOULD_RETRY_HEADER] = "true" if response.should_retry else "false"
    return web.json_response(response.body, status=response.status_code, headers=headers)


class _ConnectionDropped(Exception):
    """Raised after aborting the transport; the middleware swallows it."""


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _BadRequest as exc:
        return web.json_response(
            {"error": {"type": "invalid_request_error", "code": exc.code, "message": exc.message}},
            status=400,
        )
    except _ConnectionDropped:
        # The connection is gone; this response is never written.
        return web.Response(status=499)


async def _json_body(request: web.Request) -> Mapping[str, object]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _BadRequest("body_invalid", f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _BadRequest("body_invalid", "body must be a JSON object")
    return body


def _idempotency_key(request: web.Request) -> str:
    return request.headers.get("Idempotency-Key", "")


def _str_field(body: Mapping[str, object], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise _BadRequest("parameter_invalid", f"{name} must be a string")
    return value


def _opt_str_field(body: Mapping[str, object], name: str) -> str | None:
    return None if body.get(name) is None else _str_field(body, name)


def _int_field(body: Mapping[str, object], name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _BadRequest("parameter_invalid", f"{name} must be an integer (minor units)")
    return value


def _opt_int_field(body: Mapping[str, object], name: str) -> int | None:
    return None if body.get(name) is None else _int_field(body, name)


def _bool_field(body: Mapping[str, object], name: str, *, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise _BadRequest("parameter_invalid", f"{name} must be a boolean")
    return value


def _metadata_field(body: Mapping[str, object]) -> dict[str, str]:
    value = body.get("metadata") or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _BadRequest("parameter_invalid", "metadata must map strings to strings")
    return dict(value)


async def _on_shutdown(app: web.Application) -> None:
    app[STATE_KEY].shutting_down.set()


def _webhook_task(
    sender: WebhookSender,
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def run(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(sender.run(), name="simgw-webhooks")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return run


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gateway_clients.simulated.server",
        description="Simulated payment gateway (deterministic outcomes, faults, idempotency).",
    )
    defaults = SimulatorConfig()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--public-url", default=None, help="base URL used in action URLs (default http://HOST:PORT)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--latency-ms", type=float, default=defaults.latency_mean_ms)
    parser.add_argument("--jitter-ms", type=float, default=defaults.latency_jitter_ms)
    parser.add_argument("--error-5xx-rate", type=float, default=defaults.error_5xx_rate)
    parser.add_argument("--timeout-rate", type=float, default=defaults.timeout_rate)
    parser.add_argument("--response-lost-rate", type=float, default=defaults.response_lost_rate)
    parser.add_argument("--stall-rate", type=float, default=defaults.stall_rate)
    parser.add_argument("--stall-ms", type=float, default=defaults.stall_ms)
    parser.add_argument("--hang-ms", type=float, default=defaults.hang_ms)
    parser.add_argument("--slow-ms", type=float, default=defaults.slow_ms)
    parser.add_argument(
        "--no-amount-triggers", action="store_true", help="outcomes by token only, never by amount (for benchmarks)"
    )
    parser.add_argument("--webhook-url", default=None)
    parser.add_argument(
        "--webhook-secret", action="append", default=[], help="repeat to sign with several secrets (rotation)"
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = SimulatorConfig(
        seed=args.seed,
        latency_mean_ms=args.latency_ms,
        latency_jitter_ms=args.jitter_ms,
        error_5xx_rate=args.error_5xx_rate,
        timeout_rate=args.timeout_rate,
        response_lost_rate=args.response_lost_rate,
        stall_rate=args.stall_rate,
        stall_ms=args.stall_ms,
        hang_ms=args.hang_ms,
        slow_ms=args.slow_ms,
        amount_triggers=not args.no_amount_triggers,
    )
    if args.webhook_url and not args.webhook_secret:
        raise SystemExit("--webhook-url needs at least one --webhook-secret")
    engine = SimulatedGatewayEngine(config, public_base_url=args.public_url or f"http://{args.host}:{args.port}")
    app = create_app(engine, webhook_url=args.webhook_url, webhook_secrets=args.webhook_secret)
    web.run_app(app, host=args.host, port=args.port, shutdown_timeout=1.0)


if __name__ == "__main__":
    main()
