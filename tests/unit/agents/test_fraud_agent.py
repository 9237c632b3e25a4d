"""agents/fraud.py: the hops over windowed aggregates, a recorded command stream replayed through
the pure engine with the in-memory aggregate model *and* through the faust agent's windowed
tables (faust's test context, no broker), the blocklist admin agent, the message shapes and the
external scorer against a local HTTP server."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import faust
import httpx
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from agents import fraud as af
from paystream.config import Settings
from paystream.core import commands as cmds
from paystream.core import fraud as fr

ROOT = Path(__file__).resolve().parents[3]
FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "fraud_replay.json").read_text())
ACTIVE = af.load_ruleset_file(ROOT / "config" / "fraud-rules.yaml")
CANDIDATE = af.load_ruleset_file(ROOT / "config" / "fraud-rules.candidate.yaml")

A, R, B = fr.Decision.ALLOW, fr.Decision.REVIEW, fr.Decision.BLOCK
# What the recorded stream must give, in the order the payments were observed:
# (payment, active decision, active rules, shadow decision, shadow rules).
EXPECTED: list[tuple[str, fr.Decision, tuple[str, ...], fr.Decision, tuple[str, ...]]] = [
    ("pay-001", A, (), A, ()),                                   # alice, saved card, nothing unusual
    ("pay-004", A, (), A, ()),                                   # bob's burst: 1st..3rd in a minute
    ("pay-005", A, (), A, ()),
    ("pay-006", A, (), A, ()),
    ("pay-007", R, ("customer_count_1m",), R, ("customer_count_1m",)),  # 4th in a minute
    ("pay-008", R, ("customer_count_1m",), R, ("customer_count_1m",)),
    ("pay-002", A, (), A, ()),
    ("pay-009", A, (), A, ()),                                   # one card, five customers
    ("pay-010", A, (), A, ()),
    ("pay-011", A, (), R, ("card_count_1m",)),                   # candidate: more than 2 a minute
    ("pay-012", R, ("card_count_1m",), R, ("card_count_1m",)),   # active: more than 3
    ("pay-013", R, ("card_count_1m",), R, ("card_count_1m",)),
    ("pay-014", R, ("large_amount",), R, ("large_amount",)),     # 3000.00 USD
    ("pay-015", R, ("large_amount",), R, ("large_amount",)),     # 40,000,000 JPY (no minor unit)
    ("pay-016", B, ("customer_amount_1d", "large_amount", "huge_amount"), B, ("large_amount", "huge_amount")),
    ("pay-017", A, (), R, ("large_amount",)),                    # 2000.00 USD: only the candidate reviews
    ("pay-018", A, (), A, ()),                                   # bob two hours later: windows moved on
    ("pay-019", A, (), A, ()),                                   # mallory's cards 1..4, 2 min apart
    ("pay-020", A, (), A, ()),
    ("pay-021", A, (), R, ("many_cards_1d",)),
    ("pay-022", R, ("many_cards_1d",), R, ("many_cards_1d",)),
    ("pay-023", R, ("card_shipping_country_mismatch",), R, ("card_shipping_country_mismatch",)),  # US card, DE
    ("pay-024", A, (), A, ()),                                   # US card, shipping "us"
    ("pay-025", B, ("blocklisted",), B, ("blocklisted",)),       # customer blocklisted
    ("pay-026", B, ("blocklisted",), B, ("blocklisted",)),       # e-mail blocklisted (other case, spaces)
    ("pay-027", B, ("blocklisted",), B, ("blocklisted",)),       # card fingerprint blocklisted
    ("pay-028", A, (), A, ()),                                   # customer removed from the blocklist
    ("pay-029", A, (), A, ()),                                   # six customers behind one IP
    ("pay-030", A, (), A, ()),
    ("pay-031", A, (), A, ()),
    ("pay-032", A, (), A, ()),
    ("pay-033", A, (), A, ()),
    ("pay-034", R, ("ip_count_1m",), R, ("ip_count_1m",)),
    ("pay-003", A, (), A, ()),
]


def summary(verdicts: list[fr.FraudVerdict]) -> list[tuple[str, fr.Decision, tuple[str, ...], fr.Decision,
                                                          tuple[str, ...]]]:
    out = []
    for v in verdicts:
        assert v.shadow is not None
        out.append((v.payment_id, v.outcome.decision, v.outcome.rules, v.shadow.decision, v.shadow.rules))
    return out


class Replay:
    """Turns the fixture's entries into check requests the way the payments agent will."""

    def __init__(self) -> None:
        self.methods: dict[str, tuple[str | None, str | None]] = {}

    def request(self, entry: dict[str, Any], partition: int = 0) -> fr.FraudCheckRequest | None:
        command = cmds.from_avro(entry["value"])
        body = command.body
        if isinstance(body, cmds.AddPaymentMethod):
            self.methods[command.payment_id] = (body.fingerprint, entry.get("card_country"))
            return None
        assert isinstance(body, cmds.CreatePayment) and cmds.validate(command) is None
        fingerprint, country = self.methods.get(body.saved_method_id or "", (None, None))
        observed_at = FIXTURE["t0_ms"] + entry["at_s"] * 1000
        return fr.check_request(command, observed_at, partition, fingerprint=fingerprint, card_country=country)


