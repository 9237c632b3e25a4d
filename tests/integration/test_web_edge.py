"""The HTTP edge on a real worker (faust's web server) against the local stack: command facade,
queries from the table and from Postgres, simulated-gateway webhooks.

The session's worker (tests/conftest.py) serves the edge, with an API key for the tests and the
local stack's simulated-gateway webhook secret.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition

from gateway_clients.simulated.webhooks import sign_payload
from paystream import stack
from paystream.security.audit import decode_message
from paystream.web.mapping import derived_id
from streams import topics
from tests.conftest import API_KEY, API_KEY_BOUND, API_KEY_READ, API_KEY_WRITE, BOUND_CUSTOMER
from tests.support.kafka_tools import WEBHOOKS, Collector

ROOT = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = stack.simgw_webhook_secret()  # the local stack's; the session worker verifies with it
PAN = "4242 4242 4242 4242"


@dataclass
class EdgeWorker:
    url: str
    log: Path
    proc: subprocess.Popen[bytes]

    def client(self, key: str | None = API_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def edge(worker: Any, sink: Any) -> EdgeWorker:
    """The session's worker: it serves the HTTP edge on its web port."""
    return EdgeWorker(f"http://127.0.0.1:{worker.web_port}", worker.log, worker.proc)


def create_body(**extra: Any) -> dict[str, Any]:
    body = {"amount": 1999, "currency": "USD", "order_id": f"ord-web-{uuid.uuid4().hex[:8]}",
            "customer_id": "cus_web", "payment_method_token": "tok_visa"}
    body.update(extra)
    return body


def wait_status(c: httpx.Client, payment_id: str, wanted: set[str], timeout: float = 45) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = c.get(f"/payments/{payment_id}")
        if r.status_code == 200:
            last = r.json()
            if last["status"] in wanted:
                return last
        else:
            last = {"http_status": r.status_code, "body": r.text[:300]}
        time.sleep(0.3)
    raise AssertionError(f"{payment_id} never reached {wanted}: {last}")


def test_health_and_ready_need_no_key(edge: EdgeWorker) -> None:
    with edge.client(key=None) as c:
        assert c.get("/health").json() == {"status": "ok"}
        assert c.get("/ready").json()["ready"] is True


def test_create_payment_then_state_and_history(edge: EdgeWorker) -> None:
    key = f"idem-{uuid.uuid4()}"
    body = create_body()
    with edge.client() as c:
        r = c.post("/payments", json=body, headers={"Idempotency-Key": key})
        assert r.status_code == 202, r.text
        answer = r.json()
        assert answer["command_id"] == key and answer["payment_id"].startswith("pay_")
        view = wait_status(c, answer["payment_id"], {"succeeded"})
        assert (view["amount"], view["currency"], view["captured"], view["refunded"]) == (1999, "USD", 1999, 0)
        assert view["order_id"] == body["order_id"] and view["sequence"] >= 2
        assert "payment_method_token" not in r.text + json.dumps(view) and "tok_visa" not in json.dumps(view)

        deadline = time.monotonic() + 60  # history and the order listing come from the sink's Postgres
        history: dict[str, Any] = {}
        while time.monotonic() < deadline:
            h = c.get(f"/payments/{answer['payment_id']}/history")
            if h.status_code == 200 and len(h.json()["events"]) >= view["sequence"]:
                history = h.json()
                break
            time.sleep(0.5)
        events = history["events"]
        assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
        assert events[0]["type"] == "PaymentCreated" and events[0]["causation"] == key
        assert events[-1]["status"] == "succeeded" and isinstance(events[-1]["occurred_at"], int)
        listed = c.get("/payments", params={"order_id": body["order_id"]}).json()["payments"]
        assert [p["payment_id"] for p in listed] == [answer["payment_id"]]


