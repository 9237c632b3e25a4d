"""A webhook relay between the simulated gateway and the workers' HTTP edges.

The simulated gateway posts its signed webhooks to ``PAYSTREAM_WEB_PORT``; during a chaos run
that port belongs to this relay and the workers serve their edges on other ports. The relay
answers the gateway at once and delivers each webhook itself, to any live worker:

* ``mode="once"``: each webhook once (retried while no worker answers 2xx, as a gateway would);
* ``mode="hostile"``: each webhook three times with its original signature, shuffled (random
  delays), plus forged copies that must all be refused: a signature made with a wrong secret,
  a tampered body under the original signature, a stale and a future timestamp (correctly
  signed with the real secret), a missing and a malformed header.

Counters: ``forged_accepted`` (any 2xx to a forged copy: a violation), ``delivered``,
``refused`` (a genuine webhook answered 4xx other than 401: not retried), ``undelivered``
(valid deliveries no worker took within four minutes).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable

import aiohttp
from aiohttp import web

SIGNATURE_HEADER = "Simgw-Signature"


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def _tamper(body: bytes) -> bytes:
    """The same event saying something else: declined <-> succeeded, or another amount."""
    try:
        event = json.loads(body)
        obj = event["data"]["object"]
    except (ValueError, KeyError, TypeError):
        return body + b" "
    if event.get("type") == "payment.declined":
        event["type"], obj["status"], obj["amount_captured"] = "payment.succeeded", "succeeded", obj.get("amount")
    elif isinstance(obj.get("amount"), int):
        obj["amount"] = obj["amount"] * 10 + 1
        obj["amount_captured"] = obj["amount"]
    else:
        event["type"] = "payment.succeeded"
    event["id"] = event.get("id", "") + "-x"
    return json.dumps(event, separators=(",", ":")).encode()


class WebhookRelay:
    def __init__(self, port: int, targets: Callable[[], list[int]], secret: str, *, mode: str = "once",
                 seed: int = 7) -> None:
        self.port, self.targets, self.secret, self.mode = port, targets, secret, mode
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.bodies: list[tuple[bytes, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._pending: set[asyncio.Task[None]] = set()

    # ---- lifecycle (a thread with its own event loop)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos-relay")
        self._thread.start()
        self._ready.wait(15)
        if self._error is not None:
            raise RuntimeError(f"webhook relay could not listen on port {self.port}: {self._error}")

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/webhooks/{gateway}", self._receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        for t in list(self._pending):
            t.cancel()
        await self._session.close()
        await runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(15)

    def idle(self) -> bool:
        return not self._pending

    # ---- receiving and delivering

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        header = request.headers.get(SIGNATURE_HEADER, "")
        gateway = request.match_info["gateway"]
        self.counts["received"] += 1
        self.bodies.append((body, header))
        copies = 3 if self.mode == "hostile" else 1
        for _ in range(copies):
            self._later(self.rng.uniform(0, 3) if self.mode == "hostile" else 0, self._valid(gateway, body, header))
        if self.mode == "hostile":
            now = int(time.time())
            forged = [
                ("wrong_secret", body, sign(body, "whsec_" + "0" * 48, now)),
                ("tampered_body", _tamper(body), header),
                ("stale", body, sign(body, self.secret, now - 3600)),
                ("future", body, sign(body, self.secret, now + 3600)),
                ("missing_header", body, None),
                ("malformed_header", body, "v1=zz,t=notatime"),
            ]
            for kind, fbody, fheader in forged:
                self._later(self.rng.uniform(0, 3), self._forged(gateway, kind, fbody, fheader))
        return web.json_response({"received": True})

    def _later(self, delay: float, coro: object) -> None:
        async def run() -> None:
            await asyncio.sleep(delay)
            await coro  # type: ignore[misc]

        task = asyncio.ensure_future(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _post(self, gateway: str, body: bytes, header: str | None) -> int | None:
        ports = self.targets()
        self.rng.shuffle(ports)
        headers = {"Content-Type": "application/json"}
        if header is not None:
            headers[SIGNATURE_HEADER] = header
        for port in ports:
            try:
                async with self._session.post(f"http://127.0.0.1:{port}/webhooks/{gateway}", data=body,
                                              headers=headers) as resp:
                    await resp.read()
                    return resp.status
            except (aiohttp.ClientError, TimeoutError, OSError):
                continue
        return None

    async def _valid(self, gateway: str, body: bytes, header: str) -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            status = await self._post(gateway, body, header)
            self.statuses[f"valid:{status}"] += 1
            if status is not None and status < 300:
                self.counts["delivered"] += 1
                return
            if status is not None and 400 <= status < 500 and status != 401:
                self.counts["refused"] += 1  # the edge refuses the payload itself: retrying cannot help
                return
            if status == 401:  # our original signature aged past the tolerance while we retried
                header = sign(body, self.secret, int(time.time()))
            await asyncio.sleep(1.0)
        self.counts["undelivered"] += 1

    async def _forged(self, gateway: str, kind: str, body: bytes, header: str | None) -> None:
        for _ in range(30):
            status = await self._post(gateway, body, header)
            if status is None:
                await asyncio.sleep(1.0)
                continue
            self.statuses[f"{kind}:{status}"] += 1
            self.counts["forged_sent"] += 1
            if status < 300:
                self.counts["forged_accepted"] += 1
            return
