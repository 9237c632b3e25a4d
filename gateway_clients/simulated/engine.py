"""In-process engine of the simulated gateway: a charge ledger with Stripe-like semantics.

No network and no sleeping here. Every operation returns an ``EngineResponse``: the HTTP status
and JSON body the gateway answers with, plus *delivery instructions* (``delay_ms``,
``Delivery.DROP``) that the HTTP server or the in-process adapter carry out. Delays are applied
after the operation was processed, so a client that times out while waiting has still been
charged — exactly the case "outcome unknown" exists for.

Outcomes are deterministic by payment-method token, and by amount for convenience
(``amount % 100``, only for ordinary approving tokens and only while
``SimulatorConfig.amount_triggers`` is on):

=====================================  ===========  =========================================
token                                  amount%100   outcome
=====================================  ===========  =========================================
``tok_visa``, ``pm_card_visa``, other               approved (authorized, or succeeded when
``tok_*``/``pm_*``                                  ``capture=true``)
``tok_decline_insufficient_funds``     51           402 declined ``insufficient_funds``
``tok_decline_card_declined``          52           402 declined ``generic_decline``
``tok_decline_expired_card``           53           402 declined ``expired_card``
``tok_decline_incorrect_cvc``          54           402 declined ``incorrect_cvc``
``tok_decline_fraud``                  55           402 declined ``fraudulent``
``tok_decline_processing_error``       56           402 declined ``processing_error``
``tok_3ds``                            57           ``requires_action`` with an action URL
``tok_timeout``                        58           charged, response delayed ``hang_ms``
``tok_timeout_<n>`` (n = 1..9)                      the same, and the first n replays under the
                                                    key are delayed too (answers that keep
                                                    getting lost: a retry under the key times
                                                    out as well; a lookup finds the charge)
``tok_5xx``                            59           500, nothing charged (stored, replayed)
``tok_slow``                           60           approved, response delayed ``slow_ms``
``tok_refund_fail``                                 approved; every refund on it fails
``tok_flaky_<n>`` (n = 1..9)                        the first n requests under an idempotency
                                                    key get 503 ``service_unavailable`` (not
                                                    stored), then approved
``tok_5xx_after_charge``                            approved and charged, then 500 "nothing
                                                    was charged, retry" (a lie; stored with
                                                    the charge, so a retry under the key
                                                    replays the 500 and a lookup shows the
                                                    charge): every new key of the payment
``tok_5xx_after_charge_<n>`` (n = 1..9)             the same for the first n authorization
                                                    keys of a payment, then approved (the
                                                    orphan-charge case: attempt 0 charged and
                                                    was given up, attempt 1 charges again)
a 12+ digit run (card data)                         400 ``raw_card_data_rejected``, not stored
anything else                                       400 ``invalid_payment_method``
=====================================  ===========  =========================================

Idempotency follows Stripe: the first response for a key is stored (declines and 5xx
included) and replayed for the same parameters; the same key with different parameters is a
400 ``idempotency_key_reused``. Requests that fail basic validation are not stored, and neither
is the 503 of ``tok_flaky_<n>``: it stands for a front end that refuses the request before the
idempotency layer sees it, so a retry under the same key gets a fresh try.
"""

from __future__ import annotations

import copy
import dataclasses
import marshal
import random
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

__all__ = [
    "AMOUNT_TRIGGERS",
    "TOKEN_OUTCOMES",
    "ChargeSnapshot",
    "Delivery",
    "EngineResponse",
    "Outcome",
    "RefundSnapshot",
    "Scenario",
    "SimulatedGatewayEngine",
    "SimulatorConfig",
]

JsonDict = dict[str, object]


class Scenario(StrEnum):
    APPROVE = "approve"
    DECLINE = "decline"
    REQUIRES_ACTION = "requires_action"
    TIMEOUT = "timeout"
    SERVER_ERROR = "server_error"
    SLOW = "slow"
    REFUND_FAIL = "refund_fail"


@dataclass(frozen=True, slots=True)
class Outcome:
    scenario: Scenario
    decline_code: str | None = None  # the simulated gateway's own (raw) decline code


