"""The payment state machine: ``decide(state, input, now_ms) -> Decision``, pure.

No I/O, no clock, no randomness: the agent passes the time in, carries out the returned
effects (gateway calls) and feeds their results back in as ``GatewayReply`` inputs. It assigns
sequence numbers and wraps the returned event bodies into envelopes (status and totals from
``Decision.state``, causation from ``Decision.causation_id``).

Rules that hold for every input:

* A command is either rejected (``Decision.rejection`` set, state unchanged, no events or
  effects; the agent publishes ``CommandRejected``) or accepted (the state changes).
* Every accepted command gets exactly one terminal event (see ``events.TERMINAL_EVENTS``),
  possibly later, from the reply to the gateway call it started. Replies, notifications and
  reconciliations that resolve a call whose command still awaits its result carry that
  command's id as causation; otherwise their own id.
* A timeout or an unreadable answer is ``unknown``, never ``failed``.
* I3 holds after every transition: refunded <= captured <= authorized <= amount, and pending
  refunds fit into what is left: refunded + pending refunds <= captured.
* Inputs that do not apply (a stale reply, a duplicate or out-of-order notification, a
  reconciliation for an operation that is no longer unknown) are no-ops: same state, no
  events, ``Decision.ignored`` says why.

Notification idempotency uses both mechanisms: transitions are naturally idempotent (a
``payment_succeeded`` for a payment that already succeeded, a ``refund_succeeded`` for a refund
already settled, a second ``dispute_opened`` are ignored), and the ids of the last
``MAX_SEEN_NOTIFICATIONS`` notifications that changed the state are kept in the state, so an
exact redelivery is recognised even when the natural check would not catch it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final

from paystream.core.commands import (
    AddPaymentMethod,
    CancelPayment,
    CaptureMethod,
    CapturePayment,
    Command,
    CreatePayment,
    ErasePaymentMethod,
    RefundPayment,
    RejectPayment,
    ReleasePayment,
    RemovePaymentMethod,
    validate,
)
from paystream.core.events import (
    CommandRejected,
    DisputeClosed,
    DisputeOpened,
    DisputeOutcome,
    EventBody,
    FraudDecision,
    FraudOutcome,
    OrphanChargeDetected,
    OrphanChargeResolved,
    PaymentAuthorized,
    PaymentCanceled,
    PaymentCaptured,
    PaymentCreated,
    PaymentFailed,
    PaymentOutcomeUnknown,
    PaymentRequiresAction,
    PaymentSucceeded,
    PaymentTotals,
    RefundFailed,
    RefundProcessed,
)
from paystream.core.rejections import Rejection, RejectionReason

__all__ = [
    "DEFAULT_GATEWAY",
    "MAX_GATEWAY_ATTEMPTS",
    "MAX_ORPHAN_RELEASE_FAILURES",
    "MAX_SEEN_NOTIFICATIONS",
    "CallGateway",
    "Decision",
    "DisputeInfo",
    "DisputeStatus",
    "Effect",
    "FraudHold",
    "FraudHoldStatus",
    "FraudVerdictInput",
    "GatewayOperation",
    "GatewayReply",
    "Input",
    "Notification",
    "NotificationKind",
    "OrphanCall",
    "OrphanStatus",
    "PaymentState",
    "PaymentStatus",
    "PendingOperation",
    "ReconcileResult",
    "RefundRecord",
    "RefundStatus",
    "ReplyStatus",
    "RequestFraudCheck",
    "check_invariants",
    "decide",
    "gateway_idempotency_key",
    "is_busy",
    "next_gateway",
    "orphan_release_key",
    "pending_effect",
    "reconcile_effects",
    "superseded_call",
    "totals",
]

DEFAULT_GATEWAY: Final = "simulated"  # used when a CreatePayment reaches decide() unrouted
MAX_GATEWAY_ATTEMPTS: Final = 3  # calls per operation when the gateway says "retry safely"
MAX_SEEN_NOTIFICATIONS: Final = 64
# Void/refund calls for one orphan charge that may fail (refused, or outcome unknown) before
# paystream stops and alarms ("stuck"); calls not made at all (circuit open) do not count.
MAX_ORPHAN_RELEASE_FAILURES: Final = 3
DEFAULT_DECLINE_CODE: Final = "card_declined"
FRAUD_DECLINE_CODE: Final = "fraud_suspected"
PROCESSING_ERROR: Final = "processing_error"


# --- State ----------------------------------------------------------------------------------


class PaymentStatus(StrEnum):
    PROCESSING = "processing"
    REQUIRES_ACTION = "requires_action"
    REQUIRES_CAPTURE = "requires_capture"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    UNKNOWN = "unknown"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"
    DISPUTED = "disputed"
    DISPUTE_WON = "dispute_won"
    DISPUTE_LOST = "dispute_lost"


class GatewayOperation(StrEnum):
    AUTHORIZE = "authorize"
    CAPTURE = "capture"
    CANCEL = "cancel"
    REFUND = "refund"
    RETRIEVE = "retrieve"


class RefundStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class DisputeStatus(StrEnum):
    OPEN = "open"
    WON = "won"
    LOST = "lost"


@dataclass(frozen=True, slots=True)
class RefundRecord:
    refund_id: str
    amount: int
    status: RefundStatus
    idempotency_key: str  # of the latest gateway call for this refund (the reconciler's handle)
    attempt: int
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class DisputeInfo:
    dispute_id: str
    amount: int
    status: DisputeStatus
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class PendingOperation:
    """The gateway call in flight for a payment (at most one at a time).

    ``outcome_unknown`` is set once the call timed out: the command then already has its
    terminal ``PaymentOutcomeUnknown`` and the reconciler resolves the call.
    """

    operation: GatewayOperation
    attempt: int
    idempotency_key: str
    causation_id: str  # the command (or notification) that started it
    amount: int
    prior_status: PaymentStatus  # where a refused capture/cancel returns to
    refund_id: str | None = None
    reason: str | None = None  # the cancel or refund reason
    retries: int = 0
    outcome_unknown: bool = False


class OrphanStatus(StrEnum):
    """Where an abandoned authorization call stands (see ``OrphanCall``)."""

    SUSPECTED = "suspected"  # given up after "nothing done, retry": the reconciler asks the gateway
    CLEAR = "clear"  # the gateway holds no money under the key (or the call was never made)
    RELEASING = "releasing"  # money found under the key: its void or refund is in flight
    RECHECKING = "rechecking"  # a void/refund did not succeed: the reconciler looks again, then retries
    RELEASED = "released"  # voided or refunded at the gateway
    STUCK = "stuck"  # MAX_ORPHAN_RELEASE_FAILURES failed: alarmed, a human must act


@dataclass(frozen=True, slots=True)
class OrphanCall:
    """An authorization call the payment gave up on (its key is superseded by a later attempt).

    A gateway that said "nothing done, retry" may have charged after all, and an executor that
    redoes a call after a crash may reach the gateway after the payment moved on. Money held
    under such a key is an *orphan charge*: nobody's. paystream voids (authorized) or refunds
    (captured) it at ``gateway``, the payment's own status and totals never change for it.
    """

    idempotency_key: str  # the abandoned authorization's key
    gateway: str  # where that call went (failover may have moved the payment since)
    attempt: int
    status: OrphanStatus
    gateway_ref: str | None = None  # the orphan charge at the gateway, once found
    amount: int = 0  # what the void releases or the refund returns
    release: GatewayOperation | None = None  # CANCEL or REFUND, once money was found
    release_key: str | None = None  # key of the latest void/refund call
    releases: int = 0  # void/refund calls issued (the next call's key suffix)
    failures: int = 0  # of those, how many did not release the money


class FraudHoldStatus(StrEnum):
    CHECKING = "checking"  # the fraud check is out; commands of the payment queue meanwhile
    REVIEW = "review"  # a human decides (ReleasePayment / RejectPayment / CancelPayment)


@dataclass(frozen=True, slots=True)
class FraudHold:
    """A new payment held by the fraud check before any gateway call."""

    status: FraudHoldStatus
    command_id: str  # the CreatePayment being checked: the verdict must name it
    requested_at: int  # epoch ms the check was requested (the verdict timeout counts from here)


@dataclass(frozen=True, slots=True)
class PaymentState:
    payment_id: str
    order_id: str
    customer_id: str
    status: PaymentStatus
    amount: int
    currency: str
    capture_method: CaptureMethod
    gateway: str
    gateway_ref: str | None
    payment_method_token: str | None
    authorized: int = 0
    captured: int = 0
    refunded: int = 0  # settled (succeeded) refunds only
    refunds: tuple[RefundRecord, ...] = ()
    pending: PendingOperation | None = None
    dispute: DisputeInfo | None = None
    created_at: int = 0
    updated_at: int = 0
    attempts: int = 0  # gateway calls issued so far; the next call's attempt number
    seen_notifications: tuple[str, ...] = ()
    # The gateways this payment may use, in order (core.routing); ``gateway`` is the one in use.
    # Empty in records written before routing existed: then ``gateway`` alone, no failover.
    route: tuple[str, ...] = ()
    # Set while the fraud check holds the payment (checking, or in review); absent in records
    # written before fraud checks existed.
    fraud: FraudHold | None = None
    # Authorization calls given up on (superseded keys) and what became of money under them;
    # absent in records written before orphan charges were resolved.
    orphans: tuple[OrphanCall, ...] = ()

    @property
    def pending_refunds(self) -> int:
        return sum(r.amount for r in self.refunds if r.status is RefundStatus.PENDING)

    @property
    def refundable(self) -> int:
        """What a new refund may still take: captured minus settled and pending refunds."""
        return self.captured - self.refunded - self.pending_refunds

    def refund(self, refund_id: str) -> RefundRecord | None:
        return next((r for r in self.refunds if r.refund_id == refund_id), None)


def is_busy(state: PaymentState | None) -> bool:
    """Whether a command for the payment must wait in its queue: a gateway call is in flight
    (outcome not yet unknown) or the fraud check has not answered yet."""
    if state is None:
        return False
    if state.pending is not None and not state.pending.outcome_unknown:
        return True
    return state.fraud is not None and state.fraud.status is FraudHoldStatus.CHECKING


def totals(state: PaymentState) -> PaymentTotals:
    """The envelope's ``totals`` for ``state``."""
    return PaymentTotals(
        currency=state.currency,
        amount=state.amount,
        authorized=state.authorized,
        captured=state.captured,
        refunded=state.refunded,
    )


