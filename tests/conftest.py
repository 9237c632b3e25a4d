"""Shared fixtures. Integration tests run on the real local stack (`paystream stack up`,
which `make test` runs first); a worker and a sink run as subprocesses, as in production."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from paystream import stack  # noqa: E402
from tests.support.kafka_tools import Collector, OrderServiceProducer, create_cmd  # noqa: E402

# The whole-suite I6 scan (no card number in any topic, Postgres table or log file) runs after
# every other test, unit tests included, so it sees everything the suite wrote.
RUNS_LAST = "test_zz_i6_scan.py"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
    last = [item for item in items if Path(str(item.fspath)).name == RUNS_LAST]
    if last:
        items[:] = [item for item in items if item not in last] + last


API_KEY = os.environ.setdefault("PAYSTREAM_TEST_API_KEY", "itest-" + uuid.uuid4().hex)  # session worker key "itest"
# More keys of the session worker, by scope (tests/integration/test_web_edge.py): "itest" above has no
# scope list (admin, as keys configured before scopes); a read-only and a write key; a key bound to
# the customer BOUND_CUSTOMER.
# (in the environment like API_KEY: a test module importing tests.conftest runs it a second time)
API_KEY_READ = os.environ.setdefault("PAYSTREAM_TEST_API_KEY_READ", "itest-read-" + uuid.uuid4().hex)
API_KEY_WRITE = os.environ.setdefault("PAYSTREAM_TEST_API_KEY_WRITE", "itest-write-" + uuid.uuid4().hex)
API_KEY_BOUND = os.environ.setdefault("PAYSTREAM_TEST_API_KEY_BOUND", "itest-bound-" + uuid.uuid4().hex)
BOUND_CUSTOMER = os.environ.setdefault("PAYSTREAM_TEST_BOUND_CUSTOMER", "cus_bound_" + uuid.uuid4().hex[:8])


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


API_KEYS_SPEC = ",".join([f"itest:{_sha(API_KEY)}", f"itest-read:{_sha(API_KEY_READ)}:read",
                          f"itest-write:{_sha(API_KEY_WRITE)}:write",
                          f"itest-bound:{_sha(API_KEY_BOUND)}:read+write@{BOUND_CUSTOMER}"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def stack_env() -> dict[str, str]:
    """The live stack's addresses; brings it up if needed (idempotent)."""
    bad = {k: v for k, v in stack.status().items() if v != "healthy"}
    if bad:
        stack.up()
    return stack.env_for_clients()


class Proc:
    """A paystream process (worker or sink) started and stopped by the tests."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        out = open(self.log, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen([sys.executable, "-m", "paystream.cli", *self.args], env=self.env,
                                     stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Worker(Proc):
    def __init__(self, env: dict[str, str], log: Path, producer: OrderServiceProducer, web_port: int) -> None:
        super().__init__(["worker", "--loglevel", "warn"], env, log)
        self.producer = producer
        self.web_port = web_port

    def wait_ready(self, timeout: float = 180) -> float:
        """Ready means: a probe payment sent now gets its terminal event."""
        t0 = time.monotonic()
        env = self.env
        col = Collector(env["PAYSTREAM_KAFKA_BOOTSTRAP"], env["PAYSTREAM_SCHEMA_REGISTRY_URL"])
        try:
            pid = f"probe-{uuid.uuid4().hex[:10]}"
            cmd = self.producer.send(create_cmd(pid))
            self.producer.flush()
            ok = col.wait_terminal({pid: {cmd["command_id"]}}, timeout)
        finally:
            col.close()
        if not ok or not self.alive:
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"worker not ready after {timeout}s\n{tail}")
        return time.monotonic() - t0


def worker_env(stack_env: dict[str, str], datadir: Path, web_port: int) -> dict[str, str]:
    """The environment of a test worker (the session's, or one of several a test starts itself):
    the stack's addresses, the test API keys, its own data folder and web port."""
    return {**os.environ, **stack_env, "PAYSTREAM_DATADIR": str(datadir), "PAYSTREAM_WEB_PORT": str(web_port),
            "PAYSTREAM_API_KEYS": API_KEYS_SPEC, "PYTHONUNBUFFERED": "1",
            "PAYSTREAM_GATEWAY_TIMEOUT_S": "5",
            # Routing as config/routing.yaml plus one rule for test_gateway_routing.py; a short breaker
            # cool-down so a circuit that test opens is closed again before the next test.
            "PAYSTREAM_ROUTING_RULES_FILE": str(ROOT / "tests" / "integration" / "fixtures" / "routing-rules.yaml"),
            "PAYSTREAM_GATEWAY_BREAKER_COOLDOWN_S": "10"}


@pytest.fixture(scope="session")
def producer(stack_env: dict[str, str]) -> OrderServiceProducer:
    return OrderServiceProducer(stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"], stack_env["PAYSTREAM_SCHEMA_REGISTRY_URL"])


@pytest.fixture(scope="session")
def worker(stack_env: dict[str, str], producer: OrderServiceProducer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    tmp = tmp_path_factory.mktemp("worker")
    port = free_port()
    w = Worker(worker_env(stack_env, tmp / "data", port), tmp / "worker.log", producer, port)
    w.start()
    w.wait_ready()
    yield w
    w.stop()


@pytest.fixture(scope="session")
def sink(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("sink")
    env = {**os.environ, **stack_env, "PAYSTREAM_SINK_METRICS_PORT": str(free_port()), "PYTHONUNBUFFERED": "1"}
    s = Proc(["sink"], env, tmp / "sink.log")
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def vault_sink(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """``paystream customers sink``: the vault topic → payment_methods, customer_gateway_tokens."""
    tmp = tmp_path_factory.mktemp("vault")
    p = Proc(["customers", "sink"], {**os.environ, **stack_env, "PYTHONUNBUFFERED": "1"}, tmp / "vault.log")
    p.start()
    yield p
    p.stop()


@pytest.fixture(scope="session")
def audit_sink(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """``paystream audit sink``: the audit topic → audit_log (one hash chain)."""
    tmp = tmp_path_factory.mktemp("audit")
    p = Proc(["audit", "sink"], {**os.environ, **stack_env, "PYTHONUNBUFFERED": "1"}, tmp / "audit.log")
    p.start()
    yield p
    p.stop()


@pytest.fixture
def collector(stack_env: dict[str, str]) -> Iterator[Collector]:
    c = Collector(stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"], stack_env["PAYSTREAM_SCHEMA_REGISTRY_URL"])
    yield c
    c.close()


@pytest.fixture(scope="session")
def pg_dsn(stack_env: dict[str, str]) -> str:
    return stack_env["PAYSTREAM_POSTGRES_DSN"]
