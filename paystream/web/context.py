"""What the HTTP edge needs from the worker, in one object."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway_clients.protocol import PaymentGateway
from paystream.config import Settings
from paystream.web.auth import ApiKey, parse_api_keys
from paystream.web.settings import WebSettings
from streams.avro import AvroCodec

__all__ = ["AuditHook", "WebContext", "build_webhook_gateways", "log_audit", "web_context"]

log = logging.getLogger("paystream.web.audit")

#: (actor, action, resource, outcome, origin, detail) -> None
AuditHook = Callable[[str, str, str, str, str, dict[str, Any]], None]


def log_audit(actor: str, action: str, resource: str, outcome: str, origin: str, detail: dict[str, Any]) -> None:
    """Default audit hook: a log line (the lead wires the hash-chained audit_log later)."""
    log.info("audit actor=%s action=%s resource=%s outcome=%s origin=%s detail=%s",
             actor, action, resource, outcome, origin, detail)


@dataclass
class WebContext:
    settings: Settings
    codecs: Mapping[str, AvroCodec]
    gateways: Mapping[str, PaymentGateway]
    payments_table: Any  # faust Table: payment_id -> PaymentRecord JSON
    postgres_dsn: str
    audit: AuditHook = log_audit
    api_keys: Mapping[str, ApiKey] | None = None  # None: read PAYSTREAM_API_KEYS
    web_settings: WebSettings = field(default_factory=WebSettings)

    def resolved_api_keys(self) -> Mapping[str, ApiKey]:
        if self.api_keys is not None:
            return self.api_keys
        return parse_api_keys(self.web_settings.api_keys.get_secret_value())


def build_webhook_gateways(settings: Settings, web_settings: WebSettings | None = None) -> dict[str, PaymentGateway]:
    """Gateway clients with their webhook secrets, from ``Settings`` plus ``WebSettings``.

    Uses ``gateway_clients.registry`` (a gateway is built when its settings are present).
    """
    from gateway_clients.registry import build_gateways

    ws = web_settings or WebSettings()
    merged: dict[str, object] = {**settings.model_dump(), **ws.gateway_fields()}
    return build_gateways(merged, timeout_s=settings.gateway_timeout_s)


def web_context(settings: Settings, codecs: Mapping[str, AvroCodec], payments_table: Any, *,
                gateways: Mapping[str, PaymentGateway] | None = None, audit: AuditHook | None = None) -> WebContext:
    """A ``WebContext`` for a worker; gateways default to ``build_webhook_gateways(settings)``."""
    ws = WebSettings()
    return WebContext(
        settings=settings,
        codecs=codecs,
        gateways=gateways if gateways is not None else build_webhook_gateways(settings, ws),
        payments_table=payments_table,
        postgres_dsn=settings.postgres_dsn,
        audit=audit or log_audit,
        web_settings=ws,
    )
