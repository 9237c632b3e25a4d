"""Property-based requests generated from docs/openapi.yaml (schemathesis) against the session
worker's live HTTP edge, with a valid admin key: the edge never answers a 5xx, and every answer
conforms to the document (documented status code, content type and body schema).

Not checked (yet): that every schema-valid request is accepted and every schema-violating one
refused. The edge's validators are stricter than the document in places (a currency must be a
known ISO-4217 code, not just three capitals; empty strings and control characters are refused),
so those checks fail on purpose-built refusals, not on bugs.

Bounded: a few examples per operation (about 20 s for all of them on the local stack).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402

from tests.conftest import API_KEY  # noqa: E402

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
MAX_EXAMPLES = 8

schema = schemathesis.openapi.from_path(OPENAPI)
CHECKS = [schemathesis.checks.not_a_server_error, schemathesis.checks.status_code_conformance,
          schemathesis.checks.content_type_conformance, schemathesis.checks.response_schema_conformance]


@pytest.fixture(scope="module")
def edge_url(worker: Any, sink: Any) -> str:
    return f"http://127.0.0.1:{worker.web_port}"


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_generated_requests_get_no_5xx_and_documented_answers(case: Any, edge_url: str) -> None:
    response = case.call(base_url=edge_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text[:300])
    case.validate_response(response, checks=CHECKS)