# --- the pure engine with the in-memory aggregate model -------------------------------------


def test_replay_through_the_engine_and_the_in_memory_model() -> None:
    blocklist: dict[str, Any] = {}
    engine = af.FraudEngine(ACTIVE, CANDIDATE, af.InMemoryWindowStore(), blocklist)
    replay = Replay()
    verdicts: list[fr.FraudVerdict] = []
    hops = 0

    async def run() -> None:
        nonlocal hops
        for entry in FIXTURE["entries"]:
            if entry["topic"] != "payment.requests":
                af.apply_blocklist_command(blocklist, fr.parse_blocklist_command(entry["value"]))
                continue
            request = replay.request(entry)
            result: fr.FraudCheckRequest | fr.FraudVerdict | None = request
            while isinstance(result, fr.FraudCheckRequest):
                hops += 1
                result = await engine.process(result)
            if result is not None:
                verdicts.append(result)

    asyncio.run(run())
    assert len(FIXTURE["entries"]) == 50
    assert summary(verdicts) == EXPECTED
    assert hops == 34 + 34 + 15  # every payment has a customer and an IP; 15 used a saved card
    assert blocklist.keys() == {"email:" + fr.email_hash("fraud@example.com"), "fingerprint:fp_bad"}


def test_each_hop_counts_its_own_dimension() -> None:
    store = af.InMemoryWindowStore()
    plan = af.plan_windows(ACTIVE)
    body = cmds.CreatePayment(order_id="o", customer_id="cus_1", amount=700, currency="EUR", customer_ip="192.0.2.1")
    cmd = cmds.Command("c1", "pay-1", 1, "t", body)
    request = fr.check_request(cmd, 1_750_000_000_000, 5, fingerprint="fp_1")
    first = af.count_stage(request, plan, store)
    assert first.stages == (fr.Dimension.FINGERPRINT, fr.Dimension.IP)
    assert {(v.dimension, v.window) for v in first.features.velocity} == {
        (fr.Dimension.CUSTOMER, w) for w in ("1m", "1h", "1d")}
    assert first.features.distinct_cards == (fr.DistinctCardsFeature("1d", 1),)
    second = af.count_stage(first, plan, store)
    third = af.count_stage(second, plan, store)
    assert third.stages == ()
    assert {(v.dimension, v.window, v.count, v.amount) for v in third.features.velocity} == {
        (fr.Dimension.CUSTOMER, "1m", 1, 700), (fr.Dimension.CUSTOMER, "1h", 1, 700),
        (fr.Dimension.CUSTOMER, "1d", 1, 700), (fr.Dimension.FINGERPRINT, "1m", 1, 700),
        (fr.Dimension.FINGERPRINT, "1h", 1, 700), (fr.Dimension.IP, "1m", 1, 700), (fr.Dimension.IP, "1h", 1, 700)}
    # amounts are summed per currency: a USD payment does not add to the EUR sum
    usd = fr.check_request(replace(cmd, payment_id="pay-2", body=replace(body, amount=5, currency="USD")),
                           1_750_000_001_000, 5)
    assert af.count_stage(usd, plan, store).features.velocity_for(fr.Dimension.CUSTOMER, "1m") == \
        fr.VelocityFeature(fr.Dimension.CUSTOMER, "1m", 2, 5)


