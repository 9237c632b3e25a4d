"""PayPal: Orders v2 over REST (httpx, async), a pure translator and webhook verification."""

from gateway_clients.paypal.client import LIVE_API_BASE, SANDBOX_API_BASE, PayPalGatewayClient
from gateway_clients.paypal.webhooks import PayPalWebhookVerifier

__all__ = ["LIVE_API_BASE", "SANDBOX_API_BASE", "PayPalGatewayClient", "PayPalWebhookVerifier"]
