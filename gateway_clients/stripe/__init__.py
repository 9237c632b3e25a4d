"""Stripe: PaymentIntents and Refunds through the official SDK (async), a pure translator and
webhook verification."""

from gateway_clients.stripe.client import DEFAULT_API_BASE, StripeGatewayClient

__all__ = ["DEFAULT_API_BASE", "StripeGatewayClient"]
