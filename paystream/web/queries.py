"""Read-side queries on the sink's Postgres tables (sinks/migrations), psycopg 3 async.

A small pool of its own (psycopg_pool is not a dependency): idle connections are reused, a
broken one is dropped, at most ``size`` are kept. Every query runs in a read-only autocommit
connection. Timestamps are answered as epoch milliseconds, like everywhere else in paystream.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row

__all__ = ["Page", "PageKey", "PgPool", "Queries"]

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

    async def payments_by(self, *, order_id: str | None, customer_id: str | None, limit: int,
                          created_from: datetime | None = None, created_to: datetime | None = None,
                          after: PageKey | None = None) -> Page:
        """Payments matching every given filter, oldest first (``created_at``, then ``payment_id``),
        one page of at most ``limit``: keyset pagination, ``after`` is the last row of the page
        before. ``created_from`` is inclusive, ``created_to`` exclusive. Each filter combination is
        one range scan of an index ending in (created_at, payment_id) (migration 0004)."""
        sql, params = payments_query(order_id, customer_id, created_from, created_to, after)
        async with self.pool.connection() as conn:
            cur = await conn.execute(sql, [*params, limit + 1])
            rows = await cur.fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        last = PageKey(rows[-1]["created_at"], rows[-1]["payment_id"]) if more and rows else None
        return Page([{k: _ms(v) for k, v in row.items()} for row in rows], last)

    async def history(self, payment_id: str) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(HISTORY_SQL, [payment_id])
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


@dataclass(frozen=True)
class PageKey:
    """Where a page of payments ended: the (created_at, payment_id) of its last row. As an opaque
    cursor it keeps created_at to the microsecond (the API's epoch milliseconds would not)."""

    created_at: datetime
    payment_id: str

    def encode(self) -> str:
        delta = self.created_at - _EPOCH
        micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        raw = f"{micros}:{self.payment_id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, cursor: str) -> PageKey:
        """Raises ValueError for anything this class did not encode."""
        if not cursor or len(cursor) > 400:
            raise ValueError("cursor length")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        micros, _, payment_id = raw.partition(":")
        if not micros.lstrip("-").isdigit() or not payment_id:
            raise ValueError("cursor shape")
        try:
            return cls(_EPOCH + timedelta(microseconds=int(micros)), payment_id)
        except OverflowError:
            raise ValueError("cursor time out of range") from None


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    next_key: PageKey | None  # None: this was the last page


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _payment_filters(order_id: str | None, customer_id: str | None, created_from: datetime | None,
                     created_to: datetime | None, after: PageKey | None) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for clause, value in (("order_id = %s", order_id), ("customer_id = %s", customer_id),
                          ("created_at >= %s", created_from), ("created_at < %s", created_to)):
        if value is not None:
            where.append(clause)
            params.append(value)
    if after is not None:
        where.append("(created_at, payment_id) > (%s, %s)")
        params.extend([after.created_at, after.payment_id])
    return where or ["TRUE"], params


def payments_query(order_id: str | None, customer_id: str | None, created_from: datetime | None,
                   created_to: datetime | None, after: PageKey | None) -> tuple[str, list[Any]]:
    """The listing's SQL and parameters, the page size (``limit + 1``) left as the last ``%s``
    (``bench/history_explain.py`` explains exactly this text)."""
    where, params = _payment_filters(order_id, customer_id, created_from, created_to, after)
    sql = (
        "SELECT payment_id, order_id, customer_id, status, amount, currency, authorized, captured, refunded, "
        "gateway, gateway_ref, decline_code, last_sequence AS sequence, created_at, updated_at "
        f"FROM payments WHERE {' AND '.join(where)} ORDER BY created_at, payment_id LIMIT %s"
    )
    return sql, params


HISTORY_SQL: Final = (
    "SELECT event_id, sequence, event_type AS type, status, occurred_at, causation_command_id AS causation, "
    "payload FROM payment_events WHERE payment_id = %s ORDER BY sequence"
)


def _without_secrets(data: dict[str, Any]) -> dict[str, Any]:
    """Drop anything that looks like a token, key or ciphertext (gateway tokens are never answered)."""
    return {k: v for k, v in data.items() if not any(m in k.lower() for m in _SECRET_MARKERS)}
