"""The fraud agent: velocity aggregates in faust windowed tables, rules from ``paystream.core.fraud``.

Payments are partitioned by payment_id, velocity is per customer, card fingerprint and IP. A
check therefore travels through the internal topic ``<app_id>-fraud-checks`` once per dimension
of the payment, keyed by that dimension (``customer:cus_1``, ``fingerprint:fp_9``,
``ip:203.0.113.7``)::

    payments agent ──FraudCheckRequest (key customer:…)──▶ fraud-checks ─▶ fraud agent
        ▲                                                    ▲      │ counts the customer's windows,
        │                                                    └──────┘ forwards (key fingerprint:…, ip:…)
        │                                                           │ last hop: evaluate rules
        └──── FraudVerdict (key payment_id, the payment's partition) ◀┘ (active + shadow candidate)
              on fraud-verdicts, consumed by the payments agent like gateway replies

Each hop updates the windowed tables of its key only (so each key's aggregates live in one
partition) and sends on in the transaction of its input partition: table changelogs, the
forwarded request or the verdict and the input offset commit together (exactly_once). Every
hop's Kafka timestamp is the ``observed_at`` the payments agent stamped once, so all windows
of a payment are computed from the same instant, on replay too.

The blocklist is a GlobalTable fed by admin commands on ``<app_id>-fraud-admin`` (JSON, see
``paystream.core.fraud.parse_blocklist_command``): every worker sees all of it.

Interface for the payments agent (the lead wires it, see docs/fraud.md):
``install_fraud(app, settings, send_verdict)`` declares the tables and agents and returns a
``FraudWiring``; ``request_message(request)`` gives key, value and timestamp of the first hop;
``decode_verdict(bytes)`` reads an answer. ``send_verdict(event, verdict)`` is the seam the
payments side provides to publish a verdict in the input's transaction (``verdict_message``
gives key/value/partition).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import defaultdict
from collections.abc import Awaitable, Callable, Container, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import faust
import httpx
from prometheus_client import Counter

from paystream.config import Settings
from paystream.core import fraud as fr
from paystream.security import audit as au
from streams import topics
from streams.input_guard import GapReader, InputGuard, PartitionLost, send_in_input_transaction
from tables import codec

log = logging.getLogger("paystream.fraud")

RULES_FILE = Path(__file__).resolve().parent.parent / "config" / "fraud-rules.yaml"
CHECK_ERROR_RULE = "fraud_check_error"


# The fraud topics' names live with every other topic's, in streams/topics.py.
checks_topic = topics.fraud_checks
verdicts_topic = topics.fraud_verdicts
admin_topic = topics.fraud_admin
audit_topic = topics.audit


# --- Metrics (mode: "active" decides the payment, "shadow" is the candidate rule set) --------

RULE_FIRED = Counter("paystream_fraud_rule_fired_total", "Fraud rules that fired", ["rule", "mode"])
RULE_BLOCKED = Counter("paystream_fraud_rule_blocked_total",
                       "Blocked payments, by each rule that fired for them", ["rule", "mode"])
RULE_REVIEWED = Counter("paystream_fraud_rule_reviewed_total",
                        "Payments sent to review, by each rule that fired for them", ["rule", "mode"])
DECISIONS = Counter("paystream_fraud_decisions_total", "Fraud decisions", ["decision", "mode", "ruleset"])
EXTERNAL_CALLS = Counter("paystream_fraud_external_scorer_total", "External scorer calls", ["outcome"])
BLOCKLIST_COMMANDS = Counter("paystream_fraud_blocklist_commands_total", "Blocklist admin commands",
                             ["op", "kind", "outcome"])
CHECK_ERRORS = Counter("paystream_fraud_check_errors_total", "Fraud checks that failed", ["stage"])
DUPLICATE_HOPS = Counter("paystream_fraud_duplicate_hops_total",
                         "Fraud check hops of a payment already counted for that key, dropped", ["dimension"])


def record_metrics(verdict: fr.FraudVerdict) -> None:
    outcomes = [("active", verdict.outcome)] + ([("shadow", verdict.shadow)] if verdict.shadow else [])
    for mode, outcome in outcomes:
        DECISIONS.labels(outcome.decision.value, mode, outcome.ruleset_version).inc()
        for rule in outcome.rules:
            RULE_FIRED.labels(rule, mode).inc()
            if outcome.decision is fr.Decision.BLOCK:
                RULE_BLOCKED.labels(rule, mode).inc()
            elif outcome.decision is fr.Decision.REVIEW:
                RULE_REVIEWED.labels(rule, mode).inc()


# --- Rule files and messages -----------------------------------------------------------------


def load_ruleset_file(path: str | Path) -> fr.RuleSet:
    """A rule set from a ``.yaml``/``.yml`` or ``.json`` file (validated by ``load_ruleset``)."""
    p = Path(path)
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        import yaml  # only needed when rules are YAML

        raw = yaml.safe_load(text)
    else:
        raw = json.loads(text)
    if not isinstance(raw, Mapping):
        raise fr.RuleSetError(f"{p}: expected a mapping at the top")
    return fr.load_ruleset(raw)


def encode_request(request: fr.FraudCheckRequest) -> bytes:
    return codec.encode(request)


def decode_request(data: bytes | str) -> fr.FraudCheckRequest:
    return codec.decode(fr.FraudCheckRequest, data)


def encode_verdict(verdict: fr.FraudVerdict) -> bytes:
    return codec.encode(verdict)


def decode_verdict(data: bytes | str) -> fr.FraudVerdict:
    return codec.decode(fr.FraudVerdict, data)


@dataclass(frozen=True)
class OutMessage:
    key: bytes
    value: bytes
    partition: int | None
    timestamp_s: float | None


def request_message(request: fr.FraudCheckRequest) -> OutMessage:
    """The next hop of a check: keyed by its dimension, partition by key hash (murmur2), Kafka
    timestamp ``observed_at`` (the windows are relative to it)."""
    return OutMessage(fr.hop_key(request).encode(), encode_request(request), None, request.observed_at / 1000)


def verdict_message(verdict: fr.FraudVerdict) -> OutMessage:
    """The verdict: keyed by payment_id, to the payment's own partition."""
    return OutMessage(verdict.payment_id.encode(), encode_verdict(verdict), verdict.partition,
                      verdict.observed_at / 1000)


