"""The scope every endpoint of the edge declares, checked on the real views ``install_web``
registers on a faust app (not started: every case here is decided before Kafka or Postgres),
against the scope docs/openapi.yaml documents for the operation.

The live stack versions of these checks are in tests/integration/test_web_edge.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import faust
import pytest
import yaml
from aiohttp.test_utils import make_mocked_request

from paystream.config import Settings
from paystream.web import WebContext, install_web
from paystream.web.auth import hash_key, parse_api_keys

SPEC = ",".join([f"reader:{hash_key('k-read')}:read", f"writer:{hash_key('k-write')}:write",
                 f"boss:{hash_key('k-admin')}", f"shop:{hash_key('k-bound')}:read+write@cus_1"])

OPENAPI = yaml.safe_load((Path(__file__).resolve().parents[3] / "docs" / "openapi.yaml").read_text())
#: path parameters named differently in docs/openapi.yaml and in the views
VIEW_PARAMS = {"payment_method_id": "method_id"}
SAMPLES = {"payment_id": "pay_1", "customer_id": "cus_1", "method_id": "pm_1"}


def documented() -> list[tuple[str, str, dict[str, str], str]]:
    """(method, view path template, path kwargs, scope) of every operation docs/openapi.yaml
    documents with an API key."""
    found = []
    for path, item in OPENAPI["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            security = op.get("security", OPENAPI["security"])
            if not security:
                continue
            [requirement] = security
            [scope] = requirement["apiKey"]
            template = path
            for doc_name, view_name in VIEW_PARAMS.items():
                template = template.replace("{" + doc_name + "}", "{" + view_name + "}")
            kwargs = {name: SAMPLES[name] for name in SAMPLES if "{" + name + "}" in template}
            found.append((method, template, kwargs, scope))
    return found


DOCUMENTED = documented()
WRITES = [(m, t, k) for m, t, k, scope in DOCUMENTED if scope == "write"]
READS = [(m, t, k) for m, t, k, scope in DOCUMENTED if scope == "read"]


def test_openapi_documents_a_scope_for_every_keyed_view() -> None:
    assert {scope for *_, scope in DOCUMENTED} == {"read", "write"}
    assert len(WRITES) == 6 and len(READS) == 4
    assert all(m == "get" for m, _, _ in READS) and all(m in ("post", "delete") for m, _, _ in WRITES)
    views = {path for path in Edge().app.web.views if path not in ("/health", "/ready", "/webhooks/{gateway}")}
    assert views == {t for _, t, _, _ in DOCUMENTED}


class Edge:
    def __init__(self) -> None:
        self.audits: list[tuple[Any, ...]] = []
        self.app = faust.App("test-web-scopes", broker="kafka://127.0.0.1:1", web_enabled=True)
        table = self.app.Table("payments-test", default=None)
        ctx = WebContext(settings=Settings(), codecs={}, gateways={}, payments_table=table,
                         postgres_dsn="postgresql://nobody@127.0.0.1:1/none",
                         audit=lambda *a: self.audits.append(a), api_keys=parse_api_keys(SPEC))
        install_web(self.app, ctx)

    def call(self, method: str, template: str, kwargs: dict[str, str], key: str | None,
             query: str = "") -> tuple[int, dict[str, Any]]:
        path = template.format(**kwargs)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        request = make_mocked_request(method.upper(), path + query, headers=headers)
        view = self.app.web.views[template]
        response = asyncio.run(getattr(view, method)(request, **kwargs))
        return response.status, json.loads(response.body)


@pytest.fixture(scope="module")
def edge() -> Edge:
    return Edge()


@pytest.mark.parametrize(("method", "template", "kwargs"), WRITES + READS)
def test_no_key_is_401_and_audited(edge: Edge, method: str, template: str, kwargs: dict[str, str]) -> None:
    edge.audits.clear()
    status, body = edge.call(method, template, kwargs, None)
    assert (status, body) == (401, {"error": "unauthenticated"})
    [(actor, action, resource, outcome, _, detail)] = edge.audits
    assert (actor, resource, outcome, detail["status"]) == ("anonymous", template.format(**kwargs), "rejected", 401)
    assert action.startswith(("payment.", "payment_method."))


@pytest.mark.parametrize(("method", "template", "kwargs"), WRITES)
def test_read_key_on_a_command_is_403_with_the_required_scope(edge: Edge, method: str, template: str,
                                                               kwargs: dict[str, str]) -> None:
    edge.audits.clear()
    status, body = edge.call(method, template, kwargs, "k-read")
    assert status == 403, (method, template, body)
    assert body["error"] == "forbidden" and body["required_scope"] == "write" and body["key_scope"] == "read"
    [(actor, _, resource, outcome, _, detail)] = edge.audits
    assert (actor, resource, outcome) == ("reader", template.format(**kwargs), "rejected")
    assert detail["status"] == 403 and detail["denied"] == "insufficient_scope"
    assert detail["required_scope"] == "write"
    text = repr(edge.audits)
    assert "k-read" not in text and hash_key("k-read") not in text


@pytest.mark.parametrize("key", ["k-write", "k-admin", "k-bound"])
def test_write_and_admin_keys_pass_the_scope_check_of_commands(edge: Edge, key: str) -> None:
    # the next check after the scope is the Idempotency-Key header: reaching it proves the key passed
    status, body = edge.call("post", "/payments", {}, key)
    assert (status, body["error"]) == (400, "idempotency_key_required")


@pytest.mark.parametrize("key", ["k-read", "k-write", "k-admin"])
def test_every_scope_may_read(edge: Edge, key: str) -> None:
    status, body = edge.call("get", "/payments", {}, key)  # no filter: 400 comes after the scope check
    assert (status, body["error"]) == (400, "filter_required")


def test_bound_key_is_403_for_another_customer(edge: Edge) -> None:
    for method, template, kwargs in [
        ("get", "/customers/{customer_id}/payment-methods", {"customer_id": "cus_2"}),
        ("post", "/customers/{customer_id}/payment-methods", {"customer_id": "cus_2"}),
        ("delete", "/customers/{customer_id}/payment-methods/{method_id}", {"customer_id": "cus_2", "method_id": "pm"}),
    ]:
        edge.audits.clear()
        status, body = edge.call(method, template, kwargs, "k-bound")
        assert (status, body["error"]) == (403, "forbidden"), (method, template)
        assert "required_scope" not in body
        [(actor, _, resource, _, _, detail)] = edge.audits
        assert (actor, resource, detail["denied"]) == ("shop", "customer:cus_2", "customer_mismatch")
    status, body = edge.call("get", "/payments", {}, "k-bound", query="?customer_id=cus_2")
    assert (status, body["error"]) == (403, "forbidden")


def test_webhooks_need_no_key(edge: Edge) -> None:
    request = make_mocked_request("POST", "/webhooks/nowhere")
    response = asyncio.run(edge.app.web.views["/webhooks/{gateway}"].post(request, gateway="nowhere"))
    assert response.status == 404 and json.loads(response.body)["error"] == "unknown_gateway"
