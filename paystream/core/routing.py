"""Gateway routing: which gateways a new payment may use, in order. Pure, no I/O.

A ``RoutingTable`` is versioned and loaded from a plain mapping (``config/routing.yaml`` parsed
by the caller; format in docs/routing.md and below). ``route`` gives a payment its route: the
primary gateway first, then the secondaries the state machine may fail over to when the
primary failed *before anything could have been charged*.

Rules are tried in order; the first rule that matches the payment and has at least one
available gateway decides (a rule whose gateways are all switched off or not configured is
passed over). Every condition of a rule must hold; a condition left out matches anything:

* ``currencies``: ISO-4217 codes.
* ``min_amount`` / ``max_amount``: inclusive, integer minor units, so a rule with an amount
  range must list its ``currencies`` (1000 means 10.00 USD but 1000 JPY).
* ``methods``: payment-method kinds: a token prefix (``tok_``, ``pm_``...) or ``saved``.
* ``countries``: ISO-3166 alpha-2 shipping countries (a payment without one never matches a
  rule that lists countries).

Explicit choices win over rules: a payment on a saved method goes to the method's gateway
(its token only works there) and never fails over; a payment that names a gateway keeps it as
its primary, and gets the matching rule's other gateways as secondaries only when
``failover_for_explicit`` is set. An unavailable explicit gateway is a rejection
(``gateway_unavailable``), never a silent re-route.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from paystream.core.commands import KNOWN_GATEWAYS
from paystream.core.money import is_known_currency
from paystream.core.rejections import Rejection, RejectionReason

__all__ = [
    "RouteRequest",
    "RouteRule",
    "RoutingConfigError",
    "RoutingTable",
    "load_routing_table",
    "route",
]

SAVED: Final = "saved"
_COUNTRY_RE: Final = re.compile(r"^[A-Z]{2}$")
_PREFIX_RE: Final = re.compile(r"^[a-z][a-z0-9]*_$")


class RoutingConfigError(ValueError):
    """The routing table does not follow the format; the message names the place."""


@dataclass(frozen=True, slots=True)
class RouteRule:
    name: str
    gateways: tuple[str, ...]
    currencies: frozenset[str] = frozenset()
    min_amount: int | None = None
    max_amount: int | None = None
    methods: frozenset[str] = frozenset()
    countries: frozenset[str] = frozenset()

    def matches(self, request: RouteRequest) -> bool:
        if self.currencies and request.currency not in self.currencies:
            return False
        if self.min_amount is not None and request.amount < self.min_amount:
            return False
        if self.max_amount is not None and request.amount > self.max_amount:
            return False
        if self.methods and request.method_kind not in self.methods:
            return False
        return not self.countries or request.shipping_country in self.countries


@dataclass(frozen=True, slots=True)
class RoutingTable:
    version: str
    rules: tuple[RouteRule, ...]
    default: tuple[str, ...]  # when no rule decides
    failover_for_explicit: bool = False


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What routing looks at in a CreatePayment (after a saved method was resolved)."""

    amount: int
    currency: str
    payment_method_token: str | None = None
    saved_method_gateway: str | None = None  # the gateway of the saved method the payment uses
    gateway: str | None = None  # the gateway the command names
    shipping_country: str | None = None

    @property
    def method_kind(self) -> str:
        if self.saved_method_gateway is not None:
            return SAVED
        token = self.payment_method_token or ""
        head, sep, _ = token.partition("_")
        return f"{head}_" if sep else ""


def _available(gateways: Sequence[str], available: frozenset[str]) -> tuple[str, ...]:
    seen: list[str] = []
    for g in gateways:
        if g in available and g not in seen:
            seen.append(g)
    return tuple(seen)


def _unavailable(gateway: str) -> Rejection:
    return Rejection(RejectionReason.GATEWAY_UNAVAILABLE, f"gateway {gateway} is switched off or not configured")


def route(table: RoutingTable, request: RouteRequest, available: frozenset[str]) -> tuple[str, ...] | Rejection:
    """The payment's route (primary first, at least one gateway), or why there is none.

    ``available`` is the set of gateways configured and not switched off.
    """
    if request.saved_method_gateway is not None:
        gateway = request.saved_method_gateway
        return (gateway,) if gateway in available else _unavailable(gateway)
    matching = [r for r in table.rules if r.matches(request)]
    if request.gateway is not None:
        if request.gateway not in available:
            return _unavailable(request.gateway)
        if not table.failover_for_explicit:
            return (request.gateway,)
        secondaries = next((r.gateways for r in matching if _available(r.gateways, available)), table.default)
        return _available((request.gateway, *secondaries), available)
    for rule in matching:
        chosen = _available(rule.gateways, available)
        if chosen:
            return chosen
    chosen = _available(table.default, available)
    if chosen:
        return chosen
    return Rejection(RejectionReason.GATEWAY_UNAVAILABLE, "no gateway is available for this payment")