# --- Windowed aggregates ---------------------------------------------------------------------


class WindowStore(Protocol):
    """The aggregates a hop updates and reads (this payment included)."""

    def add_payment(self, window: fr.Window, key: str, currency: str, amount: int, ts_ms: int) -> tuple[int, int]:
        """Count one payment of ``amount`` for ``key``; returns (count, summed amount in ``currency``)."""
        ...

    def add_card(self, window: fr.Window, customer_key: str, fingerprint: str | None, ts_ms: int) -> int:
        """Note the customer's card (when known); returns the distinct fingerprints in the window."""
        ...

    def first_count(self, key: str, payment_id: str, ts_ms: int) -> bool:
        """Mark ``payment_id`` as counted for ``key``; False when it already was (a replayed hop)."""
        ...


def _amount_key(key: str, currency: str) -> str:
    return f"{key}|{currency}"


def _counted_key(key: str, payment_id: str) -> str:
    return f"{key}|{payment_id}"


def counted_window(windows: tuple[fr.Window, ...]) -> tuple[int, int]:
    """(size_s, expires_s) of the ``fraud-counted`` tumbling table: a replayed hop carries the
    same ``observed_at``, so it falls in the same window as its first count; the marks are kept
    as long as the longest window they guard."""
    size = max((w.size_s for w in windows), default=3600)
    expires = max((w.size_s + w.step_s for w in windows), default=size)
    return size, max(size, expires)


