"""Builders shared by the core tests (imported as a plain module from this directory)."""

from __future__ import annotations

from paystream.core.commands import (
    CancelPayment,
    CaptureMethod,
    CapturePayment,
    Command,
    CreatePayment,
    RefundPayment,
)
from paystream.core.machine import (
    Decision,
    GatewayReply,
    Input,
    Notification,
    NotificationKind,
    PaymentState,
    ReplyStatus,
    check_invariants,
    decide,
)

NOW = 1_700_000_000_000
PAYMENT_ID = "pay_1"


def create_cmd(
    *,
    amount: int = 10_000,
    currency: str = "USD",
    capture_method: CaptureMethod = CaptureMethod.MANUAL,
    token: str | None = "tok_visa",
    saved_method_id: str | None = None,
    gateway: str | None = "simulated",
    command_id: str = "cmd_create",
) -> Command:
    body = CreatePayment(
        order_id="ord_1",
        customer_id="cus_1",
        amount=amount,
        currency=currency,
        payment_method_token=token,
        saved_method_id=saved_method_id,
        capture_method=capture_method,
        gateway=gateway,
    )
    return Command(command_id=command_id, payment_id=PAYMENT_ID, issued_at=NOW, origin="test", body=body)


def capture_cmd(amount: int | None = None, *, currency: str | None = None, command_id: str = "cmd_capture") -> Command:
    return Command(command_id, PAYMENT_ID, NOW, "test", CapturePayment(amount=amount, currency=currency))


def cancel_cmd(reason: str | None = "customer_request", *, command_id: str = "cmd_cancel") -> Command:
    return Command(command_id, PAYMENT_ID, NOW, "test", CancelPayment(reason=reason))


def refund_cmd(
    refund_id: str, amount: int | None = None, *, currency: str | None = None, command_id: str | None = None
) -> Command:
    body = RefundPayment(refund_id=refund_id, amount=amount, currency=currency, reason="requested_by_customer")
    return Command(command_id or f"cmd_{refund_id}", PAYMENT_ID, NOW, "test", body)


def run(state: PaymentState | None, inp: Input, now: int = NOW) -> Decision:
    """decide() plus the invariant check every transition must pass."""
    decision = decide(state, inp, now)
    if decision.state is not None:
        assert check_invariants(decision.state) == []
    return decision


def reply(state: PaymentState, status: ReplyStatus, **fields: object) -> GatewayReply:
    """The gateway's answer to the call in flight for ``state``."""
    assert state.pending is not None
    defaults: dict[str, object] = {"gateway_ref": "gw_1"}
    defaults.update(fields)
    return GatewayReply(
        operation=state.pending.operation,
        idempotency_key=state.pending.idempotency_key,
        status=status,
        **defaults,  # type: ignore[arg-type]
    )


def notify(kind: NotificationKind, notification_id: str = "evt_1", **fields: object) -> Notification:
    return Notification(notification_id=notification_id, kind=kind, **fields)  # type: ignore[arg-type]


def names(decision: Decision) -> list[str]:
    return [event.AVRO_NAME for event in decision.events]


def step(state: PaymentState | None, inp: Input) -> PaymentState:
    decision = run(state, inp)
    assert decision.rejection is None, decision.rejection
    assert decision.state is not None
    return decision.state


def requires_capture(amount: int = 10_000) -> PaymentState:
    state = step(None, create_cmd(amount=amount, capture_method=CaptureMethod.MANUAL))
    return step(state, reply(state, ReplyStatus.AUTHORIZED, amount_authorized=amount))


def succeeded(amount: int = 10_000) -> PaymentState:
    state = step(None, create_cmd(amount=amount, capture_method=CaptureMethod.AUTOMATIC))
    return step(state, reply(state, ReplyStatus.CAPTURED, amount_authorized=amount, amount_captured=amount))


def requires_action(capture_method: CaptureMethod = CaptureMethod.MANUAL) -> PaymentState:
    state = step(None, create_cmd(capture_method=capture_method))
    return step(state, reply(state, ReplyStatus.REQUIRES_ACTION, action_url="https://gw.test/3ds"))
