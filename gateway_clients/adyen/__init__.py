"""Adyen: Checkout API v71 over REST (httpx, async), a pure translator and HMAC webhooks."""

from gateway_clients.adyen.client import TEST_API_BASE, AdyenGatewayClient

__all__ = ["TEST_API_BASE", "AdyenGatewayClient"]