def test_a_repeated_hop_of_a_payment_is_not_counted_again() -> None:
    store = af.InMemoryWindowStore()
    plan = af.plan_windows(ACTIVE)
    cmd = cmds.Command("c1", "pay-1", 1, "t", cmds.CreatePayment(order_id="o", customer_id="cus_1", amount=700,
                                                               currency="EUR", customer_ip="192.0.2.1"))
    request = fr.check_request(cmd, 1_750_000_000_000, 5)
    first = af.count_stage(request, plan, store)
    assert first is not None and first.features.velocity_for(fr.Dimension.CUSTOMER, "1m").count == 1
    assert af.count_stage(request, plan, store) is None  # the same hop again: dropped
    assert af.count_stage(first, plan, store) is not None  # its next hop (the IP) is counted once
    assert af.count_stage(first, plan, store) is None
    other = fr.check_request(replace(cmd, payment_id="pay-2", command_id="c2"), 1_750_000_001_000, 5)
    counted = af.count_stage(other, plan, store)
    assert counted is not None and counted.features.velocity_for(fr.Dimension.CUSTOMER, "1m").count == 2


def test_in_memory_windows_forget_old_payments() -> None:
    store, w = af.InMemoryWindowStore(), fr.Window("1m", 60, 15)
    t0 = 1_750_000_000_000 - 1_750_000_000_000 % 15_000
    assert store.add_payment(w, "customer:c", "USD", 10, t0) == (1, 10)
    assert store.add_payment(w, "customer:c", "USD", 10, t0 + 44_999) == (2, 20)  # lookback >= 45 s
    assert store.add_payment(w, "customer:c", "USD", 10, t0 + 60_000) == (2, 20)  # t0 fell out
    assert store.add_payment(w, "customer:c", "USD", 10, t0 + 200_000) == (1, 10)


def test_windows_must_agree_between_active_and_candidate() -> None:
    other = replace(CANDIDATE, windows=(fr.Window("1m", 60, 30), *CANDIDATE.windows[1:]))
    with pytest.raises(fr.RuleSetError, match="window '1m' differs"):
        af.plan_windows(ACTIVE, other)
    plan = af.plan_windows(ACTIVE, CANDIDATE)
    assert [w.name for w in plan.velocity[fr.Dimension.IP]] == ["1m", "1h"]
    assert [w.name for w in plan.cards] == ["1d"]


# --- the faust agent: windowed tables and the GlobalTable in faust's test context -----------


@asynccontextmanager
async def fraud_app(active: fr.RuleSet = ACTIVE, candidate: fr.RuleSet | None = CANDIDATE,
                    scorer: af.Scorer | None = None) -> AsyncIterator[Any]:
    # No broker is contacted: faust's test context feeds agents directly; tables use memory://.
    app = faust.App(f"fraud-test-{uuid.uuid4().hex[:8]}", broker="kafka://127.0.0.1:9", store="memory://")
    harness = FaustHarness()
    settings = Settings()  # type: ignore[call-arg]  # filled from the environment
    wiring = af.install_fraud(app, settings, harness.send_verdict, active=active, candidate=candidate,
                              scorer=scorer, send=harness.send, partitions=1)
    async with wiring.agent.test_context() as checks, wiring.admin_agent.test_context() as admin:
        harness.checks, harness.admin, harness.wiring = checks, admin, wiring
        yield harness


