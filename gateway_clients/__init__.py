"""Payment gateway clients: one protocol, a client and a pure translator per gateway."""

from gateway_clients.protocol import (
    ChargeNotFoundError,
    DeclineCode,
    GatewayError,
    GatewayNotification,
    GatewayResult,
    GatewayStatus,
    IdempotencyConflictError,
    InvalidWebhookError,
    OutcomeUnknownError,
    PaymentGateway,
    PermanentGatewayError,
    RetryableGatewayError,
    idempotency_key,
)

__all__ = [
    "ChargeNotFoundError",
    "DeclineCode",
    "GatewayError",
    "GatewayNotification",
    "GatewayResult",
    "GatewayStatus",
    "IdempotencyConflictError",
    "InvalidWebhookError",
    "OutcomeUnknownError",
    "PaymentGateway",
    "PermanentGatewayError",
    "RetryableGatewayError",
    "idempotency_key",
]