def check_invariants(state: PaymentState) -> list[str]:
    """Violations of I3 and of the state's own bookkeeping (empty when all is well)."""
    problems: list[str] = []
    if not 0 <= state.refunded <= state.captured <= state.authorized <= state.amount:
        problems.append(
            f"I3: refunded {state.refunded} <= captured {state.captured} <= "
            f"authorized {state.authorized} <= amount {state.amount} does not hold"
        )
    if state.refunded + state.pending_refunds > state.captured:
        problems.append("pending and settled refunds exceed captured")
    settled = sum(r.amount for r in state.refunds if r.status is RefundStatus.SUCCEEDED)
    if settled != state.refunded:
        problems.append(f"refunded {state.refunded} != sum of succeeded refunds {settled}")
    if state.status is PaymentStatus.UNKNOWN and (state.pending is None or not state.pending.outcome_unknown):
        problems.append("status unknown without an unknown gateway operation")
    return problems


# --- Inputs ---------------------------------------------------------------------------------


class ReplyStatus(StrEnum):
    """Normalised outcome of one gateway call (same words as gateway_clients' GatewayStatus)."""

    AUTHORIZED = "authorized"
    CAPTURED = "captured"  # money moved ("succeeded")
    REQUIRES_ACTION = "requires_action"
    DECLINED = "declined"
    CANCELED = "canceled"
    REFUNDED = "refunded"  # this refund succeeded
    REFUND_FAILED = "refund_failed"
    PENDING = "pending"  # accepted, not final: a webhook or the reconciler will tell
    UNKNOWN = "unknown"  # timeout, lost or unreadable response (OutcomeUnknownError)
    RETRYABLE_ERROR = "retryable_error"  # nothing was done; try again (RetryableGatewayError)
    PERMANENT_ERROR = "permanent_error"  # the gateway refused the request (PermanentGatewayError)
    NOT_FOUND = "not_found"  # retrieve: nothing was done under the key (ChargeNotFoundError)


@dataclass(frozen=True, slots=True)
class GatewayReply:
    """The result of a ``CallGateway`` effect the agent carried out.

    Amounts are the payment's totals at the gateway when it says so (None: not stated).
    The agent maps OutcomeUnknownError and IdempotencyConflictError to UNKNOWN.
    """

    operation: GatewayOperation
    idempotency_key: str
    status: ReplyStatus
    gateway_ref: str | None = None
    amount_authorized: int | None = None
    amount_captured: int | None = None
    amount_refunded: int | None = None
    decline_code: str | None = None
    action_url: str | None = None
    message: str | None = None  # failure reason; never card data
    # RETRYABLE_ERROR only: the call was not made at all (the gateway's circuit is open, or it is
    # switched off), so nothing was charged and trying this gateway again now is pointless.
    unavailable: bool = False


class NotificationKind(StrEnum):
    ACTION_COMPLETED = "action_completed"  # the customer finished 3-D Secure: now authorized
    PAYMENT_SUCCEEDED = "payment_succeeded"
    PAYMENT_FAILED = "payment_failed"
    REFUND_SUCCEEDED = "refund_succeeded"
    REFUND_FAILED = "refund_failed"
    DISPUTE_OPENED = "dispute_opened"
    DISPUTE_WON = "dispute_won"
    DISPUTE_LOST = "dispute_lost"


@dataclass(frozen=True, slots=True)
class Notification:
    """A signature-verified gateway webhook (``payment.webhooks``), normalised."""

    notification_id: str
    kind: NotificationKind
    gateway_ref: str | None = None
    amount: int | None = None
    currency: str | None = None
    refund_id: str | None = None
    dispute_id: str | None = None
    decline_code: str | None = None
    reason: str | None = None  # dispute reason or failure reason (``raw_status`` on the wire)


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    """What the reconciler learned about an operation whose outcome was unknown.

    ``status`` is the outcome of the call made under ``idempotency_key``: e.g. CAPTURED,
    AUTHORIZED, DECLINED, CANCELED, REFUNDED, REFUND_FAILED, or NOT_FOUND when the gateway
    did nothing under that key. PENDING/UNKNOWN/errors leave the payment unknown.
    """

    reconciliation_id: str
    idempotency_key: str
    status: ReplyStatus
    gateway_ref: str | None = None
    amount_authorized: int | None = None
    amount_captured: int | None = None
    amount_refunded: int | None = None
    decline_code: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class FraudVerdictInput:
    """The fraud check's answer for the ``CreatePayment`` ``command_id``.

    ``decision`` is the active rule set's (it decides); ``shadow`` the candidate rule set's,
    only reported. Both are published as ``FraudDecision`` events (shadow with ``shadow=True``).
    """

    command_id: str
    decision: FraudDecision
    shadow: FraudDecision | None = None


Input = Command | GatewayReply | Notification | ReconcileResult | FraudVerdictInput


# --- Outputs --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallGateway:
    """Ask the agent to call the payment's gateway; the answer comes back as GatewayReply."""

    operation: GatewayOperation
    payment_id: str
    gateway: str
    idempotency_key: str
    attempt: int
    amount: int
    currency: str
    payment_method_token: str | None = None
    gateway_ref: str | None = None
    refund_id: str | None = None
    capture: bool = False  # authorize only: purchase (authorize and capture) in one call
    # A void or refund of an orphan charge: the abandoned authorization's key (never the
    # payment's own money; the sink records it as ``void_orphan`` / ``refund_orphan``).
    orphan_of: str | None = None


@dataclass(frozen=True, slots=True)
class RequestFraudCheck:
    """Ask the agent to run the fraud check of the accepted ``CreatePayment`` ``command_id``;
    the answer comes back as ``FraudVerdictInput``."""

    payment_id: str
    command_id: str


Effect = CallGateway | RequestFraudCheck


@dataclass(frozen=True, slots=True)
class Decision:
    state: PaymentState | None
    events: tuple[EventBody, ...] = ()
    effects: tuple[Effect, ...] = ()
    rejection: Rejection | None = None
    causation_id: str | None = None  # for every event of this decision
    ignored: str | None = None  # why a non-command input changed nothing


# --- Idempotency keys -----------------------------------------------------------------------

_KEY_SAFE: Final = re.compile(r"^[A-Za-z0-9_.]{1,64}$")
_MAX_KEY_LENGTH: Final = 255