class FaustHarness:
    checks: Any
    admin: Any
    wiring: af.FraudWiring

    def __init__(self) -> None:
        self.sent: list[tuple[str, af.OutMessage]] = []
        self.verdicts: list[fr.FraudVerdict] = []
        self.forwarded_keys: list[bytes] = []

    async def send(self, event: Any, topic: str, msg: af.OutMessage) -> None:
        self.sent.append((topic, msg))

    async def send_verdict(self, event: Any, verdict: fr.FraudVerdict) -> None:
        self.verdicts.append(verdict)

    async def check(self, request: fr.FraudCheckRequest) -> fr.FraudVerdict:
        """Put the first hop on the agent, then every forward it sends, until it answers."""
        before = len(self.verdicts)
        pending = [af.request_message(request)]
        while pending:
            msg = pending.pop()
            self.sent.clear()
            await self.checks.put(msg.value, key=msg.key, timestamp=msg.timestamp_s)
            forwards = [m for topic, m in self.sent if topic == self.wiring.topics[0]]
            self.forwarded_keys += [m.key for m in forwards]
            pending += forwards
        assert len(self.verdicts) == before + 1
        return self.verdicts[-1]


def test_replay_through_the_faust_agent_windowed_tables() -> None:
    async def run() -> list[fr.FraudVerdict]:
        replay = Replay()
        async with fraud_app() as h:
            for entry in FIXTURE["entries"]:
                if entry["topic"] != "payment.requests":
                    await h.admin.put(json.dumps(entry["value"]).encode(), key=b"k")
                    continue
                request = replay.request(entry)
                if request is not None:
                    await h.check(request)
            assert "customer:cus_ivan" not in h.wiring.blocklist
            assert "fingerprint:fp_bad" in h.wiring.blocklist
            verdicts: list[fr.FraudVerdict] = h.verdicts
            return verdicts

    verdicts = asyncio.run(run())
    assert summary(verdicts) == EXPECTED  # the faust tables agree with the in-memory model


def test_faust_hops_forward_by_dimension_key_and_answer_to_the_payment_partition() -> None:
    cmd = cmds.Command("c1", "pay-77", 1, "t", cmds.CreatePayment(
        order_id="o", customer_id="cus_7", amount=999, currency="USD", customer_ip="192.0.2.7"))
    request = fr.check_request(cmd, 1_750_000_000_000, 6, fingerprint="fp_7")

    def fired(rule: str, mode: str = "active") -> float:
        return REGISTRY.get_sample_value("paystream_fraud_rule_fired_total", {"rule": rule, "mode": mode}) or 0.0

    def reviewed(rule: str) -> float:
        return REGISTRY.get_sample_value("paystream_fraud_rule_reviewed_total", {"rule": rule, "mode": "active"}) or 0.0

    before = fired("card_count_1m"), reviewed("card_count_1m"), fired("card_count_1m", "shadow")

    async def run() -> tuple[fr.FraudVerdict, list[bytes], Any]:
        async with fraud_app() as h:
            v = await h.check(request)
            for i in range(1, 4):  # the same card three more times in the minute
                again = replace(request, payment_id=f"pay-7{i}", observed_at=request.observed_at + i * 1000)
                last = await h.check(again)
            return v, h.forwarded_keys, (last, h.wiring.store)

    first, keys, (last, store) = asyncio.run(run())
    assert keys[:2] == [b"fingerprint:fp_7", b"ip:192.0.2.7"]
    assert (first.payment_id, first.partition, first.decision) == ("pay-77", 6, fr.Decision.ALLOW)
    assert last.outcome.rules == ("customer_count_1m", "card_count_1m")  # 4 > 3 for both
    # per-rule metrics: the 4th payment fired it (active); the candidate (> 2) fired on the 3rd and 4th
    after = fired("card_count_1m"), reviewed("card_count_1m"), fired("card_count_1m", "shadow")
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 2]
    assert set(store.counts) == {"1m", "1h", "1d"} and set(store.cards) == {"1d"}
    msg = af.verdict_message(last)
    assert (msg.key, msg.partition) == (b"pay-73", 6)
    assert af.decode_verdict(msg.value) == last


def test_faust_agent_drops_a_repeated_check_and_guards_its_inputs() -> None:
    """A hop that arrives twice (same payment, a new offset: a duplicate message) is neither
    counted again nor answered twice; the fraud topics are under the input guard's ack guard."""
    cmd = cmds.Command("c1", "pay-dup", 1, "t", cmds.CreatePayment(order_id="o", customer_id="cus_dup", amount=5,
                                                                 currency="USD"))
    request = fr.check_request(cmd, 1_750_000_000_000, 3)

    def dropped() -> float:
        return REGISTRY.get_sample_value("paystream_fraud_duplicate_hops_total", {"dimension": "customer"}) or 0.0

    before = dropped()

    async def run() -> tuple[list[fr.FraudVerdict], int, Any, dict[str, Any]]:
        async with fraud_app() as h:
            await h.check(request)
            msg = af.request_message(request)
            # The duplicate, under another Kafka timestamp: the windows follow observed_at, not the
            # message's timestamp (a check the gap healer reads back runs under a later event's).
            await h.checks.put(msg.value, key=msg.key, timestamp=msg.timestamp_s + 40)
            nxt = replace(request, payment_id="pay-dup-2", command_id="c2", observed_at=request.observed_at + 1000)
            await h.check(nxt)
            applied = dict(h.wiring.guard.table.items())
            store = h.wiring.store
            count = int(store.counts["1m"]["customer:cus_dup"].current(event=store._at(nxt.observed_at)))
            return h.verdicts, count, h.wiring.guard.app._paystream_ack_guards, applied

    verdicts, count, guards, applied = asyncio.run(run())
    assert count == 2  # two payments, three check messages
    assert [v.payment_id for v in verdicts] == ["pay-dup", "pay-dup-2"]  # no second verdict for pay-dup
    assert dropped() - before == 1
    checks, admin = af.checks_topic(Settings().app_id), af.admin_topic(Settings().app_id)  # type: ignore[call-arg]
    assert {checks, admin} <= set(guards)
    assert applied == {f"{checks}:0": 2}  # three inputs on partition 0, offsets 0..2, each applied once


def test_a_failing_check_still_answers_review() -> None:
    class Broken(af.InMemoryWindowStore):
        def add_payment(self, *args: Any) -> tuple[int, int]:
            raise RuntimeError("disk on fire")

    cmd = cmds.Command("c1", "pay-9", 1, "t", cmds.CreatePayment(order_id="o", customer_id="c", amount=1,
                                                               currency="USD"))

    async def run() -> tuple[fr.FraudVerdict, list[tuple[str, af.OutMessage]]]:
        async with fraud_app() as h:
            h.wiring.engine.store = Broken()
            v = await h.check(fr.check_request(cmd, 1_750_000_000_000, 2))
            h.sent.clear()
            await h.checks.put(b"{not json", key=b"customer:c", timestamp=1_750_000_000.0)
            return v, list(h.sent)

    verdict, dead = asyncio.run(run())
    assert (verdict.decision, verdict.outcome.rules, verdict.partition) == (fr.Decision.REVIEW,
                                                                            ("fraud_check_error",), 2)
    assert [(topic, m.value) for topic, m in dead] == [("payment.deadletter", b"{not json")]


def test_admin_agent_maintains_the_global_blocklist_and_audits() -> None:
    add = {"command_id": "adm-1", "op": "add", "kind": "email", "value": "Eve@Example.org", "actor": "analyst",
           "issued_at": 1_750_000_000_000}

    async def run() -> tuple[Any, list[tuple[str, af.OutMessage]], dict[str, Any]]:
        async with fraud_app() as h:
            msg = af.admin_message(add)
            await h.admin.put(msg.value, key=msg.key)
            await h.admin.put(json.dumps(add | {"command_id": "adm-2"}).encode(), key=msg.key)  # again: noop
            snapshot = dict(h.wiring.blocklist)
            await h.admin.put(json.dumps(add | {"op": "remove", "command_id": "adm-3"}).encode(), key=msg.key)
            await h.admin.put(b'{"op": "nuke"}', key=b"x")
            return msg, list(h.sent), snapshot

    msg, sent, snapshot = asyncio.run(run())
    key = "email:" + fr.email_hash("eve@example.org")
    assert msg.key == key.encode() and b"Eve" not in msg.value  # a CLI never puts the plain e-mail on Kafka
    assert list(snapshot) == [key] and snapshot[key]["actor"] == "analyst"
    audits = [json.loads(m.value) for topic, m in sent if topic.endswith("-audit")]
    assert [(a["action"], a["outcome"]) for a in audits] == [
        ("fraud.blocklist.add", "success"), ("fraud.blocklist.add", "noop"), ("fraud.blocklist.remove", "success")]
    assert [topic for topic, _ in sent if topic == "payment.deadletter"] == ["payment.deadletter"]


