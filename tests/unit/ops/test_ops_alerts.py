"""ops/prometheus/alerts.yml: well-formed rules on real metrics, each with a runbook section."""

from __future__ import annotations

import re
from typing import Any

import pytest
from ops_helpers import ALERTS, PROMETHEUS_K8S, RUNBOOKS, check_promql, github_anchors, load_yaml

# What the alerts must watch (issue "Operations").
MUST_WATCH = {
    "success rate": "paystream_payments_total",
    "gateway errors": "paystream_gateway_calls_total",
    "stale unknown outcomes": "paystream_unknown_outcome_oldest_age_seconds",
    "worker consumer lag": "paystream_topic_partition_offset_commited",
    "sink lag": "paystream_sink_lag_messages",
    "sink postgres": "paystream_sink_postgres_up",
    "sink down": 'up{job="paystream-sink"}',
    "dead letters": "paystream_deadletters_total",
    "sink dead letters": "paystream_sink_deadletters_total",
    "vault/audit sink down": 'up{job=~"paystream-vault-sink|paystream-audit-sink"}',
    "vault/audit sink lag": "paystream_topic_sink_lag_messages",
    "vault/audit sink postgres": "paystream_topic_sink_postgres_up",
    "vault/audit sink errors": "paystream_topic_sink_skipped_total",
}
BUSINESS_OUTCOMES = {"authorized", "captured", "refunded", "requires_action", "declined", "canceled"}


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    doc = load_yaml(ALERTS)
    out = [rule for group in doc["groups"] for rule in group["rules"]]
    assert out
    return out


def test_groups_are_named_and_unique() -> None:
    names = [g["name"] for g in load_yaml(ALERTS)["groups"]]
    assert len(names) == len(set(names))


def test_every_rule_is_a_complete_alert(rules: list[dict[str, Any]]) -> None:
    names = [r.get("alert") for r in rules]
    assert all(names), "only alerting rules here (recording rules go elsewhere)"
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"Paystream[A-Z][A-Za-z]+", name), name
        assert isinstance(rule.get("expr"), str) and rule["expr"].strip(), name
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: `for` must be a duration"
        assert rule.get("labels", {}).get("severity") in ("critical", "warning", "info"), name
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            assert annotations.get(key), f"{name} lacks annotations.{key}"


def test_every_runbook_url_points_at_an_existing_section(rules: list[dict[str, Any]]) -> None:
    anchors = github_anchors(RUNBOOKS.read_text())
    for rule in rules:
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path.endswith("docs/runbooks.md"), url
        assert anchor in anchors, f"{rule['alert']}: no heading in docs/runbooks.md makes #{anchor}"
        assert anchor == rule["alert"].lower()


def test_every_runbook_section_has_an_alert(rules: list[dict[str, Any]]) -> None:
    sections = set(re.findall(r"^## (Paystream\w+)$", RUNBOOKS.read_text(), re.M))
    assert sections == {r["alert"] for r in rules}
    text = RUNBOOKS.read_text()
    for name in sections:
        body = text.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("**Means.**", "**First checks.**", "**Mitigation.**"):
            assert part in body, f"runbook {name} lacks {part}"


def test_internal_runbook_links_resolve() -> None:
    text = RUNBOOKS.read_text()
    anchors = github_anchors(text)
    for target in re.findall(r"\]\(#([^)]+)\)", text):
        assert target in anchors, f"broken link #{target}"


def test_expressions_use_real_metrics(rules: list[dict[str, Any]]) -> None:
    problems = [p for r in rules for p in check_promql(r["expr"], r["alert"])]
    assert not problems, "\n".join(problems)


def test_the_issue_s_signals_are_all_alerted_on(rules: list[dict[str, Any]]) -> None:
    exprs = "\n".join(r["expr"] for r in rules)
    missing = {what: metric for what, metric in MUST_WATCH.items() if metric not in exprs}
    assert not missing, missing


def test_gateway_error_alert_excludes_exactly_the_business_outcomes(rules: list[dict[str, Any]]) -> None:
    from paystream.core.machine import ReplyStatus

    expr = next(r["expr"] for r in rules if r["alert"] == "PaystreamGatewayErrorRateHigh")
    m = re.search(r'status!~"([^"]+)"', expr)
    assert m, expr
    excluded = set(m.group(1).split("|"))
    assert excluded == BUSINESS_OUTCOMES
    assert excluded <= {s.value for s in ReplyStatus}, "every excluded status is one the worker reports"


def test_k8s_scrape_config_yields_the_job_names_the_alerts_use(rules: list[dict[str, Any]]) -> None:
    jobs = set(re.findall(r'job="([^"]+)"', "\n".join(r["expr"] for r in rules)))
    relabel = load_yaml(PROMETHEUS_K8S)["scrape_configs"][0]["relabel_configs"]
    job_rule = next(r for r in relabel if r.get("target_label") == "job")
    for job in jobs:
        component = job.removeprefix("paystream-")
        assert job_rule["replacement"].replace("$1", component) == job