class FaustWindowStore:
    """Hopping windowed tables, relative to the check's ``observed_at``.

    Per window: ``fraud-count-<w>`` (key ``dimension:value``, int), ``fraud-amount-<w>`` (key
    ``dimension:value|CUR``, int minor units) and, for windows a distinct-cards rule reads,
    ``fraud-cards-<w>`` (key ``customer:id``, ``{fingerprint: 1}``: a JSON-friendly set, unioned
    per window with ``|=``). ``+=``/``|=`` update every hopping window containing the timestamp;
    ``delta(size - step)`` reads the earliest of them, which covers the last size_s to within
    one step (``paystream.core.fraud.Window``). Windows expire ``size + step`` after the
    partition's newest timestamp.

    ``fraud-counted`` (tumbling, key ``dimension:value|payment_id``) marks each payment counted
    for a key, so a hop applied twice (a duplicate check message) never counts twice.

    The windows' time is the ``ts_ms`` each call is given (the check's ``observed_at``), not
    the Kafka timestamp of faust's current event: a check read back by the input guard's gap
    healer is applied while faust's current event is a later message.
    """

    def __init__(self, app: faust.App, windows: tuple[fr.Window, ...], card_windows: tuple[fr.Window, ...],
                 partitions: int | None = None) -> None:
        self._now_s = 0.0

        def now(event: Any = None) -> float:
            return self._now_s

        def table(prefix: str, window: fr.Window, default: Callable[[], Any]) -> Any:
            # relative_to(callable) is on faust's WindowWrapper, not on its declared interface
            hopping: Any = (
                app.Table(f"fraud-{prefix}-{window.name}", default=default, key_type=str, partitions=partitions)
                .hopping(window.size_s, window.step_s, expires=float(window.size_s + window.step_s))
            )
            return hopping.relative_to(now)

        self.counts = {w.name: table("count", w, int) for w in windows}
        self.amounts = {w.name: table("amount", w, int) for w in windows}
        self.cards = {w.name: table("cards", w, dict) for w in card_windows}
        size, expires = counted_window(windows)
        tumbling: Any = app.Table("fraud-counted", default=int, key_type=str, partitions=partitions).tumbling(
            size, expires=float(expires))
        self.counted = tumbling.relative_to(now)

    def _at(self, ts_ms: int) -> Any:
        """Set the windows' time to ``ts_ms``: writes (``+=``, ``|=``, ``=``) read it through
        ``relative_to``; faust's reads (``WindowSet.delta``/``current``) take the timestamp of an
        event's message instead, so the returned stand-in event carries it for them."""
        self._now_s = ts_ms / 1000
        return SimpleNamespace(message=SimpleNamespace(timestamp=self._now_s))

    def add_payment(self, window: fr.Window, key: str, currency: str, amount: int, ts_ms: int) -> tuple[int, int]:
        at = self._at(ts_ms)
        counts, amounts = self.counts[window.name], self.amounts[window.name]
        akey = _amount_key(key, currency)
        counts[key] += 1
        amounts[akey] += amount
        return (int(counts[key].delta(window.read_delta_s, event=at)),
                int(amounts[akey].delta(window.read_delta_s, event=at)))

    def add_card(self, window: fr.Window, customer_key: str, fingerprint: str | None, ts_ms: int) -> int:
        at = self._at(ts_ms)
        cards = self.cards[window.name]
        if fingerprint is not None:
            cards[customer_key] |= {fingerprint: 1}
        return len(cards[customer_key].delta(window.read_delta_s, event=at))

    def first_count(self, key: str, payment_id: str, ts_ms: int) -> bool:
        at = self._at(ts_ms)
        ckey = _counted_key(key, payment_id)
        if self.counted[ckey].current(event=at):
            return False
        self.counted[ckey] = 1
        return True


