"""``GET /payments/{id}`` with two workers in one consumer group (issue #5): each worker answers
for every payment, from its own table when it owns the payment's partition and otherwise by
forwarding the request to the owner (faust's table routing), and never with a wrong state.

Two workers with the normal app id (the payment topics are shared, so the session worker is
stopped meanwhile, as test_fraud.py does), their own data folders and web ports. Who owns which
partition comes from each worker's router (``/router/payments/``, what the routing itself
uses); both must agree, and each must own at least one partition. A payment's partition is
computed on the test side with the Java client's murmur2 and checked against the partition its
events landed in. The expected state is the last event of the payment on ``payment.events``
(read_committed).

A worker holds table data only for the partitions it owns, and the payments are created after
the split, so a right answer from a worker that does not own the payment's partition can only
come from the owner.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiokafka.partitioner import murmur2

from streams import topics
from tests.conftest import API_KEY_BOUND, API_KEY_READ, BOUND_CUSTOMER, Worker, free_port, worker_env
from tests.integration.test_end_to_end import check_sequences
from tests.support.kafka_tools import Collector, OrderServiceProducer, create_cmd
from tests.support.session import session_worker_paused

APP_ID = "paystream"  # the default app id, which worker_env leaves as it is
CHANGELOG = topics.changelog(APP_ID, "payments")
# What each kind of payment ends as with the simulated gateway (amount triggers, tok_visa).
KINDS: dict[str, tuple[dict[str, Any], str]] = {
    "captured": ({"amount": 1999}, "succeeded"),
    "authorized": ({"amount": 2500, "capture_method": "manual"}, "requires_capture"),
    "declined": ({"amount": 4251}, "failed"),  # amount % 100 == 51: insufficient_funds
}
PER_WORKER_AND_KIND = 2


def partition_of(key: str, partitions: int) -> int:
    """The partition the Java client (and aiokafka, and faust's router) hashes a key to."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def client(w: Worker, key: str | None = API_KEY_READ) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=f"http://127.0.0.1:{w.web_port}", headers=headers, timeout=30)


def router_owners(w: Worker) -> dict[int, int] | None:
    """partition of the payments table -> web port of its owner, as this worker's router sees it."""
    try:
        with client(w, key=None) as c:
            if c.get("/ready").status_code != 200:
                return None
            meta = c.get("/router/payments/").json()
    except httpx.HTTPError:
        return None
    return {p: httpx.URL(url).port or 80 for url, tps in meta.items() for p in tps.get(CHANGELOG, [])}


@dataclass
class Cluster:
    workers: list[Worker]
    partitions: int
    owner: dict[int, Worker]  # partition -> the worker owning it, agreed by both routers

    def owner_of(self, payment_id: str) -> Worker:
        return self.owner[partition_of(payment_id, self.partitions)]

    def other(self, w: Worker) -> Worker:
        (o,) = [x for x in self.workers if x is not w]
        return o

    def ids_owned_by(self, w: Worker, prefix: str, count: int) -> list[str]:
        out: list[str] = []
        while len(out) < count:
            pid = f"{prefix}_{uuid.uuid4().hex[:12]}"
            if self.owner_of(pid) is w:
                out.append(pid)
        return out


def wait_split(workers: list[Worker], partitions: int, timeout: float = 240) -> dict[int, Worker]:
    """Until both workers are ready and their routers agree on a split that gives each of them
    at least one partition of the payments table."""
    by_port = {w.web_port: w for w in workers}
    deadline = time.monotonic() + timeout
    seen: list[dict[int, int] | None] = []
    while time.monotonic() < deadline:
        assert all(w.alive for w in workers), [w.log.read_text(errors="replace")[-2000:] for w in workers]
        seen = [router_owners(w) for w in workers]
        first = seen[0]
        if first is not None and all(s == first for s in seen) and set(first) == set(range(partitions)) \
                and set(first.values()) == set(by_port):
            return {p: by_port[port] for p, port in first.items()}
        time.sleep(1)
    raise AssertionError(f"no agreed split of the payments partitions within {timeout}s: {seen}")


@pytest.fixture(scope="module")
def cluster(stack_env: dict[str, str], producer: OrderServiceProducer, request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with session_worker_paused(request):
        yield from _cluster(stack_env, producer, tmp_path_factory)


def _cluster(stack_env: dict[str, str], producer: OrderServiceProducer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("two-workers")
    workers: list[Worker] = []
    try:
        for name in ("a", "b"):
            port = free_port()
            w = Worker(worker_env(stack_env, tmp / f"{name}-data", port), tmp / f"worker-{name}.log", producer, port)
            w.start()
            workers.append(w)
        col = Collector(stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"], stack_env["PAYSTREAM_SCHEMA_REGISTRY_URL"])
        try:
            partitions = len(col.consumer.list_topics(CHANGELOG, timeout=10).topics[CHANGELOG].partitions)
        finally:
            col.close()
        assert partitions >= 2, f"{CHANGELOG} has {partitions} partition(s): two workers cannot split it"
        owner = wait_split(workers, partitions)
        workers[0].wait_ready()  # the group processes commands (a probe payment gets its result)
        yield Cluster(workers, partitions, owner)
    finally:
        for w in workers:
            w.stop()


@dataclass
class Created:
    last_event: dict[str, dict[str, Any]]  # payment id -> its last event on payment.events
    customer: dict[str, str]


@pytest.fixture(scope="module")
def created(cluster: Cluster, producer: OrderServiceProducer, stack_env: dict[str, str]) -> Created:
    """Payments of every kind on the partitions of each worker, half of them of BOUND_CUSTOMER,
    each waited for until its last event has the kind's final status."""
    want: dict[str, str] = {}
    customer: dict[str, str] = {}
    col = Collector(stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"], stack_env["PAYSTREAM_SCHEMA_REGISTRY_URL"])
    try:
        for w in cluster.workers:
            for kind, (fields, final) in KINDS.items():
                for i, pid in enumerate(cluster.ids_owned_by(w, f"pay_2w_{kind}", PER_WORKER_AND_KIND)):
                    customer[pid] = BOUND_CUSTOMER if i % 2 == 0 else "cus_2w_other"
                    producer.send(create_cmd(pid, customer_id=customer[pid], **fields))
                    want[pid] = final
        producer.flush()

        def finished(c: Collector) -> bool:
            return all(c.by_payment[p] and c.by_payment[p][-1]["status"] == s for p, s in want.items())

        ok = col.wait(finished, timeout=120)
        assert ok, {p: [(e["_type"], e["status"]) for e in col.by_payment[p]] for p in want}
        last: dict[str, dict[str, Any]] = {}
        for pid in want:
            events = col.by_payment[pid]
            check_sequences(events)
            # The test's idea of a payment's partition is the producers' and the workers' one.
            assert {e["_partition"] for e in events} == {partition_of(pid, cluster.partitions)}, pid
            last[pid] = events[-1]
        return Created(last, customer)
    finally:
        col.close()


def assert_view_is(view: dict[str, Any], last: dict[str, Any], customer: str) -> None:
    totals = last["totals"][1]  # a union: (record name, record)
    assert view["payment_id"] == last["payment_id"]
    assert (view["status"], view["sequence"], view["order_id"], view["customer_id"]) == \
        (last["status"], last["sequence"], last["order_id"], customer)
    assert (view["amount"], view["currency"], view["authorized"], view["captured"], view["refunded"]) == \
        (totals["amount"], totals["currency"], totals["authorized"], totals["captured"], totals["refunded"])


def test_both_workers_own_partitions(cluster: Cluster) -> None:
    owned = {w.web_port: sorted(p for p, o in cluster.owner.items() if o is w) for w in cluster.workers}
    assert all(owned.values()), owned
    # Each worker's /ready counts partitions it was assigned (all its input and changelog topics).
    for w in cluster.workers:
        with client(w, key=None) as c:
            assert c.get("/ready").json()["assigned_partitions"] > 0


def test_every_worker_answers_every_payment_with_its_state(cluster: Cluster, created: Created) -> None:
    forwarded = {w.web_port: 0 for w in cluster.workers}
    for w in cluster.workers:
        with client(w) as c:
            for pid, last in created.last_event.items():
                r = c.get(f"/payments/{pid}")
                assert r.status_code == 200, (w.web_port, pid, r.status_code, r.text)
                assert r.headers["content-type"].startswith("application/json")
                assert_view_is(r.json(), last, created.customer[pid])
                if cluster.owner_of(pid) is not w:
                    forwarded[w.web_port] += 1
    # Every worker answered payments of the other worker's partitions: those went to the owner.
    assert all(n >= len(KINDS) * PER_WORKER_AND_KIND for n in forwarded.values()), forwarded


def test_forwarded_request_keeps_the_callers_key(cluster: Cluster, created: Created) -> None:
    """The owner checks the key again: a customer-bound key sees its customer's payments through
    either worker, another customer's payment is 404 through either (a read, and a command's
    ownership check), no key is 401 on both."""
    for w in cluster.workers:
        with client(w, key=API_KEY_BOUND) as bound, client(w, key=None) as anonymous:
            for pid, last in created.last_event.items():
                r = bound.get(f"/payments/{pid}")
                if created.customer[pid] == BOUND_CUSTOMER:
                    assert r.status_code == 200, (w.web_port, pid, r.text)
                    assert_view_is(r.json(), last, BOUND_CUSTOMER)
                else:
                    assert (r.status_code, r.json()) == (404, {"error": "payment_not_found"}), (w.web_port, pid)
                    # A command is checked against the live owner too (nothing is produced).
                    r = bound.post(f"/payments/{pid}/capture", json={},
                                   headers={"Idempotency-Key": f"idem-{uuid.uuid4()}"})
                    assert (r.status_code, r.json()) == (404, {"error": "payment_not_found"}), (w.web_port, pid)
                assert anonymous.get(f"/payments/{pid}").status_code == 401


def test_unknown_payment_is_404_on_both_workers(cluster: Cluster) -> None:
    unknown = [pid for w in cluster.workers for pid in cluster.ids_owned_by(w, "pay_2w_unknown", 2)]
    for w in cluster.workers:
        with client(w) as c:
            for pid in unknown:
                r = c.get(f"/payments/{pid}")
                assert (r.status_code, r.json()) == (404, {"error": "payment_not_found"}), (w.web_port, pid, r.text)


def test_owner_killed_answers_503_until_the_survivor_owns_it(cluster: Cluster, created: Created) -> None:
    """SIGKILL one worker, then ask the other for the dead one's payments until it has taken
    their partitions over: each answer is the right state or a 503 with Retry-After, never
    another error and never a wrong state (a 404 for a payment that exists included)."""
    dead, survivor = cluster.workers[1], cluster.workers[0]
    theirs = [pid for pid in created.last_event if cluster.owner_of(pid) is dead]
    assert theirs
    dead.kill()
    answers: list[tuple[int, str]] = []
    pending = set(theirs)
    deadline = time.monotonic() + 240
    with client(survivor) as c:
        while pending and time.monotonic() < deadline:
            for pid in sorted(pending):
                try:
                    r = c.get(f"/payments/{pid}")
                except httpx.HTTPError as exc:  # the survivor itself must keep answering
                    raise AssertionError(f"{pid}: {exc!r}; answers so far {answers}") from exc
                answers.append((r.status_code, r.text[:200]))
                if r.status_code == 200:
                    assert_view_is(r.json(), created.last_event[pid], created.customer[pid])
                    pending.discard(pid)
                else:
                    assert r.status_code == 503, answers
                    assert int(r.headers["Retry-After"]) > 0, (r.headers, answers)
            time.sleep(0.5)
    assert not pending, f"never answered by the survivor: {sorted(pending)}; answers {answers[-10:]}"
    assert survivor.alive
    print("answers after the kill:", sorted({(s, t[:60]) for s, t in answers}))
