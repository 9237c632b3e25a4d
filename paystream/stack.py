"""The local stack: real Kafka (KRaft), a schema registry, PostgreSQL and stripe-mock.

Every service is installed from the registries this machine reaches (Maven Central, the Go
module proxy, Debian's packages), started on 127.0.0.1 with its data and logs under the stack
directory (``.stack/`` by default, ignored by git), health-checked, and stopped by the pid we
recorded when we started it. ``up`` is idempotent: a healthy service is left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STACK_SRC = REPO / "stack"

KAFKA_VERSION = "4.1.1"
STRIPE_MOCK_VERSION = "v0.203.0"
# The Compose v2 CLI, built from its Go module: it validates docker-compose.yml (`docker compose
# config`) on a machine without a Docker engine (tests/unit/ops/test_ops_compose.py).
COMPOSE_MODULE = "github.com/docker/compose/v2"
COMPOSE_VERSION = "v2.40.3"
APICURIO_DIR = STACK_SRC / "apicurio"


def stack_dir() -> Path:
    return Path(os.environ.get("PAYSTREAM_STACK_DIR", REPO / ".stack")).resolve()


DEFAULT_PORTS = {
    "kafka": 19092,
    "kafka_controller": 19093,
    "registry": 18081,
    "postgres": 15432,
    "stripe_mock": 12111,
    "stripe_mock_https": 12112,
    "simgw": 18090,
}


def _ports() -> dict[str, int]:
    """Ports of this stack: the defaults, each movable by ``PAYSTREAM_<NAME>_PORT``."""
    names = {"stripe_mock": "STRIPE_MOCK", "stripe_mock_https": "STRIPE_MOCK_HTTPS", "postgres": "PG",
             "kafka_controller": "KAFKA_CONTROLLER"}
    return {
        key: int(os.environ.get(f"PAYSTREAM_{names.get(key, key.upper())}_PORT", default))
        for key, default in DEFAULT_PORTS.items()
    }


PORTS = _ports()


class StackError(RuntimeError):
    """A service could not be installed, started or checked."""


def log(msg: str) -> None:
    print(f"[stack] {msg}", flush=True)


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, **kw)  # type: ignore[call-overload, no-any-return]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(200 <= r.status < 300)
    except Exception:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as dead.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except OSError:
        return True


def wait_until(check: Callable[[], bool], what: str, timeout: float, pid: int | None = None) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        if pid is not None and not pid_alive(pid):
            raise StackError(f"{what}: process {pid} exited during start-up")
        time.sleep(0.25)
    raise StackError(f"{what}: not healthy after {timeout:.0f}s")


@dataclass
class Service:
    name: str
    install: Callable[[], None]
    start: Callable[[], int]  # returns the pid to record
    healthy: Callable[[], bool]
    where: str
    start_timeout: float = 120.0
    stop: Callable[[int], None] | None = None

    @property
    def pidfile(self) -> Path:
        return stack_dir() / "run" / f"{self.name}.pid"

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def up(self) -> None:
        pid = self.pid()
        if pid and self.healthy():
            log(f"{self.name:<12} already up (pid {pid}) at {self.where}")
            return
        if pid:
            log(f"{self.name:<12} pid {pid} is not healthy; restarting it")
            self.down()
        self.install()
        t0 = time.monotonic()
        pid = self.start()
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.pidfile.write_text(str(pid))
        try:
            wait_until(self.healthy, self.name, self.start_timeout, pid)
        except StackError:
            logf = stack_dir() / "logs" / f"{self.name}.log"
            if logf.exists():
                tail = logf.read_text(errors="replace").splitlines()[-30:]
                print("\n".join(tail), file=sys.stderr)
            raise
        log(f"{self.name:<12} up in {time.monotonic() - t0:5.1f}s (pid {pid}) at {self.where}")

    def down(self) -> None:
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return
        if self.stop is not None:
            self.stop(pid)
        else:
            terminate(pid)
        self.pidfile.unlink(missing_ok=True)
        log(f"{self.name:<12} stopped (pid {pid})")

    def status(self) -> str:
        pid = self.pid()
        if pid is None:
            return "down"
        return "healthy" if self.healthy() else "unhealthy"


def terminate(pid: int, timeout: float = 30.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def spawn(name: str, cmd: list[str], env: dict[str, str] | None = None, user: str | None = None) -> int:
    logs = stack_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
    if user:
        cmd = ["runuser", "-u", user, "--", *cmd]
    proc = subprocess.Popen(
        cmd,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # survives the CLI; stopped by pid, never by name
        cwd=stack_dir(),
    )
    return proc.pid


# --------------------------------------------------------------------------- Kafka


def kafka_home() -> Path:
    return stack_dir() / "kafka"


def install_kafka() -> None:
    libs = kafka_home() / "libs"
    marker = kafka_home() / f"installed-{KAFKA_VERSION}"
    if marker.exists():
        return
    if shutil.which("mvn") is None:
        raise StackError("Maven (mvn) is needed to resolve the Kafka broker from Maven Central")
    log(f"resolving Apache Kafka {KAFKA_VERSION} from Maven Central (first run only)")
    if libs.exists():
        shutil.rmtree(libs)
    run(
        [
            "mvn", "-q", "-B", "-f", str(STACK_SRC / "kafka" / "pom.xml"),
            f"-Dkafka.version={KAFKA_VERSION}",
            "dependency:copy-dependencies", f"-DoutputDirectory={libs}", "-DincludeScope=runtime",
        ]
    )
    marker.write_text(KAFKA_VERSION)


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise StackError("a Java 17+ runtime is needed for Kafka and the schema registry")
    return java


def _kafka_java(main: str, *args: str) -> list[str]:
    home = kafka_home()
    return [
        _java(), "-Xms256m", "-Xmx1g", "-XX:+UseG1GC",
        f"-Dlog4j2.configurationFile={STACK_SRC / 'kafka' / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={stack_dir() / 'logs' / 'kafka-broker'}",
        "-cp", str(home / "libs" / "*"), main, *args,
    ]


def start_kafka() -> int:
    home = kafka_home()
    data = home / "data"
    props = home / "server.properties"
    text = (STACK_SRC / "kafka" / "server.properties.in").read_text()
    for k, v in {
        "@PORT@": str(PORTS["kafka"]),
        "@CONTROLLER_PORT@": str(PORTS["kafka_controller"]),
        "@DATA_DIR@": str(data),
    }.items():
        text = text.replace(k, v)
    props.write_text(text)
    if not (data / "meta.properties").exists():
        data.mkdir(parents=True, exist_ok=True)
        cluster_id = run(_kafka_java("kafka.tools.StorageTool", "random-uuid"), capture_output=True).stdout.strip()
        cluster_id = cluster_id.splitlines()[-1]
        run(_kafka_java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)), capture_output=True)
        log(f"kafka        storage formatted (cluster {cluster_id})")
    return spawn("kafka", _kafka_java("kafka.Kafka", str(props)))


def kafka_healthy() -> bool:
    if not port_open(PORTS["kafka"]):
        return False
    try:
        from confluent_kafka.admin import AdminClient

        md = AdminClient({"bootstrap.servers": f"127.0.0.1:{PORTS['kafka']}"}).list_topics(timeout=3)
        return len(md.brokers) >= 1
    except Exception:
        return False


# --------------------------------------------------------------------------- schema registry


def registry_home() -> Path:
    return stack_dir() / "apicurio"


def install_registry() -> None:
    script = APICURIO_DIR / "install.sh"
    if not script.exists():
        raise StackError("stack/apicurio/install.sh is missing")
    run(["bash", str(script), str(registry_home())], stdout=subprocess.DEVNULL)


def _java_21() -> str:
    """Apicurio 3.x is built for Java 21+; the machine's default Java is 17."""
    candidates = [os.environ.get("PAYSTREAM_REGISTRY_JAVA", "")]
    candidates += [str(p / "bin" / "java") for p in sorted(Path("/usr/lib/jvm").glob("*"), reverse=True)]
    candidates.append(_java())
    for java in candidates:
        if not java or not Path(java).exists():
            continue
        out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
        try:
            major = int(out.split('"')[1].split(".")[0])
        except (IndexError, ValueError):
            continue
        if major >= 21:
            return java
    raise StackError("the schema registry (Apicurio 3.x) needs Java 21+; set PAYSTREAM_REGISTRY_JAVA")