class InMemoryWindowStore:
    """The same hopping-window aggregates in plain dicts (replays, tests, notebooks): the model
    ``FaustWindowStore`` is checked against."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = defaultdict(int)
        self.amounts: dict[tuple[str, str, int], int] = defaultdict(int)
        self.cards: dict[tuple[str, str, int], set[str]] = defaultdict(set)
        self.counted: set[str] = set()

    def add_payment(self, window: fr.Window, key: str, currency: str, amount: int, ts_ms: int) -> tuple[int, int]:
        akey = _amount_key(key, currency)
        for start in window.starts(ts_ms):
            self.counts[(window.name, key, start)] += 1
            self.amounts[(window.name, akey, start)] += amount
        first = window.lookback_start(ts_ms)
        return self.counts[(window.name, key, first)], self.amounts[(window.name, akey, first)]

    def add_card(self, window: fr.Window, customer_key: str, fingerprint: str | None, ts_ms: int) -> int:
        if fingerprint is not None:
            for start in window.starts(ts_ms):
                self.cards[(window.name, customer_key, start)].add(fingerprint)
        return len(self.cards[(window.name, customer_key, window.lookback_start(ts_ms))])

    def first_count(self, key: str, payment_id: str, ts_ms: int) -> bool:
        ckey = _counted_key(key, payment_id)
        if ckey in self.counted:
            return False
        self.counted.add(ckey)
        return True


# --- One hop -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowPlan:
    """Which windows each dimension's hop counts (only those some rule reads)."""

    velocity: Mapping[fr.Dimension, tuple[fr.Window, ...]]
    cards: tuple[fr.Window, ...]

    @property
    def all_windows(self) -> tuple[fr.Window, ...]:
        seen: dict[str, fr.Window] = {}
        for ws in self.velocity.values():
            for w in ws:
                seen.setdefault(w.name, w)
        return tuple(seen.values())


def plan_windows(*rulesets: fr.RuleSet | None) -> WindowPlan:
    """The windows the rule sets read; a window name must mean the same window in all of them
    (the tables are shared between the active and the candidate rule set)."""
    windows: dict[str, fr.Window] = {}
    velocity: dict[fr.Dimension, dict[str, fr.Window]] = {d: {} for d in fr.Dimension}
    cards: dict[str, fr.Window] = {}
    for rs in rulesets:
        if rs is None:
            continue
        for w in rs.windows:
            if windows.setdefault(w.name, w) != w:
                raise fr.RuleSetError(f"window {w.name!r} differs between rule sets {rs.version!r} and another")
        for rule in rs.rules:
            if isinstance(rule, fr.VelocityRule):
                velocity[rule.dimension][rule.window] = windows[rule.window]
            elif isinstance(rule, fr.DistinctCardsRule):
                cards[rule.window] = windows[rule.window]
    return WindowPlan(velocity={d: tuple(ws.values()) for d, ws in velocity.items()}, cards=tuple(cards.values()))


def count_stage(request: fr.FraudCheckRequest, plan: WindowPlan,
                store: WindowStore) -> fr.FraudCheckRequest | None:
    """Count the payment for the dimension this hop is keyed by; add its aggregates to the features.

    None when this hop of the payment was counted before: its forward or verdict went out in
    the same transaction as that count, so a repeated hop is dropped, never counted twice."""
    dimension, rest = request.stages[0], request.stages[1:]
    f = request.features
    key = fr.hop_key(request)
    ts = request.observed_at
    if not store.first_count(key, request.payment_id, ts):
        return None
    velocity = tuple(
        fr.VelocityFeature(dimension, w.name, *store.add_payment(w, key, f.currency, f.amount, ts))
        for w in plan.velocity[dimension]
    )
    cards: tuple[fr.DistinctCardsFeature, ...] = ()
    if dimension is fr.Dimension.CUSTOMER:
        cards = tuple(fr.DistinctCardsFeature(w.name, store.add_card(w, key, f.fingerprint, ts)) for w in plan.cards)
    features = replace(f, velocity=f.velocity + velocity, distinct_cards=f.distinct_cards + cards)
    return replace(request, features=features, stages=rest)


Scorer = Callable[[fr.ExternalScorerConfig, fr.Features], Awaitable[fr.ExternalScore]]


