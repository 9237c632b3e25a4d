"""paystream.core.fraud: the rule set loader, each rule at its threshold, decision precedence,
shadow mode, the blocklist and its admin commands, the hop messages. Pure: no tables, no I/O."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from paystream.core import events as evs
from paystream.core import fraud as fr
from paystream.core.commands import CapturePayment, Command, CreatePayment

ROOT = Path(__file__).resolve().parents[3]
EMPTY: frozenset[str] = frozenset()


def ruleset(*rules: dict[str, Any], external: dict[str, Any] | None = None, version: str = "t1") -> fr.RuleSet:
    raw: dict[str, Any] = {
        "version": version,
        "windows": {"1m": {"size_s": 60, "step_s": 15}, "1h": {"size_s": 3600, "step_s": 900},
                    "1d": {"size_s": 86400, "step_s": 21600}},
        "rules": list(rules),
    }
    if external is not None:
        raw["external_scorer"] = external
    return fr.load_ruleset(raw)


def features(**changes: Any) -> fr.Features:
    base = fr.Features(customer_id="cus_1", amount=1000, currency="USD", fingerprint="fp_1", ip="203.0.113.7",
                       email_hash=fr.email_hash("ann@example.org"), card_country="US", shipping_country="US")
    return replace(base, **changes)


def velocity(dimension: fr.Dimension, window: str, count: int, amount: int = 0) -> fr.VelocityFeature:
    return fr.VelocityFeature(dimension=dimension, window=window, count=count, amount=amount)


# --- loading -------------------------------------------------------------------------------


def test_the_shipped_rule_files_load() -> None:
    active = fr.load_ruleset(yaml.safe_load((ROOT / "config/fraud-rules.yaml").read_text()))
    candidate = fr.load_ruleset(yaml.safe_load((ROOT / "config/fraud-rules.candidate.yaml").read_text()))
    assert active.version != candidate.version
    assert {w.name for w in active.windows} == {"1m", "1h", "1d"}
    kinds = {type(r) for r in active.rules}
    assert kinds == {fr.VelocityRule, fr.AmountRule, fr.DistinctCardsRule, fr.CountryMismatchRule, fr.BlocklistRule}
    dims = {r.dimension for r in active.rules if isinstance(r, fr.VelocityRule)}
    assert dims == set(fr.Dimension)
    assert active.window("1d") == fr.Window("1d", 86400, 21600)


GOOD_RULE = {"name": "r", "type": "amount", "max_amount": {"USD": 100}, "action": "review"}


@pytest.mark.parametrize(("rule", "message"), [
    ({**GOOD_RULE, "max_amount": {"USD": 12.5}}, "max_amount.USD: expected integer minor units"),
    ({**GOOD_RULE, "max_amount": {"usd": 100}}, "not an ISO-4217 currency"),
    ({**GOOD_RULE, "max_amount": {}}, "at least one currency"),
    ({**GOOD_RULE, "type": "magic"}, "unknown rule type"),
    ({**GOOD_RULE, "action": "allow"}, "action: expected one of review, block"),
    ({**GOOD_RULE, "weight": -1}, "weight: expected an integer"),
    ({**GOOD_RULE, "threshold": 3}, "unknown keys threshold"),
    ({"name": "v", "type": "velocity", "dimension": "customer", "window": "1w", "max_count": 3, "action": "review"},
     "'1w' is not a declared window"),
    ({"name": "v", "type": "velocity", "dimension": "device", "window": "1m", "max_count": 3, "action": "review"},
     "dimension: expected one of customer, fingerprint, ip"),
    ({"name": "v", "type": "velocity", "dimension": "ip", "window": "1m", "max_count": 3,
      "max_amount": {"USD": 5}, "action": "review"}, "exactly one of max_count, max_amount"),
    ({"name": "b", "type": "blocklist", "lists": ["phone"], "action": "block"}, "lists[0]: expected one of"),
])
def test_a_broken_rule_is_refused_with_its_path(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(fr.RuleSetError, match=r"\$\.rules\[1\]") as info:
        ruleset(GOOD_RULE | {"name": "ok"}, rule)
    assert message in str(info.value)


def test_rule_set_level_errors() -> None:
    with pytest.raises(fr.RuleSetError, match="unique and not reserved: r"):
        ruleset(GOOD_RULE, GOOD_RULE)
    with pytest.raises(fr.RuleSetError, match="reserved: external_score"):
        ruleset(GOOD_RULE | {"name": "external_score"})
    with pytest.raises(fr.RuleSetError, match="size_s must be a multiple of step_s"):
        fr.load_ruleset({"version": "x", "windows": {"w": {"size_s": 60, "step_s": 25}}, "rules": []})
    with pytest.raises(fr.RuleSetError, match=r"\$\.version: missing"):
        fr.load_ruleset({"windows": {}, "rules": []})
    with pytest.raises(fr.RuleSetError, match="block_at must be >= review_at"):
        ruleset(external={"url": "http://x/score", "timeout_ms": 100, "review_at": 80, "block_at": 50,
                          "fallback": "review"})
    assert fr.load_ruleset({"version": 3, "windows": {}, "rules": []}).version == "3"  # YAML's unquoted 3


# --- windows -------------------------------------------------------------------------------


def test_hopping_window_starts_and_lookback() -> None:
    w = fr.Window("1m", 60, 15)
    ts = 1_000_000_100_500  # 100.5 s past a 15 s boundary...
    starts = w.starts(ts)
    assert len(starts) == 4 and all(s <= ts < s + 60_000 for s in starts)
    assert starts == tuple(sorted(starts)) and starts[1] - starts[0] == 15_000
    assert w.lookback_start(ts) == starts[0]
    assert 45_000 <= ts - w.lookback_start(ts) < 60_000  # the read covers 45..60 s of history
    assert w.read_delta_s == 45
    tumbling = fr.Window("1h", 3600, 3600)
    assert tumbling.starts(7_200_000 + 5) == (7_200_000,)


# --- each rule at its threshold ------------------------------------------------------------


@pytest.mark.parametrize("dimension", list(fr.Dimension))
def test_velocity_count_fires_only_above_max(dimension: fr.Dimension) -> None:
    rs = ruleset({"name": "v", "type": "velocity", "dimension": dimension.value, "window": "1m", "max_count": 3,
                  "action": "review", "weight": 7})
    at_max = fr.evaluate(rs, features(velocity=(velocity(dimension, "1m", 3),)), EMPTY)
    above = fr.evaluate(rs, features(velocity=(velocity(dimension, "1m", 4),)), EMPTY)
    assert (at_max.decision, at_max.rules, at_max.score) == (fr.Decision.ALLOW, (), 0)
    assert (above.decision, above.rules, above.score) == (fr.Decision.REVIEW, ("v",), 7)
    other_window = fr.evaluate(rs, features(velocity=(velocity(dimension, "1h", 99),)), EMPTY)
    assert other_window.decision is fr.Decision.ALLOW


def test_velocity_amount_is_per_currency_in_minor_units() -> None:
    rs = ruleset({"name": "amt", "type": "velocity", "dimension": "customer", "window": "1d",
                  "max_amount": {"USD": 500000, "JPY": 70000000}, "action": "block"})
    c = fr.Dimension.CUSTOMER
    assert fr.evaluate(rs, features(velocity=(velocity(c, "1d", 9, 500000),)), EMPTY).decision is fr.Decision.ALLOW
    assert fr.evaluate(rs, features(velocity=(velocity(c, "1d", 9, 500001),)), EMPTY).decision is fr.Decision.BLOCK
    jpy = features(currency="JPY", velocity=(velocity(c, "1d", 2, 70000001),))
    assert fr.evaluate(rs, jpy, EMPTY).rules == ("amt",)
    unlisted = features(currency="EUR", velocity=(velocity(c, "1d", 2, 10**12),))
    assert fr.evaluate(rs, unlisted, EMPTY).decision is fr.Decision.ALLOW


def test_velocity_of_an_unknown_dimension_does_not_fire() -> None:
    rs = ruleset({"name": "ip", "type": "velocity", "dimension": "ip", "window": "1m", "max_count": 0,
                  "action": "block"})
    assert fr.evaluate(rs, features(ip=None), EMPTY).decision is fr.Decision.ALLOW  # no IP: no aggregate
    assert fr.evaluate(rs, features(velocity=(velocity(fr.Dimension.IP, "1m", 1),)), EMPTY).rules == ("ip",)


@pytest.mark.parametrize(("currency", "limit"), [("USD", 250000), ("JPY", 35000000), ("KWD", 75000)])
def test_amount_threshold_per_currency(currency: str, limit: int) -> None:
    rs = ruleset({"name": "large", "type": "amount", "max_amount": {"USD": 250000, "JPY": 35000000, "KWD": 75000},
                  "action": "review", "weight": 30})
    assert fr.evaluate(rs, features(currency=currency, amount=limit), EMPTY).rules == ()
    assert fr.evaluate(rs, features(currency=currency, amount=limit + 1), EMPTY).rules == ("large",)
    assert fr.evaluate(rs, features(currency="EUR", amount=10**13), EMPTY).rules == ()


def test_distinct_cards_above_max() -> None:
    rs = ruleset({"name": "cards", "type": "distinct_cards", "window": "1d", "max_distinct": 3, "action": "review"})
    at_max = features(distinct_cards=(fr.DistinctCardsFeature("1d", 3),))
    above = features(distinct_cards=(fr.DistinctCardsFeature("1d", 4),))
    assert fr.evaluate(rs, at_max, EMPTY).decision is fr.Decision.ALLOW
    assert fr.evaluate(rs, above, EMPTY).rules == ("cards",)
    assert fr.evaluate(rs, features(), EMPTY).rules == ()  # not computed: does not fire


@pytest.mark.parametrize(("card", "shipping", "fires"), [
    ("US", "US", False), ("US", "us ", False), ("US", "DE", True), ("gb", "FR", True),
    (None, "DE", False), ("US", None, False), ("US", "", False),
])
def test_country_mismatch(card: str | None, shipping: str | None, fires: bool) -> None:
    rs = ruleset({"name": "geo", "type": "country_mismatch", "action": "review"})
    outcome = fr.evaluate(rs, features(card_country=card, shipping_country=shipping), EMPTY)
    assert outcome.rules == (("geo",) if fires else ())


def test_blocklist_matches_customer_fingerprint_and_email() -> None:
    rs = ruleset({"name": "bl", "type": "blocklist", "lists": ["customer", "fingerprint", "email"],
                  "action": "block", "weight": 100})
    assert fr.evaluate(rs, features(), EMPTY).decision is fr.Decision.ALLOW
    for listed in (fr.blocklist_entries(customers=["cus_1"]), fr.blocklist_entries(fingerprints=["fp_1"]),
                   fr.blocklist_entries(emails=["  ANN@Example.org"])):
        outcome = fr.evaluate(rs, features(), listed)
        assert (outcome.decision, outcome.rules, outcome.score) == (fr.Decision.BLOCK, ("bl",), 100)
    others = fr.blocklist_entries(customers=["cus_2"], fingerprints=["fp_2"], emails=["bob@example.org"])
    assert fr.evaluate(rs, features(), others).decision is fr.Decision.ALLOW
    # a value that is absent from the payment never matches
    assert fr.evaluate(rs, features(fingerprint=None, email_hash=None), fr.blocklist_entries(
        fingerprints=["fp_1"])).decision is fr.Decision.ALLOW


def test_blocklist_rule_only_consults_its_lists() -> None:
    rs = ruleset({"name": "bl_customers", "type": "blocklist", "lists": ["customer"], "action": "review"})
    assert fr.evaluate(rs, features(), fr.blocklist_entries(emails=["ann@example.org"])).rules == ()
    assert fr.evaluate(rs, features(), fr.blocklist_entries(customers=["cus_1"])).decision is fr.Decision.REVIEW


# --- decision precedence -------------------------------------------------------------------

PRECEDENCE = (
    {"name": "review_a", "type": "amount", "max_amount": {"USD": 100}, "action": "review", "weight": 10},
    {"name": "block_geo", "type": "country_mismatch", "action": "block", "weight": 50},
    {"name": "review_b", "type": "distinct_cards", "window": "1d", "max_distinct": 1, "action": "review",
     "weight": 5},
)


def test_block_beats_review_beats_allow_and_weights_add_up() -> None:
    rs = ruleset(*PRECEDENCE)
    cards = (fr.DistinctCardsFeature("1d", 2),)
    nothing = fr.evaluate(rs, features(amount=100), EMPTY)
    one_review = fr.evaluate(rs, features(amount=101), EMPTY)
    two_reviews = fr.evaluate(rs, features(amount=101, distinct_cards=cards), EMPTY)
    everything = fr.evaluate(rs, features(amount=101, distinct_cards=cards, shipping_country="FR"), EMPTY)
    only_block = fr.evaluate(rs, features(amount=1, shipping_country="FR"), EMPTY)
    assert (nothing.decision, nothing.rules, nothing.score) == (fr.Decision.ALLOW, (), 0)
    assert (one_review.decision, one_review.score) == (fr.Decision.REVIEW, 10)
    assert (two_reviews.decision, two_reviews.rules, two_reviews.score) == (
        fr.Decision.REVIEW, ("review_a", "review_b"), 15)
    assert (everything.decision, everything.rules, everything.score) == (
        fr.Decision.BLOCK, ("review_a", "block_geo", "review_b"), 65)  # rule-set order
    assert (only_block.decision, only_block.rules) == (fr.Decision.BLOCK, ("block_geo",))
    assert everything.ruleset_version == "t1"


# --- external scorer -----------------------------------------------------------------------

EXTERNAL = {"url": "http://127.0.0.1:1/score", "timeout_ms": 200, "review_at": 70, "block_at": 90,
            "fallback": "review", "weight": 40}


@pytest.mark.parametrize(("score", "decision", "rules"), [
    (69, fr.Decision.ALLOW, ()), (70, fr.Decision.REVIEW, ("external_score",)),
    (89, fr.Decision.REVIEW, ("external_score",)), (90, fr.Decision.BLOCK, ("external_score",)),
    (None, fr.Decision.REVIEW, ("external_scorer_unavailable",)),
])
def test_external_score_thresholds_and_fallback(score: int | None, decision: fr.Decision,
                                                rules: tuple[str, ...]) -> None:
    rs = ruleset(external=EXTERNAL)
    outcome = fr.evaluate(rs, features(), EMPTY, external=fr.ExternalScore(score, None if score else "timeout"))
    assert (outcome.decision, outcome.rules, outcome.score) == (decision, rules, 40 if rules else 0)
    assert fr.evaluate(rs, features(), EMPTY).decision is fr.Decision.ALLOW  # not asked: no effect


def test_external_fallback_allow_adds_nothing_and_block_skips_the_call() -> None:
    rs = ruleset(GOOD_RULE | {"action": "block"}, external=EXTERNAL | {"fallback": "allow"})
    unavailable = fr.evaluate(rs, features(amount=1), EMPTY, external=fr.ExternalScore(None, "timeout"))
    assert (unavailable.decision, unavailable.rules) == (fr.Decision.ALLOW, ())
    blocked = fr.evaluate(rs, features(amount=101), EMPTY)
    assert not fr.needs_external_score(rs, blocked)
    assert fr.needs_external_score(rs, unavailable)
    assert not fr.needs_external_score(ruleset(), unavailable)  # no scorer configured


# --- shadow mode ---------------------------------------------------------------------------


def test_shadow_reports_the_candidate_and_never_changes_the_active_outcome() -> None:
    active = ruleset({"name": "large", "type": "amount", "max_amount": {"USD": 250000}, "action": "review"},
                     version="v1")
    candidate = ruleset({"name": "large", "type": "amount", "max_amount": {"USD": 150000}, "action": "review"},
                        {"name": "huge", "type": "amount", "max_amount": {"USD": 190000}, "action": "block"},
                        version="v2")
    f = features(amount=200000)
    shadow = fr.evaluate_shadow(active, candidate, f, EMPTY)
    assert shadow.active == fr.evaluate(active, f, EMPTY)
    assert (shadow.active.decision, shadow.active.ruleset_version) == (fr.Decision.ALLOW, "v1")
    assert shadow.candidate is not None
    assert (shadow.candidate.decision, shadow.candidate.rules, shadow.candidate.ruleset_version) == (
        fr.Decision.BLOCK, ("large", "huge"), "v2")
    events = fr.to_events(shadow)
    assert events == (
        evs.FraudDecision(decision=evs.FraudOutcome.ALLOW, rules=(), shadow=False),
        evs.FraudDecision(decision=evs.FraudOutcome.BLOCK, rules=("large", "huge"), shadow=True),
    )
    assert fr.to_events(fr.evaluate_shadow(active, None, f, EMPTY)) == events[:1]


# --- blocklist admin commands --------------------------------------------------------------

ADMIN = {"command_id": "adm-1", "op": "add", "kind": "customer", "value": " cus_9 ", "actor": "analyst-1",
         "issued_at": 1_750_000_000_000, "reason": "chargeback ring"}


def test_admin_commands_parse_to_blocklist_keys() -> None:
    cmd = fr.parse_blocklist_command(ADMIN)
    assert (cmd.op, cmd.kind, cmd.key, cmd.actor, cmd.reason) == (
        fr.BlocklistOp.ADD, fr.BlocklistKind.CUSTOMER, "customer:cus_9", "analyst-1", "chargeback ring")
    email = fr.parse_blocklist_command(ADMIN | {"kind": "email", "value": "Eve@Example.org", "op": "remove"})
    assert email.key == "email:" + fr.email_hash("eve@example.org") and "Eve" not in email.key
    hashed = {k: v for k, v in ADMIN.items() if k != "value"} | {
        "kind": "email", "value_sha256": fr.email_hash("eve@example.org").upper()}
    assert fr.parse_blocklist_command(hashed).key == email.key
    assert email.key in fr.blocklist_entries(emails=["eve@example.org"])


@pytest.mark.parametrize("change", [
    {"op": "ban"}, {"kind": "phone"}, {"value": ""}, {"value": None}, {"issued_at": True}, {"issued_at": "now"},
    {"actor": None}, {"command_id": 7},
])
def test_invalid_admin_commands_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(fr.BlocklistCommandError):
        fr.parse_blocklist_command(ADMIN | change)
    with pytest.raises(fr.BlocklistCommandError):
        fr.parse_blocklist_command(["not", "a", "mapping"])
    bad_hash = {k: v for k, v in ADMIN.items() if k != "value"} | {"kind": "email", "value_sha256": "zz"}
    with pytest.raises(fr.BlocklistCommandError):
        fr.parse_blocklist_command(bad_hash)


# --- hop messages --------------------------------------------------------------------------


def create(**changes: Any) -> Command:
    body = CreatePayment(order_id="ord-1", customer_id="cus_1", amount=1999, currency="USD",
                         saved_method_id="pm_1", customer_ip=" 203.0.113.7 ", customer_email="Ann@Example.org",
                         shipping_country="de")
    return Command(command_id="cmd-1", payment_id="pay-1", issued_at=1, origin="t", body=replace(body, **changes))


def test_check_request_stages_follow_the_known_dimensions() -> None:
    req = fr.check_request(create(), observed_at=1_750_000_000_123, partition=3, fingerprint="fp_1",
                           card_country="us")
    assert req.stages == (fr.Dimension.CUSTOMER, fr.Dimension.FINGERPRINT, fr.Dimension.IP)
    assert (req.payment_id, req.command_id, req.partition, req.observed_at) == ("pay-1", "cmd-1", 3,
                                                                                 1_750_000_000_123)
    f = req.features
    assert (f.ip, f.card_country, f.shipping_country, f.email_hash) == (
        "203.0.113.7", "US", "DE", fr.email_hash("ann@example.org"))
    assert fr.hop_key(req) == "customer:cus_1"
    assert fr.hop_key(replace(req, stages=req.stages[1:])) == "fingerprint:fp_1"
    assert fr.hop_key(replace(req, stages=req.stages[2:])) == "ip:203.0.113.7"
    bare = fr.check_request(create(customer_ip="  ", customer_email=None), 5, 0)
    assert bare.stages == (fr.Dimension.CUSTOMER,)
    assert (bare.features.fingerprint, bare.features.ip, bare.features.email_hash) == (None, None, None)
    with pytest.raises(TypeError):
        fr.check_request(replace(create(), body=CapturePayment()), 5, 0)


def test_verdict_carries_both_outcomes_and_the_external_error() -> None:
    req = fr.check_request(create(), 10, 2)
    active, candidate = ruleset(version="a"), ruleset(GOOD_RULE, version="c")
    shadow = fr.evaluate_shadow(active, candidate, req.features, EMPTY)
    v = fr.verdict(req, shadow, fr.ExternalScore(None, "timeout"))
    assert (v.payment_id, v.partition, v.decision, v.external_error) == ("pay-1", 2, fr.Decision.ALLOW, "timeout")
    assert v.shadow is not None and v.shadow.decision is fr.Decision.REVIEW


def test_rule_sets_are_immutable_values() -> None:
    rs = ruleset(GOOD_RULE)
    raw = copy.deepcopy(rs)
    assert raw == rs and hash(rs) == hash(raw)
    with pytest.raises(AttributeError):
        rs.version = "other"  # type: ignore[misc]