def test_retried_post_is_one_payment(edge: EdgeWorker, stack_env: dict[str, str]) -> None:
    collector = Collector(stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"], stack_env["PAYSTREAM_SCHEMA_REGISTRY_URL"])
    try:
        key = f"idem-{uuid.uuid4()}"
        body = create_body()
        with edge.client() as c:
            first = c.post("/payments", json=body, headers={"Idempotency-Key": key})
            second = c.post("/payments", json=body, headers={"Idempotency-Key": key})
            assert first.status_code == second.status_code == 202
            pid = first.json()["payment_id"]
            assert second.json()["payment_id"] == pid
            wait_status(c, pid, {"succeeded"})
            assert collector.wait_terminal({pid: {key}}, timeout=30)
            collector.poll(2.0)  # a second processing would show up now
            types = [e["_type"] for e in collector.by_payment[pid]]
            assert types.count("PaymentCreated") == 1 and types.count("PaymentSucceeded") == 1, types
            other = c.post("/payments", json=body, headers={"Idempotency-Key": key + "-other"})
            assert other.json()["payment_id"] != pid
    finally:
        collector.close()


@pytest.mark.parametrize("change", [
    {"amount": 19.99}, {"amount": True}, {"amount": "1999"}, {"amount": -1}, {"currency": "usd"},
    {"currency": "XXY"}, {"capture_method": "later"}, {"unknown_field": 1},
])
def test_invalid_bodies_are_422(edge: EdgeWorker, change: dict[str, Any]) -> None:
    with edge.client() as c:
        r = c.post("/payments", json=create_body(**change), headers={"Idempotency-Key": f"idem-{uuid.uuid4()}"})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_body" and r.json()["reasons"]


def test_missing_idempotency_key_is_400_and_missing_key_401(edge: EdgeWorker) -> None:
    with edge.client() as c:
        r = c.post("/payments", json=create_body())
        assert r.status_code == 400 and r.json()["error"] == "idempotency_key_required"
    with edge.client(key="wrong") as c:
        assert c.post("/payments", json=create_body(), headers={"Idempotency-Key": "k"}).status_code == 401
        assert c.get("/payments/pay_x").status_code == 401


def test_card_number_is_refused_and_never_echoed(edge: EdgeWorker) -> None:
    key = f"idem-{uuid.uuid4()}"
    with edge.client() as c:
        r = c.post("/payments", json=create_body(metadata={"note": f"card {PAN}"}), headers={"Idempotency-Key": key})
        assert r.status_code == 400 and r.json()["error"] == "sensitive_data_rejected"
        assert "4242" not in r.text
        raw = c.post("/payments", content=f'{{"amount": 1, "junk": {PAN.replace(" ", "")}'.encode(),
                     headers={"Idempotency-Key": key})
        assert raw.status_code == 400 and "4242" not in raw.text
        time.sleep(2)
        assert c.get(f"/payments/{derived_id('pay', 'itest', key)}").status_code == 404  # nothing was produced
    assert PAN.replace(" ", "") not in edge.log.read_text(errors="replace")


def test_unknown_payment_is_404(edge: EdgeWorker) -> None:
    with edge.client() as c:
        assert c.get(f"/payments/pay_{uuid.uuid4().hex}").status_code == 404


def simulated_event(payment_id: str, event_type: str, status: str, amount: int, gateway_ref: str) -> dict[str, Any]:
    now = int(time.time())
    return {"object": "event", "id": f"simevt_itest_{uuid.uuid4().hex[:10]}", "type": event_type, "created": now,
            "data": {"object": {
                "object": "payment", "id": gateway_ref, "payment_id": payment_id, "status": status, "amount": amount,
                "currency": "USD", "capture_method": "automatic", "amount_authorized": amount,
                "amount_captured": amount if status == "succeeded" else 0, "amount_refunded": 0,
                "decline_code": None, "next_action": None, "metadata": {}, "created": now, "refunds": []}}}


def test_signed_webhook_completes_a_3ds_payment_and_forged_is_refused(edge: EdgeWorker,
                                                                       stack_env: dict[str, str]) -> None:
    webhooks = Collector(stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"], stack_env["PAYSTREAM_SCHEMA_REGISTRY_URL"],
                         topic=WEBHOOKS)
    try:
        with edge.client() as c:
            r = c.post("/payments", json=create_body(payment_method_token="tok_3ds", amount=2500),
                       headers={"Idempotency-Key": f"idem-{uuid.uuid4()}"})
            pid = r.json()["payment_id"]
            view = wait_status(c, pid, {"requires_action"})
            event = simulated_event(pid, "payment.succeeded", "succeeded", 2500, view["gateway_ref"] or "simpay_x")
            raw = json.dumps(event).encode()

            forged = c.post("/webhooks/simulated", content=raw,
                            headers={"Simgw-Signature": sign_payload(raw, ["not-the-secret"], int(time.time()))})
            assert forged.status_code == 401 and forged.json()["error"] == "invalid_webhook"
            stale = c.post("/webhooks/simulated", content=raw,
                           headers={"Simgw-Signature": sign_payload(raw, [WEBHOOK_SECRET], int(time.time()) - 3600)})
            assert stale.status_code == 401
            unsigned = c.post("/webhooks/simulated", content=raw)
            assert unsigned.status_code == 401
            assert c.post("/webhooks/nowhere", content=raw).status_code == 404

            good = c.post("/webhooks/simulated", content=raw,
                          headers={"Simgw-Signature": sign_payload(raw, [WEBHOOK_SECRET], int(time.time()))})
            assert good.status_code == 200, good.text
            assert good.json()["accepted"] == [event["id"]]
            final = wait_status(c, pid, {"succeeded"})
            assert final["captured"] == 2500

            card = json.dumps({**event, "note": PAN}).encode()
            refused = c.post("/webhooks/simulated", content=card,
                             headers={"Simgw-Signature": sign_payload(card, [WEBHOOK_SECRET], int(time.time()))})
            assert refused.status_code == 400 and "4242" not in refused.text

            ignored_event = simulated_event(pid, "payment.requires_action", "requires_action", 2500, "simpay_x")
            ignored_raw = json.dumps(ignored_event).encode()
            ignored = c.post("/webhooks/simulated", content=ignored_raw, headers={
                "Simgw-Signature": sign_payload(ignored_raw, [WEBHOOK_SECRET], int(time.time()))})
            assert ignored.status_code == 200 and ignored.json()["accepted"] == [] and ignored.json()["ignored"]

        webhooks.poll(2.0)
        mine = [m for m in webhooks.raw if m.key() == pid.encode()]
        assert len(mine) == 1, "exactly the one verified notification is on payment.webhooks"
        record = webhooks.de(mine[0].value(), webhooks.ctx)
        assert record["notification_id"] == event["id"] and record["kind"] == "payment_succeeded"
        assert record["amount"] == 2500 and record["gateway"] == "simulated"
    finally:
        webhooks.close()


# --- scoped and customer-bound API keys -------------------------------------------------------------


def wait_history(c: httpx.Client, payment_id: str, timeout: float = 60) -> httpx.Response:
    """``GET /payments/{id}/history`` once the sink has stored the payment."""
    deadline = time.monotonic() + timeout
    while True:
        r = c.get(f"/payments/{payment_id}/history")
        if r.status_code == 200 or time.monotonic() > deadline:
            return r
        time.sleep(0.5)


def idem() -> dict[str, str]:
    return {"Idempotency-Key": f"idem-{uuid.uuid4()}"}


def manual_payment(c: httpx.Client, customer: str = "cus_web") -> tuple[str, dict[str, Any]]:
    body = create_body(capture_method="manual", customer_id=customer)
    r = c.post("/payments", json=body, headers=idem())
    assert r.status_code == 202, r.text
    pid = r.json()["payment_id"]
    wait_status(c, pid, {"requires_capture"})
    return pid, body


def method_body() -> dict[str, Any]:
    return {"gateway": "simulated", "gateway_token": "tok_visa", "brand": "visa", "last4": "4242"}


def write_calls(pid: str, customer: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    """(method, path, JSON body) of every command endpoint."""
    return [
        ("POST", "/payments", create_body(customer_id=customer)),
        ("POST", f"/payments/{pid}/capture", {}),
        ("POST", f"/payments/{pid}/cancel", {}),
        ("POST", f"/payments/{pid}/refunds", {}),
        ("POST", f"/customers/{customer}/payment-methods", method_body()),
        ("DELETE", f"/customers/{customer}/payment-methods/pm_{uuid.uuid4().hex}", None),
    ]


def read_calls(pid: str, order_id: str, customer: str) -> list[str]:
    return [f"/payments/{pid}", f"/payments?order_id={order_id}", f"/payments/{pid}/history",
            f"/customers/{customer}/payment-methods"]


def audit_records(stack_env: dict[str, str], actor: str, since_ms: int, wanted: Any, timeout: float = 30) -> list[Any]:
    """The HTTP audit records of ``actor`` since ``since_ms`` on the audit topic (the stack keeps
    earlier sessions' records), once ``wanted(records)`` holds."""
    topic = topics.audit("paystream")
    consumer = Consumer({"bootstrap.servers": stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"], "group.id": f"t-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    found: list[Any] = []
    raw: list[bytes] = []
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in consumer.consume(500, 1.0):
                if msg.error() is None:
                    raw.append(msg.value())
                    records, _ = decode_message(msg.value())  # a worker's batch is an array of them
                    found += [r for r in records if r.actor == actor and r.occurred_at >= since_ms]
            if wanted(found):
                break
    finally:
        consumer.close()
    for key in (API_KEY, API_KEY_READ, API_KEY_WRITE, API_KEY_BOUND):  # neither keys nor their digests
        assert not any(key.encode() in r or hashlib.sha256(key.encode()).hexdigest().encode() in r for r in raw)
    return found


def test_every_endpoint_needs_a_key_and_its_scope(edge: EdgeWorker, stack_env: dict[str, str]) -> None:
    started = time.time_ns() // 1_000_000
    with edge.client() as admin, edge.client(API_KEY_READ) as reader, edge.client(API_KEY_WRITE) as writer, \
            edge.client(key=None) as nobody:
        pid, body = manual_payment(admin)
        for method, path, payload in write_calls(pid, "cus_web"):
            r = nobody.request(method, path, json=payload, headers=idem())
            assert r.status_code == 401 and r.json() == {"error": "unauthenticated"}, (method, path, r.text)
            r = reader.request(method, path, json=payload, headers=idem())
            assert r.status_code == 403, (method, path, r.text)
            answer = r.json()
            assert (answer["error"], answer["required_scope"], answer["key_scope"]) == ("forbidden", "write", "read")
        for path in read_calls(pid, body["order_id"], "cus_web"):
            assert nobody.get(path).status_code == 401, path
        time.sleep(1.0)
        assert admin.get(f"/payments/{pid}").json()["status"] == "requires_capture"  # the 403 capture did nothing

        assert wait_history(reader, pid).status_code == 200
        for path in read_calls(pid, body["order_id"], "cus_web"):
            r = reader.get(path)
            assert r.status_code == 200, (path, r.text)
        assert reader.get(f"/payments/{pid}").json()["customer_id"] == "cus_web"
        assert writer.get(f"/payments/{pid}").status_code == 200  # write includes read

        r = writer.post(f"/payments/{pid}/capture", json={}, headers=idem())
        assert r.status_code == 202, r.text
        assert wait_status(writer, pid, {"succeeded"})["captured"] == body["amount"]
        r = writer.post(f"/payments/{pid}/refunds", json={"amount": 100}, headers=idem())
        assert r.status_code == 202 and r.json()["refund_id"], r.text
        other, _ = manual_payment(writer)
        assert writer.post(f"/payments/{other}/cancel", json={}, headers=idem()).status_code == 202
        wait_status(writer, other, {"canceled"})
        added = writer.post("/customers/cus_web/payment-methods", json=method_body(), headers=idem())
        assert added.status_code == 202, added.text
        method_id = added.json()["payment_method_id"]
        assert writer.delete(f"/customers/cus_web/payment-methods/{method_id}").status_code == 202
        wait_status(writer, pid, {"partially_refunded"})

    def refusals(records: list[Any]) -> list[Any]:
        return [r for r in records if r.detail.get("status") == 403]

    forbidden = refusals(audit_records(stack_env, "itest-read", started, lambda rs: len(refusals(rs)) >= 6))
    assert len(forbidden) == 6
    assert {r.action for r in forbidden} == {"payment.create", "payment.capture", "payment.cancel", "payment.refund",
                                             "payment_method.add", "payment_method.remove"}
    assert all(r.outcome == "rejected" and r.detail["denied"] == "insufficient_scope"
               and r.detail["required_scope"] == "write" for r in forbidden)


def test_customer_bound_key_sees_and_commands_only_its_customer(edge: EdgeWorker, stack_env: dict[str, str]) -> None:
    started = time.time_ns() // 1_000_000
    with edge.client() as admin, edge.client(API_KEY_BOUND) as bound:
        foreign, foreign_body = manual_payment(admin, "cus_web")
        own, own_body = manual_payment(bound, BOUND_CUSTOMER)
        assert bound.get(f"/payments/{own}").json()["customer_id"] == BOUND_CUSTOMER

        # another customer's payment answers exactly like one that does not exist
        missing = bound.get(f"/payments/pay_{uuid.uuid4().hex}")
        hidden = bound.get(f"/payments/{foreign}")
        assert (hidden.status_code, hidden.json()) == (missing.status_code, missing.json()) == (
            404, {"error": "payment_not_found"})
        assert wait_history(admin, foreign).status_code == 200 and wait_history(bound, own).status_code == 200
        r = bound.get(f"/payments/{foreign}/history")
        assert (r.status_code, r.json()) == (404, {"error": "payment_not_found"})
        for action in ("capture", "cancel", "refunds"):
            r = bound.post(f"/payments/{foreign}/{action}", json={}, headers=idem())
            assert (r.status_code, r.json()) == (404, {"error": "payment_not_found"}), (action, r.text)
        time.sleep(1.0)
        assert admin.get(f"/payments/{foreign}").json()["status"] == "requires_capture"

        # listings hold only the key's customer, whatever the filter
        r = bound.get("/payments", params={"customer_id": "cus_web"})
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        assert admin.get("/payments", params={"order_id": foreign_body["order_id"]}).json()["payments"]
        assert bound.get("/payments", params={"order_id": foreign_body["order_id"]}).json() == {
            "payments": [], "next_cursor": None}
        in_range = bound.get("/payments", params={"from": started, "limit": 500}).json()["payments"]
        assert own in [p["payment_id"] for p in in_range] and foreign not in [p["payment_id"] for p in in_range]
        listed = bound.get("/payments", params={"limit": 500}).json()["payments"]
        assert own in [p["payment_id"] for p in listed]
        assert {p["customer_id"] for p in listed} == {BOUND_CUSTOMER}
        assert [p["payment_id"] for p in bound.get("/payments", params={"order_id": own_body["order_id"]})
                .json()["payments"]] == [own]

        # payment methods and commands naming another customer: 403
        assert bound.get("/customers/cus_web/payment-methods").status_code == 403
        assert bound.get(f"/customers/{BOUND_CUSTOMER}/payment-methods").status_code == 200
        assert bound.post("/customers/cus_web/payment-methods", json=method_body(), headers=idem()).status_code == 403
        assert bound.delete("/customers/cus_web/payment-methods/pm_x").status_code == 403
        assert bound.post(f"/customers/{BOUND_CUSTOMER}/payment-methods", json=method_body(),
                          headers=idem()).status_code == 202
        key = f"idem-{uuid.uuid4()}"
        r = bound.post("/payments", json=create_body(customer_id="cus_web"), headers={"Idempotency-Key": key})
        assert r.status_code == 403 and r.json()["error"] == "forbidden"

        # its own payment it may command
        assert bound.post(f"/payments/{own}/capture", json={}, headers=idem()).status_code == 202
        assert wait_status(bound, own, {"succeeded"})["captured"] == own_body["amount"]
        assert admin.get(f"/payments/{derived_id('pay', 'itest-bound', key)}").status_code == 404  # never produced

    def mismatches(records: list[Any]) -> list[Any]:
        return [r for r in records if str(r.detail.get("denied", "")).startswith("customer_mismatch")]

    denied = mismatches(audit_records(stack_env, "itest-bound", started, lambda rs: len(mismatches(rs)) >= 10))
    assert len(denied) == 10
    assert {r.resource for r in denied} >= {f"payment:{foreign}", "customer:cus_web"}
    assert all(r.outcome == "rejected" for r in denied)


def test_history_by_customer_and_time_range_pages_with_a_cursor(edge: EdgeWorker) -> None:
    customer = f"cus_hist_{uuid.uuid4().hex[:10]}"
    with edge.client() as c, edge.client(API_KEY_READ) as reader:
        started = time.time_ns() // 1_000_000
        for _ in range(5):
            r = c.post("/payments", json=create_body(customer_id=customer), headers=idem())
            assert r.status_code == 202, r.text
            time.sleep(0.02)  # distinct creation times, most of the time
        deadline = time.monotonic() + 60
        while True:  # the sink stores them a moment later
            everything = c.get("/payments", params={"customer_id": customer, "limit": 500}).json()
            if len(everything["payments"]) == 5 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        rows = everything["payments"]
        assert len(rows) == 5 and everything["next_cursor"] is None
        assert rows == sorted(rows, key=lambda p: (p["created_at"], p["payment_id"]))

        # keyset pages of two: 2 + 2 + 1, each page carries on where the one before ended
        pages, cursor = [], None
        while True:
            params: dict[str, Any] = {"customer_id": customer, "limit": 2}
            if cursor:
                params["cursor"] = cursor
            r = reader.get("/payments", params=params)
            assert r.status_code == 200, r.text
            pages.append([p["payment_id"] for p in r.json()["payments"]])
            cursor = r.json()["next_cursor"]
            if cursor is None:
                break
        assert [len(p) for p in pages] == [2, 2, 1]
        assert [pid for page in pages for pid in page] == [p["payment_id"] for p in rows]

        # a time range: from inclusive, to exclusive, on the creation time (epoch ms)
        lo, hi = rows[1]["created_at"], rows[3]["created_at"]
        if lo < hi:
            r = c.get("/payments", params={"customer_id": customer, "from": lo, "to": hi})
            assert [p["payment_id"] for p in r.json()["payments"]] == [
                p["payment_id"] for p in rows if lo <= p["created_at"] < hi]
        # a time range alone lists every customer's payments of that window
        r = c.get("/payments", params={"from": started, "to": rows[-1]["created_at"] + 1, "limit": 500})
        assert r.status_code == 200
        assert {p["payment_id"] for p in rows} <= {p["payment_id"] for p in r.json()["payments"]}
        assert all(started <= p["created_at"] <= rows[-1]["created_at"] for p in r.json()["payments"])

        for params, error in [({"from": "yesterday"}, "invalid_filter"), ({"from": 10, "to": 10}, "invalid_filter"),
                              ({"customer_id": customer, "cursor": "AAAA"}, "invalid_cursor"),
                              ({"to": -5}, "invalid_filter")]:
            r = c.get("/payments", params=params)
            assert (r.status_code, r.json()["error"]) == (400, error), params
    with edge.client(API_KEY_BOUND) as bound:  # a bound key's time range holds only its customer
        r = bound.get("/payments", params={"from": started, "limit": 500})
        assert r.status_code == 200 and not {p["payment_id"] for p in rows} & {
            p["payment_id"] for p in r.json()["payments"]}
        assert {p["customer_id"] for p in r.json()["payments"]} <= {BOUND_CUSTOMER}
