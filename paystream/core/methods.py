"""Saved payment methods: ``decide_method(state, command, sealed_token, now_ms) -> MethodDecision``, pure.

A saved method is keyed by its payment method id (the ``payment_id`` of its commands). Only
what a later payment needs is kept: the gateway's token (sealed, i.e. encrypted by the agent
before it gets here, so the core never sees key material), brand, last4, expiry and the
gateway's card fingerprint. Never a card number or CVV: commands carrying one are rejected by
``commands.validate``.

Transitions::

    (none)  --AddPaymentMethod-->     active
    active  --RemovePaymentMethod-->  removed   (token forgotten; + DetachAtGateway)
    active|removed --ErasePaymentMethod--> erased (token and card details forgotten; + DetachAtGateway if active)

A removed or erased method keeps its id, customer and status (a tombstone), so a late
CreatePayment referring to it is answered ``payment_method_removed`` rather than "not found",
and a retried AddPaymentMethod cannot revive it.

``resolve_for_payment`` is what a CreatePayment with ``saved_method_id`` is checked against
before the payment state machine runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final

from paystream.core.commands import (
    AddPaymentMethod,
    Command,
    ErasePaymentMethod,
    MethodCommandBody,
    RemovePaymentMethod,
    validate,
)
from paystream.core.events import EventBody, PaymentMethodAdded, PaymentMethodRemoved
from paystream.core.rejections import Rejection, RejectionReason

__all__ = [
    "DetachAtGateway",
    "MethodDecision",
    "MethodStatus",
    "SavedMethod",
    "decide_method",
    "detach_idempotency_key",
    "is_method_command",
    "resolve_for_payment",
]

_MAX_KEY_LENGTH: Final = 255


class MethodStatus(StrEnum):
    ACTIVE = "active"
    REMOVED = "removed"
    ERASED = "erased"


@dataclass(frozen=True, slots=True)
class SavedMethod:
    """A customer's saved payment method (value of the ``payment-methods`` table)."""

    method_id: str
    customer_id: str
    gateway: str
    sealed_token: str | None  # the gateway token, encrypted (security.crypto envelope); None once erased
    status: MethodStatus
    brand: str | None = None
    last4: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None
    fingerprint: str | None = None
    created_at: int = 0
    updated_at: int = 0
    version: int = 1  # +1 per change; the vault sink only moves rows forward
    # When it stopped being active (removed, or erased while active); an erasure keeps a removal's
    # time. On the vault record, so a rebuild from the compacted vault topic (only the latest
    # record per method) still knows it (docs/operations.md, rebuild limits).
    removed_at: int | None = None


@dataclass(frozen=True, slots=True)
class DetachAtGateway:
    """Ask the agent to detach the method from the customer at its gateway (best effort)."""

    method_id: str
    gateway: str
    sealed_token: str
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class MethodDecision:
    state: SavedMethod | None
    events: tuple[EventBody, ...] = ()
    effects: tuple[DetachAtGateway, ...] = ()
    rejection: Rejection | None = None
    causation_id: str | None = None


def is_method_command(command: Command) -> bool:
    return isinstance(command.body, AddPaymentMethod | RemovePaymentMethod | ErasePaymentMethod)


def detach_idempotency_key(method_id: str) -> str:
    """Deterministic: a retried removal detaches once (``ps-<method>-detach``)."""
    return f"ps-{method_id}-detach"[:_MAX_KEY_LENGTH]


def _reject(state: SavedMethod | None, command: Command, reason: RejectionReason, detail: str) -> MethodDecision:
    return MethodDecision(state=state, rejection=Rejection(reason, detail), causation_id=command.command_id)


def _add(state: SavedMethod | None, command: Command, body: AddPaymentMethod, sealed_token: str | None,
         now: int) -> MethodDecision:
    if state is not None:
        return _reject(state, command, RejectionReason.PAYMENT_METHOD_EXISTS, "a payment method with this id exists")
    if sealed_token is None:
        return _reject(state, command, RejectionReason.ENCRYPTION_UNAVAILABLE,
                       "no encryption key is configured; the token cannot be stored")
    method = SavedMethod(
        method_id=command.payment_id,
        customer_id=body.customer_id,
        gateway=body.gateway,
        sealed_token=sealed_token,
        status=MethodStatus.ACTIVE,
        brand=body.brand,
        last4=body.last4,
        exp_month=body.exp_month,
        exp_year=body.exp_year,
        fingerprint=body.fingerprint,
        created_at=now,
        updated_at=now,
    )
    event = PaymentMethodAdded(
        customer_id=body.customer_id, gateway=body.gateway, brand=body.brand, last4=body.last4,
        exp_month=body.exp_month, exp_year=body.exp_year,
    )
    return MethodDecision(method, (event,), causation_id=command.command_id)