APPROVE: Final = Outcome(Scenario.APPROVE)

TOKEN_OUTCOMES: Final[Mapping[str, Outcome]] = {
    "tok_visa": APPROVE,
    "pm_card_visa": APPROVE,
    "tok_mastercard": APPROVE,
    "pm_card_mastercard": APPROVE,
    "tok_decline_insufficient_funds": Outcome(Scenario.DECLINE, "insufficient_funds"),
    "tok_decline_card_declined": Outcome(Scenario.DECLINE, "generic_decline"),
    "tok_decline_expired_card": Outcome(Scenario.DECLINE, "expired_card"),
    "tok_decline_incorrect_cvc": Outcome(Scenario.DECLINE, "incorrect_cvc"),
    "tok_decline_fraud": Outcome(Scenario.DECLINE, "fraudulent"),
    "tok_decline_processing_error": Outcome(Scenario.DECLINE, "processing_error"),
    "tok_3ds": Outcome(Scenario.REQUIRES_ACTION),
    "tok_timeout": Outcome(Scenario.TIMEOUT),
    "tok_5xx": Outcome(Scenario.SERVER_ERROR),
    "tok_slow": Outcome(Scenario.SLOW),
    "tok_refund_fail": Outcome(Scenario.REFUND_FAIL),
}

AMOUNT_TRIGGERS: Final[Mapping[int, Outcome]] = {
    51: TOKEN_OUTCOMES["tok_decline_insufficient_funds"],
    52: TOKEN_OUTCOMES["tok_decline_card_declined"],
    53: TOKEN_OUTCOMES["tok_decline_expired_card"],
    54: TOKEN_OUTCOMES["tok_decline_incorrect_cvc"],
    55: TOKEN_OUTCOMES["tok_decline_fraud"],
    56: TOKEN_OUTCOMES["tok_decline_processing_error"],
    57: TOKEN_OUTCOMES["tok_3ds"],
    58: TOKEN_OUTCOMES["tok_timeout"],
    59: TOKEN_OUTCOMES["tok_5xx"],
    60: TOKEN_OUTCOMES["tok_slow"],
}

_MAX_PENDING_EVENTS: Final = 100_000
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
_TOKEN_RE = re.compile(r"^(tok|pm)_[A-Za-z0-9_]{1,100}$")
_DIGIT_RUN_RE = re.compile(r"\d{12,}")
_FLAKY_RE = re.compile(r"^tok_flaky_([1-9])$")
_TIMEOUT_REPLAYS_RE = re.compile(r"^tok_timeout_([1-9])$")
_CHARGE_THEN_5XX_RE = re.compile(r"^tok_5xx_after_charge(?:_([1-9]))?$")


