"""The HTTP edge, served by faust's own web server (aiohttp) in every worker.

* ``POST /webhooks/{gateway}``: verified on the raw bytes by the gateway client, mapped to the
  ``payment.webhooks`` record and produced keyed by payment_id (Java murmur2 partitioning, the
  same as the agents'); answered only once Kafka has it.
* ``GET /payments/{id}``: the live state from the ``payments`` table, answered by the worker
  that owns the payment's partition: any other worker forwards the request there under the
  caller's key (``Edge.payment_owner``; 503 with Retry-After while the owner is unreachable or
  the partition is being recovered, never an answer from a table that is not current).
* ``GET /payments?order_id=&customer_id=&from=&to=&cursor=`` (history listings, keyset-paginated),
  ``/payments/{id}/history``, ``/customers/{id}/payment-methods``: from the sink's Postgres tables.
* The command facade: ``POST /payments`` and friends become Avro commands on
  ``payment.requests``; the ``Idempotency-Key`` header is the command id.
* ``/health`` and ``/ready`` for the orchestrator.

Every other endpoint but the webhooks needs an API key (401 without one) holding the scope the
endpoint declares (``read`` for queries, ``write`` for commands; 403 otherwise). A key bound to
a customer only sees and commands that customer's data: another customer's payment answers 404,
exactly like a payment that does not exist; a customer id in the path, query or body that is
not the key's answers 403.

Sends from here use the plain (non-transactional) producer on purpose: with exactly_once,
faust's ``topic.send`` would join the open transaction of the destination partition's group,
which only the worker owning that partition has, and which a later abort would roll back.
"""

from __future__ import annotations

import json
import logging
import re
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any, Final, TypeVar

import aiohttp
import faust
import psycopg
from aiohttp.web import Request, RequestKey
from faust.web import Response, View
from pydantic import BaseModel, ValidationError
from yarl import URL

from gateway_clients.protocol import GatewayNotification, InvalidWebhookError, PaymentGateway
from paystream.core.sensitive import find_pan
from paystream.web import mapping
from paystream.web.auth import ApiKey, Scope, authenticate
from paystream.web.context import WebContext
from paystream.web.models import (
    AddPaymentMethodRequest,
    CancelPaymentRequest,
    CapturePaymentRequest,
    CreatePaymentRequest,
    RefundPaymentRequest,
    validation_reasons,
)
from paystream.web.queries import PageKey, PgPool, Queries
from streams import topics
from streams.avro import RegistryUnavailable

__all__ = ["HttpError", "install_web"]

log = logging.getLogger("paystream.web")

