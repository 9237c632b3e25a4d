"""docker-compose.yml and the Dockerfile: structure, health, dependencies and settings."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from ops_helpers import (
    COMPOSE,
    DOCKERFILE,
    DOCKERIGNORE,
    GRAFANA_PROVISIONING,
    PROMETHEUS,
    ROOT,
    SINK_METRICS_PORT,
    WORKER_WEB_PORT,
    load_yaml,
    settings_env_names,
)

REQUIRED_SERVICES = {
    "kafka", "registry", "postgres", "stripe-mock", "simgw", "migrate", "sink", "vault-sink", "audit-sink",
    "prometheus", "grafana",
}
# Every sink process: service → (command, the setting naming its HTTP port, its port, Prometheus job).
SINKS = {
    "sink": (["sink"], "PAYSTREAM_SINK_METRICS_PORT", SINK_METRICS_PORT, "paystream-sink"),
    "vault-sink": (["customers", "sink"], "PAYSTREAM_VAULT_SINK_METRICS_PORT", 6070, "paystream-vault-sink"),
    "audit-sink": (["audit", "sink"], "PAYSTREAM_AUDIT_SINK_METRICS_PORT", 6071, "paystream-audit-sink"),
}
WORKER_NEEDS = {
    "PAYSTREAM_KAFKA_BOOTSTRAP",
    "PAYSTREAM_SCHEMA_REGISTRY_URL",
    "PAYSTREAM_WEB_HOST",
    "PAYSTREAM_WEB_PORT",
    "PAYSTREAM_SIMGW_URL",
    "PAYSTREAM_STRIPE_API_BASE",
    "PAYSTREAM_APP_ID",
}
SINK_NEEDS = {
    "PAYSTREAM_KAFKA_BOOTSTRAP",
    "PAYSTREAM_SCHEMA_REGISTRY_URL",
    "PAYSTREAM_POSTGRES_DSN",
    "PAYSTREAM_SINK_METRICS_PORT",
    "PAYSTREAM_SINK_GROUP",
}
MIGRATE_NEEDS = {"PAYSTREAM_POSTGRES_DSN", "PAYSTREAM_SCHEMA_REGISTRY_URL"}
PINNED_IMAGES = {
    "kafka": "apache/kafka:4.1.1",
    "registry": "apicurio/apicurio-registry:3.3.3",
    "postgres": "postgres:15",
    "stripe-mock": "stripe/stripe-mock:v0.203.0",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = load_yaml(COMPOSE)
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict)
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _command(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def _workers(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services.items() if _command(s)[:1] == ["worker"]}


def _env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _one_shot(svc: dict[str, Any]) -> bool:
    return str(svc.get("restart", "no")) == "no"


def _interpolated(value: str) -> str:
    """Compose's ${VAR:-default} with the defaults."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def test_required_services_and_two_workers(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= REQUIRED_SERVICES, REQUIRED_SERVICES - set(services)
    assert len(_workers(services)) == 2


def test_pinned_images(services: dict[str, dict[str, Any]]) -> None:
    for name, image in PINNED_IMAGES.items():
        assert services[name]["image"] == image
    paystream_image = services["sink"]["image"]
    for name in ("simgw", "migrate", *SINKS, *_workers(services)):
        assert services[name]["image"] == paystream_image, f"{name} must run the paystream image"
        assert "build" in services[name]


