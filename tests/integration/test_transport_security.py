"""Transport security (#7, PCI DSS 4.2.1) on real servers started by the tests:

* a PostgreSQL cluster with ``ssl = on`` (certificate of a throwaway CA): paystream's DSN with
  ``postgres_sslmode=verify-full`` + ``postgres_sslrootcert`` connects over TLS, the same with
  another CA is refused;
* a Kafka broker (the stack's jars) whose only client listener is SASL_SSL, with a PLAIN and a
  SCRAM-SHA-256 user: confluent-kafka and aiokafka clients built from paystream's settings
  produce and consume; a wrong password and a wrong CA are refused;
* a whole worker (the faust app, its aiokafka gateway executor, the confluent-kafka topic admin)
  on that broker, serving its edge over HTTPS, and the event sink writing to the TLS Postgres:
  one payment goes through every hop encrypted.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient
from pydantic import SecretStr

from paystream.client import CommandProducer, EventReader, create_payment, event_type
from paystream.config import Settings
from paystream.transport import KafkaConnection
from sinks.migrate import migrate
from streams.app import _https_client
from tests.conftest import Proc
from tests.support.tls import (
    PLAIN_PASSWORD,
    PLAIN_USER,
    SCRAM_PASSWORD,
    SCRAM_USER,
    Pki,
    SaslKafka,
    TlsPostgres,
    free_port,
    make_pki,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Debian's postgres binaries and the stack's Kafka")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_pg(pki: Pki, stack_env: dict[str, str]) -> Iterator[TlsPostgres]:
    pg = TlsPostgres(pki)
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="module")
def sasl_kafka(pki: Pki, stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslKafka]:
    kafka = SaslKafka(pki, tmp_path_factory.mktemp("sasl-kafka"))
    try:
        kafka.start()
        yield kafka
    finally:
        kafka.stop()


def sasl_env(kafka: SaslKafka, pki: Pki, mechanism: str = "PLAIN", user: str = PLAIN_USER,
             password: str = PLAIN_PASSWORD) -> dict[str, str]:
    return {"PAYSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap, "PAYSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "PAYSTREAM_KAFKA_SASL_MECHANISM": mechanism, "PAYSTREAM_KAFKA_SASL_USERNAME": user,
            "PAYSTREAM_KAFKA_SASL_PASSWORD": password, "PAYSTREAM_KAFKA_SSL_CAFILE": str(pki.ca)}


def settings_from(env: dict[str, str]) -> Settings:
    """Settings exactly as a process with ``env`` reads them (pydantic-settings from the environment)."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return Settings()  # type: ignore[call-arg]
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------------------------- Postgres


def test_postgres_verify_full_connects_over_tls(tls_pg: TlsPostgres, pki: Pki) -> None:
    s = Settings(postgres_dsn=tls_pg.dsn(), postgres_sslmode="verify-full", postgres_sslrootcert=str(pki.ca))
    assert "sslmode=verify-full" in s.postgres_dsn
    applied = migrate(s.postgres_dsn)  # the sinks' migrations, through the merged DSN
    assert applied, "a fresh database gets every migration"
    with psycopg.connect(s.postgres_dsn) as conn:
        row = conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row is not None and row[0] is True and row[1].startswith("TLSv1.")


def test_postgres_verify_full_refuses_a_server_certificate_of_another_ca(tls_pg: TlsPostgres, pki: Pki) -> None:
    s = Settings(postgres_dsn=tls_pg.dsn(), postgres_sslmode="verify-full", postgres_sslrootcert=str(pki.wrong_ca))
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(s.postgres_dsn, connect_timeout=10)


def test_postgres_sslmode_require_refuses_a_server_without_tls(stack_env: dict[str, str]) -> None:
    # The stack's own Postgres has no TLS: a DSN that demands it must not fall back to plaintext.
    s = Settings(postgres_dsn=stack_env["PAYSTREAM_POSTGRES_DSN"], postgres_sslmode="require")
    with pytest.raises(psycopg.OperationalError, match=r"(?i)ssl"):
        psycopg.connect(s.postgres_dsn, connect_timeout=10)