def _digest(text: str) -> str:
    return "h" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def gateway_idempotency_key(
    payment_id: str, operation: GatewayOperation, attempt: int, refund_id: str | None = None
) -> str:
    """Deterministic gateway idempotency key for one call: ``ps-<payment>-<op>-<attempt>``.

    Refunds use the operation ``refund:<refund_id>``, matching
    ``gateway_clients.protocol.idempotency_key``. A refund id with other characters than
    ``[A-Za-z0-9_.]`` (or a key over 255 characters) is replaced by a digest, so the key is
    always valid and still deterministic.
    """
    op = operation.value
    if operation is GatewayOperation.REFUND:
        rid = refund_id or ""
        op = f"refund:{rid if _KEY_SAFE.match(rid) else _digest(rid)}"
    key = f"ps-{payment_id}-{op}-{attempt}"
    if len(key) > _MAX_KEY_LENGTH:
        key = f"ps-{_digest(payment_id)}-{op}-{attempt}"
    return key


# --- Helpers --------------------------------------------------------------------------------

_SETTLED: Final = frozenset(
    {
        PaymentStatus.SUCCEEDED,
        PaymentStatus.PARTIALLY_REFUNDED,
        PaymentStatus.REFUNDED,
        PaymentStatus.DISPUTED,
        PaymentStatus.DISPUTE_WON,
        PaymentStatus.DISPUTE_LOST,
    }
)
_NOT_FINAL: Final = frozenset(
    {ReplyStatus.PENDING, ReplyStatus.UNKNOWN, ReplyStatus.RETRYABLE_ERROR, ReplyStatus.PERMANENT_ERROR}
)


def _settled_status(state: PaymentState) -> PaymentStatus:
    """Status of a payment whose money moved, from its dispute and refund totals."""
    if state.dispute is not None:
        return {
            DisputeStatus.OPEN: PaymentStatus.DISPUTED,
            DisputeStatus.WON: PaymentStatus.DISPUTE_WON,
            DisputeStatus.LOST: PaymentStatus.DISPUTE_LOST,
        }[state.dispute.status]
    if state.refunded == 0:
        return PaymentStatus.SUCCEEDED
    if state.refunded >= state.captured:
        return PaymentStatus.REFUNDED
    return PaymentStatus.PARTIALLY_REFUNDED


def _positive(value: int | None) -> int | None:
    """A stated amount, or None when it is absent or not a positive int (then we fall back)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def _ignore(state: PaymentState | None, why: str) -> Decision:
    return Decision(state=state, ignored=why)


def _reject(state: PaymentState | None, command: Command, reason: RejectionReason, detail: str) -> Decision:
    return Decision(state=state, rejection=Rejection(reason, detail), causation_id=command.command_id)


def _effect_for(state: PaymentState, op: PendingOperation) -> CallGateway:
    return CallGateway(
        operation=op.operation,
        payment_id=state.payment_id,
        gateway=state.gateway,
        idempotency_key=op.idempotency_key,
        attempt=op.attempt,
        amount=op.amount,
        currency=state.currency,
        payment_method_token=state.payment_method_token if op.operation is GatewayOperation.AUTHORIZE else None,
        gateway_ref=None if op.operation is GatewayOperation.AUTHORIZE else state.gateway_ref,
        refund_id=op.refund_id,
        capture=op.operation is GatewayOperation.AUTHORIZE and state.capture_method is CaptureMethod.AUTOMATIC,
    )


def _start(
    state: PaymentState,
    operation: GatewayOperation,
    *,
    causation_id: str,
    amount: int,
    now: int,
    refund_id: str | None = None,
    reason: str | None = None,
    retries: int = 0,
) -> tuple[PaymentState, CallGateway]:
    """A new gateway call (new attempt number, new key) as the payment's pending operation."""
    attempt = state.attempts
    op = PendingOperation(
        operation=operation,
        attempt=attempt,
        idempotency_key=gateway_idempotency_key(state.payment_id, operation, attempt, refund_id),
        causation_id=causation_id,
        amount=amount,
        prior_status=state.pending.prior_status if retries and state.pending else state.status,
        refund_id=refund_id,
        reason=reason,
        retries=retries,
    )
    refunds = state.refunds
    if refund_id is not None:
        refunds = tuple(
            replace(r, idempotency_key=op.idempotency_key, attempt=attempt) if r.refund_id == refund_id else r
            for r in refunds
        )
    new_state = replace(state, pending=op, attempts=attempt + 1, refunds=refunds, updated_at=now)
    return new_state, _effect_for(new_state, op)


def pending_effect(state: PaymentState) -> CallGateway | None:
    """The call to (re)send after a restart: same key, so the gateway replays, never repeats."""
    if state.pending is None or state.pending.outcome_unknown:
        return None
    return _effect_for(state, state.pending)


def reconcile_effects(state: PaymentState) -> tuple[CallGateway, ...]:
    """Retrieve calls the reconciler makes for every operation whose outcome is unknown, and
    for every abandoned authorization that may hold an orphan charge."""
    keys: list[tuple[str, int, int, str | None]] = []
    op = state.pending
    if op is not None and op.outcome_unknown:
        keys.append((op.idempotency_key, op.attempt, op.amount, op.refund_id))
    for record in state.refunds:
        # A pending refund not in the slot timed out (or the gateway said "pending").
        if record.status is RefundStatus.PENDING and (op is None or record.idempotency_key != op.idempotency_key):
            keys.append((record.idempotency_key, record.attempt, record.amount, record.refund_id))
    own = tuple(
        CallGateway(
            operation=GatewayOperation.RETRIEVE,
            payment_id=state.payment_id,
            gateway=state.gateway,
            idempotency_key=key,
            attempt=attempt,
            amount=amount,
            currency=state.currency,
            gateway_ref=state.gateway_ref,
            refund_id=refund_id,
        )
        for key, attempt, amount, refund_id in keys
    )
    # Abandoned authorizations not yet known to hold no money, and orphan charges whose void or
    # refund did not succeed: ask the gateway that got the call what it holds under the key.
    checks = tuple(
        CallGateway(
            operation=GatewayOperation.RETRIEVE,
            payment_id=state.payment_id,
            gateway=o.gateway,
            idempotency_key=o.idempotency_key,
            attempt=o.attempt,
            amount=o.amount or state.amount,
            currency=state.currency,
            gateway_ref=o.gateway_ref,
        )
        for o in state.orphans
        if o.status in (OrphanStatus.SUSPECTED, OrphanStatus.RECHECKING)
    )
    return own + checks


# --- Commands -------------------------------------------------------------------------------


def _gate(state: PaymentState, allowed: frozenset[PaymentStatus], reason: RejectionReason) -> RejectionReason | None:
    """Why ``state`` cannot start an operation now: wrong status, or a call in flight."""
    if state.status in allowed:
        return RejectionReason.OPERATION_IN_PROGRESS if state.pending is not None else None
    if state.pending is not None and state.status in (PaymentStatus.PROCESSING, PaymentStatus.UNKNOWN):
        return RejectionReason.OPERATION_IN_PROGRESS
    return reason


_CAPTURABLE: Final = frozenset({PaymentStatus.REQUIRES_CAPTURE})
_CANCELABLE: Final = frozenset({PaymentStatus.REQUIRES_CAPTURE, PaymentStatus.REQUIRES_ACTION})
_REFUNDABLE: Final = frozenset({PaymentStatus.SUCCEEDED, PaymentStatus.PARTIALLY_REFUNDED})


def _create(
    state: PaymentState | None, command: Command, body: CreatePayment, now: int, route: tuple[str, ...],
    fraud_check: bool = False,
) -> Decision:
    if state is not None:
        return _reject(state, command, RejectionReason.PAYMENT_ALREADY_EXISTS, "a payment with this id exists")
    if body.payment_method_token is None:
        return _reject(
            state, command, RejectionReason.PAYMENT_METHOD_NOT_FOUND, "the saved payment method could not be resolved"
        )
    if not route:
        route = (body.gateway or DEFAULT_GATEWAY,)
    gateway = route[0]
    created = PaymentState(
        payment_id=command.payment_id,
        order_id=body.order_id,
        customer_id=body.customer_id,
        status=PaymentStatus.PROCESSING,
        amount=body.amount,
        currency=body.currency,
        capture_method=body.capture_method,
        gateway=gateway,
        gateway_ref=None,
        payment_method_token=body.payment_method_token,
        created_at=now,
        updated_at=now,
        route=route,
    )
    effect: Effect
    if fraud_check:
        # No gateway call yet: the fraud check's verdict decides whether there is one.
        new_state = replace(created, fraud=FraudHold(FraudHoldStatus.CHECKING, command.command_id, now))
        effect = RequestFraudCheck(payment_id=command.payment_id, command_id=command.command_id)
    else:
        new_state, effect = _start(
            created, GatewayOperation.AUTHORIZE, causation_id=command.command_id, amount=body.amount, now=now
        )
    event = PaymentCreated(
        customer_id=body.customer_id,
        amount=body.amount,
        currency=body.currency,
        capture_method=body.capture_method.value,
        gateway=gateway,
    )
    return Decision(new_state, (event,), (effect,), causation_id=command.command_id)


