"""Fraud rules on windowed features: ``evaluate(ruleset, features, blocklist) -> FraudOutcome``, pure.

A ``RuleSet`` is versioned and loaded from a plain mapping (``config/fraud-rules.yaml`` parsed by
the caller; see ``docs/fraud.md`` for the format). Rules look at ``Features``: the payment's own
fields plus aggregates the fraud agent keeps in windowed tables (payment counts and summed
amounts per customer, card fingerprint and IP over each window, distinct card fingerprints per
customer). Each rule has an action (review or block) and a weight; the decision is ``block`` if
any block rule fired, ``review`` if any review rule fired, else ``allow``; the score is the sum
of the weights of the rules that fired (informational: it never changes the decision).

Shadow mode evaluates a candidate rule set on the same features; the candidate's outcome is
reported (a ``FraudDecision`` with ``shadow=true``) and never changes the payment.

Money is integer minor units: amount thresholds are given per currency, and an amount rule
does not apply to a currency it does not list. Time is passed in (epoch ms), never read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, TypeVar

from paystream.core.commands import Command, CreatePayment
from paystream.core.events import FraudDecision
from paystream.core.events import FraudOutcome as EventFraudOutcome
from paystream.core.money import is_known_currency, is_valid_minor_amount

__all__ = [
    "AmountRule",
    "Blocklist",
    "BlocklistCommand",
    "BlocklistCommandError",
    "BlocklistKind",
    "BlocklistOp",
    "BlocklistRule",
    "CountryMismatchRule",
    "Decision",
    "Dimension",
    "DistinctCardsFeature",
    "DistinctCardsRule",
    "ExternalScore",
    "ExternalScorerConfig",
    "Features",
    "FraudCheckRequest",
    "FraudOutcome",
    "FraudVerdict",
    "Rule",
    "RuleAction",
    "RuleSet",
    "RuleSetError",
    "ShadowOutcome",
    "VelocityFeature",
    "VelocityRule",
    "Window",
    "blocklist_entries",
    "blocklist_key",
    "check_request",
    "email_hash",
    "evaluate",
    "evaluate_shadow",
    "hop_key",
    "load_ruleset",
    "needs_external_score",
    "parse_blocklist_command",
    "to_events",
    "verdict",
]

EXTERNAL_SCORE_RULE: Final = "external_score"
EXTERNAL_UNAVAILABLE_RULE: Final = "external_scorer_unavailable"
_MAX_WEIGHT: Final = 1000
_MAX_WINDOW_S: Final = 31 * 24 * 3600


class Decision(StrEnum):
    ALLOW = "allow"
    REVIEW = "review"
    BLOCK = "block"


class RuleAction(StrEnum):
    REVIEW = "review"
    BLOCK = "block"


class Dimension(StrEnum):
    """What velocity is counted per (and the order of the fraud agent's hops)."""

    CUSTOMER = "customer"
    FINGERPRINT = "fingerprint"
    IP = "ip"


class BlocklistKind(StrEnum):
    CUSTOMER = "customer"
    FINGERPRINT = "fingerprint"
    EMAIL = "email"


class RuleSetError(ValueError):
    """The rule-set mapping does not have the documented shape (the message names the path)."""


# --- Rule set ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """A hopping window: ``size_s`` long, a new one every ``step_s`` (``size_s % step_s == 0``).

    The fraud agent reads, for a payment at ``ts``, the *earliest* window containing ``ts``: it
    covers between ``size_s - step_s`` and ``size_s`` of history (a sliding window to within
    one step). A smaller step is more exact and costs ``size_s / step_s`` table writes per update.
    """

    name: str
    size_s: int
    step_s: int

    def starts(self, ts_ms: int) -> tuple[int, ...]:
        """Start (epoch ms) of every window containing ``ts_ms``, oldest first (as faust's)."""
        step, size = self.step_s * 1000, self.size_s * 1000
        closest = ts_ms // step * step
        return tuple(range(closest - size + step, closest + 1, step))

    def lookback_start(self, ts_ms: int) -> int:
        """Start of the earliest window containing ``ts_ms``: what the rules read."""
        return self.starts(ts_ms)[0]

    @property
    def read_delta_s(self) -> int:
        """faust's ``table[key].delta(d)`` with this ``d`` reads the earliest window."""
        return self.size_s - self.step_s


CurrencyLimits = tuple[tuple[str, int], ...]  # (ISO-4217 code, minor units), sorted by code


def _limit_for(limits: CurrencyLimits, currency: str) -> int | None:
    for code, limit in limits:
        if code == currency:
            return limit
    return None


@dataclass(frozen=True, slots=True)
class VelocityRule:
    """Payments of one customer / card fingerprint / IP in a window (this payment included).

    Fires when the count exceeds ``max_count``, or when the summed amount in the payment's
    currency exceeds that currency's ``max_amount`` (currencies not listed: not applicable).
    """

    name: str
    action: RuleAction
    weight: int
    dimension: Dimension
    window: str
    max_count: int | None = None
    max_amount: CurrencyLimits = ()


@dataclass(frozen=True, slots=True)
class AmountRule:
    """The payment's own amount exceeds the threshold of its currency."""

    name: str
    action: RuleAction
    weight: int
    max_amount: CurrencyLimits


@dataclass(frozen=True, slots=True)
class DistinctCardsRule:
    """More than ``max_distinct`` card fingerprints used by one customer in a window."""

    name: str
    action: RuleAction
    weight: int
    window: str
    max_distinct: int


@dataclass(frozen=True, slots=True)
class CountryMismatchRule:
    """Card issuing country differs from the shipping country (both known; else not applicable)."""

    name: str
    action: RuleAction
    weight: int


@dataclass(frozen=True, slots=True)
class BlocklistRule:
    """The customer, card fingerprint or e-mail is on the admin-maintained blocklist."""

    name: str
    action: RuleAction
    weight: int
    lists: tuple[BlocklistKind, ...]


Rule = VelocityRule | AmountRule | DistinctCardsRule | CountryMismatchRule | BlocklistRule


@dataclass(frozen=True, slots=True)
class ExternalScorerConfig:
    """An optional HTTP risk scorer: a score 0..100 maps to review/block at the thresholds;
    when it does not answer in time, ``fallback`` is the decision it contributes."""

    url: str
    timeout_ms: int
    review_at: int
    block_at: int
    fallback: Decision
    weight: int = 0


@dataclass(frozen=True, slots=True)
class RuleSet:
    version: str
    windows: tuple[Window, ...]
    rules: tuple[Rule, ...]
    external: ExternalScorerConfig | None = None

    def window(self, name: str) -> Window:
        for w in self.windows:
            if w.name == name:
                return w
        raise KeyError(name)


# --- Loading -------------------------------------------------------------------------------


def _get(raw: Mapping[str, object], key: str, path: str) -> object:
    if key not in raw:
        raise RuleSetError(f"{path}.{key}: missing")
    return raw[key]


def _str(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RuleSetError(f"{path}: expected a non-empty string")
    return value


def _int(value: object, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RuleSetError(f"{path}: expected an integer in [{low}, {high}]")
    return value


def _mapping(value: object, path: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise RuleSetError(f"{path}: expected a mapping")
    return value


_E = TypeVar("_E", bound=StrEnum)


def _enum(cls: type[_E], value: object, path: str) -> _E:
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return cls(value)
    except ValueError:
        raise RuleSetError(f"{path}: expected one of {', '.join(m.value for m in cls)}") from None


def _limits(value: object, path: str) -> CurrencyLimits:
    out: list[tuple[str, int]] = []
    for code, amount in _mapping(value, path).items():
        if not is_known_currency(code):
            raise RuleSetError(f"{path}.{code}: not an ISO-4217 currency code")
        if not is_valid_minor_amount(amount) or not isinstance(amount, int):
            raise RuleSetError(f"{path}.{code}: expected integer minor units (no decimals)")
        out.append((code, amount))
    if not out:
        raise RuleSetError(f"{path}: expected at least one currency")
    return tuple(sorted(out))


_KNOWN_KEYS: Final[dict[str, frozenset[str]]] = {
    "velocity": frozenset({"dimension", "window", "max_count", "max_amount"}),
    "amount": frozenset({"max_amount"}),
    "distinct_cards": frozenset({"window", "max_distinct"}),
    "country_mismatch": frozenset(),
    "blocklist": frozenset({"lists"}),
}
_COMMON_KEYS: Final = frozenset({"name", "type", "action", "weight", "description"})


def _rule(raw: Mapping[str, object], path: str, windows: Mapping[str, Window]) -> Rule:
    kind = _str(_get(raw, "type", path), f"{path}.type")
    if kind not in _KNOWN_KEYS:
        raise RuleSetError(f"{path}.type: unknown rule type {kind!r} (one of {', '.join(_KNOWN_KEYS)})")
    unknown = set(raw) - _COMMON_KEYS - _KNOWN_KEYS[kind]
    if unknown:
        raise RuleSetError(f"{path}: unknown keys {', '.join(sorted(unknown))}")
    name = _str(_get(raw, "name", path), f"{path}.name")
    action = _enum(RuleAction, _get(raw, "action", path), f"{path}.action")
    weight = _int(raw.get("weight", 0), f"{path}.weight", 0, _MAX_WEIGHT)

    def window_name() -> str:
        w = _str(_get(raw, "window", path), f"{path}.window")
        if w not in windows:
            raise RuleSetError(f"{path}.window: {w!r} is not a declared window")
        return w

    if kind == "velocity":
        has_count, has_amount = "max_count" in raw, "max_amount" in raw
        if has_count == has_amount:
            raise RuleSetError(f"{path}: a velocity rule has exactly one of max_count, max_amount")
        return VelocityRule(
            name=name, action=action, weight=weight,
            dimension=_enum(Dimension, _get(raw, "dimension", path), f"{path}.dimension"),
            window=window_name(),
            max_count=_int(raw["max_count"], f"{path}.max_count", 0, 10**9) if has_count else None,
            max_amount=_limits(raw["max_amount"], f"{path}.max_amount") if has_amount else (),
        )
    if kind == "amount":
        return AmountRule(name=name, action=action, weight=weight,
                          max_amount=_limits(_get(raw, "max_amount", path), f"{path}.max_amount"))
    if kind == "distinct_cards":
        return DistinctCardsRule(name=name, action=action, weight=weight, window=window_name(),
                                 max_distinct=_int(_get(raw, "max_distinct", path), f"{path}.max_distinct", 0, 10**6))
    if kind == "country_mismatch":
        return CountryMismatchRule(name=name, action=action, weight=weight)
    lists = _get(raw, "lists", path)
    if not isinstance(lists, list | tuple) or not lists:
        raise RuleSetError(f"{path}.lists: expected a non-empty list")
    kinds = tuple(_enum(BlocklistKind, v, f"{path}.lists[{i}]") for i, v in enumerate(lists))
    return BlocklistRule(name=name, action=action, weight=weight, lists=kinds)


def _external(raw: object, path: str) -> ExternalScorerConfig:
    m = _mapping(raw, path)
    unknown = set(m) - {"url", "timeout_ms", "review_at", "block_at", "fallback", "weight"}
    if unknown:
        raise RuleSetError(f"{path}: unknown keys {', '.join(sorted(unknown))}")
    url = _str(_get(m, "url", path), f"{path}.url")
    if not url.startswith(("http://", "https://")):
        raise RuleSetError(f"{path}.url: expected an http(s) URL")
    review_at = _int(_get(m, "review_at", path), f"{path}.review_at", 0, 100)
    block_at = _int(_get(m, "block_at", path), f"{path}.block_at", 0, 100)
    if block_at < review_at:
        raise RuleSetError(f"{path}: block_at must be >= review_at")
    return ExternalScorerConfig(
        url=url, timeout_ms=_int(_get(m, "timeout_ms", path), f"{path}.timeout_ms", 1, 10_000),
        review_at=review_at, block_at=block_at,
        fallback=_enum(Decision, _get(m, "fallback", path), f"{path}.fallback"),
        weight=_int(m.get("weight", 0), f"{path}.weight", 0, _MAX_WEIGHT),
    )


def load_ruleset(raw: Mapping[str, object]) -> RuleSet:
    """Validate a parsed rule file; raises ``RuleSetError`` naming the offending path."""
    root = _mapping(raw, "$")
    unknown = set(root) - {"version", "windows", "rules", "external_scorer", "description"}
    if unknown:
        raise RuleSetError(f"$: unknown keys {', '.join(sorted(unknown))}")
    version = _get(root, "version", "$")
    if isinstance(version, int | float) and not isinstance(version, bool):
        version = str(version)  # YAML reads an unquoted 3 or 2.1 as a number
    version = _str(version, "$.version")
    windows: dict[str, Window] = {}
    for name, spec in _mapping(_get(root, "windows", "$"), "$.windows").items():
        p = f"$.windows.{name}"
        s = _mapping(spec, p)
        size = _int(_get(s, "size_s", p), f"{p}.size_s", 1, _MAX_WINDOW_S)
        step = _int(s.get("step_s", size), f"{p}.step_s", 1, size)
        if size % step:
            raise RuleSetError(f"{p}: size_s must be a multiple of step_s")
        windows[name] = Window(name=name, size_s=size, step_s=step)
    rules_raw = _get(root, "rules", "$")
    if not isinstance(rules_raw, list | tuple):
        raise RuleSetError("$.rules: expected a list")
    rules = tuple(_rule(_mapping(r, f"$.rules[{i}]"), f"$.rules[{i}]", windows) for i, r in enumerate(rules_raw))
    names = [r.name for r in rules]
    reserved = {EXTERNAL_SCORE_RULE, EXTERNAL_UNAVAILABLE_RULE}
    dupes = sorted({n for n in names if names.count(n) > 1} | (reserved & set(names)))
    if dupes:
        raise RuleSetError(f"$.rules: rule names must be unique and not reserved: {', '.join(dupes)}")
    external = _external(root["external_scorer"], "$.external_scorer") if root.get("external_scorer") else None
    return RuleSet(version=version, windows=tuple(windows.values()), rules=rules, external=external)


# --- Features ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VelocityFeature:
    """Payments of ``dimension`` in ``window``, this payment included; ``amount`` is the sum in
    the payment's own currency (minor units)."""

    dimension: Dimension
    window: str
    count: int
    amount: int


@dataclass(frozen=True, slots=True)
class DistinctCardsFeature:
    window: str
    distinct: int  # card fingerprints of the customer in the window, this payment's included


@dataclass(frozen=True, slots=True)
class Features:
    """What the rules see: the payment's own fields plus the windowed aggregates."""

    customer_id: str
    amount: int
    currency: str
    fingerprint: str | None = None
    ip: str | None = None
    email_hash: str | None = None
    card_country: str | None = None
    shipping_country: str | None = None
    velocity: tuple[VelocityFeature, ...] = ()
    distinct_cards: tuple[DistinctCardsFeature, ...] = ()

    def velocity_for(self, dimension: Dimension, window: str) -> VelocityFeature | None:
        for v in self.velocity:
            if v.dimension is dimension and v.window == window:
                return v
        return None

    def distinct_cards_in(self, window: str) -> int | None:
        for d in self.distinct_cards:
            if d.window == window:
                return d.distinct
        return None

    def dimension_value(self, dimension: Dimension) -> str | None:
        if dimension is Dimension.CUSTOMER:
            return self.customer_id
        return self.fingerprint if dimension is Dimension.FINGERPRINT else self.ip


def email_hash(email: str) -> str:
    """SHA-256 of the trimmed, lower-cased address: the blocklist and the fraud topics never
    carry a plain e-mail (pseudonymised, not anonymised: a known address can be hashed)."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


# --- Blocklist -----------------------------------------------------------------------------

Blocklist = Container[str]  # keys from ``blocklist_key``: a frozenset in tests, a GlobalTable live


def blocklist_key(kind: BlocklistKind, value: str) -> str:
    """The blocklist's key: ``customer:<id>``, ``fingerprint:<fp>``, ``email:<sha256>``."""
    return f"{kind.value}:{value}"


def blocklist_entries(customers: Iterable[str] = (), fingerprints: Iterable[str] = (),
                      emails: Iterable[str] = ()) -> frozenset[str]:
    """A blocklist as a set (tests, replays); e-mails are given plain and hashed here."""
    return frozenset(
        [blocklist_key(BlocklistKind.CUSTOMER, c) for c in customers]
        + [blocklist_key(BlocklistKind.FINGERPRINT, f) for f in fingerprints]
        + [blocklist_key(BlocklistKind.EMAIL, email_hash(e)) for e in emails]
    )


class BlocklistOp(StrEnum):
    ADD = "add"
    REMOVE = "remove"


class BlocklistCommandError(ValueError):
    """An admin command that does not have the documented shape."""


@dataclass(frozen=True, slots=True)
class BlocklistCommand:
    """An admin command of ``<app_id>-fraud-admin``; ``key`` is the blocklist key it changes."""

    command_id: str
    op: BlocklistOp
    kind: BlocklistKind
    key: str
    actor: str
    issued_at: int
    reason: str | None = None


def parse_blocklist_command(raw: object) -> BlocklistCommand:
    """``{"command_id", "op": add|remove, "kind": customer|fingerprint|email, "value" (an
    e-mail may be given as "value_sha256" instead), "actor", "issued_at" (epoch ms), "reason"?}``."""
    if not isinstance(raw, Mapping):
        raise BlocklistCommandError("expected a JSON object")

    def text(key: str, optional: bool = False) -> str | None:
        value = raw.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip() or len(value) > 512:
            raise BlocklistCommandError(f"{key}: expected a non-empty string")
        return value.strip()

    try:
        op, kind = BlocklistOp(str(raw.get("op"))), BlocklistKind(str(raw.get("kind")))
    except ValueError:
        raise BlocklistCommandError("op must be add|remove and kind customer|fingerprint|email") from None
    issued_at = raw.get("issued_at")
    if isinstance(issued_at, bool) or not isinstance(issued_at, int) or issued_at < 0:
        raise BlocklistCommandError("issued_at: expected epoch milliseconds")
    if kind is BlocklistKind.EMAIL and raw.get("value") is None:
        digest = str(text("value_sha256")).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise BlocklistCommandError("value_sha256: expected a hex SHA-256")
        value = digest
    else:
        plain = str(text("value"))
        value = email_hash(plain) if kind is BlocklistKind.EMAIL else plain
    return BlocklistCommand(command_id=str(text("command_id")), op=op, kind=kind, key=blocklist_key(kind, value),
                            actor=str(text("actor")), issued_at=issued_at, reason=text("reason", optional=True))


# --- Evaluation ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExternalScore:
    """What the external scorer said: ``score`` 0..100, or ``None`` when it did not answer
    in time or answered nonsense (``error`` says which)."""

    score: int | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class FraudOutcome:
    """The result of one rule set (the Avro enum of the same name is ``events.FraudOutcome``)."""

    decision: Decision
    rules: tuple[str, ...]  # names of the rules that fired, in rule-set order
    score: int  # sum of the fired rules' weights
    ruleset_version: str = ""


@dataclass(frozen=True, slots=True)
class ShadowOutcome:
    """The active outcome decides the payment; the candidate's is only reported."""

    active: FraudOutcome
    candidate: FraudOutcome | None = None


def _country(code: str | None) -> str | None:
    return code.strip().upper() if code and code.strip() else None


def _fires(rule: Rule, f: Features, blocklist: Blocklist) -> bool:
    if isinstance(rule, VelocityRule):
        v = f.velocity_for(rule.dimension, rule.window)
        if v is None:  # dimension unknown for this payment (no card fingerprint, no IP)
            return False
        if rule.max_count is not None:
            return v.count > rule.max_count
        limit = _limit_for(rule.max_amount, f.currency)
        return limit is not None and v.amount > limit
    if isinstance(rule, AmountRule):
        limit = _limit_for(rule.max_amount, f.currency)
        return limit is not None and f.amount > limit
    if isinstance(rule, DistinctCardsRule):
        distinct = f.distinct_cards_in(rule.window)
        return distinct is not None and distinct > rule.max_distinct
    if isinstance(rule, CountryMismatchRule):
        card, shipping = _country(f.card_country), _country(f.shipping_country)
        return card is not None and shipping is not None and card != shipping
    values = {
        BlocklistKind.CUSTOMER: f.customer_id,
        BlocklistKind.FINGERPRINT: f.fingerprint,
        BlocklistKind.EMAIL: f.email_hash,
    }
    return any((listed := values[k]) is not None and blocklist_key(k, listed) in blocklist for k in rule.lists)


def _external_action(cfg: ExternalScorerConfig, external: ExternalScore) -> tuple[str, Decision] | None:
    if external.score is None:
        return (EXTERNAL_UNAVAILABLE_RULE, cfg.fallback) if cfg.fallback is not Decision.ALLOW else None
    if external.score >= cfg.block_at:
        return EXTERNAL_SCORE_RULE, Decision.BLOCK
    if external.score >= cfg.review_at:
        return EXTERNAL_SCORE_RULE, Decision.REVIEW
    return None


def evaluate(ruleset: RuleSet, features: Features, blocklist: Blocklist, *,
             external: ExternalScore | None = None) -> FraudOutcome:
    """Every rule on the features; block beats review beats allow.

    ``external`` is the external scorer's answer when the rule set has one and it was asked;
    ``None`` leaves it out (not configured, or skipped because a local block rule fired).
    """
    fired: list[str] = []
    actions: set[Decision] = set()
    score = 0
    for rule in ruleset.rules:
        if _fires(rule, features, blocklist):
            fired.append(rule.name)
            actions.add(Decision(rule.action.value))
            score += rule.weight
    if ruleset.external is not None and external is not None:
        hit = _external_action(ruleset.external, external)
        if hit is not None:
            fired.append(hit[0])
            actions.add(hit[1])
            score += ruleset.external.weight
    decision = (Decision.BLOCK if Decision.BLOCK in actions
                else Decision.REVIEW if Decision.REVIEW in actions else Decision.ALLOW)
    return FraudOutcome(decision=decision, rules=tuple(fired), score=score, ruleset_version=ruleset.version)


def needs_external_score(ruleset: RuleSet, local: FraudOutcome) -> bool:
    """Whether asking the external scorer could change anything (not when already blocked)."""
    return ruleset.external is not None and local.decision is not Decision.BLOCK


def evaluate_shadow(active: RuleSet, candidate: RuleSet | None, features: Features, blocklist: Blocklist, *,
                    external: ExternalScore | None = None) -> ShadowOutcome:
    """The active rule set's outcome plus, when a candidate is given, the candidate's on the
    same features, blocklist and external score."""
    return ShadowOutcome(
        active=evaluate(active, features, blocklist, external=external),
        candidate=None if candidate is None else evaluate(candidate, features, blocklist, external=external),
    )


def to_events(outcome: ShadowOutcome) -> tuple[FraudDecision, ...]:
    """The ``FraudDecision`` event bodies: the active one, then the shadow one (``shadow=True``)."""
    out = [FraudDecision(decision=EventFraudOutcome(outcome.active.decision.value), rules=outcome.active.rules)]
    if outcome.candidate is not None:
        out.append(FraudDecision(decision=EventFraudOutcome(outcome.candidate.decision.value),
                                 rules=outcome.candidate.rules, shadow=True))
    return tuple(out)


# --- Messages between the payments agent and the fraud agent --------------------------------


@dataclass(frozen=True, slots=True)
class FraudCheckRequest:
    """One payment's check on its way through the fraud agent's hops (internal JSON).

    ``stages`` lists the dimensions still to count, the first being the one this message is
    keyed by (see ``hop_key``); each hop adds its aggregates to ``features`` and forwards the
    rest; the last hop evaluates. ``observed_at`` (epoch ms, set once by the payments agent)
    is the Kafka timestamp of every hop, so every window is computed from the same instant.
    ``partition`` is the payment's partition: the verdict goes back there.
    """

    payment_id: str
    command_id: str
    partition: int
    observed_at: int
    features: Features
    stages: tuple[Dimension, ...]


@dataclass(frozen=True, slots=True)
class FraudVerdict:
    """The fraud agent's answer (internal JSON, keyed by payment_id, to ``partition``)."""

    payment_id: str
    command_id: str
    partition: int
    observed_at: int
    outcome: FraudOutcome
    shadow: FraudOutcome | None = None
    external_error: str | None = None  # why the external scorer did not count, if it did not

    @property
    def decision(self) -> Decision:
        return self.outcome.decision


def check_request(command: Command, observed_at: int, partition: int, *, fingerprint: str | None = None,
                  card_country: str | None = None) -> FraudCheckRequest:
    """The check of an accepted ``CreatePayment``. ``fingerprint`` and ``card_country`` come
    from the saved payment method when there is one (a one-off token has neither yet)."""
    body = command.body
    if not isinstance(body, CreatePayment):
        raise TypeError(f"fraud checks are for CreatePayment, not {body.AVRO_NAME}")
    ip = body.customer_ip.strip() if body.customer_ip and body.customer_ip.strip() else None
    features = Features(
        customer_id=body.customer_id, amount=body.amount, currency=body.currency, fingerprint=fingerprint or None,
        ip=ip, email_hash=email_hash(body.customer_email) if body.customer_email else None,
        card_country=_country(card_country), shipping_country=_country(body.shipping_country),
    )
    stages = tuple(d for d in Dimension if features.dimension_value(d) is not None)
    return FraudCheckRequest(payment_id=command.payment_id, command_id=command.command_id, partition=partition,
                             observed_at=observed_at, features=features, stages=stages)


def hop_key(request: FraudCheckRequest) -> str:
    """Kafka key of the request's next hop, e.g. ``customer:cus_1``, ``ip:203.0.113.7``."""
    dimension = request.stages[0]
    return f"{dimension.value}:{request.features.dimension_value(dimension)}"


def verdict(request: FraudCheckRequest, outcome: ShadowOutcome, external: ExternalScore | None = None) -> FraudVerdict:
    return FraudVerdict(payment_id=request.payment_id, command_id=request.command_id, partition=request.partition,
                        observed_at=request.observed_at, outcome=outcome.active, shadow=outcome.candidate,
                        external_error=external.error if external is not None else None)