# ------------------------------------------------------------------------------- Kafka


@pytest.mark.parametrize(("mechanism", "user", "password"), [("PLAIN", PLAIN_USER, PLAIN_PASSWORD),
                                                             ("SCRAM-SHA-256", SCRAM_USER, SCRAM_PASSWORD)])
def test_kafka_sasl_ssl_confluent_and_aiokafka_clients_round_trip(sasl_kafka: SaslKafka, pki: Pki, mechanism: str,
                                                                  user: str, password: str) -> None:
    kafka = settings_from(sasl_env(sasl_kafka, pki, mechanism, user, password)).kafka_connection()
    topic = f"tls-{mechanism.lower()}-{uuid.uuid4().hex[:8]}"
    producer = Producer(kafka.librdkafka({"enable.idempotence": True}))
    producer.produce(topic, key=b"k", value=b"from confluent-kafka")
    assert producer.flush(30) == 0
    del producer

    async def aiokafka_round_trip() -> list[bytes]:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        aproducer = AIOKafkaProducer(**kafka.aiokafka())
        await aproducer.start()
        try:
            await aproducer.send_and_wait(topic, b"from aiokafka", key=b"k")
        finally:
            await aproducer.stop()
        consumer = AIOKafkaConsumer(topic, **kafka.aiokafka(), group_id=None, auto_offset_reset="earliest")
        await consumer.start()
        try:
            got: list[bytes] = []
            deadline = time.monotonic() + 30
            while len(got) < 2 and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    got += [r.value for r in records if r.value is not None]
            return got
        finally:
            await consumer.stop()

    assert sorted(asyncio.run(aiokafka_round_trip())) == [b"from aiokafka", b"from confluent-kafka"]

    consumer = Consumer(kafka.librdkafka({"group.id": f"tls-{uuid.uuid4()}", "auto.offset.reset": "earliest"}))
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(values) < 2 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            values.append(msg.value())
    consumer.close()
    assert sorted(values) == [b"from aiokafka", b"from confluent-kafka"]


def test_kafka_wrong_password_is_refused(sasl_kafka: SaslKafka, pki: Pki) -> None:
    kafka = KafkaConnection(sasl_kafka.bootstrap, "SASL_SSL", "PLAIN", PLAIN_USER, SecretStr("not-the-password"),
                            ssl_cafile=str(pki.ca))
    errors: list[KafkaError] = []
    admin = AdminClient(kafka.librdkafka({"error_cb": errors.append}))
    with pytest.raises(Exception):  # noqa: B017 - KafkaException: no metadata without authentication
        admin.list_topics(timeout=10)
    admin.poll(2)  # error_cb is served from poll
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors

    async def aiokafka_start() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(**kafka.aiokafka())
        try:
            await producer.start()
        finally:
            await producer.stop()

    from aiokafka.errors import KafkaError as AioKafkaError

    with pytest.raises(AioKafkaError):
        asyncio.run(aiokafka_start())


def test_kafka_broker_certificate_of_another_ca_is_refused(sasl_kafka: SaslKafka, pki: Pki) -> None:
    kafka = KafkaConnection(sasl_kafka.bootstrap, "SASL_SSL", "PLAIN", PLAIN_USER, SecretStr(PLAIN_PASSWORD),
                            ssl_cafile=str(pki.wrong_ca))
    errors: list[KafkaError] = []
    admin = AdminClient(kafka.librdkafka({"error_cb": errors.append}))
    with pytest.raises(Exception):  # noqa: B017 - KafkaException: no metadata without a verified broker
        admin.list_topics(timeout=10)
    admin.poll(2)
    assert any(e.code() == KafkaError._SSL or "certificate verify failed" in e.str() for e in errors), errors


