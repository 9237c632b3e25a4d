"""Read-side queries on the sink's Postgres tables (sinks/migrations), psycopg 3 async.

A small pool of its own (psycopg_pool is not a dependency): idle connections are reused, a
broken one is dropped, at most ``size`` are kept. Every query runs in a read-only autocommit
connection. Timestamps are answered as epoch milliseconds, like everywhere else in paystream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row

__all__ = ["PgPool", "Queries"]

_SECRET_MARKERS: Final = ("token", "secret", "encrypted", "cipher", "key")


def _ms(value: Any) -> Any:
    return int(value.timestamp() * 1000) if isinstance(value, datetime) else value


class PgPool:
    def __init__(self, dsn: str, size: int = 4, connect_timeout: int = 5) -> None:
        self.dsn = dsn
        self.size = size
        self.connect_timeout = connect_timeout
        self._idle: asyncio.LifoQueue[psycopg.AsyncConnection[Any]] = asyncio.LifoQueue()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        conn: psycopg.AsyncConnection[Any] | None = None
        while not self._idle.empty():
            candidate = self._idle.get_nowait()
            if not candidate.closed and not candidate.broken:
                conn = candidate
                break
        if conn is None:
            conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=self.connect_timeout, row_factory=dict_row
            )
            await conn.set_read_only(True)
        try:
            yield conn
        except BaseException:
            await conn.close()
            raise
        if conn.broken or conn.closed or self._idle.qsize() >= self.size:
            await conn.close()
        else:
            self._idle.put_nowait(conn)

    async def close(self) -> None:
        while not self._idle.empty():
            await self._idle.get_nowait().close()


class Queries:
    def __init__(self, pool: PgPool) -> None:
        self.pool = pool

    async def payments_by(self, *, order_id: str | None, customer_id: str | None, limit: int) -> list[dict[str, Any]]:
        where, params = [], []
        if order_id is not None:
            where.append("order_id = %s")
            params.append(order_id)
        if customer_id is not None:
            where.append("customer_id = %s")
            params.append(customer_id)
        sql = (
            "SELECT payment_id, order_id, customer_id, status, amount, currency, authorized, captured, refunded, "
            "gateway, gateway_ref, decline_code, last_sequence AS sequence, created_at, updated_at "
            f"FROM payments WHERE {' AND '.join(where)} ORDER BY created_at, payment_id LIMIT %s"
        )
        async with self.pool.connection() as conn:
            cur = await conn.execute(sql, [*params, limit])
            rows = await cur.fetchall()
        return [{k: _ms(v) for k, v in row.items()} for row in rows]

    async def history(self, payment_id: str) -> list[dict[str, Any]]:
        sql = (
            "SELECT event_id, sequence, event_type AS type, status, occurred_at, causation_command_id AS causation, "
            "payload FROM payment_events WHERE payment_id = %s ORDER BY sequence"
        )
        async with self.pool.connection() as conn:
            cur = await conn.execute(sql, [payment_id])
            rows = await cur.fetchall()
        out = []
        for row in rows:
            item = {k: _ms(v) for k, v in row.items() if k != "payload"}
            payload = row.get("payload")
            item["data"] = _without_secrets(payload) if isinstance(payload, dict) else None
            out.append(item)
        return out

    async def payment_methods(self, customer_id: str) -> list[dict[str, Any]]:
        """Saved methods of a customer; ``[]`` while the sink has no ``payment_methods`` table."""
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT to_regclass('payment_methods') IS NOT NULL AS present")
            present = await cur.fetchone()
            if not present or not present["present"]:
                return []
            cur = await conn.execute(
                "SELECT to_jsonb(pm) AS row FROM payment_methods pm WHERE pm.customer_id = %s", [customer_id]
            )
            rows = await cur.fetchall()
        methods = []
        for row in rows:
            data = row["row"]
            if not isinstance(data, dict):
                continue
            if data.get("removed_at") is not None or data.get("status") in ("removed", "deleted"):
                continue
            methods.append(_without_secrets(data))
        return methods

    async def payment_customer(self, payment_id: str) -> str | None:
        """The customer of a stored payment, or ``None`` (unknown to the sink, or no customer)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT customer_id FROM payments WHERE payment_id = %s", [payment_id])
            row = await cur.fetchone()
        return str(row["customer_id"]) if row and row["customer_id"] is not None else None

    async def payment_id_by_gateway_ref(self, gateway: str, gateway_ref: str) -> str | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT payment_id FROM payments WHERE gateway = %s AND gateway_ref = %s LIMIT 1",
                [gateway, gateway_ref],
            )
            row = await cur.fetchone()
        return str(row["payment_id"]) if row else None


def _without_secrets(data: dict[str, Any]) -> dict[str, Any]:
    """Drop anything that looks like a token, key or ciphertext (gateway tokens are never answered)."""
    return {k: v for k, v in data.items() if not any(m in k.lower() for m in _SECRET_MARKERS)}
