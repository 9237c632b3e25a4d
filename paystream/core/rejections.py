"""Why a command was not accepted: one stable, machine-readable reason code per case.

The codes are a public contract (they travel in ``CommandRejected.reason``): add new ones,
never rename or reuse old ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Rejection", "RejectionReason"]


class RejectionReason(StrEnum):
    # Shape and content of the command itself (commands.validate).
    INVALID_FIELD = "invalid_field"  # an empty id, a malformed last4, an impossible expiry ...
    INVALID_AMOUNT = "invalid_amount"  # not an int, zero/negative, or above MAX_MINOR_UNITS
    UNKNOWN_CURRENCY = "unknown_currency"
    UNKNOWN_GATEWAY = "unknown_gateway"
    MISSING_PAYMENT_METHOD = "missing_payment_method"  # neither token nor saved method id
    AMBIGUOUS_PAYMENT_METHOD = "ambiguous_payment_method"  # both
    # A PAN or CVV anywhere in the command (I6). Renamed from card_data_in_request before any
    # release, to the code issue #7 names; the value is never echoed, only field paths.
    SENSITIVE_DATA_REJECTED = "sensitive_data_rejected"
    # Idempotency.
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"  # same command_id, other parameters
    # State machine.
    UNSUPPORTED_COMMAND = "unsupported_command"  # e.g. a payment-method command for a payment
    PAYMENT_NOT_FOUND = "payment_not_found"
    PAYMENT_ALREADY_EXISTS = "payment_already_exists"
    PAYMENT_METHOD_NOT_FOUND = "payment_method_not_found"  # saved method not resolved to a token
    PAYMENT_NOT_CAPTURABLE = "payment_not_capturable"
    PAYMENT_NOT_CANCELABLE = "payment_not_cancelable"
    PAYMENT_NOT_REFUNDABLE = "payment_not_refundable"
    CAPTURE_EXCEEDS_AUTHORIZED = "capture_exceeds_authorized"
    REFUND_EXCEEDS_CAPTURED = "refund_exceeds_captured"
    CURRENCY_MISMATCH = "currency_mismatch"
    OPERATION_IN_PROGRESS = "operation_in_progress"  # a gateway call for this payment is in flight
    REFUND_ID_REUSED = "refund_id_reused"
    # Saved payment methods (core.methods).
    PAYMENT_METHOD_EXISTS = "payment_method_exists"  # AddPaymentMethod for a method id in use
    PAYMENT_METHOD_REMOVED = "payment_method_removed"  # the saved method was removed or erased
    CUSTOMER_MISMATCH = "customer_mismatch"  # the saved method belongs to another customer
    ENCRYPTION_UNAVAILABLE = "encryption_unavailable"  # no encryption key configured: tokens not stored
    # Routing (core.routing): the named gateway, or every gateway of the route, is switched off.
    GATEWAY_UNAVAILABLE = "gateway_unavailable"
    # Fraud review (ReleasePayment / RejectPayment for a payment that is not held for review).
    PAYMENT_NOT_IN_REVIEW = "payment_not_in_review"
    # After acceptance: the gateway refused a capture/cancel (CommandRejected as the result).
    GATEWAY_ERROR = "gateway_error"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A command that cannot be accepted; ``detail`` is for humans and never echoes input."""

    reason: RejectionReason
    detail: str | None = None
