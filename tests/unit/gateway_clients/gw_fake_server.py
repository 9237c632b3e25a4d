"""A scripted HTTP server on 127.0.0.1 (aiohttp, random port) for gateway client tests.

Routes answer with scripted (status, JSON body, headers) in order (the last one repeats) and
every request is recorded, so tests can assert exactly what a client sent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> dict[str, Any]:
    data = json.loads((FIXTURES / name).read_text())
    assert isinstance(data, dict)
    return data


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeServer:
    url: str
    routes: dict[tuple[str, str], list[Reply]]
    requests: list[Recorded]

    def calls(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == path]


@asynccontextmanager
async def serve(routes: dict[tuple[str, str], list[Reply]]) -> AsyncIterator[FakeServer]:
    recorded: list[Recorded] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        recorded.append(Recorded(request.method, request.path, dict(request.headers), body))
        replies = routes.get((request.method, request.path))
        if not replies:
            return web.json_response({"error": "no such route"}, status=404)
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        if reply.body is None:
            return web.Response(status=reply.status, headers=reply.headers)
        return web.json_response(reply.body, status=reply.status, headers=reply.headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield FakeServer(f"http://127.0.0.1:{port}", routes, recorded)
    finally:
        await runner.cleanup()