def start_registry() -> int:
    home = registry_home()
    (home / "data").mkdir(parents=True, exist_ok=True)
    mgmt_port = PORTS["registry"] + 1000
    return spawn(
        "registry",
        [
            _java_21(), "-Xms64m", "-Xmx512m",
            "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={PORTS['registry']}",
            "-Dquarkus.management.host=127.0.0.1", f"-Dquarkus.management.port={mgmt_port}",
            "-Dapicurio.storage.kind=sql", "-Dapicurio.storage.sql.kind=h2",
            # File-backed H2: schema ids must survive a registry restart, since messages
            # already in Kafka carry them.
            f"-Dapicurio.datasource.url=jdbc:h2:file:{home / 'data' / 'registry'}",
            # Apicurio's default is NONE; Confluent's is BACKWARD. Subjects get
            # BACKWARD_TRANSITIVE when paystream registers them.
            "-Dapicurio.rules.global.compatibility=BACKWARD",
            "-Dquarkus.http.access-log.enabled=false",
            "-jar", str(home / "quarkus-app" / "quarkus-run.jar"),
        ],
    )


def registry_url() -> str:
    return f"http://127.0.0.1:{PORTS['registry']}/apis/ccompat/v7"


def registry_healthy() -> bool:
    return http_ok(f"{registry_url()}/subjects")