def _capture(state: PaymentState, command: Command, body: CapturePayment, now: int) -> Decision:
    if body.currency is not None and body.currency != state.currency:
        return _reject(state, command, RejectionReason.CURRENCY_MISMATCH, "currency differs from the payment's")
    if (reason := _gate(state, _CAPTURABLE, RejectionReason.PAYMENT_NOT_CAPTURABLE)) is not None:
        return _reject(state, command, reason, f"payment is {state.status.value}")
    amount = body.amount if body.amount is not None else state.authorized - state.captured
    if amount <= 0 or amount > state.authorized - state.captured:
        return _reject(state, command, RejectionReason.CAPTURE_EXCEEDS_AUTHORIZED, "amount exceeds the authorization")
    new_state, effect = _start(state, GatewayOperation.CAPTURE, causation_id=command.command_id, amount=amount, now=now)
    return Decision(new_state, (), (effect,), causation_id=command.command_id)


def _cancel(state: PaymentState, command: Command, body: CancelPayment, now: int) -> Decision:
    if (reason := _gate(state, _CANCELABLE, RejectionReason.PAYMENT_NOT_CANCELABLE)) is not None:
        return _reject(state, command, reason, f"payment is {state.status.value}")
    new_state, effect = _start(
        state,
        GatewayOperation.CANCEL,
        causation_id=command.command_id,
        amount=state.authorized - state.captured,
        now=now,
        reason=body.reason,
    )
    return Decision(new_state, (), (effect,), causation_id=command.command_id)


def _refund(state: PaymentState, command: Command, body: RefundPayment, now: int) -> Decision:
    if body.currency is not None and body.currency != state.currency:
        return _reject(state, command, RejectionReason.CURRENCY_MISMATCH, "currency differs from the payment's")
    if state.refund(body.refund_id) is not None:
        return _reject(state, command, RejectionReason.REFUND_ID_REUSED, "refund_id already used for this payment")
    if (reason := _gate(state, _REFUNDABLE, RejectionReason.PAYMENT_NOT_REFUNDABLE)) is not None:
        return _reject(state, command, reason, f"payment is {state.status.value}")
    remaining = state.refundable
    amount = body.amount if body.amount is not None else remaining
    if amount <= 0 or amount > remaining:
        return _reject(
            state, command, RejectionReason.REFUND_EXCEEDS_CAPTURED, "amount exceeds what is left to refund"
        )
    record = RefundRecord(
        refund_id=body.refund_id, amount=amount, status=RefundStatus.PENDING, idempotency_key="", attempt=0,
        reason=body.reason,
    )
    with_record = replace(state, refunds=(*state.refunds, record))
    new_state, effect = _start(
        with_record,
        GatewayOperation.REFUND,
        causation_id=command.command_id,
        amount=amount,
        now=now,
        refund_id=body.refund_id,
        reason=body.reason,
    )
    return Decision(new_state, (), (effect,), causation_id=command.command_id)


def _release(state: PaymentState, command: Command, now: int) -> Decision:
    """A reviewer releases a held payment: the authorization it was waiting for starts now."""
    base = replace(state, fraud=None, updated_at=now)
    new_state, effect = _start(base, GatewayOperation.AUTHORIZE, causation_id=command.command_id,
                               amount=state.amount, now=now)
    return Decision(new_state, (), (effect,), causation_id=command.command_id)


def _fraud_failed(state: PaymentState, now: int, message: str, causation: str) -> Decision:
    """Failed for fraud, no gateway call made (nothing was authorized)."""
    new_state = replace(state, status=PaymentStatus.FAILED, fraud=None, pending=None, updated_at=now)
    return Decision(new_state, (PaymentFailed(decline_code=FRAUD_DECLINE_CODE, message=message, gateway=None),),
                    causation_id=causation)


def _fraud_hold_command(state: PaymentState, command: Command, now: int) -> Decision | None:
    """Commands of a payment the fraud check holds (None: handled as usual)."""
    hold, body = state.fraud, command.body
    if hold is None:
        if isinstance(body, ReleasePayment | RejectPayment):
            return _reject(state, command, RejectionReason.PAYMENT_NOT_IN_REVIEW, f"payment is {state.status.value}")
        return None
    if hold.status is FraudHoldStatus.CHECKING:
        # The processor queues commands until the verdict; a direct caller gets a rejection.
        return _reject(state, command, RejectionReason.OPERATION_IN_PROGRESS, "the fraud check has not answered")
    if isinstance(body, ReleasePayment):
        return _release(state, command, now)
    if isinstance(body, RejectPayment):
        return _fraud_failed(state, now, "rejected in fraud review", command.command_id)
    if isinstance(body, CancelPayment):
        new_state = replace(state, status=PaymentStatus.CANCELED, fraud=None, updated_at=now)
        return Decision(new_state, (PaymentCanceled(reason=body.reason, released=0),), causation_id=command.command_id)
    return None  # capture, refund: rejected by their own gates (nothing is authorized)


def _on_fraud_verdict(state: PaymentState | None, verdict: FraudVerdictInput, now: int) -> Decision:
    """The fraud check answered: allow → authorize, block → failed, review → held for a human.

    Only the verdict for the hold's CreatePayment while it is checking counts; a late one (after
    the verdict timeout's synthetic review, say) or a duplicate changes nothing.
    """
    if state is None:
        return _ignore(state, "unknown_payment")
    hold = state.fraud
    if hold is None or hold.status is not FraudHoldStatus.CHECKING or hold.command_id != verdict.command_id:
        return _ignore(state, "stale_fraud_verdict")
    cause = hold.command_id
    events: tuple[EventBody, ...] = (replace(verdict.decision, shadow=False),)
    if verdict.shadow is not None:
        events = (*events, replace(verdict.shadow, shadow=True))
    outcome = verdict.decision.decision
    if outcome is FraudOutcome.ALLOW:
        base = replace(state, fraud=None, updated_at=now)
        new_state, effect = _start(base, GatewayOperation.AUTHORIZE, causation_id=cause, amount=state.amount, now=now)
        return Decision(new_state, events, (effect,), causation_id=cause)
    if outcome is FraudOutcome.BLOCK:
        failed = _fraud_failed(state, now, "blocked by fraud rules", cause)
        return replace(failed, events=(*events, *failed.events))
    held = replace(state, fraud=replace(hold, status=FraudHoldStatus.REVIEW), updated_at=now)
    return Decision(held, events, causation_id=cause)


def _decide_command(state: PaymentState | None, command: Command, now: int, route: tuple[str, ...],
                    fraud_check: bool = False) -> Decision:
    body = command.body
    if isinstance(body, AddPaymentMethod | RemovePaymentMethod | ErasePaymentMethod):  # core.methods decides these
        return _reject(state, command, RejectionReason.UNSUPPORTED_COMMAND, "not a payment command")
    rejection = validate(command)
    if rejection is not None:
        return Decision(state=state, rejection=rejection, causation_id=command.command_id)
    if isinstance(body, CreatePayment):
        return _create(state, command, body, now, route, fraud_check)
    if state is None:
        return _reject(state, command, RejectionReason.PAYMENT_NOT_FOUND, "no payment with this id")
    if state.payment_id != command.payment_id:
        return _reject(state, command, RejectionReason.INVALID_FIELD, "payment_id does not match the state")
    held = _fraud_hold_command(state, command, now)
    if held is not None:
        return held
    if isinstance(body, ReleasePayment | RejectPayment):  # unreachable: _fraud_hold_command answers these
        return _reject(state, command, RejectionReason.PAYMENT_NOT_IN_REVIEW, f"payment is {state.status.value}")
    if isinstance(body, CapturePayment):
        return _capture(state, command, body, now)
    if isinstance(body, CancelPayment):
        return _cancel(state, command, body, now)
    return _refund(state, command, body, now)


# --- Outcomes of gateway calls --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: ReplyStatus
    gateway_ref: str | None = None
    amount_authorized: int | None = None
    amount_captured: int | None = None
    decline_code: str | None = None
    action_url: str | None = None
    message: str | None = None
    unavailable: bool = False
    amount_refunded: int | None = None


