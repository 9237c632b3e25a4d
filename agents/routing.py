"""Gateway routing at the edge of the pure core: the table from its file, the gateways that are
available in this process, and the router the command processor calls for a new payment."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from paystream.core import routing as rt
from paystream.core.commands import CreatePayment
from paystream.core.rejections import Rejection

log = logging.getLogger("paystream.routing")

ROUTING_FILE = Path(__file__).resolve().parent.parent / "config" / "routing.yaml"

Router = Callable[[CreatePayment, bool], "tuple[str, ...] | Rejection"]


def load_routing_file(path: str | Path | None = None) -> rt.RoutingTable:
    """A routing table from a ``.yaml``/``.yml`` or ``.json`` file (validated by the core)."""
    p = Path(path) if path else ROUTING_FILE
    text = p.read_text(encoding="utf-8")
    if p.suffix in (".yaml", ".yml"):
        import yaml

        raw = yaml.safe_load(text)
    else:
        raw = json.loads(text)
    return rt.load_routing_table(raw)


def make_router(table: rt.RoutingTable, configured: Iterable[str], disabled: Iterable[str] = ()) -> Router:
    """``router(create, saved)``: the route of a new payment; ``saved`` when ``create`` uses a
    saved method (its ``gateway`` then is the method's)."""
    available = frozenset(configured) - frozenset(disabled)
    log.info("routing table %s; gateways available: %s", table.version, ", ".join(sorted(available)) or "none")

    def router(create: CreatePayment, saved: bool) -> tuple[str, ...] | Rejection:
        request = rt.RouteRequest(
            amount=create.amount,
            currency=create.currency,
            payment_method_token=None if saved else create.payment_method_token,
            saved_method_gateway=create.gateway if saved else None,
            gateway=None if saved else create.gateway,
            shipping_country=create.shipping_country,
        )
        return rt.route(table, request, available)

    return router