# --- Loading ----------------------------------------------------------------------------------


def _strings(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RoutingConfigError(f"{where}: expected a list of non-empty strings")
    return tuple(value)


def _gateways(value: object, where: str) -> tuple[str, ...]:
    names = _strings(value, where)
    if not names:
        raise RoutingConfigError(f"{where}: at least one gateway is needed")
    unknown = sorted(set(names) - KNOWN_GATEWAYS)
    if unknown:
        raise RoutingConfigError(f"{where}: unknown gateways {unknown}")
    if len(set(names)) != len(names):
        raise RoutingConfigError(f"{where}: a gateway is listed twice")
    return names


def _amount(value: object, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RoutingConfigError(f"{where}: expected a non-negative integer (minor units)")
    return value


def _rule(raw: object, where: str) -> RouteRule:
    if not isinstance(raw, Mapping):
        raise RoutingConfigError(f"{where}: expected a mapping")
    unknown = set(raw) - {"name", "gateways", "match"}
    if unknown:
        raise RoutingConfigError(f"{where}: unknown keys {sorted(unknown)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise RoutingConfigError(f"{where}.name: expected a non-empty string")
    gateways = _gateways(raw.get("gateways"), f"{where}.gateways")
    match = raw.get("match") or {}
    if not isinstance(match, Mapping):
        raise RoutingConfigError(f"{where}.match: expected a mapping")
    unknown = set(match) - {"currencies", "min_amount", "max_amount", "methods", "countries"}
    if unknown:
        raise RoutingConfigError(f"{where}.match: unknown keys {sorted(unknown)}")
    m = f"{where}.match"
    currencies = frozenset(_strings(match.get("currencies", []), f"{m}.currencies"))
    bad = sorted(c for c in currencies if not is_known_currency(c))
    if bad:
        raise RoutingConfigError(f"{m}.currencies: unknown currencies {bad}")
    min_amount = _amount(match.get("min_amount"), f"{m}.min_amount")
    max_amount = _amount(match.get("max_amount"), f"{m}.max_amount")
    if (min_amount is not None or max_amount is not None) and not currencies:
        raise RoutingConfigError(f"{m}: an amount range needs currencies (amounts are minor units of a currency)")
    if min_amount is not None and max_amount is not None and min_amount > max_amount:
        raise RoutingConfigError(f"{m}: min_amount is above max_amount")
    methods = frozenset(_strings(match.get("methods", []), f"{m}.methods"))
    bad = sorted(x for x in methods if x != SAVED and not _PREFIX_RE.match(x))
    if bad:
        raise RoutingConfigError(f"{m}.methods: expected token prefixes like tok_ or 'saved', got {bad}")
    countries = frozenset(_strings(match.get("countries", []), f"{m}.countries"))
    bad = sorted(c for c in countries if not _COUNTRY_RE.match(c))
    if bad:
        raise RoutingConfigError(f"{m}.countries: expected ISO-3166 alpha-2 codes, got {bad}")
    return RouteRule(name=name, gateways=gateways, currencies=currencies, min_amount=min_amount,
                     max_amount=max_amount, methods=methods, countries=countries)


def load_routing_table(raw: object) -> RoutingTable:
    """Validate a parsed routing file; raises ``RoutingConfigError`` naming what is wrong."""
    if not isinstance(raw, Mapping):
        raise RoutingConfigError("$: expected a mapping")
    unknown = set(raw) - {"version", "description", "default", "failover_for_explicit", "rules"}
    if unknown:
        raise RoutingConfigError(f"$: unknown keys {sorted(unknown)}")
    version = raw.get("version")
    if isinstance(version, int | float) and not isinstance(version, bool):
        version = str(version)  # YAML reads an unquoted 3 or 2.1 as a number
    if not isinstance(version, str) or not version:
        raise RoutingConfigError("$.version: expected a non-empty string")
    default = _gateways(raw.get("default"), "$.default")
    explicit = raw.get("failover_for_explicit", False)
    if not isinstance(explicit, bool):
        raise RoutingConfigError("$.failover_for_explicit: expected true or false")
    rules_raw = raw.get("rules") or []
    if not isinstance(rules_raw, list):
        raise RoutingConfigError("$.rules: expected a list")
    rules = tuple(_rule(r, f"$.rules[{i}]") for i, r in enumerate(rules_raw))
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise RoutingConfigError("$.rules: rule names must be unique")
    return RoutingTable(version=version, rules=rules, default=default, failover_for_explicit=explicit)