def _detach(state: SavedMethod) -> tuple[DetachAtGateway, ...]:
    if state.status is not MethodStatus.ACTIVE or state.sealed_token is None:
        return ()
    return (DetachAtGateway(method_id=state.method_id, gateway=state.gateway, sealed_token=state.sealed_token,
                            idempotency_key=detach_idempotency_key(state.method_id)),)


def _remove(state: SavedMethod | None, command: Command, body: RemovePaymentMethod, now: int) -> MethodDecision:
    if state is None:
        return _reject(state, command, RejectionReason.PAYMENT_METHOD_NOT_FOUND, "no payment method with this id")
    if state.customer_id != body.customer_id:
        return _reject(state, command, RejectionReason.CUSTOMER_MISMATCH, "the method belongs to another customer")
    if state.status is not MethodStatus.ACTIVE:
        return _reject(state, command, RejectionReason.PAYMENT_METHOD_REMOVED, f"the method is {state.status.value}")
    # The token is of no further use once detached: forget it (data minimization).
    removed = replace(state, status=MethodStatus.REMOVED, sealed_token=None, updated_at=now,
                      version=state.version + 1, removed_at=now)
    event = PaymentMethodRemoved(customer_id=state.customer_id)
    return MethodDecision(removed, (event,), _detach(state), causation_id=command.command_id)


def _erase(state: SavedMethod | None, command: Command, body: ErasePaymentMethod, now: int) -> MethodDecision:
    if state is None:
        return _reject(state, command, RejectionReason.PAYMENT_METHOD_NOT_FOUND, "no payment method with this id")
    if state.customer_id != body.customer_id:
        return _reject(state, command, RejectionReason.CUSTOMER_MISMATCH, "the method belongs to another customer")
    if state.status is MethodStatus.ERASED:
        return _reject(state, command, RejectionReason.PAYMENT_METHOD_REMOVED, "the method is erased")
    erased = SavedMethod(
        method_id=state.method_id,
        customer_id=state.customer_id,
        gateway=state.gateway,
        sealed_token=None,
        status=MethodStatus.ERASED,
        created_at=state.created_at,
        updated_at=now,
        version=state.version + 1,
        removed_at=state.removed_at if state.removed_at is not None else now,
    )
    event = PaymentMethodRemoved(customer_id=state.customer_id, erased=True)
    return MethodDecision(erased, (event,), _detach(state), causation_id=command.command_id)


def decide_method(state: SavedMethod | None, command: Command, sealed_token: str | None, now_ms: int) -> MethodDecision:
    """The next state of a saved method, its events and effects, for one method command.

    ``sealed_token`` is the encrypted gateway token of an AddPaymentMethod (``None`` when no
    key is configured). Never raises; a command that does not apply comes back as ``rejection``.
    """
    body: MethodCommandBody
    if not isinstance(command.body, AddPaymentMethod | RemovePaymentMethod | ErasePaymentMethod):
        return _reject(state, command, RejectionReason.UNSUPPORTED_COMMAND, "not a payment-method command")
    body = command.body
    rejection = validate(command)
    if rejection is not None:
        return MethodDecision(state=state, rejection=rejection, causation_id=command.command_id)
    if isinstance(body, AddPaymentMethod):
        return _add(state, command, body, sealed_token, now_ms)
    if isinstance(body, RemovePaymentMethod):
        return _remove(state, command, body, now_ms)
    return _erase(state, command, body, now_ms)


def resolve_for_payment(method: SavedMethod | None, customer_id: str) -> Rejection | None:
    """Why a CreatePayment of ``customer_id`` cannot use ``method``, or ``None`` when it can."""
    if method is None:
        return Rejection(RejectionReason.PAYMENT_METHOD_NOT_FOUND, "the saved payment method could not be resolved")
    if method.customer_id != customer_id:
        return Rejection(RejectionReason.CUSTOMER_MISMATCH, "the saved method belongs to another customer")
    if method.status is not MethodStatus.ACTIVE or method.sealed_token is None:
        return Rejection(RejectionReason.PAYMENT_METHOD_REMOVED, f"the saved method is {method.status.value}")
    return None