def _base(state: PaymentState, now: int, gateway_ref: str | None) -> PaymentState:
    return replace(state, updated_at=now, gateway_ref=gateway_ref or state.gateway_ref)


def _succeeded(
    state: PaymentState, *, captured: int, authorized: int, now: int, gateway_ref: str | None, causation: str
) -> Decision:
    """Money moved: captured (clamped to keep I3) and PaymentCaptured + PaymentSucceeded."""
    new_captured = min(max(captured, state.captured), state.amount)
    new_authorized = min(max(authorized, state.authorized, new_captured), state.amount)
    base = replace(
        _base(state, now, gateway_ref), pending=None, authorized=new_authorized, captured=new_captured
    )
    new_state = replace(base, status=_settled_status(base))
    events: tuple[EventBody, ...] = (
        PaymentCaptured(
            amount=new_captured - state.captured, currency=state.currency, released=new_authorized - new_captured
        ),
        PaymentSucceeded(
            amount=new_captured, currency=state.currency, gateway=state.gateway, gateway_ref=new_state.gateway_ref
        ),
    )
    return Decision(new_state, events, causation_id=causation)


def _authorized_event(state: PaymentState) -> PaymentAuthorized:
    return PaymentAuthorized(
        amount=state.authorized, currency=state.currency, gateway=state.gateway, gateway_ref=state.gateway_ref or ""
    )


def _requires_capture(
    state: PaymentState, *, authorized: int, now: int, gateway_ref: str | None, causation: str
) -> Decision:
    new_authorized = min(max(authorized, state.authorized, state.captured), state.amount)
    new_state = replace(
        _base(state, now, gateway_ref), status=PaymentStatus.REQUIRES_CAPTURE, pending=None, authorized=new_authorized
    )
    return Decision(new_state, (_authorized_event(new_state),), causation_id=causation)


def _authorized(
    state: PaymentState, *, authorized: int, now: int, gateway_ref: str | None, causation: str
) -> Decision:
    """The gateway holds an authorization: wait for a capture, or capture it (automatic)."""
    if state.capture_method is CaptureMethod.MANUAL:
        return _requires_capture(state, authorized=authorized, now=now, gateway_ref=gateway_ref, causation=causation)
    # Automatic capture, but the gateway only authorized: capture it now. No event yet; the
    # capture's result (PaymentSucceeded, or PaymentAuthorized if refused) ends the command.
    new_authorized = min(max(authorized, state.authorized), state.amount)
    base = replace(
        _base(state, now, gateway_ref), status=PaymentStatus.PROCESSING, pending=None, authorized=new_authorized
    )
    new_state, effect = _start(base, GatewayOperation.CAPTURE, causation_id=causation, amount=new_authorized, now=now)
    return Decision(new_state, (), (effect,), causation_id=causation)


def _failed(
    state: PaymentState, *, decline_code: str | None, message: str | None, now: int, gateway_ref: str | None,
    causation: str,
) -> Decision:
    new_state = replace(_base(state, now, gateway_ref), status=PaymentStatus.FAILED, pending=None)
    event = PaymentFailed(decline_code=decline_code or DEFAULT_DECLINE_CODE, message=message, gateway=state.gateway)
    return Decision(new_state, (event,), causation_id=causation)


def _canceled(
    state: PaymentState, *, reason: str | None, now: int, gateway_ref: str | None, causation: str
) -> Decision:
    new_state = replace(_base(state, now, gateway_ref), status=PaymentStatus.CANCELED, pending=None)
    event = PaymentCanceled(reason=reason, released=state.authorized - state.captured)
    return Decision(new_state, (event,), causation_id=causation)


def _requires_action(
    state: PaymentState, *, action_url: str | None, now: int, gateway_ref: str | None, causation: str
) -> Decision:
    new_state = replace(_base(state, now, gateway_ref), status=PaymentStatus.REQUIRES_ACTION, pending=None)
    event = PaymentRequiresAction(gateway_ref=new_state.gateway_ref, action_url=action_url)
    return Decision(new_state, (event,), causation_id=causation)


def _unknown(state: PaymentState, op: PendingOperation, now: int, gateway_ref: str | None) -> Decision:
    """A call whose outcome we cannot know yet: never failed; the reconciler resolves it."""
    base = _base(state, now, gateway_ref)
    if op.operation is GatewayOperation.REFUND:
        # The payment itself is fine; the refund stays pending (it still counts against the
        # refundable amount) and the slot is freed. The refund record keeps the key.
        new_state = replace(base, pending=None)
    else:
        new_state = replace(base, status=PaymentStatus.UNKNOWN, pending=replace(op, outcome_unknown=True))
    event = PaymentOutcomeUnknown(
        operation=op.operation.value, gateway=state.gateway, idempotency_key=op.idempotency_key
    )
    return Decision(new_state, (event,), causation_id=op.causation_id)


def _refund_settled(
    state: PaymentState, refund_id: str, *, succeeded: bool, reason: str | None, now: int, causation: str
) -> Decision:
    record = state.refund(refund_id)
    if record is None or record.status is not RefundStatus.PENDING:
        return _ignore(state, "refund_already_settled")
    status = RefundStatus.SUCCEEDED if succeeded else RefundStatus.FAILED
    refunds = tuple(replace(r, status=status) if r.refund_id == refund_id else r for r in state.refunds)
    pending = None if state.pending is not None and state.pending.refund_id == refund_id else state.pending
    refunded = state.refunded + record.amount if succeeded else state.refunded
    base = replace(state, refunds=refunds, refunded=refunded, pending=pending, updated_at=now)
    new_state = replace(base, status=_settled_status(base))
    event: EventBody
    if succeeded:
        event = RefundProcessed(refund_id=refund_id, amount=record.amount, currency=state.currency)
    else:
        event = RefundFailed(
            refund_id=refund_id, amount=record.amount, currency=state.currency, reason=reason or "refund_failed"
        )
    return Decision(new_state, (event,), causation_id=causation)


def _gateway_refused(state: PaymentState, op: PendingOperation, now: int, causation: str, why: str) -> Decision:
    """The gateway did not (and will not) carry out the call: nothing changed there."""
    if op.operation is GatewayOperation.AUTHORIZE:
        return _failed(state, decline_code=PROCESSING_ERROR, message=why, now=now, gateway_ref=None,
                       causation=causation)
    if op.operation is GatewayOperation.REFUND:
        return _refund_settled(state, op.refund_id or "", succeeded=False, reason=why, now=now, causation=causation)
    restored = replace(state, status=op.prior_status, pending=None, updated_at=now)
    if op.prior_status is PaymentStatus.PROCESSING:
        # An automatic capture the gateway refused: the authorization stands; capture it later.
        restored = replace(restored, status=PaymentStatus.REQUIRES_CAPTURE)
        return Decision(restored, (_authorized_event(restored),), causation_id=causation)
    if op.outcome_unknown:
        # Resolved by the reconciler: the command already has its result; state what holds.
        event: EventBody = (
            _authorized_event(restored)
            if restored.status is PaymentStatus.REQUIRES_CAPTURE
            else PaymentRequiresAction(gateway_ref=restored.gateway_ref)
        )
        return Decision(restored, (event,), causation_id=causation)
    name = "CapturePayment" if op.operation is GatewayOperation.CAPTURE else "CancelPayment"
    event = CommandRejected(reason=RejectionReason.GATEWAY_ERROR.value, detail=why, command_type=name)
    return Decision(restored, (event,), causation_id=causation)


def next_gateway(state: PaymentState) -> str | None:
    """The gateway after the one in use on the payment's route (None: the route ends here)."""
    route = state.route or (state.gateway,)
    if state.gateway not in route:
        return None
    index = route.index(state.gateway)
    return route[index + 1] if index + 1 < len(route) else None