class Delivery(StrEnum):
    NORMAL = "normal"
    DROP = "drop"  # processed, then the connection is cut before the response is sent


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """Latency and fault settings. Rates are probabilities in [0, 1]; times in milliseconds."""

    seed: int = 1
    latency_mean_ms: float = 0.0
    latency_jitter_ms: float = 0.0  # standard deviation; samples are clamped at 0
    error_5xx_rate: float = 0.0  # 500 before processing: nothing charged, response stored
    timeout_rate: float = 0.0  # processed, then the response takes hang_ms
    response_lost_rate: float = 0.0  # processed, then the connection is dropped
    stall_rate: float = 0.0  # processed, then the response takes an extra stall_ms
    stall_ms: float = 1_000.0
    hang_ms: float = 30_000.0  # must exceed the clients' timeout to mean "timeout"
    slow_ms: float = 2_000.0  # extra delay for tok_slow
    amount_triggers: bool = True

    def __post_init__(self) -> None:
        for name in ("error_5xx_rate", "timeout_rate", "response_lost_rate", "stall_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {rate!r}")
        for name in ("latency_mean_ms", "latency_jitter_ms", "stall_ms", "hang_ms", "slow_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


@dataclass(frozen=True, slots=True)
class EngineResponse:
    status_code: int
    body: JsonDict
    should_retry: bool = False  # only on 5xx: the gateway guarantees nothing was done
    replayed: bool = False
    delay_ms: float = 0.0
    delivery: Delivery = Delivery.NORMAL


@dataclass(frozen=True, slots=True)
class RefundSnapshot:
    refund_ref: str
    refund_id: str
    amount: int
    currency: str
    status: str  # "succeeded" | "failed"
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class ChargeSnapshot:
    """One ledger row, as invariant checkers see it."""

    gateway_ref: str
    payment_id: str
    amount: int
    currency: str
    status: str
    capture_method: str
    amount_authorized: int
    amount_captured: int
    amount_refunded: int
    decline_code: str | None
    was_authorized: bool  # money was reserved at some point (a "successful charge")
    idempotency_keys: tuple[str, ...]
    refunds: tuple[RefundSnapshot, ...]
    metadata: Mapping[str, str]
    created: int


@dataclass(slots=True)
class _Charge:
    gateway_ref: str
    payment_id: str
    amount: int
    currency: str
    status: str
    capture_method: str
    outcome: Outcome
    metadata: dict[str, str]
    created: int
    amount_authorized: int = 0
    amount_captured: int = 0
    amount_refunded: int = 0
    decline_code: str | None = None
    was_authorized: bool = False
    idempotency_keys: list[str] = field(default_factory=list)
    refunds: list[RefundSnapshot] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _IdempotencyRecord:
    key: str
    fingerprint: tuple[object, ...]
    operation: str
    response: EngineResponse
    gateway_ref: str | None  # None when nothing was charged (stored 5xx)


class SimulatedGatewayEngine:
    """The simulated gateway's ledger and rules. Single-threaded; call from one event loop."""

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        public_base_url: str = "http://simgw.invalid",
    ) -> None:
        self._config = config or SimulatorConfig()
        self._rng = random.Random(self._config.seed)
        self._clock = clock
        self.public_base_url = public_base_url.rstrip("/")
        self._charges: dict[str, _Charge] = {}
        self._idempotency: dict[str, _IdempotencyRecord] = {}
        # Bounded so an in-process engine nobody drains (benchmarks) cannot grow without end;
        # the server drains after every request, far below the bound.
        self._events: deque[JsonDict] = deque(maxlen=_MAX_PENDING_EVENTS)
        self._ref_counter = 0
        self._refund_counter = 0
        self._event_counter = 0
        self._refused_at_front: dict[str, int] = {}  # tok_flaky_<n>: 503s served per idempotency key
        self._hung_replays: dict[str, int] = {}  # tok_timeout_<n>: delayed replays served per idempotency key
        self._detached: dict[str, str] = {}  # saved-method token -> idempotency key of its detach
        self._charged_then_failed: dict[str, int] = {}  # tok_5xx_after_charge*: lies told per payment_id

    # -- configuration -------------------------------------------------------------------

    @property
    def config(self) -> SimulatorConfig:
        return self._config

    def update_config(self, changes: Mapping[str, object]) -> SimulatorConfig:
        """Change settings at runtime; bad fields or values raise ValueError/TypeError."""
        known = {f.name: f for f in dataclasses.fields(SimulatorConfig)}
        values: dict[str, object] = {}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown config field {name!r}")
            current = getattr(self._config, name)
            if isinstance(current, bool):
                if not isinstance(value, bool):
                    raise TypeError(f"{name} must be a boolean")
            elif isinstance(current, int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise TypeError(f"{name} must be an integer")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number")
            values[name] = value
        new_config = dataclasses.replace(self._config, **values)  # type: ignore[arg-type]
        if new_config.seed != self._config.seed:
            self._rng = random.Random(new_config.seed)
        self._config = new_config
        return new_config

    # -- operations ------------------------------------------------------------------------

    def authorize(
        self,
        *,
        payment_id: str,
        amount: int,
        currency: str,
        payment_method_token: str,
        capture: bool,
        idempotency_key: str,
        metadata: Mapping[str, str] | None = None,
    ) -> EngineResponse:
        invalid = (
            _require_key(idempotency_key) or _require_text("payment_id", payment_id) or _check_money(amount, currency)
        )
        if invalid:
            return invalid
        if _DIGIT_RUN_RE.search(payment_method_token):
            # A raw card number must never reach us (nor be echoed back): reject without detail.
            return _error(
                400, "invalid_request_error", "raw_card_data_rejected", "send a payment method token, never card data"
            )
        flaky = _FLAKY_RE.match(payment_method_token)
        if flaky is not None and self._refused_at_front.get(idempotency_key, 0) < int(flaky.group(1)):
            # Refused before the idempotency layer: nothing done, nothing stored.
            self._refused_at_front[idempotency_key] = self._refused_at_front.get(idempotency_key, 0) + 1
            return _unavailable()
        meta = dict(metadata or {})
        meta["payment_id"] = payment_id
        fingerprint: tuple[object, ...] = (
            "authorize",
            payment_id,
            amount,
            currency,
            payment_method_token,
            capture,
            tuple(sorted(meta.items())),
        )
        replay = self._replay(idempotency_key, fingerprint)
        if replay:
            sticky = _TIMEOUT_REPLAYS_RE.match(payment_method_token)
            if sticky is not None and self._hung_replays.get(idempotency_key, 0) < int(sticky.group(1)):
                self._hung_replays[idempotency_key] = self._hung_replays.get(idempotency_key, 0) + 1
                replay = dataclasses.replace(replay, delay_ms=replay.delay_ms + self._config.hang_ms)
            return replay

        outcome = self._outcome_for(payment_method_token, amount)
        if outcome is None:
            return self._store(
                idempotency_key,
                fingerprint,
                "authorize",
                None,
                _error(400, "invalid_request_error", "invalid_payment_method", "unknown payment method token"),
            )
        if outcome.scenario is Scenario.SERVER_ERROR or self._roll(self._config.error_5xx_rate):
            return self._store(idempotency_key, fingerprint, "authorize", None, _server_error())

        self._ref_counter += 1
        ref = f"simpay_{self._ref_counter:010d}"
        charge = _Charge(
            gateway_ref=ref,
            payment_id=payment_id,
            amount=amount,
            currency=currency,
            status="processing",
            capture_method="automatic" if capture else "manual",
            outcome=outcome,
            metadata=meta,
            created=int(self._clock()),
            idempotency_keys=[idempotency_key],
        )
        self._charges[ref] = charge
        if outcome.scenario is Scenario.DECLINE:
            charge.status = "declined"
            charge.decline_code = outcome.decline_code
            self._emit("payment.declined", charge)
            response = _decline_error(self._payment_json(charge))
        elif outcome.scenario is Scenario.REQUIRES_ACTION:
            charge.status = "requires_action"
            self._emit("payment.requires_action", charge)
            response = EngineResponse(200, self._payment_json(charge))
        else:
            self._approve(charge)
            response = EngineResponse(200, self._payment_json(charge))
            if self._charge_then_fail(payment_method_token, payment_id):
                # Charged, yet the answer says nothing was done: the key's record keeps the
                # charge (a lookup finds it), its replays repeat the 500.
                response = _server_error()
        stored = self._store(idempotency_key, fingerprint, "authorize", ref, response)
        return self._with_delivery(stored, outcome)

    def capture(
        self,
        *,
        gateway_ref: str,
        amount: int | None,
        currency: str | None,
        idempotency_key: str,
    ) -> EngineResponse:
        invalid = _require_key(idempotency_key)
        if amount is not None or currency is not None:
            invalid = invalid or _check_money(amount, currency)
        if invalid:
            return invalid
        fingerprint: tuple[object, ...] = ("capture", gateway_ref, amount, currency)
        replay = self._replay(idempotency_key, fingerprint)
        if replay:
            return replay
        charge = self._charges.get(gateway_ref)
        if charge is None:
            return _not_found(gateway_ref)
        if self._roll(self._config.error_5xx_rate):
            return self._store(idempotency_key, fingerprint, "capture", None, _server_error())
        charge.idempotency_keys.append(idempotency_key)
        to_capture = charge.amount_authorized if amount is None else amount
        if charge.status != "authorized":
            response = _error(
                400,
                "invalid_request_error",
                "payment_unexpected_state",
                f"cannot capture a payment in status {charge.status}",
                self._payment_json(charge),
            )
        elif currency is not None and currency != charge.currency:
            response = _error(
                400,
                "invalid_request_error",
                "currency_mismatch",
                "capture currency differs from the authorization",
                self._payment_json(charge),
            )
        elif to_capture > charge.amount_authorized:
            response = _error(
                400,
                "invalid_request_error",
                "amount_too_large",
                "capture amount exceeds the authorized amount",
                self._payment_json(charge),
            )
        else:
            charge.amount_captured = to_capture  # the remainder is released
            charge.status = "succeeded"
            self._emit("payment.succeeded", charge)
            response = EngineResponse(200, self._payment_json(charge))
        stored = self._store(idempotency_key, fingerprint, "capture", gateway_ref, response)
        return self._with_delivery(stored, APPROVE)

    def cancel(self, *, gateway_ref: str, idempotency_key: str) -> EngineResponse:
        invalid = _require_key(idempotency_key)
        if invalid:
            return invalid
        fingerprint: tuple[object, ...] = ("cancel", gateway_ref)
        replay = self._replay(idempotency_key, fingerprint)
        if replay:
            return replay
        charge = self._charges.get(gateway_ref)
        if charge is None:
            return _not_found(gateway_ref)
        if self._roll(self._config.error_5xx_rate):
            return self._store(idempotency_key, fingerprint, "cancel", None, _server_error())
        charge.idempotency_keys.append(idempotency_key)
        if charge.status in ("authorized", "requires_action"):
            charge.status = "canceled"
            self._emit("payment.canceled", charge)
            response = EngineResponse(200, self._payment_json(charge))
        else:
            response = _error(
                400,
                "invalid_request_error",
                "payment_unexpected_state",
                f"cannot cancel a payment in status {charge.status}",
                self._payment_json(charge),
            )
        stored = self._store(idempotency_key, fingerprint, "cancel", gateway_ref, response)
        return self._with_delivery(stored, APPROVE)

    def refund(
        self,
        *,
        gateway_ref: str,
        refund_id: str,
        amount: int | None,
        currency: str | None,
        idempotency_key: str,
    ) -> EngineResponse:
        invalid = _require_key(idempotency_key) or _require_text("refund_id", refund_id)
        if amount is not None or currency is not None:
            invalid = invalid or _check_money(amount, currency)
        if invalid:
            return invalid
        fingerprint: tuple[object, ...] = ("refund", gateway_ref, refund_id, amount, currency)
        replay = self._replay(idempotency_key, fingerprint)
        if replay:
            return replay
        charge = self._charges.get(gateway_ref)
        if charge is None:
            return _not_found(gateway_ref)
        if self._roll(self._config.error_5xx_rate):
            return self._store(idempotency_key, fingerprint, "refund", None, _server_error())
        charge.idempotency_keys.append(idempotency_key)
        refundable = charge.amount_captured - charge.amount_refunded
        to_refund = refundable if amount is None else amount
        if charge.status not in ("succeeded", "partially_refunded"):
            response = _error(
                400,
                "invalid_request_error",
                "payment_unexpected_state",
                f"cannot refund a payment in status {charge.status}",
                self._payment_json(charge),
            )
        elif currency is not None and currency != charge.currency:
            response = _error(
                400,
                "invalid_request_error",
                "currency_mismatch",
                "refund currency differs from the payment",
                self._payment_json(charge),
            )
        elif any(r.refund_id == refund_id for r in charge.refunds):
            response = _error(
                400,
                "invalid_request_error",
                "duplicate_refund_id",
                "this refund_id was already used on this payment",
                self._payment_json(charge),
            )
        elif to_refund <= 0 or to_refund > refundable:
            response = _error(
                400,
                "invalid_request_error",
                "amount_too_large",
                f"refund amount exceeds the refundable {refundable}",
                self._payment_json(charge),
            )
        else:
            self._refund_counter += 1
            failed = charge.outcome.scenario is Scenario.REFUND_FAIL
            refund = RefundSnapshot(
                refund_ref=f"simre_{self._refund_counter:010d}",
                refund_id=refund_id,
                amount=to_refund,
                currency=charge.currency,
                status="failed" if failed else "succeeded",
                idempotency_key=idempotency_key,
            )
            charge.refunds.append(refund)
            if not failed:
                charge.amount_refunded += to_refund
                fully = charge.amount_refunded == charge.amount_captured
                charge.status = "refunded" if fully else "partially_refunded"
            refund_json = self._refund_json(charge, refund)
            self._emit_raw("refund.failed" if failed else "refund.succeeded", refund_json)
            response = EngineResponse(200, refund_json)
        stored = self._store(idempotency_key, fingerprint, "refund", gateway_ref, response)
        return self._with_delivery(stored, APPROVE)

    def complete_action(self, gateway_ref: str, *, success: bool) -> EngineResponse:
        """The customer finished (or failed) 3-D Secure; the result goes out as a webhook."""
        charge = self._charges.get(gateway_ref)
        if charge is None:
            return _not_found(gateway_ref)
        if charge.status != "requires_action":
            return _error(
                400,
                "invalid_request_error",
                "payment_unexpected_state",
                f"payment is {charge.status}, not requires_action",
                self._payment_json(charge),
            )
        if success:
            self._approve(charge)
        else:
            charge.status = "declined"
            charge.decline_code = "authentication_failed"
            self._emit("payment.declined", charge)
        return EngineResponse(200, self._payment_json(charge))

    # -- lookups ---------------------------------------------------------------------------

    def detach_payment_method(self, token: str, idempotency_key: str) -> bool:
        """Detach a saved method's token from its customer; idempotent (the first key is kept).
        Returns whether this call detached it (False: it already was)."""
        if token in self._detached:
            return False
        self._detached[token] = idempotency_key
        return True

    def is_detached(self, token: str) -> bool:
        return token in self._detached

    def get_payment(self, gateway_ref: str) -> EngineResponse:
        charge = self._charges.get(gateway_ref)
        if charge is None:
            return _not_found(gateway_ref)
        return EngineResponse(200, self._payment_json(charge))

    def lookup(self, idempotency_key: str) -> EngineResponse:
        """What happened under an idempotency key: resolves an unknown outcome."""
        record = self._idempotency.get(idempotency_key)
        if record is None:
            return _error(
                404, "invalid_request_error", "resource_missing", "no request was processed under this idempotency key"
            )
        charge = self._charges.get(record.gateway_ref) if record.gateway_ref else None
        return EngineResponse(
            200,
            {
                "object": "idempotency_record",
                "idempotency_key": record.key,
                "operation": record.operation,
                "status_code": record.response.status_code,
                "gateway_ref": record.gateway_ref,
                "payment": self._payment_json(charge) if charge else None,
                "response": copy.deepcopy(record.response.body),
            },
        )

    def ledger(self) -> list[ChargeSnapshot]:
        return [_snapshot(c) for c in self._charges.values()]

    def charges_for_payment(self, payment_id: str) -> list[ChargeSnapshot]:
        return [_snapshot(c) for c in self._charges.values() if c.payment_id == payment_id]

    def duplicate_charges(self) -> dict[str, list[ChargeSnapshot]]:
        """payment_id → its charges, for every payment with more than one successful charge."""
        by_payment: dict[str, list[ChargeSnapshot]] = {}
        for charge in self._charges.values():
            if charge.was_authorized:
                by_payment.setdefault(charge.payment_id, []).append(_snapshot(charge))
        return {pid: charges for pid, charges in by_payment.items() if len(charges) > 1}

    def ledger_json(self) -> JsonDict:
        return {
            "object": "list",
            "data": [
                self._payment_json(c)
                | {"idempotency_keys": list(c.idempotency_keys), "was_authorized": c.was_authorized}
                for c in self._charges.values()
            ],
        }

    def drain_events(self) -> list[JsonDict]:
        """Webhook events produced since the last call, oldest first."""
        events = list(self._events)
        self._events.clear()
        return events

    # -- internals -------------------------------------------------------------------------

    def _outcome_for(self, token: str, amount: int) -> Outcome | None:
        outcome = TOKEN_OUTCOMES.get("tok_timeout" if _TIMEOUT_REPLAYS_RE.match(token) else token)
        if outcome is None:
            if not _TOKEN_RE.match(token):
                return None
            outcome = APPROVE
        if outcome is APPROVE and self._config.amount_triggers:
            return AMOUNT_TRIGGERS.get(amount % 100, APPROVE)
        return outcome

    def _approve(self, charge: _Charge) -> None:
        charge.was_authorized = True
        charge.amount_authorized = charge.amount
        if charge.capture_method == "automatic":
            charge.amount_captured = charge.amount
            charge.status = "succeeded"
            self._emit("payment.succeeded", charge)
        else:
            charge.status = "authorized"
            self._emit("payment.authorized", charge)

    def _charge_then_fail(self, token: str, payment_id: str) -> bool:
        """``tok_5xx_after_charge[_<n>]``: whether this new charge is answered with a 500."""
        match = _CHARGE_THEN_5XX_RE.match(token)
        if match is None:
            return False
        told = self._charged_then_failed.get(payment_id, 0)
        if match.group(1) is not None and told >= int(match.group(1)):
            return False
        self._charged_then_failed[payment_id] = told + 1
        return True

    def _replay(self, key: str, fingerprint: tuple[object, ...]) -> EngineResponse | None:
        record = self._idempotency.get(key)
        if record is None:
            return None
        if record.fingerprint != fingerprint:
            return _error(
                400,
                "idempotency_error",
                "idempotency_key_reused",
                "this idempotency key was already used with different parameters",
            )
        stored = record.response
        return dataclasses.replace(
            stored,
            body=_copy_body(stored.body),
            replayed=True,
            delay_ms=self._latency(),
            delivery=Delivery.NORMAL,
        )

    def _store(
        self,
        key: str,
        fingerprint: tuple[object, ...],
        operation: str,
        gateway_ref: str | None,
        response: EngineResponse,
    ) -> EngineResponse:
        self._idempotency[key] = _IdempotencyRecord(key, fingerprint, operation, response, gateway_ref)
        return dataclasses.replace(response, body=_copy_body(response.body), delay_ms=self._latency())

    def _with_delivery(self, response: EngineResponse, outcome: Outcome) -> EngineResponse:
        """Decide how the (already processed and stored) response reaches the caller."""
        cfg = self._config
        delay = response.delay_ms
        if outcome.scenario is Scenario.TIMEOUT or self._roll(cfg.timeout_rate):
            delay += cfg.hang_ms
        elif self._roll(cfg.response_lost_rate):
            return dataclasses.replace(response, delivery=Delivery.DROP)
        elif outcome.scenario is Scenario.SLOW:
            delay += cfg.slow_ms
        if self._roll(cfg.stall_rate):
            delay += cfg.stall_ms
        return dataclasses.replace(response, delay_ms=delay)

    def _roll(self, rate: float) -> bool:
        return rate > 0.0 and self._rng.random() < rate

    def _latency(self) -> float:
        cfg = self._config
        if cfg.latency_mean_ms == 0.0 and cfg.latency_jitter_ms == 0.0:
            return 0.0
        return max(0.0, self._rng.gauss(cfg.latency_mean_ms, cfg.latency_jitter_ms))

    def _payment_json(self, charge: _Charge) -> JsonDict:
        next_action: JsonDict | None = None
        if charge.status == "requires_action":
            next_action = {
                "type": "redirect_to_url",
                "url": f"{self.public_base_url}/v1/payments/{charge.gateway_ref}/authenticate",
            }
        return {
            "object": "payment",
            "id": charge.gateway_ref,
            "payment_id": charge.payment_id,
            "status": charge.status,
            "amount": charge.amount,
            "currency": charge.currency,
            "capture_method": charge.capture_method,
            "amount_authorized": charge.amount_authorized,
            "amount_captured": charge.amount_captured,
            "amount_refunded": charge.amount_refunded,
            "decline_code": charge.decline_code,
            "next_action": next_action,
            "metadata": dict(charge.metadata),
            "created": charge.created,
            "refunds": [_refund_summary(r) for r in charge.refunds],
        }

    def _refund_json(self, charge: _Charge, refund: RefundSnapshot) -> JsonDict:
        return _refund_summary(refund) | {
            "object": "refund",
            "payment_ref": charge.gateway_ref,
            "failure_reason": "declined_by_issuer" if refund.status == "failed" else None,
            "payment": self._payment_json(charge),
        }

    def _emit(self, event_type: str, charge: _Charge) -> None:
        self._emit_raw(event_type, self._payment_json(charge))

    def _emit_raw(self, event_type: str, obj: JsonDict) -> None:
        self._event_counter += 1
        self._events.append(
            {
                "object": "event",
                "id": f"simevt_{self._event_counter:010d}",
                "type": event_type,
                "created": int(self._clock()),
                "data": {"object": obj},
            }
        )


def _snapshot(charge: _Charge) -> ChargeSnapshot:
    return ChargeSnapshot(
        gateway_ref=charge.gateway_ref,
        payment_id=charge.payment_id,
        amount=charge.amount,
        currency=charge.currency,
        status=charge.status,
        capture_method=charge.capture_method,
        amount_authorized=charge.amount_authorized,
        amount_captured=charge.amount_captured,
        amount_refunded=charge.amount_refunded,
        decline_code=charge.decline_code,
        was_authorized=charge.was_authorized,
        idempotency_keys=tuple(charge.idempotency_keys),
        refunds=tuple(charge.refunds),
        metadata=dict(charge.metadata),
        created=charge.created,
    )


def _refund_summary(refund: RefundSnapshot) -> JsonDict:
    return {
        "id": refund.refund_ref,
        "refund_id": refund.refund_id,
        "amount": refund.amount,
        "currency": refund.currency,
        "status": refund.status,
    }


def _copy_body(body: Any) -> Any:
    """A deep copy of a JSON response body (dicts, lists, text, numbers), so callers can never
    change what the idempotency layer replays. marshal copies such data in C, several times
    faster than ``copy.deepcopy``; anything marshal does not take falls back to it."""
    try:
        return marshal.loads(marshal.dumps(body))
    except ValueError:
        return copy.deepcopy(body)


def _error(
    status_code: int,
    error_type: str,
    code: str,
    message: str,
    payment: JsonDict | None = None,
    *,
    should_retry: bool = False,
) -> EngineResponse:
    error: JsonDict = {"type": error_type, "code": code, "message": message}
    if payment is not None:
        error["payment"] = payment
    return EngineResponse(status_code, {"error": error}, should_retry=should_retry)


def _decline_error(payment: JsonDict) -> EngineResponse:
    error: JsonDict = {
        "type": "card_error",
        "code": "card_declined",
        "decline_code": payment["decline_code"],
        "message": "the card was declined",
        "payment": payment,
    }
    return EngineResponse(402, {"error": error})


def _server_error() -> EngineResponse:
    return _error(
        500, "api_error", "internal_error", "internal error before processing; nothing was charged", should_retry=True
    )


def _unavailable() -> EngineResponse:
    return _error(
        503, "api_error", "service_unavailable", "temporarily unavailable; nothing was done, retry", should_retry=True
    )


def _not_found(gateway_ref: str) -> EngineResponse:
    return _error(404, "invalid_request_error", "resource_missing", f"no such payment: {gateway_ref}")


def _require_key(key: str) -> EngineResponse | None:
    if not key or len(key) > 255:
        return _error(
            400,
            "invalid_request_error",
            "idempotency_key_required",
            "an Idempotency-Key of 1-255 characters is required",
        )
    return None


def _require_text(name: str, value: str) -> EngineResponse | None:
    if not value or len(value) > 255:
        return _error(400, "invalid_request_error", "parameter_invalid", f"{name} must be 1-255 characters")
    return None


def _check_money(amount: int | None, currency: str | None) -> EngineResponse | None:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        return _error(
            400, "invalid_request_error", "amount_invalid", "amount must be a positive integer in minor units"
        )
    if currency is None or not _CURRENCY_RE.match(currency):
        return _error(400, "invalid_request_error", "currency_invalid", "currency must be an upper-case ISO-4217 code")
    return None
