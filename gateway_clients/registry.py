"""Build the configured gateway clients by name.

``settings_like`` is anything with these names as attributes (the pydantic settings object) or
keys (a plain mapping); ``SecretStr``-like values are unwrapped with ``get_secret_value()``.
A gateway is built when its required settings are present (or when it is listed in ``names``,
in which case missing settings are an error):

=========  ========================================================================
simulated  simgw_url [simgw_webhook_secrets, gateway_max_in_flight (its connection pool)]
stripe     stripe_api_key [stripe_api_base, stripe_webhook_secrets, stripe_return_url]
paypal     paypal_client_id, paypal_client_secret [paypal_api_base, paypal_webhook_id]
adyen      adyen_api_key, adyen_merchant_account [adyen_api_base, adyen_hmac_keys,
           adyen_return_url]
=========  ========================================================================

Lists may be given as sequences or as comma-separated strings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final

from gateway_clients.adyen import TEST_API_BASE, AdyenGatewayClient
from gateway_clients.paypal import SANDBOX_API_BASE, PayPalGatewayClient
from gateway_clients.protocol import PaymentGateway
from gateway_clients.simulated import SimulatedGatewayClient
from gateway_clients.stripe import DEFAULT_API_BASE, StripeGatewayClient

__all__ = ["GATEWAY_NAMES", "build_gateways"]

GATEWAY_NAMES: Final = ("simulated", "stripe", "paypal", "adyen")


def build_gateways(
    settings_like: object, *, names: Sequence[str] | None = None, timeout_s: float = 30.0
) -> dict[str, PaymentGateway]:
    """Clients by gateway name. Unknown names in ``names`` raise ``ValueError``."""
    wanted = tuple(names) if names is not None else GATEWAY_NAMES
    unknown = set(wanted) - set(GATEWAY_NAMES)
    if unknown:
        raise ValueError(f"unknown gateways: {sorted(unknown)}")
    get = _reader(settings_like)
    explicit = names is not None
    builders: dict[str, tuple[tuple[str, ...], Callable[[], PaymentGateway]]] = {
        "simulated": (
            ("simgw_url",),
            lambda: SimulatedGatewayClient(
                _required(get, "simgw_url"),
                timeout_s=timeout_s,
                webhook_secrets=_list(get("simgw_webhook_secrets")),
                # as many connections as calls the worker lets fly to one gateway: a call waiting
                # for a free connection would count its wait against the connect timeout
                max_connections=int(get("gateway_max_in_flight") or 256),
            ),
        ),
        "stripe": (
            ("stripe_api_key",),
            lambda: StripeGatewayClient(
                _required(get, "stripe_api_key"),
                api_base=get("stripe_api_base") or DEFAULT_API_BASE,
                timeout_s=timeout_s,
                return_url=get("stripe_return_url"),
                webhook_secrets=_list(get("stripe_webhook_secrets")),
            ),
        ),
        "paypal": (
            ("paypal_client_id", "paypal_client_secret"),
            lambda: PayPalGatewayClient(
                _required(get, "paypal_client_id"),
                _required(get, "paypal_client_secret"),
                api_base=get("paypal_api_base") or SANDBOX_API_BASE,
                timeout_s=timeout_s,
                webhook_id=get("paypal_webhook_id"),
            ),
        ),
        "adyen": (
            ("adyen_api_key", "adyen_merchant_account"),
            lambda: AdyenGatewayClient(
                _required(get, "adyen_api_key"),
                _required(get, "adyen_merchant_account"),
                api_base=get("adyen_api_base") or TEST_API_BASE,
                timeout_s=timeout_s,
                return_url=get("adyen_return_url") or "https://example.invalid/return",
                hmac_keys=_list(get("adyen_hmac_keys")),
            ),
        ),
    }
    gateways: dict[str, PaymentGateway] = {}
    for name in wanted:
        required, build = builders[name]
        if explicit or all(get(field) for field in required):
            gateways[name] = build()
    return gateways


def _reader(settings_like: object) -> Callable[[str], str | None]:
    def get(name: str) -> str | None:
        value = settings_like.get(name) if isinstance(settings_like, Mapping) else getattr(settings_like, name, None)
        unwrap = getattr(value, "get_secret_value", None)
        if callable(unwrap):
            value = unwrap()
        if value is None or value == "":
            return None
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, list | tuple):
            return ",".join(str(v) for v in value)
        raise TypeError(f"setting {name} must be a string, an integer or a list of strings")

    return get


def _required(get: Callable[[str], str | None], name: str) -> str:
    value = get(name)
    if value is None:
        raise ValueError(f"missing gateway setting {name}")
    return value


def _list(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())
