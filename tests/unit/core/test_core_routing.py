"""paystream.core.routing: the rule table, explicit choices, switched-off gateways, and loading."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from agents.routing import ROUTING_FILE, load_routing_file, make_router
from paystream.core.commands import CreatePayment
from paystream.core.rejections import Rejection, RejectionReason
from paystream.core.routing import RouteRequest, RoutingConfigError, load_routing_table, route

ALL = frozenset({"simulated", "stripe", "paypal", "adyen"})

TABLE = load_routing_table({
    "version": "t-1",
    "default": ["simulated"],
    "rules": [
        {"name": "eu-large", "match": {"currencies": ["EUR"], "min_amount": 100_000, "countries": ["DE", "FR"]},
         "gateways": ["adyen", "stripe"]},
        {"name": "stripe-pm", "match": {"methods": ["pm_"]}, "gateways": ["stripe"]},
        {"name": "usd-small", "match": {"currencies": ["USD"], "max_amount": 4_999}, "gateways": ["paypal", "stripe"]},
        {"name": "cards", "match": {"methods": ["tok_"]}, "gateways": ["stripe", "simulated"]},
    ],
})

TABLE_RAW = {"version": "t-1", "default": ["simulated"],
             "rules": [{"name": "cards", "match": {"methods": ["tok_"]}, "gateways": ["stripe", "simulated"]}]}


def req(**kw: Any) -> RouteRequest:
    base: dict[str, Any] = {"amount": 10_000, "currency": "USD", "payment_method_token": "tok_visa"}
    base.update(kw)
    return RouteRequest(**base)


def test_rules_in_order_by_currency_amount_country_and_method() -> None:
    assert route(TABLE, req(currency="EUR", amount=100_000, shipping_country="DE"), ALL) == ("adyen", "stripe")
    # One condition off: the next rules decide.
    assert route(TABLE, req(currency="EUR", amount=99_999, shipping_country="DE"), ALL) == ("stripe", "simulated")
    assert route(TABLE, req(currency="EUR", amount=100_000, shipping_country="US"), ALL) == ("stripe", "simulated")
    assert route(TABLE, req(currency="EUR", amount=100_000), ALL) == ("stripe", "simulated")  # no country
    assert route(TABLE, req(payment_method_token="pm_card_visa"), ALL) == ("stripe",)
    assert route(TABLE, req(amount=4_999), ALL) == ("paypal", "stripe")
    assert route(TABLE, req(amount=5_000), ALL) == ("stripe", "simulated")
    assert route(TABLE, req(payment_method_token="other"), ALL) == ("simulated",)  # the default


def test_switched_off_gateways_are_skipped_and_an_empty_rule_is_passed_over() -> None:
    eu = req(currency="EUR", amount=200_000, shipping_country="FR")
    assert route(TABLE, eu, ALL - {"adyen"}) == ("stripe",)
    assert route(TABLE, eu, ALL - {"adyen", "stripe"}) == ("simulated",)  # "cards" -> only simulated left
    assert route(TABLE, req(payment_method_token="pm_x"), ALL - {"stripe"}) == ("simulated",)  # default
    none = route(TABLE, req(payment_method_token="x"), frozenset({"stripe"}))
    assert isinstance(none, Rejection) and none.reason is RejectionReason.GATEWAY_UNAVAILABLE


def test_an_explicit_gateway_is_kept_without_failover_unless_configured() -> None:
    assert route(TABLE, req(gateway="adyen"), ALL) == ("adyen",)
    off = route(TABLE, req(gateway="adyen"), ALL - {"adyen"})
    assert isinstance(off, Rejection) and off.reason is RejectionReason.GATEWAY_UNAVAILABLE
    with_failover = load_routing_table({**TABLE_RAW, "failover_for_explicit": True})
    assert route(with_failover, req(gateway="simulated"), ALL) == ("simulated", "stripe")  # the "cards" rule
    assert route(with_failover, req(gateway="stripe"), ALL) == ("stripe", "simulated")


def test_a_saved_method_stays_at_its_gateway_and_never_fails_over() -> None:
    table = load_routing_table({**TABLE_RAW, "failover_for_explicit": True})
    assert route(table, req(saved_method_gateway="paypal", payment_method_token=None), ALL) == ("paypal",)
    off = route(table, req(saved_method_gateway="paypal"), ALL - {"paypal"})
    assert isinstance(off, Rejection)
    saved_rule = load_routing_table({"version": "1", "default": ["simulated"],
                                     "rules": [{"name": "s", "match": {"methods": ["saved"]}, "gateways": ["adyen"]}]})
    assert route(saved_rule, req(saved_method_gateway="stripe"), ALL) == ("stripe",)


@given(amount=st.integers(1, 10**9), currency=st.sampled_from(["USD", "EUR", "JPY"]),
       token=st.sampled_from(["tok_visa", "pm_card_visa", "x"]), country=st.sampled_from([None, "DE", "US"]),
       available=st.sets(st.sampled_from(sorted(ALL))))
def test_a_route_is_never_empty_has_no_repeats_and_only_available_gateways(
    amount: int, currency: str, token: str, country: str | None, available: set[str]
) -> None:
    r = route(TABLE, req(amount=amount, currency=currency, payment_method_token=token, shipping_country=country),
              frozenset(available))
    if isinstance(r, Rejection):
        assert r.reason is RejectionReason.GATEWAY_UNAVAILABLE
    else:
        assert r and len(set(r)) == len(r) and set(r) <= available



@pytest.mark.parametrize(("change", "where"), [
    ({"version": ""}, "$.version"),
    ({"default": []}, "$.default"),
    ({"default": ["nope"]}, "unknown gateways"),
    ({"extra": 1}, "unknown keys"),
    ({"failover_for_explicit": "yes"}, "failover_for_explicit"),
    ({"rules": [{"name": "a", "gateways": ["stripe", "stripe"]}]}, "twice"),
    ({"rules": [{"name": "a", "gateways": ["stripe"], "match": {"min_amount": 5}}]}, "needs currencies"),
    ({"rules": [{"name": "a", "gateways": ["stripe"], "match": {"currencies": ["XXX1"]}}]}, "unknown currencies"),
    ({"rules": [{"name": "a", "gateways": ["stripe"], "match": {"currencies": ["USD"], "min_amount": 5,
                                                              "max_amount": 4}}]}, "above"),
    ({"rules": [{"name": "a", "gateways": ["stripe"], "match": {"countries": ["germany"]}}]}, "alpha-2"),
    ({"rules": [{"name": "a", "gateways": ["stripe"], "match": {"methods": ["tok"]}}]}, "prefixes"),
    ({"rules": [{"name": "a", "gateways": ["stripe"], "match": {"colour": "red"}}]}, "unknown keys"),
    ({"rules": [{"name": "a", "gateways": ["stripe"]}, {"name": "a", "gateways": ["adyen"]}]}, "unique"),
    ({"rules": [{"name": "a", "gateways": ["stripe"], "match": {"currencies": ["USD"], "min_amount": 1.5}}]},
     "min_amount"),
])
def test_bad_tables_are_refused_with_the_place_named(change: dict[str, Any], where: str) -> None:
    with pytest.raises(RoutingConfigError, match=re.escape(where)):
        load_routing_table({**TABLE_RAW, **change})


def test_the_shipped_tables_load_and_keep_todays_behaviour() -> None:
    shipped = load_routing_file()
    assert shipped.default == ("simulated",) and not shipped.failover_for_explicit
    for token in ("tok_visa", "pm_card_visa", "tok_5xx"):
        assert route(shipped, req(payment_method_token=token), ALL) == ("simulated",)
    itest = load_routing_file(Path(__file__).resolve().parents[2] / "integration" / "fixtures" / "routing-rules.yaml")
    assert route(itest, req(shipping_country="IS"), ALL) == ("simulated", "stripe")
    assert route(itest, req(), ALL) == ("simulated",)
    assert ROUTING_FILE.exists()


def test_json_files_load_too(tmp_path: Path) -> None:
    p = tmp_path / "routing.json"
    p.write_text(json.dumps(yaml.safe_load(ROUTING_FILE.read_text())))
    assert load_routing_file(p).version == load_routing_file().version


def test_router_skips_disabled_and_unconfigured_gateways() -> None:
    router = make_router(TABLE, configured=["simulated", "stripe"], disabled=["stripe"])
    body = CreatePayment(order_id="o", customer_id="c", amount=100, currency="USD", payment_method_token="tok_visa")
    assert router(body, False) == ("simulated",)  # "usd-small" (paypal, stripe) has nothing available
    saved = CreatePayment(order_id="o", customer_id="c", amount=100, currency="USD", payment_method_token="tok_x",
                          gateway="stripe")
    off = router(saved, True)
    assert isinstance(off, Rejection) and off.reason is RejectionReason.GATEWAY_UNAVAILABLE
