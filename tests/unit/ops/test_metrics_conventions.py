"""Prometheus metrics: names follow the conventions and label values come from small sets.

Every module of paystream's packages that defines a metric is found by reading the source (a
call of prometheus_client's Counter, Gauge, Histogram, Summary, Info or Enum), so a metric added
in a new module is checked too. Conventions (https://prometheus.io/docs/practices/naming/):
``paystream_`` prefix, snake case, counters end in ``_total`` (and only counters), base units
(``_seconds``, ``_bytes``), not ``_ms`` or ``_minutes``. Labels: a handful per metric, never an
identifier (payment, customer, command ids...): each ``.labels(...)`` argument in the code is
checked against the reviewed list below, where each entry says which small set it comes from.
"""

from __future__ import annotations

import ast
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("paystream", "agents", "streams", "tables", "sinks", "gateway_clients")
KINDS = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}
NAME = re.compile(r"^paystream_[a-z][a-z0-9]*(_[a-z0-9]+)*$")
NON_BASE_UNITS = re.compile(r"_(ms|millis|milliseconds|us|microseconds|ns|minutes?|hours?|days?|kb|mb|gb|kilobytes|"
                            r"megabytes|percent|pct)(_|$)")
HISTOGRAM_UNITS = ("_seconds", "_bytes", "_messages", "_ratio")
MAX_LABELS = 4
# Label names that would carry one value per payment, customer, command... (unbounded series).
ID_LABEL = re.compile(r"(^|_)(id|ids|key|email|ip|fingerprint|token|card|pan|message|error_message|reason_text)$")

# Every expression the code passes to ``.labels(...)`` (besides string literals), and where its
# values come from. A new call site whose argument is not listed fails: review it and add it.
BOUNDED_LABEL_VALUES = {
    "body.outcome": "OrphanChargeResolved outcome: voided, refunded, failed (core.machine)",
    "call.gateway": "configured gateways only (an unconfigured one returns before any metric); KNOWN_GATEWAYS",
    "call.operation.value": "GatewayOperation enum",
    "outcome.status.value": "ReplyStatus enum",
    "inp.status.value": "ReplyStatus enum (a reconciliation result's status)",
    "gateway": "the breaker's gateways: configured gateways",
    "after.value": "BreakerState enum",
    "stage": "dead-letter stages, literals at the call sites of dead_letter()",
    "reason": "dead-letter reasons, literals or unpublishable_<field name> (payment_id, command_id)",
    "name": "event type names of the Avro union (evs.event_type)",
    "kind": "command type names of the Avro union (cmds.command_type), 'reply'/'webhook', or a topic sink's kind",
    "self.kind": "the topic sink's class attribute: vault | audit",
    "str(g)": "garbage-collector generations 0, 1, 2 (paystream.metrics.install_gc_metrics)",
    "cmds.command_type(command)": "command type names of the Avro union",
    "topic": "input topic names",
    "m.topic": "input topic names",
    "message.topic": "input topic names",
    "str(tp.partition)": "partition numbers of payment.events",
    "outcome.decision.value": "fraud Decision enum",
    "request.stages[0].value": "fraud Dimension enum (customer, fingerprint, ip)",
    "mode": "'active' or 'shadow'",
    "outcome.ruleset_version": "versions of the configured rule sets (active, candidate)",
    "rule": "rule names of the configured rule sets, plus fraud_check_timeout",
    "'ok' if external.error is None else external.error": "timeout, unreachable, invalid_response, http_<status>",
    "command.op.value": "blocklist op enum",
    "command.kind.value": "blocklist kind enum",
    "status": "payment status (PaymentStatus enum values)",
    "'-' if gateway is None else gateway if gateway in KNOWN_GATEWAYS else 'other'": "KNOWN_GATEWAYS",
    "str(currency) if is_known_currency(currency) else 'other'": "ISO 4217 codes",
}
# Whatever else is listed above, an argument naming one of these is an identifier: never a label.
FORBIDDEN_IN_LABEL = re.compile(r"payment_id|customer_id|command_id|order_id|method_id|refund_id|event_id|"
                                r"idempotency_key|correlation_id|audit_id|email|\bstr\(exc\)|\bexc\b|message\.key|"
                                r"\.offset\b")