# --------------------------------------------------------------------------- PostgreSQL


def _pg_bin() -> Path:
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / "initdb").exists():
            return base
    raise StackError("PostgreSQL server binaries not found")


def _pg_user() -> str | None:
    """Postgres refuses to run as root: as root we run it as the `postgres` system user."""
    return "postgres" if os.geteuid() == 0 else None


def pg_data() -> Path:
    """The cluster's data folder; it must be reachable by the `postgres` user.

    Under the stack folder when every parent is traversable by others, else a folder in
    /var/tmp named after the stack folder (CI clones can sit under a private temp folder).
    """
    preferred = stack_dir() / "postgres"
    if _pg_user() is None:
        return preferred
    p = stack_dir()
    p.mkdir(parents=True, exist_ok=True)
    while p != p.parent:
        if not (p.stat().st_mode & 0o001):
            digest = hashlib.sha1(str(stack_dir()).encode()).hexdigest()[:10]
            return Path(f"/var/tmp/paystream-pg-{digest}")
        p = p.parent
    return preferred


def install_postgres() -> None:
    try:
        _pg_bin()
    except StackError:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise StackError("PostgreSQL is not installed; install Debian's `postgresql` package") from None
        log("installing PostgreSQL from Debian's packages")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        run(["apt-get", "install", "-y", "-q", "postgresql", "postgresql-contrib"], env=env, stdout=subprocess.DEVNULL)
    data = pg_data()
    if (data / "PG_VERSION").exists():
        return
    user = _pg_user()
    data.mkdir(parents=True, exist_ok=True)
    if user:
        shutil.chown(data, user, user)
    cmd = [str(_pg_bin() / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"]
    if user:
        cmd = ["runuser", "-u", user, "--", *cmd]
    run(cmd, stdout=subprocess.DEVNULL)
    with open(data / "postgresql.conf", "a") as f:
        f.write(
            "\n# paystream local stack\n"
            f"listen_addresses = '127.0.0.1'\nport = {PORTS['postgres']}\n"
            f"unix_socket_directories = '{data}'\n"
            "max_connections = 200\nfsync = on\nsynchronous_commit = on\n"
        )


def start_postgres() -> int:
    data = pg_data()
    logs = stack_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return spawn("postgres", [str(_pg_bin() / "postgres"), "-D", str(data)], user=_pg_user())


def postgres_dsn(db: str = "paystream") -> str:
    return f"postgresql://postgres@127.0.0.1:{PORTS['postgres']}/{db}"


def postgres_healthy() -> bool:
    try:
        r = subprocess.run(
            [str(_pg_bin() / "pg_isready"), "-h", "127.0.0.1", "-p", str(PORTS["postgres"]), "-q"], check=False
        )
    except StackError:
        return False
    if r.returncode != 0:
        return False
    return _ensure_database()


def _ensure_database() -> bool:
    try:
        import psycopg

        with psycopg.connect(postgres_dsn("postgres"), autocommit=True, connect_timeout=3) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'paystream'").fetchone()
            if not exists:
                conn.execute("CREATE DATABASE paystream")
        return True
    except Exception:
        return False


def stop_postgres(pid: int) -> None:
    """Fast shutdown (SIGINT: abort sessions, checkpoint, exit) of the server itself.

    As root the recorded pid is runuser's; the postmaster's pid is the first line of
    postmaster.pid. Signalling runuser would start a "smart" shutdown that waits for every
    client (the sink, a worker's pool) to leave.
    """
    targets = [pid]
    with contextlib.suppress(OSError, ValueError, IndexError):
        targets.insert(0, int((pg_data() / "postmaster.pid").read_text().splitlines()[0]))
    for target in targets:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signal.SIGINT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(pid_alive(t) for t in targets):
        time.sleep(0.2)
    for target in targets:
        if pid_alive(target):
            terminate(target)


# --------------------------------------------------------------------------- stripe-mock


def stripe_mock_bin() -> Path:
    return stack_dir() / "bin" / "stripe-mock"


def install_stripe_mock() -> None:
    marker = stack_dir() / "bin" / f"stripe-mock-{STRIPE_MOCK_VERSION}"
    if stripe_mock_bin().exists() and marker.exists():
        return
    go = _go()
    log(f"building stripe-mock {STRIPE_MOCK_VERSION} with the Go toolchain (first run only)")
    (stack_dir() / "bin").mkdir(parents=True, exist_ok=True)
    run(
        [go, "install", f"github.com/stripe/stripe-mock@{STRIPE_MOCK_VERSION}"],
        env={**os.environ, "GOBIN": str(stack_dir() / "bin")},
    )
    marker.write_text(STRIPE_MOCK_VERSION)


def start_stripe_mock() -> int:
    return spawn(
        "stripe-mock",
        [
            str(stripe_mock_bin()),
            "-http-addr", f"127.0.0.1:{PORTS['stripe_mock']}",
            "-https-addr", f"127.0.0.1:{PORTS['stripe_mock_https']}",
        ],
    )


def stripe_mock_healthy() -> bool:
    try:
        req = urllib.request.Request(
            f"http://127.0.0.1:{PORTS['stripe_mock']}/v1/customers?limit=1",
            headers={"Authorization": "Bearer sk_test_123"},
        )
        with urllib.request.urlopen(req, timeout=2) as r:
            return bool(r.status == 200)
    except Exception:
        return False


def _go() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise StackError("the Go toolchain is needed to build the stack's tools")
    return go


# --------------------------------------------------------------------------- docker compose (a tool, not a service)


def compose_bin() -> Path:
    return stack_dir() / "bin" / "docker-compose"


def docker_config_dir() -> Path:
    """A DOCKER_CONFIG folder whose cli-plugins/ holds the built compose, so that
    ``DOCKER_CONFIG=<it> docker compose ...`` runs it as the docker CLI's plugin."""
    return stack_dir() / "docker"


def install_compose() -> Path:
    """Build the Compose v2 CLI from its Go module into the stack's bin/ (first call only; later
    calls return at once) and link it as a docker CLI plugin under ``docker_config_dir()``.

    ``go install <module>/cmd@<version>`` refuses compose (its go.mod has exclude directives),
    so it is built from a main module of our own carrying compose's go.mod (the same versions
    and directives) under the stack's build/. A fresh build downloads ~200 MB of modules and
    compiles for 3-5 minutes on two cores; with Go's build cache warm it takes seconds.
    Concurrent callers wait for one build (a file lock)."""
    marker = stack_dir() / "bin" / f"docker-compose-{COMPOSE_VERSION}"
    if compose_bin().exists() and marker.exists():
        return compose_bin()
    (stack_dir() / "run").mkdir(parents=True, exist_ok=True)
    with open(stack_dir() / "run" / "compose-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if compose_bin().exists() and marker.exists():
            return compose_bin()
        go = _go()
        log(f"building docker compose {COMPOSE_VERSION} with the Go toolchain (first run only; minutes)")
        t0 = time.monotonic()
        build = stack_dir() / "build" / "compose"
        build.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GOWORK": "off", "GOFLAGS": "-buildvcs=false"}
        out = run([go, "mod", "download", "-json", f"{COMPOSE_MODULE}@{COMPOSE_VERSION}"], env=env, cwd=build,
                  capture_output=True)
        gomod = Path(json.loads(out.stdout)["GoMod"]).read_text()
        main_mod = re.sub(r"^module \S+$", "module paystream.local/compose-build", gomod, count=1, flags=re.M)
        (build / "go.mod").write_text(f"{main_mod}\nrequire {COMPOSE_MODULE} {COMPOSE_VERSION}\n")
        (stack_dir() / "bin").mkdir(parents=True, exist_ok=True)
        tmp = compose_bin().with_suffix(".tmp")
        run([go, "build", "-trimpath", "-o", str(tmp),
             "-ldflags", f"-s -w -X {COMPOSE_MODULE}/internal.Version={COMPOSE_VERSION}", f"{COMPOSE_MODULE}/cmd"],
            env={**env, "GOFLAGS": "-mod=mod -buildvcs=false"}, cwd=build)
        os.replace(tmp, compose_bin())
        plugins = docker_config_dir() / "cli-plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        link = plugins / "docker-compose"
        link.unlink(missing_ok=True)
        link.symlink_to(compose_bin())
        marker.write_text(COMPOSE_VERSION)
        log(f"docker compose {COMPOSE_VERSION} built in {time.monotonic() - t0:.0f}s: {compose_bin()}")
    return compose_bin()


# --------------------------------------------------------------------------- simulated gateway


def simgw_webhook_secret() -> str:
    """A per-stack random secret the simulated gateway signs its webhooks with."""
    path = stack_dir() / "secrets" / "simgw_webhook_secret"
    if not path.exists():
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("whsec_" + secrets.token_hex(24))
        path.chmod(0o600)
    return path.read_text().strip()


def encryption_keys_file() -> str:
    """A per-stack key file (one random AES-256 key) for tokens at rest; never a key in code."""
    path = stack_dir() / "secrets" / "encryption_keys"
    if not path.exists():
        from paystream.security.crypto import generate_key_entry

        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # created 0600 from the start; a concurrent creator wins
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(generate_key_entry(f"local{time.strftime('%Y%m%d')}") + "\n")
    return str(path)


def start_simgw() -> int:
    web_port = os.environ.get("PAYSTREAM_WEB_PORT", "6066")
    return spawn(
        "simgw",
        [
            sys.executable, "-m", "gateway_clients.simulated.server",
            "--host", "127.0.0.1", "--port", str(PORTS["simgw"]),
            "--webhook-url", f"http://127.0.0.1:{web_port}/webhooks/simulated",
            "--webhook-secret", simgw_webhook_secret(),
        ],
        env={"PYTHONPATH": str(REPO)},
    )


def simgw_healthy() -> bool:
    return http_ok(f"http://127.0.0.1:{PORTS['simgw']}/health")


SERVICES: dict[str, Service] = {
    s.name: s
    for s in [
        Service("postgres", install_postgres, start_postgres, postgres_healthy,
                f"127.0.0.1:{PORTS['postgres']}", stop=stop_postgres),
        Service("kafka", install_kafka, start_kafka, kafka_healthy, f"127.0.0.1:{PORTS['kafka']}"),
        Service("registry", install_registry, start_registry, registry_healthy, registry_url(), start_timeout=240),
        Service("stripe-mock", install_stripe_mock, start_stripe_mock, stripe_mock_healthy,
                f"http://127.0.0.1:{PORTS['stripe_mock']}"),
        Service("simgw", lambda: None, start_simgw, simgw_healthy, f"http://127.0.0.1:{PORTS['simgw']}"),
    ]
}


def up(names: list[str] | None = None) -> None:
    t0 = time.monotonic()
    stack_dir().mkdir(parents=True, exist_ok=True)
    for name in names or list(SERVICES):
        SERVICES[name].up()
    log(f"stack ready in {time.monotonic() - t0:.1f}s; data and logs under {stack_dir()}")


def down(names: list[str] | None = None) -> None:
    for name in reversed(names or list(SERVICES)):
        SERVICES[name].down()


def status() -> dict[str, str]:
    return {name: svc.status() for name, svc in SERVICES.items()}


def env_for_clients() -> dict[str, str]:
    """Settings that point paystream's processes at this stack."""
    return {
        "PAYSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{PORTS['kafka']}",
        "PAYSTREAM_SCHEMA_REGISTRY_URL": registry_url(),
        "PAYSTREAM_POSTGRES_DSN": postgres_dsn(),
        "PAYSTREAM_STRIPE_API_BASE": f"http://127.0.0.1:{PORTS['stripe_mock']}",
        "PAYSTREAM_SIMGW_URL": f"http://127.0.0.1:{PORTS['simgw']}",
        "PAYSTREAM_SIMGW_WEBHOOK_SECRETS": simgw_webhook_secret(),
        "PAYSTREAM_ENCRYPTION_KEYS_FILE": encryption_keys_file(),
    }