def _retry_or_give_up(state: PaymentState, op: PendingOperation, now: int, *, unavailable: bool = False) -> Decision:
    """The gateway did nothing ("retry"): a new attempt there, failover, or give up.

    Only this path fails over: the reply guarantees nothing was charged under this key, and
    every earlier attempt of the operation ended the same way (an unknown outcome stops the
    operation in ``_unknown``, a decline or an authorization resolves it). An authorization
    moves to the next gateway of the route once this gateway is used up: MAX_GATEWAY_ATTEMPTS
    calls, or at once when the call was not even made (circuit open, switched off).
    """
    used_up = unavailable or op.retries + 1 >= MAX_GATEWAY_ATTEMPTS
    if used_up and op.operation is GatewayOperation.AUTHORIZE and (following := next_gateway(state)) is not None:
        moved = replace(state, gateway=following)
        new_state, effect = _start(
            moved, GatewayOperation.AUTHORIZE, causation_id=op.causation_id, amount=op.amount, now=now
        )
        return Decision(new_state, (), (effect,), causation_id=op.causation_id)
    if used_up:
        return _gateway_refused(state, op, now, op.causation_id, "gateway_unavailable")
    new_state, effect = _start(
        state,
        op.operation,
        causation_id=op.causation_id,
        amount=op.amount,
        now=now,
        refund_id=op.refund_id,
        reason=op.reason,
        retries=op.retries + 1,
    )
    return Decision(new_state, (), (effect,), causation_id=op.causation_id)


def _resolve(
    state: PaymentState, op: PendingOperation, out: _Outcome, now: int, causation: str, *, reconciling: bool
) -> Decision:
    """Apply what the gateway says about ``op`` (a reply, or the reconciler's finding)."""
    status, ref = out.status, out.gateway_ref
    if status in _NOT_FINAL:
        if reconciling:
            return _ignore(state, "outcome_still_unknown")
        if status is ReplyStatus.RETRYABLE_ERROR:
            if op.operation is GatewayOperation.AUTHORIZE:
                state = _abandon(state, op, made=not out.unavailable)
            return _retry_or_give_up(state, op, now, unavailable=out.unavailable)
        if status is ReplyStatus.PERMANENT_ERROR:
            return _gateway_refused(state, op, now, causation, out.message or "gateway_error")
        return _unknown(state, op, now, ref)

    operation = op.operation
    if operation is GatewayOperation.REFUND:
        refund_id = op.refund_id or ""
        if status is ReplyStatus.REFUNDED:
            return _refund_settled(state, refund_id, succeeded=True, reason=None, now=now, causation=causation)
        if status is ReplyStatus.REFUND_FAILED:
            return _refund_settled(state, refund_id, succeeded=False, reason=out.message, now=now, causation=causation)
        if status is ReplyStatus.NOT_FOUND and reconciling:
            return _refund_settled(state, refund_id, succeeded=False, reason="not_processed", now=now,
                                   causation=causation)
    elif status is ReplyStatus.CAPTURED:
        captured = _positive(out.amount_captured) or (
            op.amount if operation is not GatewayOperation.CANCEL else state.authorized or state.amount
        )
        authorized = _positive(out.amount_authorized) or max(state.authorized, captured)
        return _succeeded(state, captured=captured, authorized=authorized, now=now, gateway_ref=ref,
                          causation=causation)
    elif status is ReplyStatus.CANCELED:
        reason = op.reason if operation is GatewayOperation.CANCEL else "canceled_by_gateway"
        return _canceled(state, reason=reason, now=now, gateway_ref=ref, causation=causation)
    elif operation is GatewayOperation.AUTHORIZE:
        if status is ReplyStatus.AUTHORIZED:
            authorized = _positive(out.amount_authorized) or op.amount
            return _authorized(state, authorized=authorized, now=now, gateway_ref=ref, causation=causation)
        if status is ReplyStatus.REQUIRES_ACTION:
            return _requires_action(state, action_url=out.action_url, now=now, gateway_ref=ref, causation=causation)
        if status is ReplyStatus.DECLINED:
            return _failed(state, decline_code=out.decline_code, message=out.message, now=now, gateway_ref=ref,
                           causation=causation)
        if status is ReplyStatus.NOT_FOUND and reconciling:
            return _failed(state, decline_code=PROCESSING_ERROR, message="no charge was made", now=now,
                           gateway_ref=ref, causation=causation)
    elif operation is GatewayOperation.CAPTURE:
        if status is ReplyStatus.DECLINED or (
            reconciling and status in (ReplyStatus.AUTHORIZED, ReplyStatus.NOT_FOUND)
        ):
            return _gateway_refused(state, op, now, causation, out.message or "capture_refused")
    elif operation is GatewayOperation.CANCEL:
        if status is ReplyStatus.DECLINED:
            return _failed(state, decline_code=out.decline_code, message=out.message, now=now, gateway_ref=ref,
                           causation=causation)
        if reconciling and status is ReplyStatus.AUTHORIZED:
            authorized = _positive(out.amount_authorized) or state.authorized or state.amount
            return _requires_capture(state, authorized=authorized, now=now, gateway_ref=ref, causation=causation)
        if reconciling and status is ReplyStatus.REQUIRES_ACTION:
            return _requires_action(state, action_url=out.action_url, now=now, gateway_ref=ref, causation=causation)
        if reconciling and status is ReplyStatus.NOT_FOUND:
            return _gateway_refused(state, op, now, causation, "cancel_not_processed")
    # An answer that does not fit the call: we cannot tell what happened.
    if reconciling:
        return _ignore(state, "unexpected_reconcile_status")
    return _unknown(state, op, now, ref)


def _on_reply(state: PaymentState | None, reply: GatewayReply, now: int) -> Decision:
    if state is None:
        return _ignore(state, "unknown_payment")
    outcome = _Outcome(
        status=reply.status,
        gateway_ref=reply.gateway_ref,
        amount_authorized=reply.amount_authorized,
        amount_captured=reply.amount_captured,
        decline_code=reply.decline_code,
        action_url=reply.action_url,
        message=reply.message,
        unavailable=reply.unavailable and reply.status is ReplyStatus.RETRYABLE_ERROR,
        amount_refunded=reply.amount_refunded,
    )
    op = state.pending
    if (
        op is None
        or op.outcome_unknown
        or op.idempotency_key != reply.idempotency_key
        or op.operation is not reply.operation
    ):
        releasing = next((o for o in state.orphans if o.status is OrphanStatus.RELEASING
                          and o.release_key == reply.idempotency_key and o.release is reply.operation), None)
        if releasing is not None:
            return _on_release_reply(state, releasing, outcome, reply.idempotency_key)
        if reply.operation is GatewayOperation.AUTHORIZE and (orphan := _orphan(state, reply.idempotency_key)):
            return _on_orphan_evidence(state, orphan, outcome, reply.idempotency_key, reconciling=False)
        return _ignore(state, "stale_reply")
    return _resolve(state, op, outcome, now, op.causation_id, reconciling=False)


def _on_reconcile(state: PaymentState | None, result: ReconcileResult, now: int) -> Decision:
    if state is None:
        return _ignore(state, "unknown_payment")
    outcome = _Outcome(
        status=result.status,
        gateway_ref=result.gateway_ref,
        amount_authorized=result.amount_authorized,
        amount_captured=result.amount_captured,
        decline_code=result.decline_code,
        message=result.message,
        amount_refunded=result.amount_refunded,
    )
    op = state.pending
    if op is not None and op.idempotency_key == result.idempotency_key:
        if not op.outcome_unknown:
            # Still in flight: its reply (or a webhook) settles it and answers the command.
            return _ignore(state, "operation_in_flight")
        return _resolve(state, op, outcome, now, result.reconciliation_id, reconciling=True)
    record = next(
        (r for r in state.refunds if r.status is RefundStatus.PENDING and r.idempotency_key == result.idempotency_key),
        None,
    )
    if record is None:
        orphan = _orphan(state, result.idempotency_key)
        if orphan is not None:
            return _on_orphan_evidence(state, orphan, outcome, result.reconciliation_id, reconciling=True)
        return _ignore(state, "nothing_to_reconcile")
    refund_op = PendingOperation(
        operation=GatewayOperation.REFUND,
        attempt=record.attempt,
        idempotency_key=record.idempotency_key,
        causation_id=result.reconciliation_id,
        amount=record.amount,
        prior_status=state.status,
        refund_id=record.refund_id,
        outcome_unknown=True,
    )
    return _resolve(state, refund_op, outcome, now, result.reconciliation_id, reconciling=True)


# --- Notifications --------------------------------------------------------------------------


def _resolving_causation(state: PaymentState, notification: Notification) -> str:
    """A notification that settles an in-flight call answers that call's command."""
    op = state.pending
    if op is not None and not op.outcome_unknown:
        return op.causation_id
    return notification.notification_id


def _on_action_completed(state: PaymentState, n: Notification, now: int) -> Decision:
    op = state.pending
    if state.status is PaymentStatus.REQUIRES_ACTION and op is not None and op.operation is GatewayOperation.CANCEL:
        # A cancel is in flight; record the authorization, let the cancel finish.
        authorized = min(_positive(n.amount) or state.amount, state.amount)
        new_state = replace(
            _base(state, now, n.gateway_ref),
            status=PaymentStatus.REQUIRES_CAPTURE,
            authorized=max(authorized, state.authorized),
            pending=replace(op, prior_status=PaymentStatus.REQUIRES_CAPTURE, amount=max(authorized, state.authorized)),
        )
        return Decision(new_state, (_authorized_event(new_state),), causation_id=n.notification_id)
    authorizing = op is not None and op.operation is GatewayOperation.AUTHORIZE
    if not (state.status is PaymentStatus.REQUIRES_ACTION and op is None) and not authorizing:
        return _ignore(state, "not_awaiting_action")
    return _authorized(
        state, authorized=_positive(n.amount) or state.amount, now=now, gateway_ref=n.gateway_ref,
        causation=_resolving_causation(state, n),
    )


def _on_payment_succeeded(state: PaymentState, n: Notification, now: int) -> Decision:
    if state.status in _SETTLED or state.status in (PaymentStatus.FAILED, PaymentStatus.CANCELED):
        return _ignore(state, "payment_already_final")
    op = state.pending
    default = op.amount if op is not None and op.operation is GatewayOperation.CAPTURE else (
        state.authorized or state.amount
    )
    captured = _positive(n.amount) or default
    return _succeeded(
        state, captured=captured, authorized=max(state.authorized, captured), now=now, gateway_ref=n.gateway_ref,
        causation=_resolving_causation(state, n),
    )


def _on_payment_failed(state: PaymentState, n: Notification, now: int) -> Decision:
    op = state.pending
    authorizing = op is not None and op.operation is GatewayOperation.AUTHORIZE
    if state.status is not PaymentStatus.REQUIRES_ACTION and not authorizing:
        return _ignore(state, "payment_not_failable")
    return _failed(
        state, decline_code=n.decline_code, message=n.reason, now=now, gateway_ref=n.gateway_ref,
        causation=_resolving_causation(state, n),
    )


def _on_refund_notification(state: PaymentState, n: Notification, now: int) -> Decision:
    if n.refund_id is None:
        return _ignore(state, "refund_id_missing")
    succeeded = n.kind is NotificationKind.REFUND_SUCCEEDED
    record = state.refund(n.refund_id)
    if record is not None:
        if record.status is not RefundStatus.PENDING:
            return _ignore(state, "refund_already_settled")
        op = state.pending
        in_flight = op is not None and op.refund_id == n.refund_id and not op.outcome_unknown
        causation = op.causation_id if in_flight and op is not None else n.notification_id
        return _refund_settled(state, n.refund_id, succeeded=succeeded, reason=n.reason, now=now, causation=causation)
    # A refund made outside paystream (e.g. in the gateway's dashboard): record it if it fits.
    amount = _positive(n.amount)
    if not succeeded or amount is None or state.status not in _SETTLED or amount > state.refundable:
        return _ignore(state, "refund_not_applicable")
    record = RefundRecord(
        refund_id=n.refund_id, amount=amount, status=RefundStatus.PENDING, idempotency_key="", attempt=0,
        reason=n.reason,
    )
    with_record = replace(state, refunds=(*state.refunds, record))
    return _refund_settled(with_record, n.refund_id, succeeded=True, reason=None, now=now,
                           causation=n.notification_id)


def _on_dispute(state: PaymentState, n: Notification, now: int) -> Decision:
    dispute = state.dispute
    if n.kind is NotificationKind.DISPUTE_OPENED:
        if dispute is not None or state.status not in _SETTLED or n.dispute_id is None:
            return _ignore(state, "dispute_not_applicable")
        amount = min(_positive(n.amount) or state.captured, state.captured)
        opened = DisputeInfo(dispute_id=n.dispute_id, amount=amount, status=DisputeStatus.OPEN, reason=n.reason)
        base = replace(state, dispute=opened, updated_at=now)
        new_state = replace(base, status=_settled_status(base))
        event = DisputeOpened(dispute_id=n.dispute_id, amount=amount, currency=state.currency, reason=n.reason)
        return Decision(new_state, (event,), causation_id=n.notification_id)
    won = n.kind is NotificationKind.DISPUTE_WON
    closed_status = DisputeStatus.WON if won else DisputeStatus.LOST
    outcome = DisputeOutcome.WON if won else DisputeOutcome.LOST
    events: tuple[EventBody, ...]
    if dispute is None:
        # Closed before we saw it open (out of order): open and close it in one go, so the
        # final state does not depend on the delivery order.
        if state.status not in _SETTLED or n.dispute_id is None:
            return _ignore(state, "dispute_not_applicable")
        amount = min(_positive(n.amount) or state.captured, state.captured)
        closed = DisputeInfo(dispute_id=n.dispute_id, amount=amount, status=closed_status, reason=n.reason)
        events = (
            DisputeOpened(dispute_id=n.dispute_id, amount=amount, currency=state.currency, reason=n.reason),
            DisputeClosed(dispute_id=n.dispute_id, outcome=outcome),
        )
    else:
        if dispute.status is not DisputeStatus.OPEN or (n.dispute_id not in (None, dispute.dispute_id)):
            return _ignore(state, "dispute_not_applicable")
        closed = replace(dispute, status=closed_status)
        events = (DisputeClosed(dispute_id=dispute.dispute_id, outcome=outcome),)
    base = replace(state, dispute=closed, updated_at=now)
    return Decision(replace(base, status=_settled_status(base)), events, causation_id=n.notification_id)


def _on_notification(state: PaymentState | None, n: Notification, now: int) -> Decision:
    if state is None:
        return _ignore(state, "unknown_payment")
    if state.fraud is not None:
        return _ignore(state, "held_by_fraud_check")  # no gateway was called: nothing can be known there
    if n.notification_id in state.seen_notifications:
        return _ignore(state, "duplicate_notification")
    if n.currency is not None and n.currency != state.currency:
        return _ignore(state, "currency_mismatch")
    kind = n.kind
    if kind is NotificationKind.ACTION_COMPLETED:
        decision = _on_action_completed(state, n, now)
    elif kind is NotificationKind.PAYMENT_SUCCEEDED:
        decision = _on_payment_succeeded(state, n, now)
    elif kind is NotificationKind.PAYMENT_FAILED:
        decision = _on_payment_failed(state, n, now)
    elif kind in (NotificationKind.REFUND_SUCCEEDED, NotificationKind.REFUND_FAILED):
        decision = _on_refund_notification(state, n, now)
    else:
        decision = _on_dispute(state, n, now)
    if decision.ignored is not None or decision.state is None:
        return decision
    seen = (*decision.state.seen_notifications, n.notification_id)[-MAX_SEEN_NOTIFICATIONS:]
    return replace(decision, state=replace(decision.state, seen_notifications=seen))


def superseded_call(state: PaymentState | None, reply: GatewayReply) -> bool:
    """Whether ``reply`` answers an authorization the payment gave up on (its key was replaced
    by a new attempt or another gateway): money moved under such a key is an orphan charge.

    Only abandoned authorization keys (``PaymentState.orphans``) qualify. A repeated reply to a
    call the payment did use is a duplicate, however far the payment has moved on since: the
    ``attempts`` counter is shared by authorizations, captures and refunds, so "not the latest
    attempt" is no test (it raised false alarms for redelivered replies of ``authorize-0``
    after a refund or a capture had started, e.g. in rebalance runs).
    """
    if state is None or reply.operation is not GatewayOperation.AUTHORIZE:
        return False
    return _orphan(state, reply.idempotency_key) is not None


# --- Orphan charges -------------------------------------------------------------------------

_MONEY_HELD: Final = frozenset({ReplyStatus.AUTHORIZED, ReplyStatus.REQUIRES_ACTION, ReplyStatus.CAPTURED})
_ORPHAN_DONE: Final = frozenset({OrphanStatus.RELEASING, OrphanStatus.RELEASED, OrphanStatus.STUCK})


def orphan_release_key(orphan_key: str, operation: GatewayOperation, releases: int) -> str:
    """Deterministic key of the ``releases``-th void (``<orphan key>-void``) or refund
    (``<orphan key>-refund``) of an orphan charge; later ones get ``-<n>``. The same stale
    reply or reconciliation, however often delivered, never makes a second call: the state
    remembers the release, and a redone call under the same key is replayed by the gateway."""
    suffix = "void" if operation is GatewayOperation.CANCEL else "refund"
    tail = f"{suffix}-{releases}" if releases else suffix
    key = f"{orphan_key}-{tail}"
    if len(key) > _MAX_KEY_LENGTH:
        key = f"ps-{_digest(orphan_key)}-{tail}"
    return key