GATEWAY_NAMES: Final = ("simulated", "stripe", "paypal", "adyen")
#: InvalidWebhookError codes that mean "the payload is bad", not "the signature is": 400, not 401.
_PAYLOAD_ERRORS: Final = frozenset({None, "malformed_event", "batch_webhook"})
_IDEMPOTENCY_KEY: Final = re.compile(r"^[\x21-\x7e]{1,255}$")
_PATH_ID: Final = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
_ACTOR_KEY: Final = RequestKey("paystream_actor", str)
_API_KEY: Final = RequestKey("paystream_api_key", ApiKey)
_INSTALLED_FLAG: Final = "_paystream_web_installed"
#: Set on a request one worker forwards to the owner of a payment: the owner answers it or 503s,
#: it never forwards it again (two workers with different views during a rebalance would loop).
_FORWARDED_BY: Final = "X-Paystream-Forwarded-By"
_OWNER_TIMEOUT: Final = aiohttp.ClientTimeout(total=10)

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Response]])
M = TypeVar("M", bound=BaseModel)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class HttpError(Exception):
    """Answer with ``status`` and a JSON ``{"error": reason, ...}``; audited as rejected."""

    def __init__(self, status: int, reason: str, *, headers: Mapping[str, str] | None = None,
                 resource: str | None = None, audit_detail: Mapping[str, Any] | None = None,
                 **extra: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = dict(headers or {})
        self.resource = resource
        self.audit_detail = dict(audit_detail or {})  # recorded in the audit, never sent
        self.body: dict[str, Any] = {"error": reason, **extra}


def forbidden_scope(required: Scope, key: ApiKey) -> HttpError:
    return HttpError(403, "forbidden", required_scope=required.label, key_scope=key.scope.label,
                     detail=f"this API key lacks the {required.label} scope",
                     audit_detail={"denied": "insufficient_scope"})


class Edge:
    """The edge's state and the operations its views share."""

    def __init__(self, app: faust.App, ctx: WebContext) -> None:
        self.app = app
        self.ctx = ctx
        self.keys = ctx.resolved_api_keys()
        if not self.keys:
            log.warning("no API keys configured (PAYSTREAM_API_KEYS): every authenticated call answers 401")
        self.pool = PgPool(ctx.postgres_dsn, ctx.web_settings.pg_pool_size)
        self.queries = Queries(self.pool)
        # Whether the payments table holds the current state of every partition this worker owns:
        # false from a rebalance's start (partitions revoked) until the table's recovery after it
        # has completed (faust's own flags leave a gap between the two).
        self.table_current = False
        app.on_partitions_revoked.connect(self._table_not_current)  # type: ignore[arg-type]  # mode's stub wants a positional-only sender
        ctx.payments_table.on_recover(self._table_recovered)

    def _table_not_current(self, sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        self.table_current = False

    async def _table_recovered(self) -> None:
        self.table_current = True

    # --- audit and auth -----------------------------------------------------------------

    def audit(self, actor: str, action: str, resource: str, outcome: str, origin: str,
              detail: dict[str, Any] | None = None) -> None:
        try:
            self.ctx.audit(actor, action, resource, outcome, origin, detail or {})
        except Exception:  # the audit hook must never break the request it records
            log.exception("audit hook failed for %s %s", action, resource)

    def endpoint(self, action: str, *, scope: Scope | None) -> Callable[[Handler], Handler]:
        """Wrap a view method: API key holding ``scope`` (401/403), ``HttpError`` → JSON, audit.

        ``scope=None``: no API key at all (webhooks, which their signature authenticates).
        """

        def decorate(fun: Handler) -> Handler:
            @wraps(fun)
            async def handler(view: View, request: Request, *args: Any, **kwargs: Any) -> Response:
                origin = origin_of(request)
                actor = f"gateway:{kwargs.get('gateway', '?')}" if scope is None else "anonymous"
                try:
                    if scope is not None:
                        key = authenticate(request.headers.get("Authorization"), self.keys)
                        if key is None:
                            self.audit(actor, action, request.path, "rejected", origin,
                                       {"status": 401, "reason": "unauthenticated"})
                            return view.json({"error": "unauthenticated"}, status=401,
                                             headers={"WWW-Authenticate": 'Bearer realm="paystream"'})
                        actor = key.key_id
                        request[_ACTOR_KEY] = key.key_id
                        request[_API_KEY] = key
                        if not key.allows(scope):
                            raise forbidden_scope(scope, key)
                    return await fun(view, request, *args, **kwargs)
                except HttpError as exc:
                    detail = {"status": exc.status, "reason": exc.reason}
                    detail.update({k: v for k, v in exc.body.items()
                                   if k in ("reason_code", "fields", "required_scope", "key_scope")})
                    detail.update(exc.audit_detail)
                    self.audit(actor, action, exc.resource or request.path, "rejected", origin, detail)
                    return view.json(exc.body, status=exc.status, headers=exc.headers or None)

            return handler  # type: ignore[return-value]

        return decorate

    # --- Kafka --------------------------------------------------------------------------

    async def produce(self, topic: str, key: str, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> None:
        """Send outside any transaction and wait until Kafka acknowledged it (acks=all)."""
        producer = self.app.producer
        try:
            await producer.maybe_start()
            await producer.send_and_wait(topic, key.encode(), value, None, None, headers, transactional_id=None)
        except Exception as exc:
            log.warning("producing to %s failed: %s", topic, type(exc).__name__)
            raise HttpError(503, "kafka_unavailable", headers={"Retry-After": "5"}) from None

    def encode(self, topic: str, record: Mapping[str, Any]) -> bytes:
        try:
            return self.ctx.codecs[topic].encode(record)
        except RegistryUnavailable:
            raise HttpError(503, "schema_registry_unavailable", headers={"Retry-After": "5"}) from None
        except Exception as exc:  # a registry or encoding failure: never echo the record
            log.warning("encoding a %s record failed: %s", topic, type(exc).__name__)
            raise HttpError(503, "encoding_failed", headers={"Retry-After": "5"}) from None

    async def send_command(self, payment_id: str, record: Mapping[str, Any]) -> None:
        await self.produce(topics.REQUESTS, payment_id, self.encode(topics.REQUESTS, record))

    # --- the live payments table, partitioned across the workers --------------------------

    def waiting_for(self) -> list[str]:
        """Why this worker's table cannot answer now (empty: it can); what /ready reports."""
        reasons = []
        if self.app.rebalancing:
            reasons.append("rebalancing")
        if not self.table_current or self.app.tables.recovery.in_recovery:  # type: ignore[attr-defined]
            reasons.append("table_recovery")
        try:
            self.app.consumer.assignment()
        except Exception:
            reasons.append("consumer_not_started")
        return reasons

    def payment_owner(self, payment_id: str) -> URL | None:
        """The URL of the worker owning ``payment_id``'s partition of the payments table, or
        ``None`` when it is this worker (503 ``partition_unavailable`` while nobody is known).

        The partition is the one the payment's commands go to, and so its table entries: the
        murmur2 hash of the raw id. faust's router (``key_store``, ``app.table_route``) hashes the
        table's serialized key instead, which is JSON (the id in quotes): with two workers it sent
        about half the requests to a worker that does not hold the payment.
        """
        table = self.ctx.payments_table
        changelog = table.changelog_topic.get_topic_name()
        try:
            partition = self.app.producer.key_partition(changelog, payment_id.encode()).partition
            owners = self.app.router.table_metadata(table.name)
        except (KeyError, TypeError) as exc:  # no metadata yet
            log.warning("no owner known for a payment: %s", type(exc).__name__)
            raise HttpError(503, "partition_unavailable", headers={"Retry-After": "5"}) from None
        for url, tps in owners.items():
            if partition in tps.get(changelog, ()):
                return None if _node(URL(url)) == _node(self.app.conf.canonical_url) else URL(url)
        raise HttpError(503, "partition_unavailable", headers={"Retry-After": "5"})

    def local_payment(self, payment_id: str) -> dict[str, Any] | None:
        """The view of a payment this worker owns (``None``: no such payment); 503
        ``table_recovering`` while the table is not current (it could say 404 or an old state)."""
        reasons = self.waiting_for()
        if reasons:
            raise HttpError(503, "table_recovering", waiting_for=reasons, headers={"Retry-After": "2"})
        return mapping.payment_view(payment_id, self.ctx.payments_table.get(payment_id))

    async def ask_owner(self, request: Request, owner: URL, payment_id: str) -> tuple[int, bytes, str, dict[str, str]]:
        """``GET /payments/{id}`` of the owner under the caller's own key (the owner checks it
        again): its status, body, content type and Retry-After; 503 ``owner_unavailable`` when
        it cannot be asked."""
        if request.headers.get(_FORWARDED_BY):  # a forwarder's view and ours differ: a rebalance is on
            raise HttpError(503, "partition_moving", headers={"Retry-After": "2"})
        host, port = _node(owner)
        url = URL.build(scheme=owner.scheme or "http", host=host, port=port, path=f"/payments/{payment_id}")
        headers = {"Authorization": request.headers.get("Authorization", ""),
                   _FORWARDED_BY: str(self.app.conf.canonical_url)}
        try:
            async with self.app.http_client.get(url, headers=headers, timeout=_OWNER_TIMEOUT) as resp:
                retry = {"Retry-After": resp.headers["Retry-After"]} if "Retry-After" in resp.headers else {}
                return resp.status, await resp.read(), resp.content_type, retry
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("the owner of a payment at %s did not answer: %s", owner, type(exc).__name__)
            raise HttpError(503, "owner_unavailable", headers={"Retry-After": "5"}) from None

    # --- customer-bound keys ------------------------------------------------------------

    async def live_customer(self, request: Request, payment_id: str) -> str | None:
        """The customer of a payment in the live ``payments`` table (``None``: no such payment),
        read here or asked of the owner under the caller's own key (404 for a payment the key
        may not see)."""
        owner = self.payment_owner(payment_id)
        if owner is None:
            view = self.local_payment(payment_id)
            return None if view is None else view.get("customer_id")
        status, body, _, _ = await self.ask_owner(request, owner, payment_id)
        if status == 404:
            return None
        if status == 200:
            try:
                customer = json.loads(body).get("customer_id")
            except (ValueError, AttributeError):
                customer = None
            if isinstance(customer, str):
                return customer
        log.warning("ownership check of a payment at %s answered %d", owner, status)
        raise HttpError(503, "owner_unavailable", headers={"Retry-After": "5"})

    async def require_own_payment(self, request: Request, payment_id: str) -> None:
        """For a customer-bound key: 404 unless the live payment is the key's customer's."""
        bound = bound_customer(request)
        if bound is None:
            return
        if await self.live_customer(request, payment_id) != bound:
            raise HttpError(404, "payment_not_found", resource=f"payment:{payment_id}",
                            audit_detail={"denied": "customer_mismatch_or_unknown"})

    # --- Postgres -----------------------------------------------------------------------

    async def query(self, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except (psycopg.Error, OSError) as exc:
            log.warning("postgres query failed: %s", type(exc).__name__)
            raise HttpError(503, "database_unavailable", headers={"Retry-After": "5"}) from None


# --- request helpers ------------------------------------------------------------------------


def origin_of(request: Request) -> str:
    return f"http:{getattr(request, 'remote', None) or '-'}"


def actor_of(request: Request) -> str:
    return str(request.get(_ACTOR_KEY, "anonymous"))


def bound_customer(request: Request) -> str | None:
    """The customer the request's API key is bound to, or ``None`` (any customer)."""
    key = request.get(_API_KEY)
    return key.customer_id if key is not None else None


def require_customer(request: Request, customer_id: str) -> None:
    """403 when the key is bound to a customer other than ``customer_id`` (the same answer
    whether that customer exists or not)."""
    bound = bound_customer(request)
    if bound is not None and customer_id != bound:
        raise HttpError(403, "forbidden", resource=f"customer:{customer_id}",
                        detail="this API key is bound to another customer",
                        audit_detail={"denied": "customer_mismatch"})


def _node(url: Any) -> tuple[str, int]:
    """(host, port) of a worker URL, as faust's router compares them."""
    return ((url.host if url.scheme else url.path) or "", int(url.port or 80))


def reject_card_data(obj: object) -> None:
    paths = mapping.sensitive_paths(obj)
    if paths:
        raise HttpError(400, "sensitive_data_rejected", fields=paths)


def raw_has_pan(raw: bytes) -> bool:
    return find_pan(raw.decode("utf-8", errors="replace"))


def _reason(field: str, kind: str, msg: str) -> dict[str, str]:
    return {"field": field, "type": kind, "msg": msg}


async def read_json(request: Request, *, allow_empty: bool) -> dict[str, Any]:
    """The body as a JSON object, after the card-data guard (which runs before any parsing error)."""
    raw = await request.read()
    if not raw.strip():
        if allow_empty:
            return {}
        raise HttpError(422, "invalid_body", reasons=[_reason("$", "missing", "a JSON body is required")])
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        if raw_has_pan(raw):
            raise HttpError(400, "sensitive_data_rejected", fields=["$"]) from None
        raise HttpError(400, "invalid_json") from None
    reject_card_data(body)
    if not isinstance(body, dict):
        raise HttpError(422, "invalid_body", reasons=[_reason("$", "object_type", "expected a JSON object")])
    return body


def parse(model: type[M], body: dict[str, Any]) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise HttpError(422, "invalid_body", reasons=validation_reasons(exc)) from None


def idempotency_key(request: Request, *, required: bool = True) -> str | None:
    value = request.headers.get("Idempotency-Key")
    if value is None or not value.strip():
        if required:
            raise HttpError(400, "idempotency_key_required")
        return None
    if find_pan(value):
        raise HttpError(400, "sensitive_data_rejected", fields=["header:Idempotency-Key"])
    if not _IDEMPOTENCY_KEY.match(value):
        raise HttpError(400, "invalid_idempotency_key", detail="1-255 visible ASCII characters")
    return value


def path_id(name: str, value: str) -> str:
    if find_pan(value):
        raise HttpError(400, "sensitive_data_rejected", fields=[f"path:{name}"])
    if not _PATH_ID.match(value):
        raise HttpError(404, "not_found")
    return value


def filter_id(name: str, value: str) -> str:
    """A query-string id: like ``path_id`` but a malformed one is 400 ``invalid_filter``, not 404."""
    if find_pan(value):
        raise HttpError(400, "sensitive_data_rejected", fields=[f"query:{name}"])
    if not _PATH_ID.match(value):
        raise HttpError(400, "invalid_filter", detail=f"{name}: 1-128 of A-Z a-z 0-9 _ . : -")
    return value


def built(call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return call()
    except mapping.CommandRejectedAtEdge as exc:
        raise HttpError(422, "invalid_command", reasons=[{"field": "$", "type": exc.rejection.reason.value,
                                                          "msg": exc.rejection.detail}]) from None


#: Epoch milliseconds accepted as a time filter: 1970-01-01 up to the end of year 9999.
MAX_EPOCH_MS: Final = 253_402_300_799_999


def epoch_ms_filter(query: Mapping[str, str], name: str) -> datetime | None:
    """A time filter in epoch milliseconds (UTC), like every timestamp of the API; 400 otherwise."""
    raw = query.get(name)
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 15 or int(raw) > MAX_EPOCH_MS:
        raise HttpError(400, "invalid_filter", detail=f"{name}: epoch milliseconds, 0..{MAX_EPOCH_MS}")
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=int(raw))  # exact, no float


def page_cursor(raw: str | None) -> PageKey | None:
    """The ``cursor`` of a listing (the ``next_cursor`` of the page before); 400 ``invalid_cursor``."""
    if raw is None:
        return None
    try:
        return PageKey.decode(raw)
    except (ValueError, UnicodeDecodeError):
        raise HttpError(400, "invalid_cursor", detail="give the next_cursor of the page before, unchanged") from None


def _limit(request: Request) -> int:
    raw = request.query.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= 500:
        raise HttpError(400, "invalid_limit", detail="limit must be 1..500")
    return int(raw)


# --- webhooks ------------------------------------------------------------------------------


def verify_webhook(gw: PaymentGateway, raw: bytes, headers: Mapping[str, str], now: int) -> list[GatewayNotification]:
    """All notifications of a delivery (Adyen batches several), verified on the raw bytes."""
    verify_all = getattr(gw, "verify_and_parse_all", None)
    if callable(verify_all):
        return list(verify_all(raw))
    return [gw.verify_and_parse(raw, headers, now=now)]


# --- install -------------------------------------------------------------------------------


def install_web(app: faust.App, ctx: WebContext) -> None:
    """Register the edge's views on the app's web server (idempotent per app)."""
    if getattr(app, _INSTALLED_FLAG, False):
        return
    setattr(app, _INSTALLED_FLAG, True)
    # faust's /table blueprint serves raw table values (payment method tokens included)
    # without authentication; it is chosen when app.web is first built, i.e. just below.
    with warnings.catch_warnings():  # "already used": handled just below
        warnings.simplefilter("ignore")
        app.conf.web_tables_enabled = False
    if "web" in vars(app):  # app.web was built earlier: drop the blueprint it already picked
        blueprints = app.web.blueprints
        blueprints._enabled = [(prefix, bp) for prefix, bp in blueprints._enabled if "apps.tables" not in str(bp)]
    edge = Edge(app, ctx)

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok"})

    @app.page("/ready")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            reasons = edge.waiting_for()
            try:
                assigned = len(app.consumer.assignment())
            except Exception:
                assigned = 0
            body = {"ready": not reasons, "assigned_partitions": assigned, "waiting_for": reasons}
            return self.json(body, status=200 if not reasons else 503)

    @app.page("/webhooks/{gateway}")
    class Webhooks(View):
        @edge.endpoint("webhook.receive", scope=None)
        async def post(self, request: Request, gateway: str) -> Response:
            return await receive_webhook(self, request, gateway)

    async def receive_webhook(view: View, request: Request, gateway: str) -> Response:
        origin, actor, resource = origin_of(request), f"gateway:{gateway}", f"webhook:{gateway}"
        if gateway not in GATEWAY_NAMES:
            raise HttpError(404, "unknown_gateway", resource=resource)
        gw = ctx.gateways.get(gateway)
        if gw is None:
            raise HttpError(404, "gateway_not_configured", resource=resource)
        raw: bytes = await request.read()
        if raw_has_pan(raw):
            raise HttpError(400, "sensitive_data_rejected", resource=resource)
        now = int(time.time())
        try:
            notifications = verify_webhook(gw, raw, request.headers, now)
        except InvalidWebhookError as exc:
            code = exc.gateway_code
            if code == "unsupported_event":  # verified, just not an event we use
                edge.audit(actor, "webhook.receive", resource, "ignored", origin, {"reason": code})
                return view.json({"ignored": [{"reason": code}], "accepted": []})
            log.info("webhook for %s refused: %s", gateway, code or "invalid")
            status = 400 if code in _PAYLOAD_ERRORS else 401
            raise HttpError(status, "invalid_webhook", reason_code=code or "invalid", resource=resource) from None
        except Exception as exc:  # a translator bug must not become a 500 the gateway retries forever
            log.warning("webhook for %s unparseable: %s", gateway, type(exc).__name__)
            raise HttpError(400, "invalid_webhook", reason_code="unparseable", resource=resource) from None
        received_at = now_ms()
        outgoing: list[tuple[str, dict[str, Any]]] = []
        ignored: list[dict[str, str]] = []
        for n in notifications:
            if mapping.notification_kind(n) is None:
                ignored.append({"notification_id": n.event_id, "reason": f"not_actionable:{n.result.status.value}"})
                continue
            payment_id = n.payment_id
            if payment_id is None and n.result.gateway_ref:
                payment_id = await edge.query(edge.queries.payment_id_by_gateway_ref(gateway, n.result.gateway_ref))
                if payment_id is None:  # the sink may lag behind: let the gateway redeliver later
                    raise HttpError(503, "payment_not_resolved", headers={"Retry-After": "60"}, resource=resource)
            if payment_id is None:
                ignored.append({"notification_id": n.event_id, "reason": "payment_unknown"})
                continue
            record = mapping.notification_record(gateway, n, payment_id=payment_id, received_at=received_at)
            if isinstance(record, mapping.Ignored):
                ignored.append({"notification_id": record.notification_id, "reason": record.reason})
            else:
                outgoing.append((payment_id, record))
        for payment_id, record in outgoing:
            value = edge.encode(topics.WEBHOOKS, record)
            await edge.produce(topics.WEBHOOKS, payment_id, value,
                               headers=[("ps_gateway", gateway.encode()), ("ps_kind", str(record["kind"]).encode())])
        accepted = [r["notification_id"] for _, r in outgoing]
        edge.audit(actor, "webhook.receive", resource, "accepted" if accepted else "ignored", origin,
                   {"accepted": accepted, "ignored": ignored,
                    "payments": sorted({p for p, _ in outgoing})})
        return view.json({"accepted": accepted, "ignored": ignored})

    # --- queries -------------------------------------------------------------------------

    @app.page("/payments/{payment_id}")
    class Payment(View):
        @edge.endpoint("payment.read", scope=Scope.READ)
        async def get(self, request: Request, payment_id: str) -> Response:
            path_id("payment_id", payment_id)
            owner = edge.payment_owner(payment_id)
            if owner is not None:  # the owner answers (and audits) it
                status, body, content_type, headers = await edge.ask_owner(request, owner, payment_id)
                return self.bytes(body, content_type=content_type, status=status, headers=headers)
            view = edge.local_payment(payment_id)
            resource = f"payment:{payment_id}"
            if view is None:
                raise HttpError(404, "payment_not_found", resource=resource)
            bound = bound_customer(request)
            if bound is not None and view.get("customer_id") != bound:  # as if it did not exist
                raise HttpError(404, "payment_not_found", resource=resource,
                                audit_detail={"denied": "customer_mismatch"})
            edge.audit(actor_of(request), "payment.read", resource, "ok", origin_of(request), {})
            return self.json(view)

    @app.page("/payments")
    class Payments(View):
        @edge.endpoint("payment.list", scope=Scope.READ)
        async def get(self, request: Request) -> Response:
            query = request.query
            order_id, customer_id = query.get("order_id"), query.get("customer_id")
            created_from, created_to = epoch_ms_filter(query, "from"), epoch_ms_filter(query, "to")
            bound = bound_customer(request)
            if order_id is None and customer_id is None and created_from is None and created_to is None \
                    and bound is None:
                raise HttpError(400, "filter_required", detail="give order_id, customer_id, from or to")
            for name, value in (("order_id", order_id), ("customer_id", customer_id)):
                if value is not None:
                    filter_id(name, value)
            if created_from is not None and created_to is not None and created_from >= created_to:
                raise HttpError(400, "invalid_filter", detail="from must be before to")
            after = page_cursor(query.get("cursor"))
            if bound is not None:  # a bound key lists only its customer's payments, also by order
                if customer_id is not None:
                    require_customer(request, customer_id)
                customer_id = bound
            page = await edge.query(edge.queries.payments_by(
                order_id=order_id, customer_id=customer_id, limit=_limit(request),
                created_from=created_from, created_to=created_to, after=after))
            resource = (f"order:{order_id}" if order_id else f"customer:{customer_id}" if customer_id
                        else "payments")
            detail: dict[str, Any] = {"count": len(page.rows)}
            detail.update({k: query[k] for k in ("from", "to") if k in query})
            edge.audit(actor_of(request), "payment.list", resource, "ok", origin_of(request), detail)
            return self.json({"payments": page.rows,
                              "next_cursor": page.next_key.encode() if page.next_key else None})

        @edge.endpoint("payment.create", scope=Scope.WRITE)
        async def post(self, request: Request) -> Response:
            key = idempotency_key(request)
            assert key is not None
            body = await read_json(request, allow_empty=False)
            req = parse(CreatePaymentRequest, body)
            require_customer(request, req.customer_id)
            actor = actor_of(request)
            payment_id = mapping.derived_id("pay", actor, key)
            record = built(lambda: mapping.create_payment_command(
                req, payment_id=payment_id, command_id=key, origin=f"api:{actor}", issued_at=now_ms()))
            await edge.send_command(payment_id, record)
            edge.audit(actor, "payment.create", f"payment:{payment_id}", "accepted", origin_of(request),
                       {"command_id": key, "amount": req.amount, "currency": req.currency, "order_id": req.order_id})
            return self.json({"payment_id": payment_id, "command_id": key}, status=202,
                             headers={"Location": f"/payments/{payment_id}"})

    @app.page("/payments/{payment_id}/history")
    class History(View):
        @edge.endpoint("payment.history", scope=Scope.READ)
        async def get(self, request: Request, payment_id: str) -> Response:
            path_id("payment_id", payment_id)
            resource = f"payment:{payment_id}"
            bound = bound_customer(request)
            if bound is not None and await edge.query(edge.queries.payment_customer(payment_id)) != bound:
                raise HttpError(404, "payment_not_found", resource=resource,
                                audit_detail={"denied": "customer_mismatch_or_unknown"})
            events = await edge.query(edge.queries.history(payment_id))
            if not events:
                raise HttpError(404, "payment_not_found", resource=resource)
            edge.audit(actor_of(request), "payment.history", resource, "ok", origin_of(request), {"count": len(events)})
            return self.json({"payment_id": payment_id, "events": events})

    # --- command facade ------------------------------------------------------------------

    async def payment_command(view: View, request: Request, payment_id: str, action: str,
                              build: Callable[[str, str, Any], dict[str, Any]],
                              model: type[BaseModel]) -> Response:
        path_id("payment_id", payment_id)
        key = idempotency_key(request)
        assert key is not None
        body = await read_json(request, allow_empty=True)
        req = parse(model, body)
        await edge.require_own_payment(request, payment_id)
        actor = actor_of(request)
        record = built(lambda: build(actor, key, req))
        await edge.send_command(payment_id, record)
        detail = {"command_id": key, **{k: v for k, v in req.model_dump().items() if k in ("amount", "currency")}}
        if "refund_id" in record["command"]:
            detail["refund_id"] = record["command"]["refund_id"]
        edge.audit(actor, action, f"payment:{payment_id}", "accepted", origin_of(request), detail)
        answer = {"payment_id": payment_id, "command_id": key}
        if "refund_id" in detail:
            answer["refund_id"] = detail["refund_id"]
        return view.json(answer, status=202, headers={"Location": f"/payments/{payment_id}"})

    @app.page("/payments/{payment_id}/capture")
    class Capture(View):
        @edge.endpoint("payment.capture", scope=Scope.WRITE)
        async def post(self, request: Request, payment_id: str) -> Response:
            return await payment_command(
                self, request, payment_id, "payment.capture",
                lambda actor, key, req: mapping.capture_command(
                    req, payment_id=payment_id, command_id=key, origin=f"api:{actor}", issued_at=now_ms()),
                CapturePaymentRequest)

    @app.page("/payments/{payment_id}/cancel")
    class Cancel(View):
        @edge.endpoint("payment.cancel", scope=Scope.WRITE)
        async def post(self, request: Request, payment_id: str) -> Response:
            return await payment_command(
                self, request, payment_id, "payment.cancel",
                lambda actor, key, req: mapping.cancel_command(
                    req, payment_id=payment_id, command_id=key, origin=f"api:{actor}", issued_at=now_ms()),
                CancelPaymentRequest)

    @app.page("/payments/{payment_id}/refunds")
    class Refunds(View):
        @edge.endpoint("payment.refund", scope=Scope.WRITE)
        async def post(self, request: Request, payment_id: str) -> Response:
            return await payment_command(
                self, request, payment_id, "payment.refund",
                lambda actor, key, req: mapping.refund_command(
                    req, payment_id=payment_id, command_id=key, origin=f"api:{actor}", issued_at=now_ms(),
                    refund_id=mapping.derived_id("re", actor, key)),
                RefundPaymentRequest)

    @app.page("/customers/{customer_id}/payment-methods")
    class PaymentMethods(View):
        @edge.endpoint("payment_method.list", scope=Scope.READ)
        async def get(self, request: Request, customer_id: str) -> Response:
            path_id("customer_id", customer_id)
            require_customer(request, customer_id)
            methods = await edge.query(edge.queries.payment_methods(customer_id))
            edge.audit(actor_of(request), "payment_method.list", f"customer:{customer_id}", "ok", origin_of(request),
                       {"count": len(methods)})
            return self.json({"customer_id": customer_id, "payment_methods": methods})

        @edge.endpoint("payment_method.add", scope=Scope.WRITE)
        async def post(self, request: Request, customer_id: str) -> Response:
            path_id("customer_id", customer_id)
            require_customer(request, customer_id)
            key = idempotency_key(request)
            assert key is not None
            req = parse(AddPaymentMethodRequest, await read_json(request, allow_empty=False))
            actor = actor_of(request)
            method_id = mapping.derived_id("pm", actor, key)
            record = built(lambda: mapping.add_method_command(
                req, customer_id=customer_id, method_id=method_id, command_id=key, origin=f"api:{actor}",
                issued_at=now_ms()))
            await edge.send_command(method_id, record)
            edge.audit(actor, "payment_method.add", f"payment_method:{method_id}", "accepted", origin_of(request),
                       {"command_id": key, "customer_id": customer_id, "gateway": req.gateway})
            return self.json({"payment_method_id": method_id, "command_id": key}, status=202)

    @app.page("/customers/{customer_id}/payment-methods/{method_id}")
    class PaymentMethod(View):
        @edge.endpoint("payment_method.remove", scope=Scope.WRITE)
        async def delete(self, request: Request, customer_id: str, method_id: str) -> Response:
            path_id("customer_id", customer_id)
            path_id("method_id", method_id)
            require_customer(request, customer_id)
            actor = actor_of(request)
            key = idempotency_key(request, required=False) or mapping.derived_id("rm", customer_id, method_id)
            record = built(lambda: mapping.remove_method_command(
                customer_id=customer_id, method_id=method_id, command_id=key, origin=f"api:{actor}",
                issued_at=now_ms()))
            await edge.send_command(method_id, record)
            edge.audit(actor, "payment_method.remove", f"payment_method:{method_id}", "accepted", origin_of(request),
                       {"command_id": key, "customer_id": customer_id})
            return self.json({"payment_method_id": method_id, "command_id": key}, status=202)

    log.info("HTTP edge installed: gateways %s, %d API keys", sorted(ctx.gateways), len(edge.keys))
