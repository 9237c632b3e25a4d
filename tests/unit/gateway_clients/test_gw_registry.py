"""build_gateways: clients by name from a mapping or a settings object."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gateway_clients import PaymentGateway
from gateway_clients.adyen import AdyenGatewayClient
from gateway_clients.paypal import PayPalGatewayClient
from gateway_clients.registry import build_gateways
from gateway_clients.simulated import SimulatedGatewayClient
from gateway_clients.stripe import StripeGatewayClient


class Secret:
    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"


def test_builds_only_the_configured_gateways_from_a_mapping() -> None:
    gateways = build_gateways(
        {
            "simgw_url": "http://127.0.0.1:18090",
            "stripe_api_key": "sk_test_123",
            "stripe_api_base": "http://127.0.0.1:12111",
        }
    )
    assert set(gateways) == {"simulated", "stripe"}
    assert isinstance(gateways["simulated"], SimulatedGatewayClient)
    assert isinstance(gateways["stripe"], StripeGatewayClient)
    assert all(isinstance(g, PaymentGateway) and g.gateway_name == name for name, g in gateways.items())


def test_settings_object_with_secret_values() -> None:
    settings = SimpleNamespace(
        simgw_url=None,
        stripe_api_key=Secret("sk_test_123"),
        paypal_client_id="cid",
        paypal_client_secret=Secret("csecret"),
        paypal_webhook_id="WH1",
        adyen_api_key=Secret("AQE"),
        adyen_merchant_account="Merchant",
        adyen_hmac_keys=["aa" * 32, "bb" * 32],
    )
    gateways = build_gateways(settings)
    assert set(gateways) == {"stripe", "paypal", "adyen"}
    assert isinstance(gateways["paypal"], PayPalGatewayClient)
    assert isinstance(gateways["adyen"], AdyenGatewayClient)


def test_explicit_names_require_their_settings() -> None:
    with pytest.raises(ValueError, match="paypal_client_id"):
        build_gateways({}, names=["paypal"])
    with pytest.raises(ValueError, match="unknown gateways"):
        build_gateways({}, names=["bitcoin"])
    assert set(build_gateways({"simgw_url": "http://x", "stripe_api_key": "sk"}, names=["stripe"])) == {"stripe"}


def test_the_simulated_client_pools_as_many_connections_as_calls_may_fly() -> None:
    from paystream.config import Settings

    # A call waiting for a pooled connection counts the wait against its connect timeout (and is
    # then "not sent"): the pool must hold every call the in-flight cap lets through.
    wide = build_gateways(Settings(simgw_url="http://127.0.0.1:18090", gateway_max_in_flight=512),
                          names=["simulated"])["simulated"]
    default = build_gateways({"simgw_url": "http://127.0.0.1:18090"}, names=["simulated"])["simulated"]
    assert isinstance(wide, SimulatedGatewayClient) and isinstance(default, SimulatedGatewayClient)
    assert (wide._max_connections, default._max_connections) == (512, 256)
    assert (wide.max_concurrency, default.max_concurrency) == (512, 256)
    with pytest.raises(TypeError):
        build_gateways({"simgw_url": "http://127.0.0.1:18090", "gateway_max_in_flight": 1.5}, names=["simulated"])
