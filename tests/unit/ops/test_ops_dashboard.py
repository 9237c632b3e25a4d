"""ops/grafana/dashboards/paystream.json: a valid dashboard whose queries use real metrics."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ops_helpers import DASHBOARD, GRAFANA_PROVISIONING, check_promql, load_yaml

# Panels the issue asks for, by a metric each must query.
MUST_SHOW = [
    "paystream_payments_total",
    "paystream_amount_minor_total",
    "paystream_gateway_latency_seconds_bucket",
    "paystream_gateway_calls_total",
    "paystream_unknown_outcomes_pending",
    "paystream_unknown_outcome_oldest_age_seconds",
    "paystream_deadletters_total",
    "paystream_sink_deadletters_total",
    "paystream_sink_lag_messages",
    "paystream_sink_batch_seconds_bucket",
    "paystream_sink_postgres_up",
    # the vault and audit sinks (`customers sink`, `audit sink`): lag, batch latency, errors, readiness
    "paystream_topic_sink_lag_messages",
    "paystream_topic_sink_batch_seconds_bucket",
    "paystream_topic_sink_retries_total",
    "paystream_topic_sink_skipped_total",
    "paystream_topic_sink_postgres_up",
    'up{job=~"paystream-vault-sink|paystream-audit-sink"}',
    # webhook verification failures, reconciler resolutions, retries
    "paystream_webhooks_rejected_total",
    "paystream_reconciler_resolutions_total",
    "paystream_gateway_retries_total",
]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return out


def test_dashboard_header(dashboard: dict[str, Any]) -> None:
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    assert "id" not in dashboard or dashboard["id"] is None, "a provisioned dashboard carries no instance id"


def test_panels_have_unique_ids_and_a_layout(dashboard: dict[str, Any]) -> None:
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, p["title"]


def test_every_query_uses_real_metrics(dashboard: dict[str, Any]) -> None:
    problems = []
    for p in _panels(dashboard):
        if p["type"] == "row":
            continue
        assert p.get("targets"), f"panel {p['title']!r} has no query"
        for t in p["targets"]:
            problems += check_promql(t["expr"], f"panel {p['title']!r} {t['refId']}")
    assert not problems, "\n".join(problems)


def test_the_issue_s_panels_are_there(dashboard: dict[str, Any]) -> None:
    exprs = "\n".join(t["expr"] for p in _panels(dashboard) for t in p.get("targets", []))
    missing = [m for m in MUST_SHOW if m not in exprs]
    assert not missing, missing
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le, gateway) (rate(paystream_gateway_latency_seconds_bucket" in exprs
        assert f"histogram_quantile({q}, sum by (le, sink) (rate(paystream_topic_sink_batch_seconds_bucket" in exprs


def test_vault_and_audit_sink_panels_split_by_sink(dashboard: dict[str, Any]) -> None:
    """Two processes export paystream_topic_sink_*: a panel that sums them without `by (sink)`
    would hide a stuck audit sink behind a busy vault sink."""
    for p in _panels(dashboard):
        for t in p.get("targets", []):
            if "paystream_topic_sink_" in t["expr"]:
                assert "sink)" in t["expr"] and "{{sink}}" in t["legendFormat"], (p["title"], t["expr"])


def test_datasource_is_the_provisioned_one(dashboard: dict[str, Any]) -> None:
    ds = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    uids = {d["uid"] for d in ds if d["type"] == "prometheus"}
    for p in _panels(dashboard):
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] in uids, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] in uids