# ------------------------------------------------------------------------------- the whole path


def _ca_context(cafile: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cafile))


def _wait_https_health(url: str, cafile: Path, worker: Proc, timeout: float = 180) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not worker.alive:
            raise RuntimeError("worker exited:\n" + worker.log.read_text(errors="replace")[-3000:])
        try:
            response = httpx.get(url, verify=_ca_context(cafile), timeout=5)
            if response.status_code == 200:
                return response
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError("worker's HTTPS /health never answered:\n" + worker.log.read_text(errors="replace")[-3000:])


def test_a_payment_over_sasl_ssl_kafka_https_edge_and_verify_full_postgres(
        sasl_kafka: SaslKafka, tls_pg: TlsPostgres, pki: Pki, stack_env: dict[str, str],
        tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, **stack_env, **sasl_env(sasl_kafka, pki),
           "PAYSTREAM_POSTGRES_DSN": tls_pg.dsn(), "PAYSTREAM_POSTGRES_SSLMODE": "verify-full",
           "PAYSTREAM_POSTGRES_SSLROOTCERT": str(pki.ca),
           "PAYSTREAM_WEB_PORT": str(port), "PAYSTREAM_WEB_SSL_CERTFILE": str(pki.cert),
           "PAYSTREAM_WEB_SSL_KEYFILE": str(pki.key), "PAYSTREAM_WEB_SSL_CAFILE": str(pki.ca),
           "PAYSTREAM_DATADIR": str(tmp_path / "data"), "PAYSTREAM_SINK_METRICS_PORT": str(free_port()),
           "PYTHONUNBUFFERED": "1"}
    worker = Proc(["worker", "--loglevel", "warn"], env, tmp_path / "worker.log")
    sink = Proc(["sink"], env, tmp_path / "sink.log")
    worker.start()
    try:
        health = _wait_https_health(f"https://127.0.0.1:{port}/health", pki.ca, worker)
        assert health.status_code == 200
        # Plain HTTP on the same port: no answer (the server speaks TLS only).
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        # A client that does not trust the edge's CA refuses it.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"https://127.0.0.1:{port}/health", verify=_ca_context(pki.wrong_ca), timeout=5)

        settings = settings_from({k: v for k, v in env.items() if k.startswith("PAYSTREAM_")})

        async def through_the_edges_own_client() -> int:
            # the client a worker forwards requests to the owner of a key with (HttpClient)
            async with _https_client(settings) as session, session.get(f"https://127.0.0.1:{port}/health") as r:
                return r.status

        assert asyncio.run(through_the_edges_own_client()) == 200
        migrate(settings.postgres_dsn)
        sink.start()
        payment_id = f"tls-{uuid.uuid4().hex[:10]}"
        producer = CommandProducer(settings)  # confluent-kafka over SASL_SSL
        producer.send(create_payment(payment_id, amount=4321, currency="EUR", token="tok_visa"))
        producer.flush()
        reader = EventReader(settings)
        seen: list[str] = []
        deadline = time.monotonic() + 120
        try:
            while "PaymentSucceeded" not in seen and time.monotonic() < deadline:
                seen += [event_type(v) for v in reader.poll() if v["payment_id"] == payment_id]
        finally:
            reader.close()
        assert "PaymentSucceeded" in seen, (seen, worker.log.read_text(errors="replace")[-3000:])

        row: Any = None
        deadline = time.monotonic() + 60
        while row is None and time.monotonic() < deadline:
            with psycopg.connect(settings.postgres_dsn) as conn:
                row = conn.execute("SELECT status, amount, currency FROM payments WHERE payment_id = %s",
                                   (payment_id,)).fetchone()
            time.sleep(0.5)
        assert row == ("succeeded", 4321, "EUR"), (row, sink.log.read_text(errors="replace")[-3000:])
    finally:
        sink.stop()
        worker.stop()