def test_apply_blocklist_command_reports_changes() -> None:
    table: dict[str, Any] = {}
    add = fr.parse_blocklist_command({"command_id": "a", "op": "add", "kind": "customer", "value": "c1",
                                      "actor": "x", "issued_at": 5})
    remove = replace(add, op=fr.BlocklistOp.REMOVE)
    assert af.apply_blocklist_command(table, add) is True
    assert af.apply_blocklist_command(table, add) is False
    assert af.apply_blocklist_command(table, remove) is True
    assert af.apply_blocklist_command(table, remove) is False and table == {}


def test_message_shapes_round_trip() -> None:
    cmd = cmds.Command("c1", "pay-1", 1, "t", cmds.CreatePayment(
        order_id="o", customer_id="cus_1", amount=1999, currency="USD", customer_email="a@b.c"))
    request = af.count_stage(fr.check_request(cmd, 1_750_000_000_250, 3), af.plan_windows(ACTIVE),
                             af.InMemoryWindowStore())
    plain = json.loads(af.encode_request(request))
    assert plain["features"]["email_hash"] == fr.email_hash("a@b.c") and "a@b.c" not in af.encode_request(
        request).decode()
    assert plain["stages"] == [] and plain["features"]["velocity"][0]["dimension"] == "customer"
    assert af.decode_request(af.encode_request(request)) == request
    first = af.request_message(fr.check_request(cmd, 1_750_000_000_250, 3))
    assert (first.key, first.partition, first.timestamp_s) == (b"customer:cus_1", None, 1_750_000_000.25)


# --- the external scorer over HTTP ---------------------------------------------------------


