"""The simulated gateway: engine, HTTP server, clients, translator and webhook signing.

Importing this package does not import aiohttp; the server lives in ``.server``.
"""

from gateway_clients.simulated.client import (
    InProcessSimulatedGateway,
    SimulatedGatewayClient,
)
from gateway_clients.simulated.engine import SimulatedGatewayEngine, SimulatorConfig

__all__ = [
    "InProcessSimulatedGateway",
    "SimulatedGatewayClient",
    "SimulatedGatewayEngine",
    "SimulatorConfig",
]