class FraudEngine:
    """One hop of a check: count, then forward or decide. No Kafka here (tests drive it)."""

    def __init__(self, active: fr.RuleSet, candidate: fr.RuleSet | None, store: WindowStore,
                 blocklist: Container[str], scorer: Scorer | None = None) -> None:
        self.active, self.candidate, self.store, self.blocklist = active, candidate, store, blocklist
        self.scorer = scorer
        self.plan = plan_windows(active, candidate)

    async def process(self, request: fr.FraudCheckRequest) -> fr.FraudCheckRequest | fr.FraudVerdict | None:
        """The forward, the verdict, or None for a hop already applied (a duplicate)."""
        if request.stages:
            counted = count_stage(request, self.plan, self.store)
            if counted is None:
                return None
            request = counted
            if request.stages:
                return request
        return await self.decide(request)

    async def decide(self, request: fr.FraudCheckRequest) -> fr.FraudVerdict:
        features = request.features
        external: fr.ExternalScore | None = None
        cfg = self.active.external
        if cfg is not None and self.scorer is not None:
            local = fr.evaluate(self.active, features, self.blocklist)
            if fr.needs_external_score(self.active, local):
                external = await self.scorer(cfg, features)
                EXTERNAL_CALLS.labels("ok" if external.error is None else external.error).inc()
            else:
                EXTERNAL_CALLS.labels("skipped").inc()
        outcome = fr.evaluate_shadow(self.active, self.candidate, features, self.blocklist, external=external)
        return fr.verdict(request, outcome, external)

    def error_verdict(self, request: fr.FraudCheckRequest) -> fr.FraudVerdict:
        """When a check fails, the payment still gets an answer: review (a human decides)."""
        outcome = fr.FraudOutcome(decision=fr.Decision.REVIEW, rules=(CHECK_ERROR_RULE,), score=0,
                                  ruleset_version=self.active.version)
        return fr.FraudVerdict(payment_id=request.payment_id, command_id=request.command_id,
                               partition=request.partition, observed_at=request.observed_at, outcome=outcome)


# --- External scorer -----------------------------------------------------------------------


def scorer_payload(features: fr.Features) -> dict[str, Any]:
    """What the external scorer gets: pseudonymous ids and aggregates, never an e-mail in clear."""
    plain = codec.to_plain(features)
    plain["email_sha256"] = plain.pop("email_hash")
    result: dict[str, Any] = plain
    return result


async def score_externally(client: httpx.AsyncClient, cfg: fr.ExternalScorerConfig,
                           features: fr.Features) -> fr.ExternalScore:
    """POST the features to ``cfg.url``; expects ``{"score": 0..100}`` within ``timeout_ms``.

    Never raises: a timeout, a connection error, a non-200 answer or a malformed body gives
    ``ExternalScore(None, error)`` and the rule set's ``fallback`` decides. The deadline covers
    the whole exchange (httpx's own timeouts are per phase).
    """
    timeout_s = cfg.timeout_ms / 1000
    try:
        response = await asyncio.wait_for(client.post(cfg.url, json=scorer_payload(features), timeout=timeout_s),
                                          timeout_s)
    except (TimeoutError, httpx.TimeoutException):
        return fr.ExternalScore(None, "timeout")
    except httpx.HTTPError:
        return fr.ExternalScore(None, "unreachable")
    if response.status_code != 200:
        return fr.ExternalScore(None, f"http_{response.status_code}")
    try:
        score = response.json().get("score")
    except (ValueError, AttributeError):
        return fr.ExternalScore(None, "invalid_response")
    if isinstance(score, float) and score.is_integer() and not math.isinf(score):
        score = int(score)
    if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 100:
        return fr.ExternalScore(None, "invalid_response")
    return fr.ExternalScore(score)


def http_scorer(client: httpx.AsyncClient) -> Scorer:
    async def scorer(cfg: fr.ExternalScorerConfig, features: fr.Features) -> fr.ExternalScore:
        return await score_externally(client, cfg, features)

    return scorer


# --- Blocklist admin -----------------------------------------------------------------------


def apply_blocklist_command(blocklist: Any, command: fr.BlocklistCommand) -> bool:
    """Apply an admin command to the blocklist mapping; returns whether it changed anything."""
    present = command.key in blocklist
    if command.op is fr.BlocklistOp.ADD:
        entry = {"kind": command.kind.value, "added_at": command.issued_at, "actor": command.actor,
                 "reason": command.reason, "command_id": command.command_id}
        blocklist[command.key] = entry
        return not present
    if present:
        del blocklist[command.key]
    return present