@asynccontextmanager
async def scorer_server(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/score", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/score"
    finally:
        await runner.cleanup()


def config(url: str, timeout_ms: int = 300) -> fr.ExternalScorerConfig:
    return fr.ExternalScorerConfig(url=url, timeout_ms=timeout_ms, review_at=70, block_at=90,
                                   fallback=fr.Decision.REVIEW, weight=50)


FEATURES = fr.Features(customer_id="cus_1", amount=1999, currency="USD", email_hash=fr.email_hash("a@b.c"),
                       velocity=(fr.VelocityFeature(fr.Dimension.CUSTOMER, "1m", 2, 3998),))


def test_scorer_sends_the_features_and_reads_the_score() -> None:
    seen: list[Any] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(await request.json())
        return web.json_response({"score": 75})

    async def run() -> fr.ExternalScore:
        async with scorer_server(handler) as url, httpx.AsyncClient() as client:
            return await af.score_externally(client, config(url), FEATURES)

    assert asyncio.run(run()) == fr.ExternalScore(75)
    body = seen[0]
    assert (body["amount"], body["currency"], body["customer_id"]) == (1999, "USD", "cus_1")
    assert body["email_sha256"] == fr.email_hash("a@b.c") and "email_hash" not in body
    assert body["velocity"] == [{"dimension": "customer", "window": "1m", "count": 2, "amount": 3998}]


@pytest.mark.parametrize(("answer", "error"), [
    ("slow", "timeout"), (web.json_response({"score": 1}, status=503), "http_503"),
    (web.json_response({"score": 101}), "invalid_response"), (web.json_response({"score": True}), "invalid_response"),
    (web.json_response({"score": "80"}), "invalid_response"), (web.Response(text="<html>"), "invalid_response"),
    (web.json_response([80]), "invalid_response"),
])
def test_scorer_failures_become_unavailable(answer: Any, error: str) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if answer == "slow":
            await asyncio.sleep(2)
            return web.json_response({"score": 0})
        return answer  # type: ignore[no-any-return]

    async def run() -> tuple[fr.ExternalScore, float]:
        async with scorer_server(handler) as url, httpx.AsyncClient() as client:
            start = asyncio.get_running_loop().time()
            result = await af.score_externally(client, config(url, timeout_ms=150), FEATURES)
            return result, asyncio.get_running_loop().time() - start

    result, elapsed = asyncio.run(run())
    assert result == fr.ExternalScore(None, error)
    assert elapsed < 1.5  # the deadline holds, the slow server is not waited for


def test_scorer_unreachable_and_the_engine_falls_back() -> None:
    async def run() -> tuple[fr.ExternalScore, fr.FraudVerdict, fr.FraudVerdict]:
        async def high(request: web.Request) -> web.StreamResponse:
            return web.json_response({"score": 95})

        async with scorer_server(high) as url, httpx.AsyncClient() as client:
            down = await af.score_externally(client, config("http://127.0.0.1:1/score"), FEATURES)
            rules = replace(ACTIVE, external=config(url))
            cmd = cmds.Command("c1", "pay-1", 1, "t", cmds.CreatePayment(order_id="o", customer_id="c", amount=1,
                                                                       currency="USD"))
            live = af.FraudEngine(rules, None, af.InMemoryWindowStore(), set(), af.http_scorer(client))
            scored = await live.process(fr.check_request(cmd, 1_750_000_000_000, 0))
            dead = af.FraudEngine(replace(ACTIVE, external=config("http://127.0.0.1:1/score")), None,
                                  af.InMemoryWindowStore(), set(), af.http_scorer(client))
            fallback = await dead.process(fr.check_request(cmd, 1_750_000_000_000, 0))
            assert isinstance(scored, fr.FraudVerdict) and isinstance(fallback, fr.FraudVerdict)
            return down, scored, fallback

    down, scored, fallback = asyncio.run(run())
    assert down == fr.ExternalScore(None, "unreachable")
    assert (scored.decision, scored.outcome.rules, scored.external_error) == (B, ("external_score",), None)
    assert (fallback.decision, fallback.outcome.rules, fallback.external_error) == (
        R, ("external_scorer_unavailable",), "unreachable")


def test_verdict_sender_sends_in_the_input_partitions_transaction() -> None:
    calls: list[tuple[Any, ...]] = []

    class TxnProducer:  # aiokafka's transactional producer of one transaction
        def __init__(self, tid: str) -> None:
            self.tid = tid

        async def send(self, topic: str, value: bytes, *, key: bytes, partition: int, timestamp_ms: int | None,
                       headers: Any) -> None:
            calls.append((topic, key, value, partition, timestamp_ms, headers, self.tid))

    class Producer:  # faust's: one transactional producer per input partition group and partition
        def __init__(self) -> None:
            self._transaction_producers = {tid: TxnProducer(tid) for tid in ("paystream-0-3", "paystream-9-1",
                                                                               "paystream-0-1")}

    class Assignor:
        def group_for_topic(self, topic: str) -> int:
            return 0 if topic == "paystream-fraud-checks" else 9

    class App:
        in_transaction = True
        producer = Producer()
        assignor = Assignor()

        class conf:  # mimics faust's app.conf
            id = "paystream"

    class Message:
        topic, partition = "paystream-fraud-checks", 3

    class Event:
        message = Message()

    outcome = fr.FraudOutcome(decision=R, rules=("r",), score=5, ruleset_version="v")
    verdict = fr.FraudVerdict(payment_id="pay-1", command_id="c", partition=1, observed_at=1_750_000_000_000,
                              outcome=outcome)
    asyncio.run(af.verdict_sender(App(), "paystream")(Event(), verdict))  # type: ignore[arg-type]
    [(topic, key, value, partition, timestamp, headers, tid)] = calls
    assert (topic, key, partition, timestamp, headers) == ("paystream-fraud-verdicts", b"pay-1", 1,
                                                           1_750_000_000_000, None)
    assert tid == "paystream-0-3"  # the fraud input's partition group and partition, not the destination's
    assert af.decode_verdict(value) == verdict
