"""What the benchmark does to the local stack: clean topics and tables before each session,
start and stop the processes it measures (workers, sinks, a simulated gateway), and read the
machine's facts.

The benchmark owns the stack it runs on while it runs: it deletes and recreates the payment
topics and truncates the sink's tables, so each session starts empty. Run it on a stack of its
own (``eval "$(stack/isolated-env.sh N)"``) when anything else uses the default one.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from paystream.config import Settings
from streams import topics

ROOT = Path(__file__).resolve().parent.parent
KEEP_TABLES = ("schema_migrations",)
BENCH_TOPIC_PREFIX = "bench"  # app ids and the baseline's own topics start with it


class BenchError(RuntimeError):
    """The benchmark could not set up or observe what it measures."""


# ------------------------------------------------------------------ Kafka and Postgres


def admin(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.kafka_bootstrap})


def _wait_gone(adm: AdminClient, names: set[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not names & set(adm.list_topics(timeout=10).topics):
            return
        time.sleep(0.2)
    raise BenchError(f"topics not deleted in {timeout:.0f}s: {sorted(names)}")


def delete_topics(settings: Settings, names: Iterable[str]) -> list[str]:
    adm = admin(settings)
    existing = set(adm.list_topics(timeout=10).topics)
    doomed = sorted(set(names) & existing)
    if doomed:
        for name, fut in adm.delete_topics(doomed, operation_timeout=30).items():
            try:
                fut.result()
            except Exception as exc:
                if "UNKNOWN_TOPIC" not in str(exc):
                    raise BenchError(f"could not delete {name}: {exc}") from exc
        _wait_gone(adm, set(doomed))
    return doomed


def create_topics(settings: Settings, names: Iterable[str], partitions: int) -> None:
    adm = admin(settings)
    wanted = [n for n in names if n not in adm.list_topics(timeout=10).topics]
    if not wanted:
        return
    for name, fut in adm.create_topics([NewTopic(n, partitions, 1) for n in wanted], request_timeout=30).items():
        try:
            fut.result()
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise BenchError(f"could not create {name}: {exc}") from exc
    wait_leaders(settings, wanted)


def reset_kafka(settings: Settings, app_id: str) -> list[str]:
    """Delete the public payment topics and every topic an earlier benchmark app left
    (changelogs, internal topics), then create the topics of ``app_id``: the session's worker
    reads ``payment.requests`` from offset 0 and finds only what this session sends.

    The stack's own app (``settings.app_id``, e.g. the demo's and the tests' worker) loses its
    changelogs and internal topics too: they describe the deleted topics (its applied-offsets
    table remembered offsets the recreated ``payment.requests`` would not reach for a long time,
    so that worker skipped every new command as already applied)."""
    existing = set(admin(settings).list_topics(timeout=10).topics)
    public = {topics.REQUESTS, topics.WEBHOOKS, topics.EVENTS, topics.DEADLETTER}
    leftovers = {t for t in existing
                 if t.startswith(BENCH_TOPIC_PREFIX) or t.startswith(f"{settings.app_id}-")}
    deleted = delete_topics(settings, public | leftovers)
    # The broker may still be tidying the deleted partitions: retry creation briefly.
    deadline = time.monotonic() + 30
    while True:
        try:
            topics.ensure_topics(settings.kafka_bootstrap, app_id, settings.partitions,
                                  settings=settings.topic_settings())
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    wait_leaders(settings, topics.all_topics(app_id))
    return deleted


def hand_back(settings: Settings) -> list[str]:
    """Leave the stack as a fresh one for its own app (``make demo``, the tests): the payment topics
    recreated empty, the benchmark's topics gone, the sink's tables empty, and the consumer groups
    of the stack's app and of the benchmark's sessions deleted. Without it the next demo worker
    read the benchmark's last commands first (tens of thousands) before the demo's own.
    Returns the groups it could not delete (one with live members)."""
    reset_kafka(settings, settings.app_id)
    truncate_sink_tables(settings)
    adm = admin(settings)
    mine = (settings.app_id, BENCH_TOPIC_PREFIX, settings.sink_group, settings.vault_sink_group,
            settings.audit_sink_group)
    groups = [g.group_id for g in adm.list_consumer_groups(request_timeout=10).result().valid
              if g.group_id.startswith(mine)]
    busy: list[str] = []
    if groups:
        for group, fut in adm.delete_consumer_groups(groups, request_timeout=30).items():
            try:
                fut.result()
            except Exception:
                busy.append(group)
    return busy


def wait_leaders(settings: Settings, names: Iterable[str], timeout: float = 60.0) -> None:
    """Until every partition of ``names`` has a leader that answers (a freshly created topic
    answers NOT_LEADER_FOR_PARTITION for a moment)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "bench-leaders"})
    deadline = time.monotonic() + timeout
    try:
        for name in names:
            while True:
                try:
                    md = consumer.list_topics(name, timeout=10).topics[name]
                    if md.error is None and md.partitions:
                        for p in md.partitions:
                            consumer.get_watermark_offsets(TopicPartition(name, p), timeout=5)
                        break
                except Exception:
                    pass
                if time.monotonic() > deadline:
                    raise BenchError(f"topic {name} has no leader after {timeout:.0f}s")
                time.sleep(0.2)
    finally:
        consumer.close()


