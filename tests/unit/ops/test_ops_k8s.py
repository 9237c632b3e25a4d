"""deploy/k8s: plain manifests that parse, probe the right endpoints, and hold no secrets."""

from __future__ import annotations

from typing import Any

import pytest
from ops_helpers import (
    ALERTS,
    K8S,
    PROMETHEUS_K8S,
    SINK_METRICS_PORT,
    WORKER_WEB_PORT,
    load_yaml,
    load_yaml_all,
    settings_env_names,
)

NAMESPACE = "paystream"


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_yaml_all(path):
            assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), path
            out.append(doc)
    return out


def _get(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}"
    return found[0]


def _component(docs: list[dict[str, Any]], component: str, kinds: tuple[str, ...]) -> dict[str, Any]:
    found = [
        d for d in docs
        if d["kind"] in kinds
        and d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"expected one {component} workload"
    return found[0]


def _port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def _probe(container: dict[str, Any], kind: str) -> tuple[str, int]:
    get = container[kind]["httpGet"]
    return get["path"], _port(container, get["port"])


def test_kustomization_lists_every_manifest() -> None:
    kust = load_yaml(K8S / "kustomization.yaml")
    listed = set(kust["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files
    assert kust["namespace"] == NAMESPACE


def test_everything_is_namespaced(docs: list[dict[str, Any]]) -> None:
    _get(docs, "Namespace", NAMESPACE)
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == NAMESPACE, f"{d['kind']}/{d['metadata']['name']}"


def test_worker_probes_and_scrape_annotations(docs: list[dict[str, Any]]) -> None:
    worker = _component(docs, "worker", ("StatefulSet", "Deployment"))
    tpl = worker["spec"]["template"]
    (container,) = tpl["spec"]["containers"]
    assert container["args"][0] == "worker"
    assert _probe(container, "livenessProbe") == ("/health", WORKER_WEB_PORT)
    assert _probe(container, "readinessProbe") == ("/ready", WORKER_WEB_PORT)
    ann = tpl["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == WORKER_WEB_PORT
    assert ann["prometheus.io/path"] == "/metrics"
    assert worker["spec"]["replicas"] >= 2
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30


# Every sink process: component → (args, the setting naming its HTTP port, its port).
SINKS = {
    "sink": (["sink"], "PAYSTREAM_SINK_METRICS_PORT", SINK_METRICS_PORT),
    "vault-sink": (["customers", "sink"], "PAYSTREAM_VAULT_SINK_METRICS_PORT", 6070),
    "audit-sink": (["audit", "sink"], "PAYSTREAM_AUDIT_SINK_METRICS_PORT", 6071),
}


@pytest.mark.parametrize("component", SINKS)
def test_sink_probes_and_scrape_annotations(docs: list[dict[str, Any]], component: str) -> None:
    from paystream.config import Settings

    args, port_setting, port = SINKS[component]
    sink = _component(docs, component, ("Deployment",))
    tpl = sink["spec"]["template"]
    (container,) = tpl["spec"]["containers"]
    assert container["args"] == args
    assert _probe(container, "livenessProbe") == ("/health", port)
    assert _probe(container, "readinessProbe") == ("/ready", port)
    ann = tpl["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    assert int(ann["prometheus.io/port"]) == port
    cm = _get(docs, "ConfigMap", "paystream-config")
    assert int(cm["data"].get(port_setting, -1)) == port == Settings.model_fields[
        port_setting.removeprefix("PAYSTREAM_").lower()].default
    assert sink["spec"]["selector"]["matchLabels"].items() <= tpl["metadata"]["labels"].items()


def test_sinks_listen_beyond_loopback(docs: list[dict[str, Any]]) -> None:
    """Probes and Prometheus reach a pod on its IP: a sink bound to 127.0.0.1 (the default) would
    never be ready and be restarted by its liveness probe."""
    cm = _get(docs, "ConfigMap", "paystream-config")
    assert cm["data"]["PAYSTREAM_SINK_METRICS_HOST"] == "0.0.0.0"
    groups = {cm["data"][k] for k in ("PAYSTREAM_SINK_GROUP", "PAYSTREAM_VAULT_SINK_GROUP",
                                      "PAYSTREAM_AUDIT_SINK_GROUP")}
    assert len(groups) == 3, "each sink is its own consumer group"


def test_scrape_jobs_follow_the_components(docs: list[dict[str, Any]]) -> None:
    """prometheus-k8s.yml names the job paystream-<component>: the jobs alerts.yml expects."""
    alerts = ALERTS.read_text()
    for component in ("worker", *SINKS):
        _component(docs, component, ("StatefulSet", "Deployment"))
        assert f"paystream-{component}" in alerts, f"no alert watches job paystream-{component}"
    relabel = load_yaml(PROMETHEUS_K8S)["scrape_configs"][0]["relabel_configs"]
    assert any(r.get("target_label") == "job" and r.get("replacement") == "paystream-$1" for r in relabel)


def test_worker_pdb(docs: list[dict[str, Any]]) -> None:
    worker = _component(docs, "worker", ("StatefulSet", "Deployment"))
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert pdbs, "workers need a PodDisruptionBudget"
    selects = worker["spec"]["template"]["metadata"]["labels"]
    (pdb,) = [p for p in pdbs if p["spec"]["selector"]["matchLabels"].items() <= selects.items()]
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") == 1


def test_web_edge_service_routes_to_the_workers(docs: list[dict[str, Any]]) -> None:
    worker = _component(docs, "worker", ("StatefulSet", "Deployment"))
    svc = _get(docs, "Service", "paystream-web")
    labels = worker["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert _port(container, svc["spec"]["ports"][0]["targetPort"]) == WORKER_WEB_PORT


def test_settings_come_from_the_configmap_and_secret(docs: list[dict[str, Any]]) -> None:
    cm = _get(docs, "ConfigMap", "paystream-config")
    secret = _get(docs, "Secret", "paystream-secrets")
    known = settings_env_names()
    for key in [*cm["data"], *secret["stringData"]]:
        assert key in known, f"{key} is not a paystream setting"
    assert int(cm["data"]["PAYSTREAM_WEB_PORT"]) == WORKER_WEB_PORT
    assert int(cm["data"]["PAYSTREAM_SINK_METRICS_PORT"]) == SINK_METRICS_PORT
    assert cm["data"]["PAYSTREAM_WEB_HOST"] == "0.0.0.0"
    for workload in (d for d in docs if d["kind"] in ("StatefulSet", "Deployment", "Job")):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            refs = {next(iter(r.values()))["name"] for r in container.get("envFrom", [])}
            assert refs <= {"paystream-config", "paystream-secrets"}


def test_secret_holds_placeholders_only(docs: list[dict[str, Any]]) -> None:
    secret = _get(docs, "Secret", "paystream-secrets")
    assert "data" not in secret, "no base64 values in the repo"
    for key, value in secret["stringData"].items():
        assert "CHANGE_ME" in value, f"{key} must be a placeholder"
        assert "sk_live_" not in value and "sk_test_" not in value


def test_pods_run_as_non_root(docs: list[dict[str, Any]]) -> None:
    for workload in (d for d in docs if d["kind"] in ("StatefulSet", "Deployment", "Job")):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, workload["metadata"]["name"]
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