# A literal, or a choice between literals ('applied' if changed else 'noop').
LITERALS = re.compile(r"'[^']*'( if [\w.]+ else '[^']*')?")


@dataclass(frozen=True)
class Declared:
    where: str
    kind: str
    name: str
    labels: tuple[str, ...]


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts)


def _prometheus_names(tree: ast.Module) -> dict[str, str]:
    """Local name → prometheus_client class, for ``from prometheus_client import Counter [as C]``."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prometheus_client"):
            for alias in node.names:
                if alias.name in KINDS:
                    out[alias.asname or alias.name] = alias.name
    return out


def _declared() -> list[Declared]:
    found = []
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        names = _prometheus_names(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            kind = names.get(func.id) if isinstance(func, ast.Name) else (
                func.attr if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                and func.value.id == "prometheus_client" and func.attr in KINDS else None)
            if kind is None:
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            assert node.args and isinstance(node.args[0], ast.Constant), f"{where}: name the metric with a literal"
            label_node = node.args[2] if len(node.args) > 2 else next(
                (k.value for k in node.keywords if k.arg == "labelnames"), None)
            labels: tuple[str, ...] = ()
            if label_node is not None:
                assert isinstance(label_node, (ast.List, ast.Tuple)), f"{where}: give label names as a literal list"
                labels = tuple(str(ast.literal_eval(e)) for e in label_node.elts)
            found.append(Declared(where, kind, str(node.args[0].value), labels))
    return found


DECLARED = _declared()


def _module_of(d: Declared) -> str:
    return d.where.split(":")[0][: -len(".py")].replace("/", ".")


def test_the_source_scan_finds_the_metrics() -> None:
    modules = {_module_of(d) for d in DECLARED}
    assert {"paystream.metrics", "sinks.postgres", "agents.fraud"} <= modules
    assert len(DECLARED) >= 35
    # and it misses none: every metric object these modules hold was seen in the source
    for module_name in modules:
        module = importlib.import_module(module_name)
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                names = {d.name for d in DECLARED} | {d.name.removesuffix("_total") for d in DECLARED}
                assert value._name in names, f"{module_name}: {value._name} was not found in the source"


@pytest.mark.parametrize("metric", DECLARED, ids=lambda d: d.name)
def test_metric_names_follow_the_conventions(metric: Declared) -> None:
    name, where = metric.name, metric.where
    assert NAME.match(name), f"{where}: {name} needs the paystream_ prefix and snake case"
    assert not NON_BASE_UNITS.search(name), f"{where}: {name}: use base units (_seconds, _bytes)"
    if metric.kind == "Counter":
        assert name.endswith("_total"), f"{where}: counter {name} must end in _total"
        assert "_total_" not in name
    else:
        assert not name.endswith("_total"), f"{where}: only counters end in _total ({name} is a {metric.kind})"
    if metric.kind in ("Histogram", "Summary"):
        assert name.endswith(HISTOGRAM_UNITS), f"{where}: {name} must end in its unit, one of {HISTOGRAM_UNITS}"
    if re.search(r"_(latency|duration|age|time|elapsed|wait)(_|$)", name) and metric.kind != "Counter":
        assert name.endswith(("_seconds", "_timestamp_seconds")), f"{where}: a time is in seconds: {name}"


@pytest.mark.parametrize("metric", DECLARED, ids=lambda d: d.name)
def test_label_names_are_few_and_never_identifiers(metric: Declared) -> None:
    assert len(metric.labels) <= MAX_LABELS, f"{metric.where}: {metric.name} has {len(metric.labels)} labels"
    assert len(set(metric.labels)) == len(metric.labels)
    for label in metric.labels:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", label), f"{metric.where}: label {label!r}"
        assert not ID_LABEL.search(label), f"{metric.where}: label {label!r} of {metric.name} looks unbounded"
        assert label not in ("le", "quantile", "job", "instance"), f"{metric.where}: {label!r} is reserved"


def test_metric_names_are_unique_and_do_not_clash_with_fausts() -> None:
    from faust.sensors.prometheus import FaustMetrics

    names = [d.name for d in DECLARED]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    faust_names = {m._name for m in FaustMetrics.create(CollectorRegistry(), "paystream")}
    ours = {n.removesuffix("_total") for n in names}
    assert not ours & faust_names, ours & faust_names
    # faust's own metrics (third-party names, not renamed) still carry small label sets only
    for metric in FaustMetrics.create(CollectorRegistry(), "paystream"):
        assert set(metric._labelnames) <= {"topic", "partition", "stream", "table", "operation", "metric",
                                           "status_code"}, (metric._name, metric._labelnames)


def _label_calls() -> list[tuple[str, str]]:
    """Every label value passed to ``.labels(...)``, or to ``metrics.child(METRIC, ...)`` (which
    calls ``METRIC.labels(*values)`` once: that one call is the helper's own, not a call site)."""
    out = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if name == "labels":
                args = [*node.args, *(k.value for k in node.keywords)]
                if (path.name == "metrics.py" and len(args) == 1 and isinstance(args[0], ast.Starred)
                        and ast.unparse(args[0]) == "*values"):
                    continue  # metrics.child's own lookup: its callers' values are scanned below
            elif name == "child":
                args = node.args[1:]
            else:
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            for arg in args:
                out.append((where, ast.unparse(arg)))
    return out


def test_every_label_value_comes_from_a_small_set() -> None:
    calls = _label_calls()
    assert len(calls) >= 40, "the scan of .labels(...) call sites found too few"
    problems = []
    for where, expr in calls:
        if FORBIDDEN_IN_LABEL.search(expr):
            problems.append(f"{where}: label value {expr!r} is (or holds) an identifier or free text")
        elif not LITERALS.fullmatch(expr) and expr not in BOUNDED_LABEL_VALUES:
            problems.append(f"{where}: label value {expr!r} is not reviewed: is it from a small set? "
                            "then add it to BOUNDED_LABEL_VALUES")
    assert not problems, "\n".join(problems)


def test_the_reviewed_list_has_no_stale_entries() -> None:
    used = {expr for _, expr in _label_calls()}
    assert set(BOUNDED_LABEL_VALUES) <= used, set(BOUNDED_LABEL_VALUES) - used


def test_payment_outcomes_are_counted_by_gateway_and_amounts_by_currency() -> None:
    from paystream import metrics
    from paystream.core import events as evs

    def value(metric: MetricWrapperBase, *labels: str) -> float:
        return float(metric.labels(*labels)._value.get())  # type: ignore[attr-defined]

    before = (value(metrics.PAYMENTS, "succeeded", "stripe"), value(metrics.AMOUNT, "EUR"),
              value(metrics.PAYMENTS, "failed", "-"), value(metrics.PAYMENTS, "succeeded", "other"),
              value(metrics.AMOUNT, "other"))
    metrics.payment_reached("succeeded", evs.PaymentSucceeded(amount=1999, currency="EUR", gateway="stripe"))
    metrics.payment_reached("failed", evs.PaymentFailed(decline_code="card_declined"))
    # values outside the known sets never become label values of their own
    metrics.payment_reached("succeeded", evs.PaymentSucceeded(amount=5, currency="pay_123", gateway="gw_cus_42"))
    after = (value(metrics.PAYMENTS, "succeeded", "stripe"), value(metrics.AMOUNT, "EUR"),
             value(metrics.PAYMENTS, "failed", "-"), value(metrics.PAYMENTS, "succeeded", "other"),
             value(metrics.AMOUNT, "other"))
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1999, 1, 1, 5]
    exposed = {s.labels.get("gateway") for m in metrics.PAYMENTS.collect() for s in m.samples}
    assert "gw_cus_42" not in exposed


def test_a_remembered_child_counts_in_the_metric_it_came_from() -> None:
    """``metrics.child`` returns prometheus_client's own labelled child, once per label values:
    what it counts is what /metrics exposes, and other values get their own child."""
    from prometheus_client import REGISTRY

    from paystream import metrics

    labels = {"type": "ChildProbeEvent"}
    before = REGISTRY.get_sample_value("paystream_events_total", labels) or 0.0
    first = metrics.child(metrics.EVENTS, "ChildProbeEvent")
    assert metrics.child(metrics.EVENTS, "ChildProbeEvent") is first is metrics.EVENTS.labels("ChildProbeEvent")
    first.inc()
    metrics.child(metrics.EVENTS, "ChildProbeEvent").inc(2)
    assert REGISTRY.get_sample_value("paystream_events_total", labels) == before + 3
    assert metrics.child(metrics.EVENTS, "OtherProbeEvent") is not first