def prepare_stack(settings: Settings) -> None:
    """Schemas and migrations as the working tree has them (both idempotent)."""
    from sinks.migrate import migrate
    from streams.avro import register_schemas, registry_client

    register_schemas(registry_client(settings.schema_registry_url))
    migrate(settings.postgres_dsn)


def truncate_sink_tables(settings: Settings) -> None:
    """Empty every table the sink writes (all but the migrations' bookkeeping)."""
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'") if r[0] not in KEEP_TABLES]
        if names:
            conn.execute(f"TRUNCATE {', '.join(sorted(names))}")


# ------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Proc:
    """A process the benchmark started (and alone stops, by its pid)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.time)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 45.0) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system, all threads) the process has used so far; None when unknown.
        Per payment, it does not depend on what else the machine ran meanwhile, as rates do."""
        try:
            text = Path(f"/proc/{self.popen.pid}/stat").read_text()
        except OSError:
            return None
        fields = text[text.rfind(")") + 2:].split()  # after "pid (comm) ": state is field 3
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14, 15

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class ProcGroup:
    """Several processes measured as one (the workers of one app): alive while all are, CPU summed."""

    name: str
    procs: list[Proc]

    def alive(self) -> bool:
        return all(p.alive() for p in self.procs)

    def stop(self, timeout: float = 45.0) -> None:
        for p in self.procs:
            p.stop(timeout)

    def cpu_seconds(self) -> float | None:
        values = [p.cpu_seconds() for p in self.procs]
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)

    def tail(self, lines: int = 15) -> str:
        return "\n".join(f"[{p.name}]\n{p.tail(lines)}" for p in self.procs)


def spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    out = open(log, "ab")  # noqa: SIM115 - owned by the child
    popen = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                             start_new_session=True)
    out.close()
    return Proc(name, popen, log)


def paystream_env(base: dict[str, str], **overrides: str) -> dict[str, str]:
    env = {**base, "PYTHONUNBUFFERED": "1"}
    env.update({f"PAYSTREAM_{k.upper()}": v for k, v in overrides.items()})
    return env


def start_worker(name: str, env: dict[str, str], log_dir: Path, loglevel: str = "warn") -> Proc:
    if env.get("PAYSTREAM_DATADIR"):
        Path(env["PAYSTREAM_DATADIR"]).parent.mkdir(parents=True, exist_ok=True)  # faust makes one level only
    return spawn(name, ["-m", "paystream.cli", "worker", "--loglevel", loglevel], env, log_dir)


def start_executor(name: str, env: dict[str, str], log_dir: Path) -> Proc:
    """A gateway executor on its own (``paystream gateway-executor``), for workers started with
    ``PAYSTREAM_GATEWAY_EXECUTOR_IN_WORKER=false``."""
    return spawn(name, ["-m", "paystream.cli", "gateway-executor"], env, log_dir)


def start_textbook(name: str, env: dict[str, str], log_dir: Path, loglevel: str = "info") -> Proc:
    """The textbook faust agent (bench/textbook.py), the benchmark's second baseline.

    At ``info``, as faust's own examples run a worker: at ``warn`` or above (and without
    ``--quiet``) faust's terminal spinner puts the root logger at DEBUG, so every aiokafka
    debug line becomes a log record (a third of the agent's CPU in a py-spy profile)."""
    if env.get("PAYSTREAM_DATADIR"):
        Path(env["PAYSTREAM_DATADIR"]).parent.mkdir(parents=True, exist_ok=True)
    return spawn(name, ["-m", "bench.textbook", "worker", "--loglevel", loglevel], env, log_dir)


def wait_ready(port: int, proc: Proc, timeout: float) -> float | None:
    """Poll the worker's ``/ready`` (200 once partitions are assigned and table recovery is
    complete); wall-clock time it first answered 200, None if it never did."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/ready"
    while time.monotonic() < deadline and proc.alive():
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return time.time()
        time.sleep(0.2)
    return None


def start_sink(name: str, env: dict[str, str], log_dir: Path) -> Proc:
    return spawn(name, ["-m", "paystream.cli", "sink"], env, log_dir)


def start_simgw(port: int, latency_ms: float, jitter_ms: float, log_dir: Path) -> Proc:
    proc = spawn(f"simgw-{port}", [
        "-m", "gateway_clients.simulated.server", "--host", "127.0.0.1", "--port", str(port),
        "--latency-ms", str(latency_ms), "--jitter-ms", str(jitter_ms), "--no-amount-triggers",
        "--log-level", "WARNING",
    ], dict(os.environ), log_dir)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc
        if not proc.alive():
            break
        time.sleep(0.2)
    proc.stop()
    raise BenchError(f"simulated gateway on :{port} did not start:\n{proc.tail()}")


def set_simgw_latency(port: int, latency_ms: float, jitter_ms: float) -> None:
    resp = httpx.post(f"http://127.0.0.1:{port}/admin/faults",
                      json={"latency_mean_ms": latency_ms, "latency_jitter_ms": jitter_ms}, timeout=5)
    resp.raise_for_status()


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[list[Proc]]:
    """Stops every process of the list on the way out, including any appended inside."""
    started = list(procs)
    try:
        yield started
    finally:
        for p in reversed(started):
            p.stop()


def stack_data_dir() -> Path:
    from paystream.stack import stack_dir

    return stack_dir()


# ------------------------------------------------------------------ machine facts


def machine_facts() -> dict[str, object]:
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)