def _orphan(state: PaymentState, key: str) -> OrphanCall | None:
    return next((o for o in state.orphans if o.idempotency_key == key), None)


def _with_orphan(state: PaymentState, orphan: OrphanCall) -> PaymentState:
    """``state`` with ``orphan`` updated: nothing else changes (not even ``updated_at``)."""
    orphans = tuple(orphan if o.idempotency_key == orphan.idempotency_key else o for o in state.orphans)
    return replace(state, orphans=orphans)


def _abandon(state: PaymentState, op: PendingOperation, *, made: bool) -> PaymentState:
    """Remember an authorization given up on after "nothing done, retry". If the call was made
    the gateway is asked (the reconciler) whether it charged after all; a call never made
    (circuit open, switched off) holds nothing now, but a redone call may still charge later."""
    if _orphan(state, op.idempotency_key) is not None:
        return state
    orphan = OrphanCall(idempotency_key=op.idempotency_key, gateway=state.gateway, attempt=op.attempt,
                        status=OrphanStatus.SUSPECTED if made else OrphanStatus.CLEAR)
    return replace(state, orphans=(*state.orphans, orphan))


def _orphan_event_fields(state: PaymentState, orphan: OrphanCall) -> dict[str, object]:
    return {
        "orphan_key": orphan.idempotency_key,
        "orphan_gateway": orphan.gateway,
        "orphan_gateway_ref": orphan.gateway_ref or "",
        "amount": orphan.amount,
        "currency": state.currency,
        "action": "void" if orphan.release is GatewayOperation.CANCEL else "refund",
    }


def _orphan_resolved(state: PaymentState, orphan: OrphanCall, causation: str, *, released: bool,
                     reason: str | None = None) -> Decision:
    done = replace(orphan, status=OrphanStatus.RELEASED if released else OrphanStatus.STUCK)
    fields = _orphan_event_fields(state, done)
    outcome = ("voided" if done.release is GatewayOperation.CANCEL else "refunded") if released else "failed"
    event = OrphanChargeResolved(**fields, outcome=outcome, reason=None if released else (reason or "release_failed"))  # type: ignore[arg-type]
    return Decision(_with_orphan(state, done), (event,), causation_id=causation)


def _on_orphan_evidence(state: PaymentState, orphan: OrphanCall, out: _Outcome, causation: str, *,
                        reconciling: bool) -> Decision:
    """What the gateway holds under an abandoned authorization key (a stale reply to it, or the
    reconciler's lookup). Money there is voided (authorized, or a 3-D Secure not finished) or
    refunded in full (captured, less what is already refunded). The payment's own state never
    changes: its current attempt stays authoritative, whatever its status (a failed payment's
    orphan is voided too: nobody keeps money for a payment that failed)."""
    status = out.status
    if orphan.status in _ORPHAN_DONE:
        return _ignore(state, "orphan_already_handled")
    rechecking = orphan.status is OrphanStatus.RECHECKING
    ref = out.gateway_ref or orphan.gateway_ref
    operation: GatewayOperation | None = None
    amount = 0
    if status in (ReplyStatus.AUTHORIZED, ReplyStatus.REQUIRES_ACTION):
        operation = GatewayOperation.CANCEL
        amount = _positive(out.amount_authorized) or orphan.amount or state.amount
    elif status is ReplyStatus.CAPTURED:
        captured = _positive(out.amount_captured) or orphan.amount or state.amount
        amount = captured - (_positive(out.amount_refunded) or 0)
        operation = GatewayOperation.REFUND if amount > 0 else None
        if operation is None:
            status = ReplyStatus.REFUNDED  # captured and refunded in full already
    if operation is not None:
        if ref is None:
            return _ignore(state, "orphan_without_reference")
        return _release_orphan(state, orphan, operation, amount, ref, causation, detected=not rechecking)
    if not reconciling:
        return _ignore(state, "stale_reply")  # a stale decline or error says nothing new
    if status in (ReplyStatus.CANCELED, ReplyStatus.REFUNDED) and rechecking:
        return _orphan_resolved(state, orphan, causation, released=True)
    if status in (ReplyStatus.CANCELED, ReplyStatus.REFUNDED, ReplyStatus.DECLINED, ReplyStatus.NOT_FOUND) \
            and orphan.status is OrphanStatus.SUSPECTED:
        return Decision(_with_orphan(state, replace(orphan, status=OrphanStatus.CLEAR)), causation_id=causation)
    return _ignore(state, "outcome_still_unknown")


def _release_orphan(state: PaymentState, orphan: OrphanCall, operation: GatewayOperation, amount: int, ref: str,
                    causation: str, *, detected: bool) -> Decision:
    """Void or refund the orphan charge at the gateway that holds it (a new key per call)."""
    key = orphan_release_key(orphan.idempotency_key, operation, orphan.releases)
    updated = replace(orphan, status=OrphanStatus.RELEASING, gateway_ref=ref, amount=amount, release=operation,
                      release_key=key, releases=orphan.releases + 1)
    call = CallGateway(
        operation=operation,
        payment_id=state.payment_id,
        gateway=orphan.gateway,
        idempotency_key=key,
        attempt=orphan.attempt,
        amount=amount,
        currency=state.currency,
        gateway_ref=ref,
        refund_id=f"orphan_{orphan.attempt}_{orphan.releases}" if operation is GatewayOperation.REFUND else None,
        orphan_of=orphan.idempotency_key,
    )
    events: tuple[EventBody, ...] = ()
    if detected:
        events = (OrphanChargeDetected(**_orphan_event_fields(state, updated)),)  # type: ignore[arg-type]
    return Decision(_with_orphan(state, updated), events, (call,), causation_id=causation)


def _on_release_reply(state: PaymentState, orphan: OrphanCall, out: _Outcome, causation: str) -> Decision:
    """The answer to an orphan's void or refund. Success ends it; a call not made (circuit
    open) is simply checked and made again; anything else counts as a failure, and after
    ``MAX_ORPHAN_RELEASE_FAILURES`` paystream gives up (``failed``: alarm, a human acts).
    Before every new try the reconciler looks at the charge again (an unknown outcome may well
    have released it), so a retry never voids or refunds twice."""
    wanted = ReplyStatus.CANCELED if orphan.release is GatewayOperation.CANCEL else ReplyStatus.REFUNDED
    if out.status is wanted:
        return _orphan_resolved(state, orphan, causation, released=True)
    if out.status is ReplyStatus.RETRYABLE_ERROR and out.unavailable:
        again = replace(orphan, status=OrphanStatus.RECHECKING)
        return Decision(_with_orphan(state, again), causation_id=causation)
    failures = orphan.failures + 1
    if failures >= MAX_ORPHAN_RELEASE_FAILURES:
        reason = out.message or out.decline_code or out.status.value
        return _orphan_resolved(state, replace(orphan, failures=failures), causation, released=False,
                                reason=reason[:200])
    again = replace(orphan, status=OrphanStatus.RECHECKING, failures=failures)
    return Decision(_with_orphan(state, again), causation_id=causation)


# --- Entry point ----------------------------------------------------------------------------


def decide(state: PaymentState | None, inp: Input, now_ms: int, *, route: tuple[str, ...] = (),
           fraud_check: bool = False) -> Decision:
    """The next state, the events to publish and the gateway calls to make, for one input.

    ``route`` is a new payment's route (``core.routing``: primary gateway first, then the ones
    it may fail over to), only read for a ``CreatePayment``; empty: the command's gateway (or
    ``DEFAULT_GATEWAY``) alone. ``fraud_check``: an accepted ``CreatePayment`` is held for the
    fraud check (``RequestFraudCheck`` effect) instead of starting its authorization. Never
    raises for any input or state; invalid commands come back as ``rejection``.
    """
    if isinstance(inp, Command):
        return _decide_command(state, inp, now_ms, route, fraud_check)
    if isinstance(inp, FraudVerdictInput):
        return _on_fraud_verdict(state, inp, now_ms)
    if isinstance(inp, GatewayReply):
        return _on_reply(state, inp, now_ms)
    if isinstance(inp, ReconcileResult):
        return _on_reconcile(state, inp, now_ms)
    return _on_notification(state, inp, now_ms)

