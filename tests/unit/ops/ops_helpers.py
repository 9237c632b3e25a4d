"""Shared helpers for the operations tests: file locations, YAML loading, the metric names the
code really exports, and a light PromQL reader (metric and grouping-label names)."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the deployment files (pip install pyyaml)")

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S = ROOT / "deploy" / "k8s"
PROMETHEUS = ROOT / "ops" / "prometheus" / "prometheus.yml"
PROMETHEUS_K8S = ROOT / "ops" / "prometheus" / "prometheus-k8s.yml"
ALERTS = ROOT / "ops" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "dashboards" / "paystream.json"
GRAFANA_PROVISIONING = ROOT / "ops" / "grafana" / "provisioning"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
CONFIG_DOC = ROOT / "docs" / "configuration.md"

WORKER_WEB_PORT = 6066
SINK_METRICS_PORT = 6067


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


# ------------------------------------------------------------------ settings


@lru_cache(maxsize=1)
def settings_env_names() -> frozenset[str]:
    """Every PAYSTREAM_* variable a pydantic settings model of paystream reads: the main
    ``Settings`` and, where present, the web edge's own ``WebSettings``."""
    from paystream.config import Settings

    models: list[Any] = [Settings]
    try:
        from paystream.web.settings import WebSettings

        models.append(WebSettings)
    except ImportError:
        pass
    return frozenset(
        f"{model.model_config.get('env_prefix', '')}{name}".upper() for model in models for name in model.model_fields
    )


# ------------------------------------------------------------------ metrics

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}

# Series every Prometheus target has, not exported by our code.
_PROMETHEUS_BUILTIN = {"up": (), "scrape_duration_seconds": (), "scrape_samples_scraped": ()}

# Labels Prometheus (or our scrape configs) attach to every series.
TARGET_LABELS = frozenset({"instance", "job", "component", "namespace", "pod", "service"})


def _exposed(name: str, kind: str) -> list[str]:
    base = name[: -len("_total")] if kind == "counter" and name.endswith("_total") else name
    return [base + s for s in _SUFFIXES.get(kind, ("",))]


@lru_cache(maxsize=1)
def known_metrics() -> dict[str, frozenset[str]]:
    """Sample name → label names, for every series paystream's processes can expose:
    paystream/metrics.py and agents/fraud.py (worker), sinks/postgres.py (sink), sinks/vault.py
    (vault and audit sinks) and faust's Prometheus monitor (named with the app id, ``paystream``)."""
    from faust.sensors.prometheus import FaustMetrics
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    import agents.fraud as fraud_metrics
    import paystream.metrics as worker_metrics
    import sinks.postgres as sink_metrics
    import sinks.vault as topic_sink_metrics
    from paystream.config import Settings

    out: dict[str, frozenset[str]] = {k: frozenset(v) for k, v in _PROMETHEUS_BUILTIN.items()}

    def add(metric: MetricWrapperBase) -> None:
        labels = frozenset(getattr(metric, "_labelnames", ()))
        for sample in _exposed(metric._name, metric._type):
            out[sample] = labels | ({"le"} if sample.endswith("_bucket") else frozenset())

    for module in (worker_metrics, fraud_metrics, sink_metrics, topic_sink_metrics):
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                add(value)
    app_id = Settings.model_fields["app_id"].default.replace("-", "_").replace(".", "_")
    for metric in FaustMetrics.create(CollectorRegistry(), app_id):
        add(metric)
    return out


# ------------------------------------------------------------------ PromQL

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^{}]*)\}")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w$.])[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = frozenset(
    [
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
        "quantile", "limitk", "limit_ratio", "by", "without", "on", "ignoring", "group_left", "group_right", "and",
        "or", "unless", "bool", "offset", "atan2", "abs", "absent", "absent_over_time", "ceil", "changes", "clamp",
        "clamp_max", "clamp_min", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv",
        "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
        "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase",
        "irate", "label_join", "label_replace", "ln", "log2", "log10", "minute", "month", "predict_linear", "rate",
        "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "time", "timestamp", "vector", "year",
        "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "quantile_over_time",
        "stddev_over_time", "stdvar_over_time", "last_over_time", "present_over_time", "inf", "nan",
    ]
)


def balanced(expr: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for ch in _STRING.sub('""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, grouping labels) an expression uses. Good enough for our own rules and
    panels: strings, label matchers, ranges and Grafana variables are removed first."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\$\w+|\$\{[^}]*\}", "1m", text)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    labels: set[str] = set()
    for m in _GROUPING.finditer(text):
        labels |= {x.strip() for x in m.group(2).split(",") if x.strip()}
    text = _GROUPING.sub(" ", text)
    names = {t for t in _IDENT.findall(text) if t not in _KEYWORDS and not re.fullmatch(r"\d+(e\d+)?", t)}
    return names, labels


def check_promql(expr: str, where: str) -> list[str]:
    """Problems with one expression: unbalanced brackets, unknown metrics, unknown labels."""
    problems = []
    if not balanced(expr):
        problems.append(f"{where}: unbalanced brackets in {expr!r}")
    names, labels = promql_names(expr)
    metrics = known_metrics()
    unknown = sorted(n for n in names if n not in metrics)
    if unknown:
        problems.append(f"{where}: metric(s) {unknown} are exported by no paystream process")
    known = [n for n in names if n in metrics]
    if not known:
        problems.append(f"{where}: references no known metric: {expr!r}")
    allowed = set(TARGET_LABELS).union(*(metrics[n] for n in known)) if known else set(TARGET_LABELS)
    bad_labels = sorted(labels - allowed)
    if bad_labels:
        problems.append(f"{where}: grouping label(s) {bad_labels} exist on none of {sorted(known)}")
    for metric, matchers in _SELECTOR.findall(_STRING.sub(_blank_string, expr)):
        if metric in metrics:
            used = {m.group(1) for m in re.finditer(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers)}
            bad = sorted(used - metrics[metric] - TARGET_LABELS)
            if bad:
                problems.append(f"{where}: {metric} has no label(s) {bad}")
    return problems


def _blank_string(m: re.Match[str]) -> str:
    """Keep a string literal's quotes but drop what is inside (it may contain `=` or `}`)."""
    return m.group(0)[0] * 2


# ------------------------------------------------------------------ markdown


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub generates for the headings of a markdown file."""
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and not in_code:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors
