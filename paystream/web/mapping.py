"""Pure mappings of the HTTP edge: requests → Avro command dicts, gateway notifications →
``payment.webhooks`` records, table values → the JSON view of a payment. No I/O, no clock."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from gateway_clients.protocol import GatewayNotification, GatewayStatus
from paystream.core import commands as cmds
from paystream.core.rejections import Rejection
from paystream.core.sensitive import looks_like_cvv_field, scan
from paystream.web.models import (
    AddPaymentMethodRequest,
    CancelPaymentRequest,
    CapturePaymentRequest,
    CreatePaymentRequest,
    RefundPaymentRequest,
)

__all__ = [
    "ID_NAMESPACE",
    "NOTIFICATION_KINDS",
    "CommandRejectedAtEdge",
    "Ignored",
    "add_method_command",
    "cancel_command",
    "capture_command",
    "create_payment_command",
    "derived_id",
    "dispute_id_for",
    "notification_kind",
    "notification_record",
    "payment_view",
    "refund_command",
    "remove_method_command",
    "sensitive_paths",
]

ID_NAMESPACE: Final = uuid.UUID("cea69ab8-e39c-5e68-a582-977739be5bff")  # uuid5(URL, "https://paystream/web")

NOTIFICATION_KINDS: Final = frozenset({
    "action_completed", "payment_succeeded", "payment_failed", "refund_succeeded", "refund_failed",
    "dispute_opened", "dispute_won", "dispute_lost",
})
_DISPUTE_KINDS: Final = frozenset({"dispute_opened", "dispute_won", "dispute_lost"})


class CommandRejectedAtEdge(Exception):
    """``commands.validate`` refused the command we built; answer 422 with its reason code."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection.detail)
        self.rejection = rejection


@dataclass(frozen=True, slots=True)
class Ignored:
    """A verified notification we do not forward, and why."""

    notification_id: str
    reason: str


def sensitive_paths(obj: object) -> list[str]:
    """Paths holding a card number or CVV (never the values); ``[]`` when clean."""
    found = scan(obj)
    if isinstance(obj, Mapping):  # a top-level CVV-named field, e.g. {"cvc": "123"}
        found.extend(f"$.{k}" for k, v in obj.items() if isinstance(k, str) and looks_like_cvv_field(k, v)
                     and f"$.{k}" not in found)
    return found


def derived_id(prefix: str, *parts: str) -> str:
    """A deterministic id from the parts (e.g. API key id + Idempotency-Key): retries get the same id."""
    return f"{prefix}_{uuid.uuid5(ID_NAMESPACE, chr(31).join(parts)).hex}"


# --- commands ---------------------------------------------------------------------------------


def _command(payment_id: str, command_id: str, origin: str, issued_at: int, body: cmds.CommandBody) -> dict[str, Any]:
    command = cmds.Command(command_id=command_id, payment_id=payment_id, issued_at=issued_at, origin=origin, body=body)
    rejection = cmds.validate(command)
    if rejection is not None:
        raise CommandRejectedAtEdge(rejection)
    return cmds.to_avro(command)


def create_payment_command(req: CreatePaymentRequest, *, payment_id: str, command_id: str, origin: str,
                           issued_at: int) -> dict[str, Any]:
    body = cmds.CreatePayment(
        order_id=req.order_id,
        customer_id=req.customer_id,
        amount=req.amount,
        currency=req.currency,
        payment_method_token=req.payment_method_token,
        saved_method_id=req.saved_method_id,
        capture_method=cmds.CaptureMethod(req.capture_method),
        gateway=req.gateway,
        metadata=tuple(sorted(req.metadata.items())),
        customer_ip=req.customer_ip,
        customer_email=req.customer_email,
        shipping_country=req.shipping_country,
    )
    return _command(payment_id, command_id, origin, issued_at, body)


def capture_command(req: CapturePaymentRequest, *, payment_id: str, command_id: str, origin: str,
                    issued_at: int) -> dict[str, Any]:
    body = cmds.CapturePayment(amount=req.amount, currency=req.currency)
    return _command(payment_id, command_id, origin, issued_at, body)


def cancel_command(req: CancelPaymentRequest, *, payment_id: str, command_id: str, origin: str,
                   issued_at: int) -> dict[str, Any]:
    return _command(payment_id, command_id, origin, issued_at, cmds.CancelPayment(reason=req.reason))


def refund_command(req: RefundPaymentRequest, *, payment_id: str, command_id: str, origin: str, issued_at: int,
                   refund_id: str) -> dict[str, Any]:
    body = cmds.RefundPayment(refund_id=req.refund_id or refund_id, amount=req.amount, currency=req.currency,
                              reason=req.reason)
    return _command(payment_id, command_id, origin, issued_at, body)


def add_method_command(req: AddPaymentMethodRequest, *, customer_id: str, method_id: str, command_id: str,
                       origin: str, issued_at: int) -> dict[str, Any]:
    body = cmds.AddPaymentMethod(
        customer_id=customer_id, gateway=req.gateway, gateway_token=req.gateway_token, brand=req.brand,
        last4=req.last4, exp_month=req.exp_month, exp_year=req.exp_year, fingerprint=req.fingerprint,
    )
    return _command(method_id, command_id, origin, issued_at, body)


