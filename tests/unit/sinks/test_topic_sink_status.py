"""The vault and audit sinks report health, readiness and metrics like the event sink, on their
own registry (a fake consumer and a fake Postgres stand in for the stack)."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from typing import Any

import psycopg
import pytest

from sinks.postgres import SinkStatus
from sinks.server import start_server
from sinks.vault import REGISTRY, JsonTopicSink, Record


class Msg:
    def __init__(self, offset: int) -> None:
        self.offset = offset

    def error(self) -> None:
        return None

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"{}"


class TP:
    topic, partition = "ps-vault", 0


class Consumer:
    def __init__(self, batches: list[list[Msg]]) -> None:
        self.batches, self.commits, self.turns = batches, 0, 0

    def subscribe(self, topics: list[str], on_assign: Any, on_revoke: Any, on_lost: Any) -> None:
        on_assign(self, [TP()])

    def poll(self, timeout: float) -> Msg | None:
        # The sink takes the first message of a batch with poll, the rest with consume(n, 0).
        self.turns += 1
        if not self.batches or not self.batches[0]:
            if self.batches:
                self.batches.pop(0)
            return None
        return self.batches[0].pop(0)

    def consume(self, num_messages: int, timeout: float) -> list[Msg]:
        rest = self.batches.pop(0) if self.batches else []
        return rest[:num_messages]

    def commit(self, asynchronous: bool) -> None:
        self.commits += 1

    def close(self) -> None:
        pass


class Conn:
    closed = False

    def execute(self, sql: str) -> None:
        pass

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def close(self) -> None:
        self.closed = True


class FakeSink(JsonTopicSink):
    kind = "unit"

    def write(self, conn: psycopg.Connection, records: list[Record]) -> int:
        return len(records)


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_topic_sink_is_ready_after_it_reached_postgres_and_counts_its_writes(monkeypatch: pytest.MonkeyPatch
                                                                               ) -> None:
    monkeypatch.setattr(psycopg, "connect", lambda dsn, connect_timeout: Conn())
    status = SinkStatus()
    server = start_server(status, "127.0.0.1", 0, registry=REGISTRY)
    port = server.server_address[1]
    try:
        assert _get(port, "/ready")[0] == 503  # nothing assigned, Postgres not reached yet
        consumer = Consumer([[Msg(0), Msg(1), Msg(2)], [Msg(3)]])
        sink = FakeSink("unused", "postgresql://x", "ps-vault", "g", consumer=consumer, status=status)  # type: ignore[arg-type]
        sink.run(lambda: consumer.turns >= 3)
        assert sink.stored == 4 and consumer.commits == 2
        code, body = _get(port, "/ready")
        assert code == 200 and json.loads(body)["ready"] is True
        assert _get(port, "/health")[0] == 200
        code, metrics = _get(port, "/metrics")
        assert 'paystream_topic_sink_records_total{sink="unit"} 4.0' in metrics
        assert 'paystream_topic_sink_batches_total{sink="unit"} 2.0' in metrics
        assert 'paystream_topic_sink_postgres_up{sink="unit"} 1.0' in metrics
        assert "paystream_sink_events_total" not in metrics and "paystream_sink_postgres_up" not in metrics
    finally:
        server.shutdown()


def test_a_topic_sink_without_postgres_is_not_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(dsn: str, connect_timeout: int) -> Conn:
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(psycopg, "connect", refuse)
    status = SinkStatus()
    consumer = Consumer([])
    FakeSink("unused", "postgresql://x", "ps-vault", "g", consumer=consumer, status=status).run(  # type: ignore[arg-type]
        lambda: consumer.turns >= 1)
    ready, reasons = status.readiness()
    assert not ready and reasons == ["postgres: OperationalError"]


class Position:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class LaggingConsumer(Consumer):
    """Partition 0 ends at offset 10; the sink's position is 7 after its batches."""

    def assignment(self) -> list[TP]:
        return [TP()]

    def get_watermark_offsets(self, tp: TP, timeout: float, cached: bool) -> tuple[int, int]:
        return 0, 10

    def position(self, tps: list[TP]) -> list[Position]:
        return [Position(7)]


class FlakySink(FakeSink):
    kind = "unit-flaky"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures = 1

    def write(self, conn: psycopg.Connection, records: list[Record]) -> int:
        if self.failures:
            self.failures -= 1
            raise psycopg.OperationalError("server closed the connection")
        return len(records)


def test_a_topic_sink_reports_its_lag_and_its_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psycopg, "connect", lambda dsn, connect_timeout: Conn())
    monkeypatch.setattr("time.sleep", lambda s: None)  # the retry's backoff
    consumer = LaggingConsumer([[Msg(5), Msg(6)]])
    sink = FlakySink("unused", "postgresql://x", "ps-vault", "g", consumer=consumer,  # type: ignore[arg-type]
                     status=SinkStatus())
    sink.run(lambda: consumer.turns >= 2)
    assert sink.stored == 2 and consumer.commits == 1
    assert REGISTRY.get_sample_value("paystream_topic_sink_lag_messages",
                                     {"sink": "unit-flaky", "partition": "0"}) == 3
    assert REGISTRY.get_sample_value("paystream_topic_sink_retries_total", {"sink": "unit-flaky"}) == 1


class Cursor:
    def __init__(self) -> None:
        self.executed: list[str] = []

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str, params: object = None) -> None:
        self.executed.append(sql)


class VaultConn(Conn):
    def __init__(self) -> None:
        self.cur = Cursor()

    def cursor(self) -> Cursor:
        return self.cur


def test_records_the_vault_sink_refuses_are_counted() -> None:
    from sinks.vault import write_vault_batch

    before = REGISTRY.get_sample_value("paystream_topic_sink_skipped_total", {"sink": "vault"}) or 0
    unsealed = json.dumps({"kind": "payment_method", "method_id": "pm_1", "customer_id": "c", "gateway": "simulated",
                           "status": "active", "version": 1, "sealed_token": "pm_plain_token"}).encode()
    other_kind = json.dumps({"kind": "something_else"}).encode()
    conn = VaultConn()
    stored = write_vault_batch(conn, [(b"pm_0", b"{not json"), (b"pm_1", unsealed), (b"x", other_kind)])  # type: ignore[arg-type]
    assert stored == 0 and conn.cur.executed == []
    # the unreadable and the unsealed record; a record of another kind is not the vault's, not an error
    assert REGISTRY.get_sample_value("paystream_topic_sink_skipped_total", {"sink": "vault"}) == before + 2