def admin_message(command: Mapping[str, Any]) -> OutMessage:
    """An admin command as produced to ``<app_id>-fraud-admin`` (for a CLI): key ``<kind>:<value>``
    so the commands of one entry stay in order; an e-mail is sent hashed."""
    body = dict(command)
    if body.get("kind") == "email" and "value" in body:
        body["value_sha256"] = fr.email_hash(str(body.pop("value")))
    parsed = fr.parse_blocklist_command(body)
    return OutMessage(parsed.key.encode(), json.dumps(body, sort_keys=True).encode(), None, None)


# --- Installing on the app -----------------------------------------------------------------

SendVerdict = Callable[[Any, fr.FraudVerdict], Awaitable[None]]
"""``(event, verdict)``: publish ``verdict_message(verdict)`` on ``verdicts_topic`` in the
transaction of ``event``'s partition (the payments agent's ``send``)."""

Send = Callable[[Any, str, OutMessage], Awaitable[None]]
"""``(event, topic, message)``: produce in the transaction of ``event``'s partition."""


def transactional_send(app: faust.App) -> Send:
    """Like the payments agent's ``send``: in the input partition's transaction
    (``streams.input_guard.send_in_input_transaction``; ``PartitionLost`` after a rebalance)."""

    async def send(event: Any, topic: str, msg: OutMessage) -> None:
        await send_in_input_transaction(app, event, topic, msg.key, msg.value, msg.partition, msg.timestamp_s)

    return send


def verdict_sender(app: faust.App, app_id: str) -> SendVerdict:
    """The usual ``send_verdict``: ``verdict_message`` on ``verdicts_topic``, transactional."""
    send = transactional_send(app)

    async def send_verdict(event: Any, verdict: fr.FraudVerdict) -> None:
        await send(event, verdicts_topic(app_id), verdict_message(verdict))

    return send_verdict


@dataclass
class FraudWiring:
    agent: Any
    admin_agent: Any
    engine: FraudEngine
    store: FaustWindowStore
    blocklist: Any
    topics: tuple[str, str, str]  # checks, verdicts, admin
    guard: InputGuard