def test_every_service_has_a_healthcheck_or_is_one_shot(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        hc = svc.get("healthcheck")
        if _one_shot(svc):
            assert not hc, f"{name}: a one-shot service needs no healthcheck"
            continue
        assert hc and hc.get("test"), f"{name} is long-running and has no healthcheck"
        assert not hc.get("disable")
        assert hc["test"][0] in ("CMD", "CMD-SHELL")


def test_depends_on_conditions_are_satisfiable(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: use the long depends_on form with conditions"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            cond = spec.get("condition")
            assert cond in ("service_healthy", "service_completed_successfully", "service_started"), (name, dep)
            if cond == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep} to be healthy; it has no healthcheck"
            if cond == "service_completed_successfully":
                assert _one_shot(services[dep]), f"{dep} never completes"


def test_one_shot_migrate_runs_migrations_then_schemas(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert _one_shot(migrate)
    script = " ".join(migrate.get("entrypoint") or []) + " " + " ".join(_command(migrate))
    assert "paystream db migrate" in script and "paystream schemas register" in script
    assert script.index("db migrate") < script.index("schemas register")
    assert "&&" in script, "a failed migration must fail the one-shot"
    for name in (*_workers(services), *SINKS):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_every_paystream_variable_is_a_setting(services: dict[str, dict[str, Any]]) -> None:
    known = settings_env_names()
    for name, svc in services.items():
        for key in _env(svc):
            if key.startswith("PAYSTREAM_") and key != "PAYSTREAM_IMAGE":
                assert key in known, f"{name}: {key} is not a field of paystream.config.Settings"


def test_workers_get_the_settings_they_need(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in _workers(services).items():
        env = _env(svc)
        assert set(env) >= WORKER_NEEDS, f"{name} lacks {WORKER_NEEDS - set(env)}"
        assert env["PAYSTREAM_WEB_HOST"] == "0.0.0.0", "faust must listen beyond the container's loopback"
        assert int(env["PAYSTREAM_WEB_PORT"]) == WORKER_WEB_PORT
        hc = " ".join(svc["healthcheck"]["test"])
        assert f":{WORKER_WEB_PORT}/ready" in hc
        assert {d: s["condition"] for d, s in svc["depends_on"].items()}["kafka"] == "service_healthy"
    envs = [_env(s) for s in _workers(services).values()]
    assert all(e["PAYSTREAM_APP_ID"] == envs[0]["PAYSTREAM_APP_ID"] for e in envs), "workers share one group"


def test_sink_and_migrate_get_the_settings_they_need(services: dict[str, dict[str, Any]]) -> None:
    sink = _env(services["sink"])
    assert set(sink) >= SINK_NEEDS, SINK_NEEDS - set(sink)
    assert int(sink["PAYSTREAM_SINK_METRICS_PORT"]) == SINK_METRICS_PORT
    assert f":{SINK_METRICS_PORT}/ready" in " ".join(services["sink"]["healthcheck"]["test"])
    assert sink["PAYSTREAM_SINK_GROUP"] != _env(next(iter(_workers(services).values())))["PAYSTREAM_APP_ID"]
    migrate = _env(services["migrate"])
    assert set(migrate) >= MIGRATE_NEEDS, MIGRATE_NEEDS - set(migrate)


def test_every_sink_runs_and_is_reachable_from_other_containers(services: dict[str, dict[str, Any]]) -> None:
    from paystream.config import Settings

    for name, (command, port_setting, port, _) in SINKS.items():
        svc = services[name]
        assert _command(svc) == command, name
        env = _env(svc)
        # bound to 127.0.0.1 (the default) the sink's /metrics would answer its own healthcheck
        # but neither Prometheus nor any other container
        assert env.get("PAYSTREAM_SINK_METRICS_HOST") == "0.0.0.0", f"{name} must bind 0.0.0.0"
        assert int(env[port_setting]) == port
        assert Settings.model_fields[port_setting.removeprefix("PAYSTREAM_").lower()].default == port
        assert f"{port}:{port}" in [str(p) for p in svc.get("ports", [])], name
        hc = " ".join(svc["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/ready" in hc, name
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert not _one_shot(svc) and svc.get("stop_grace_period")
    groups = [_env(services[n]).get(k) for n, k in (("sink", "PAYSTREAM_SINK_GROUP"),
                                                     ("vault-sink", "PAYSTREAM_VAULT_SINK_GROUP"),
                                                     ("audit-sink", "PAYSTREAM_AUDIT_SINK_GROUP"))]
    assert None not in groups and len(set(groups)) == 3, "each sink is its own consumer group"


def test_the_image_binds_every_http_server_beyond_loopback() -> None:
    env = dict(re.findall(r"(PAYSTREAM_[A-Z_]+)=(\S+)", DOCKERFILE.read_text()))
    assert env["PAYSTREAM_WEB_HOST"] == "0.0.0.0" and env["PAYSTREAM_SINK_METRICS_HOST"] == "0.0.0.0"
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", DOCKERFILE.read_text(), re.M) for p in line.split()}
    assert {WORKER_WEB_PORT, *(port for _, _, port, _ in SINKS.values())} <= exposed


def test_addresses_point_at_compose_services(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        env = _env(svc)
        for key in ("PAYSTREAM_SCHEMA_REGISTRY_URL", "PAYSTREAM_POSTGRES_DSN", "PAYSTREAM_SIMGW_URL",
                    "PAYSTREAM_STRIPE_API_BASE"):
            if key in env:
                host = urlparse(_interpolated(env[key])).hostname
                assert host in services, f"{name}: {key} points at {host}, not a compose service"
        if "PAYSTREAM_KAFKA_BOOTSTRAP" in env:
            for server in env["PAYSTREAM_KAFKA_BOOTSTRAP"].split(","):
                assert server.split(":")[0] in services
    assert _env(services["sink"])["PAYSTREAM_SCHEMA_REGISTRY_URL"].endswith("/apis/ccompat/v7")


def test_kafka_is_single_node_kraft_with_transactions(services: dict[str, dict[str, Any]]) -> None:
    env = _env(services["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    cluster_id = env["CLUSTER_ID"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id), "CLUSTER_ID is a base64url 16-byte UUID"


def test_host_ports_match_the_local_stack(services: dict[str, dict[str, Any]]) -> None:
    from paystream import stack

    ports = stack.DEFAULT_PORTS  # not the environment's: a test session may run on moved ports
    expected = {"kafka": ports["kafka"], "registry": ports["registry"], "postgres": ports["postgres"],
                "stripe-mock": ports["stripe_mock"], "simgw": ports["simgw"]}
    for name, port in expected.items():
        published = {int(str(p).split(":")[0]) for p in services[name].get("ports", [])}
        assert port in published, f"{name} should publish host port {port} like `paystream stack`"


def test_bind_mounts_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_prometheus_scrapes_every_worker_and_the_sink(services: dict[str, dict[str, Any]]) -> None:
    prom = load_yaml(PROMETHEUS)
    targets = {
        job["job_name"]: {t for sc in job.get("static_configs", []) for t in sc["targets"]}
        for job in prom["scrape_configs"]
    }
    assert targets["paystream-worker"] == {f"{w}:{WORKER_WEB_PORT}" for w in _workers(services)}
    for name, (_, _, port, job) in SINKS.items():
        assert targets[job] == {f"{name}:{port}"}, job
    mounts = [str(v) for v in services["prometheus"]["volumes"]]
    assert any(m.startswith("./ops/prometheus:/etc/prometheus") for m in mounts)
    assert "/etc/prometheus/alerts.yml" in prom["rule_files"]


def test_grafana_provisioning_matches_compose(services: dict[str, dict[str, Any]]) -> None:
    mounts = {str(v).split(":")[0]: str(v).split(":")[1] for v in services["grafana"]["volumes"]}
    assert mounts["./ops/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboards_dir = mounts["./ops/grafana/dashboards"]
    provider = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "paystream.yml")["providers"][0]
    assert provider["options"]["path"] == dashboards_dir
    ds = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")["datasources"][0]
    assert urlparse(ds["url"]).hostname in services


def test_dockerfile_builds_one_non_root_image_with_the_paystream_entrypoint() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M) or "FROM python:3.11-slim" in text
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the runtime stage must not run as root"
    assert re.search(r'^ENTRYPOINT \["paystream"\]$', text, re.M)
    assert "pip install" in text
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for pkg in {p.rstrip("*") for p in packages} | {"avro"}:
        assert re.search(rf"^COPY {pkg} ", text, re.M), f"the image lacks {pkg}/"
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line and not line.startswith("#")}
    for needed in ("pyproject.toml", "avro", "paystream", "sinks"):
        assert needed not in ignored


# --- `docker compose config`: the Compose CLI itself loads, interpolates and validates the file.
# There is no Docker engine here and no compose plugin in the image, so the stack builds the
# Compose v2 CLI from its Go module (paystream/stack.py install_compose; `make test` starts that
# build in the background first). `config` needs no engine.


def _clean_env() -> dict[str, str]:
    """No PAYSTREAM_*, POSTGRES_* or COMPOSE_* from the caller: the file's defaults apply."""
    keep = ("PATH", "HOME", "LANG", "TMPDIR")
    return {k: v for k, v in os.environ.items() if k in keep}


@pytest.fixture(scope="module")
def compose_cli() -> str:
    from paystream import stack

    return str(stack.install_compose())


def _config(compose_cli: str, compose_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [compose_cli, "--project-directory", str(ROOT), "-f", str(compose_file), "config", *args],
        capture_output=True, text=True, cwd=ROOT, env=_clean_env(), timeout=120,
    )


def test_docker_compose_config_validates(compose_cli: str, services: dict[str, dict[str, Any]]) -> None:
    proc = _config(compose_cli, COMPOSE, "--quiet")
    assert proc.returncode == 0, proc.stderr
    # What compose resolved: the same services, every ${VAR:-default} replaced by its default.
    proc = _config(compose_cli, COMPOSE, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    resolved = json.loads(proc.stdout)
    assert set(resolved["services"]) == set(services)
    assert "${" not in proc.stdout, "an interpolation compose left unresolved"
    assert resolved["services"]["sink"]["image"] == "paystream:dev"
    dsn = resolved["services"]["sink"]["environment"]["PAYSTREAM_POSTGRES_DSN"]
    assert dsn == "postgresql://postgres:paystream@postgres:5432/paystream"
    for name, svc in resolved["services"].items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in resolved["services"] and spec["condition"], (name, dep)


def test_docker_compose_config_as_the_docker_cli_plugin(compose_cli: str) -> None:
    """The same binary as `docker compose`, where a docker CLI is installed."""
    from paystream import stack

    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI here: the standalone compose validated the file above")
    env = {**_clean_env(), "DOCKER_CONFIG": str(stack.docker_config_dir())}
    proc = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr


BREAKAGES = {
    # (what is changed, old text → new text, a word compose's error must contain)
    "unknown dependency": ("condition: service_completed_successfully\n", "condition: service_completed_successfully\n"
                           "    no-such-service:\n      condition: service_started\n", "no-such-service"),
    "misspelt key": ("    healthcheck:\n", "    healthcheck:\n      intervall: 5s\n", "intervall"),
    "bad condition": ("condition: service_healthy", "condition: service_ready", "condition value must be one of"),
    "broken interpolation": ("${PAYSTREAM_IMAGE:-paystream:dev}", "${PAYSTREAM_IMAGE:-paystream:dev", "interpolation"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_docker_compose_config_rejects_a_broken_file(compose_cli: str, tmp_path: Path, breakage: str) -> None:
    """The check can fail: each change to a copy of the file makes `config` exit non-zero."""
    old, new, word = BREAKAGES[breakage]
    text = COMPOSE.read_text()
    assert old in text, f"{breakage}: the file no longer contains {old!r}; pick another breakage"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new, 1))
    proc = _config(compose_cli, broken, "--quiet")
    assert proc.returncode != 0, f"{breakage}: compose accepted the broken file"
    assert word in proc.stderr, proc.stderr