def remove_method_command(*, customer_id: str, method_id: str, command_id: str, origin: str,
                          issued_at: int) -> dict[str, Any]:
    return _command(method_id, command_id, origin, issued_at, cmds.RemovePaymentMethod(customer_id=customer_id))


# --- webhooks ---------------------------------------------------------------------------------


def notification_kind(n: GatewayNotification) -> str | None:
    """Our notification kind for a verified gateway notification, or ``None`` (not one we act on).

    Disputes are recognised by the translators' normalised ``raw_status``; otherwise the
    normalised ``GatewayStatus`` decides. An authorization is only an ``action_completed`` when it
    states an authorized amount (a failed Adyen capture reports AUTHORIZED with none).
    """
    result = n.result
    if result.raw_status in _DISPUTE_KINDS:
        return result.raw_status
    status = result.status
    if status is GatewayStatus.CAPTURED:
        return "payment_succeeded"
    if status is GatewayStatus.DECLINED:
        return "payment_failed"
    if status is GatewayStatus.AUTHORIZED and result.amount_authorized > 0:
        return "action_completed"
    if status is GatewayStatus.REFUNDED:
        return "refund_succeeded"
    if status is GatewayStatus.REFUND_FAILED:
        return "refund_failed"
    return None  # requires_action, pending, canceled: the gateway replies carry those


def dispute_id_for(gateway: str, gateway_ref: str) -> str:
    """The gateway protocol carries no dispute id; one dispute per payment is what the state
    machine supports, so a deterministic id per (gateway, payment reference) is enough."""
    return f"dispute:{gateway}:{gateway_ref}"


def notification_record(gateway: str, n: GatewayNotification, *, payment_id: str,
                        received_at: int) -> dict[str, Any] | Ignored:
    """The ``payment.webhooks`` record (gateway_notification.avsc) for ``n``, or why it is ignored.

    Amounts: a capture's or authorization's amount is the gateway's total; a refund notification
    carries the refund's own amount when the gateway states it (``refund_amount``; never the
    running ``amount_refunded`` total); a dispute's amount rides in ``amount_captured``.
    """
    kind = notification_kind(n)
    if kind is None:
        return Ignored(n.event_id, f"not_actionable:{n.result.status.value}")
    result = n.result
    amount: int | None = None
    refund_id: str | None = None
    dispute_id: str | None = None
    if kind == "payment_succeeded" or kind in _DISPUTE_KINDS:
        amount = result.amount_captured or None
    elif kind == "action_completed":
        amount = result.amount_authorized or None
    if kind in ("refund_succeeded", "refund_failed"):
        # Our refund id when the gateway echoes it (Stripe metadata, the simulated gateway), so
        # the notification settles the refund paystream asked for (F6); else the gateway's ref,
        # which the machine records as a refund made outside paystream if it fits.
        refund_id = result.refund_id or result.refund_ref
        if not refund_id:
            return Ignored(n.event_id, "refund_id_missing")
        amount = result.refund_amount
    if kind in _DISPUTE_KINDS:
        if not result.gateway_ref:
            return Ignored(n.event_id, "gateway_ref_missing")
        dispute_id = dispute_id_for(gateway, result.gateway_ref)
    occurred_at = n.occurred_at * 1000 if n.occurred_at > 0 else received_at
    return {
        "notification_id": n.event_id,
        "gateway": gateway,
        "payment_id": payment_id,
        "gateway_ref": result.gateway_ref or None,
        "kind": kind,
        "occurred_at": occurred_at,
        "received_at": received_at,
        "amount": amount,
        "currency": result.currency.upper() if result.currency else None,
        "refund_id": refund_id,
        "dispute_id": dispute_id,
        "decline_code": result.decline_code.value if result.decline_code is not None else None,
        "raw_status": result.raw_status or None,
    }


# --- queries ----------------------------------------------------------------------------------

_VIEW_FIELDS: Final = (
    "order_id", "customer_id", "status", "amount", "currency", "capture_method", "gateway", "gateway_ref",
    "authorized", "captured", "refunded", "created_at", "updated_at",
)


def payment_view(payment_id: str, value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The JSON view of a ``payments`` table value, or ``None`` when there is no payment.

    A whitelist: the payment method token, idempotency keys and seen notification ids stay in.
    """
    if not value or not value.get("state"):
        return None
    state: Mapping[str, Any] = value["state"]
    view: dict[str, Any] = {"payment_id": payment_id}
    view.update({name: state.get(name) for name in _VIEW_FIELDS})
    refunds = state.get("refunds") or []
    view["refunds"] = [
        {"refund_id": r.get("refund_id"), "amount": r.get("amount"), "status": r.get("status"),
         "reason": r.get("reason")}
        for r in refunds
    ]
    pending_refunds = sum(int(r.get("amount") or 0) for r in refunds if r.get("status") == "pending")
    view["refundable"] = int(state.get("captured") or 0) - int(state.get("refunded") or 0) - pending_refunds
    dispute = state.get("dispute")
    view["dispute"] = (
        {k: dispute.get(k) for k in ("dispute_id", "amount", "status", "reason")} if dispute else None
    )
    pending = state.get("pending")
    view["pending_operation"] = (
        {"operation": pending.get("operation"), "outcome_unknown": bool(pending.get("outcome_unknown"))}
        if pending else None
    )
    view["queued_commands"] = len(value.get("queue") or [])
    view["sequence"] = value.get("sequence", 0)
    return view