def install_fraud(app: faust.App, settings: Settings, send_verdict: SendVerdict, *,
                  active: fr.RuleSet | None = None, candidate: fr.RuleSet | None = None,
                  scorer: Scorer | None = None, send: Send | None = None,
                  partitions: int | None = None, gaps: GapReader | None = None) -> FraudWiring:
    """Declare the fraud tables and agents on ``app``.

    ``active`` defaults to ``config/fraud-rules.yaml``; ``candidate`` (shadow mode) to none.
    ``scorer`` is used when the active rule set has an ``external_scorer`` (default: an httpx
    client). ``send`` carries forwards, dead letters and audit records (default: transactional).
    ``gaps`` reads back inputs the consumer skipped (default: from ``settings.kafka_connection()``).
    """
    active = active if active is not None else load_ruleset_file(RULES_FILE)
    if scorer is None and active.external is not None:
        scorer = http_scorer(httpx.AsyncClient())
    out = send if send is not None else transactional_send(app)
    plan = plan_windows(active, candidate)
    store = FaustWindowStore(app, plan.all_windows, plan.cards, partitions=partitions)
    blocklist = app.GlobalTable("fraud-blocklist", default=None, key_type=str, partitions=partitions)
    engine = FraudEngine(active, candidate, store, blocklist, scorer)
    names = (checks_topic(settings.app_id), verdicts_topic(settings.app_id), admin_topic(settings.app_id))
    # The last applied offset per fraud-checks / fraud-admin partition, for the input guard.
    applied_offsets = app.Table("fraud-applied-offsets", default=None, key_type=str, partitions=partitions)

    async def dead_letter(event: Any, reason: str, error: str) -> None:
        m = event.message
        log.error("fraud: %s at %s:%d@%d: %s", reason, m.topic, m.partition, m.offset, error)
        await out(event, "payment.deadletter", OutMessage(m.key or b"", m.value or b"", None, None))

    async def on_check(event: Any) -> None:
        try:
            request = decode_request(event.message.value)
        except Exception as exc:  # unreadable: no payment to answer
            CHECK_ERRORS.labels("decode").inc()
            await dead_letter(event, "undecodable fraud check", f"{type(exc).__name__}: {exc}")
            return
        ts = getattr(event.message, "timestamp", None)
        if ts is not None and abs(ts * 1000 - request.observed_at) > 5000:
            # The windows follow observed_at; a Kafka timestamp far from it means a producer that
            # does not follow the contract (tooling reading the topic would be misled).
            CHECK_ERRORS.labels("timestamp").inc()
            log.warning("fraud check of %s: Kafka timestamp is not observed_at", request.payment_id)
        try:
            result = await engine.process(request)
        except Exception:
            CHECK_ERRORS.labels("process").inc()
            log.exception("fraud check of %s failed: sending review", request.payment_id)
            result = engine.error_verdict(request)
        if result is None:
            DUPLICATE_HOPS.labels(request.stages[0].value).inc()
            log.info("fraud check hop %s of %s was counted before: dropped", fr.hop_key(request), request.payment_id)
            return
        if isinstance(result, fr.FraudCheckRequest):
            await out(event, names[0], request_message(result))
            return
        record_metrics(result)
        await send_verdict(event, result)

    async def on_admin(event: Any) -> None:
        try:
            command = fr.parse_blocklist_command(json.loads(event.message.value))
        except (ValueError, fr.BlocklistCommandError) as exc:
            BLOCKLIST_COMMANDS.labels("?", "?", "invalid").inc()
            await dead_letter(event, "invalid blocklist command", str(exc))
            return
        changed = apply_blocklist_command(blocklist, command)
        BLOCKLIST_COMMANDS.labels(command.op.value, command.kind.value, "applied" if changed else "noop").inc()
        record = au.AuditRecord(
            audit_id=f"fraud-admin:{command.command_id}", occurred_at=command.issued_at, actor=command.actor,
            action=f"fraud.blocklist.{command.op.value}", resource=f"blocklist:{command.key}",
            outcome="success" if changed else "noop", origin=f"kafka:{names[2]}",
            detail={"kind": command.kind.value, "reason": command.reason},
        )
        await out(event, audit_topic(settings.app_id),
                  OutMessage(record.resource.encode(), au.encode_record(record), event.message.partition, None))

    def guarded(handler: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        async def handle(event: Any) -> None:
            try:
                await handler(event)
            except PartitionLost:
                raise
            except Exception as exc:  # never let one message stop the worker
                CHECK_ERRORS.labels("process").inc()
                log.exception("fraud input %s failed", event.message.topic)
                await dead_letter(event, "internal error", f"{type(exc).__name__}: {exc}")

        return handle

    handlers = {names[0]: guarded(on_check), names[2]: guarded(on_admin)}

    async def handle(event: Any) -> None:
        await handlers[event.message.topic](event)

    # The same input guard as the payments agent's (streams/input_guard.py): each hop and admin
    # command applied and acknowledged as a whole between two commits (a transaction never holds
    # a hop's table writes without its forward or verdict), redeliveries skipped by offset,
    # skipped inputs read back, and an input faust drops after a rebalance not acknowledged but
    # fetched again (F11: it would be a lost count and a payment held until the verdict timeout).
    guard = InputGuard(app, applied_offsets, (names[0], names[2]), handle,
                       gaps if gaps is not None else GapReader(settings.kafka_connection())).install()

    @app.agent(app.topic(names[0], key_serializer="raw", value_serializer="raw"), name="fraud")
    async def fraud_agent(stream: faust.StreamT[bytes]) -> None:
        await guard.consume(stream)

    @app.agent(app.topic(names[2], key_serializer="raw", value_serializer="raw"), name="fraud-admin")
    async def fraud_admin(stream: faust.StreamT[bytes]) -> None:
        await guard.consume(stream)

    return FraudWiring(agent=fraud_agent, admin_agent=fraud_admin, engine=engine, store=store,
                       blocklist=blocklist, topics=names, guard=guard)
