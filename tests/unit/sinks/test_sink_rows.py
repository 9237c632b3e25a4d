"""The sink's pure parts: gateway replies → payment_transactions rows, and its health state."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime

import pytest

from sinks.postgres import PG_UP, BadReply, SinkStatus, transaction_row
from sinks.server import start_server


def reply(kind: str = "reply", meta: dict[str, object] | None = None, **inp: object) -> dict[str, object]:
    value: dict[str, object] = {
        "kind": kind, "payment_id": "pay-1",
        "input": {"idempotency_key": "ps-pay-1-authorize-0", "status": "declined", "gateway_ref": "ch_1",
                  "decline_code": "insufficient_funds", "operation": "authorize", **inp},
    }
    if meta is not None:
        value["meta"] = meta
    return value


def test_reply_with_meta_maps_every_column() -> None:
    row = transaction_row(reply(meta={"gateway": "simulated", "operation": "authorize", "attempt": 0,
                                      "latency_ms": 42, "error_code": None, "replied_at": 1_700_000_000_000}),
                          partition=3, offset=17, topic="ps-gateway-outcomes")
    assert row == {
        "payment_id": "pay-1", "kind": "reply", "operation": "authorize", "idempotency_key": "ps-pay-1-authorize-0",
        "attempt": 0, "gateway": "simulated", "gateway_ref": "ch_1", "status": "declined",
        "decline_code": "insufficient_funds", "error_code": None, "latency_ms": 42,
        "at": datetime.fromtimestamp(1_700_000_000, tz=UTC), "partition": 3, "offset": 17,
        "topic": "ps-gateway-outcomes",
    }


def test_reply_written_before_meta_existed_still_maps_from_key_and_kafka_timestamp() -> None:
    value = reply(kind="reconcile", idempotency_key="ps-pay-with-dashes-refund:re_9-4", operation=None)
    row = transaction_row(value, 0, 1, timestamp_ms=1_700_000_001_000)
    assert (row["operation"], row["attempt"], row["gateway"], row["latency_ms"]) == ("refund", 4, None, None)
    assert row["at"] == datetime.fromtimestamp(1_700_000_001, tz=UTC)


@pytest.mark.parametrize("value", [
    None, [], {"kind": "other", "payment_id": "p", "input": {}},
    {"kind": "reply", "payment_id": "p", "input": "x"},
    {"kind": "reply", "payment_id": "p", "input": {"status": "captured"}},  # no idempotency key
    {"kind": "reply", "input": {"idempotency_key": "k", "status": "captured"}},  # no payment id
])
def test_unreadable_replies_are_refused(value: object) -> None:
    with pytest.raises(BadReply):
        transaction_row(value, 0, 0)


def test_readiness_needs_partitions_and_postgres() -> None:
    status = SinkStatus()
    ready, reasons = status.readiness()
    assert not ready and any("no partitions" in r for r in reasons) and any("postgres" in r for r in reasons)
    status.assigned = frozenset({("payment.events", 0)})
    status.postgres(True)
    assert status.readiness() == (True, [])
    assert PG_UP._value.get() == 1
    status.postgres(False, "connection refused")
    ready, reasons = status.readiness()
    assert not ready and reasons == ["postgres: connection refused"]
    assert PG_UP._value.get() == 0


def test_health_fails_when_the_loop_stalls() -> None:
    status = SinkStatus(max_loop_age_s=30)
    assert status.health()[0]
    status.last_loop = time.monotonic() - 31
    assert not status.health()[0]
    assert any("stalled" in r for r in status.readiness()[1])


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_http_server_serves_metrics_health_and_ready() -> None:
    status = SinkStatus()
    server = start_server(status, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        code, body = _get(base + "/ready")
        assert code == 503 and json.loads(body)["ready"] is False
        assert any("no partitions" in r for r in json.loads(body)["reasons"])
        status.assigned = frozenset({("payment.events", 1)})
        status.postgres(True)
        code, body = _get(base + "/ready")
        assert (code, json.loads(body)) == (200, {"ready": True, "reasons": []})
        assert _get(base + "/health")[0] == 200
        code, body = _get(base + "/metrics")
        assert code == 200 and b"paystream_sink_postgres_up 1.0" in body
        status.last_loop -= 60
        assert _get(base + "/health")[0] == 503
        assert _get(base + "/nope")[0] == 404
    finally:
        server.shutdown()
