"""The transport-security builders: the exact keys each client library gets per protocol, and
the combinations of settings that are refused (tests/integration/test_transport_security.py
proves them against a SASL_SSL broker, a TLS Postgres and the HTTPS edge)."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest
from pydantic import SecretStr, ValidationError

from paystream.config import Settings
from paystream.transport import (
    KafkaConnection,
    TransportConfigError,
    as_kafka,
    postgres_conninfo,
    registry_conf,
    web_server_ssl_context,
)
from streams.app import create_app
from tests.support.tls import make_pki

PW = SecretStr("s3cret")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_plaintext_is_the_default_and_a_bare_bootstrap_is_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAYSTREAM_KAFKA_BOOTSTRAP", raising=False)  # an isolated stack's address in the env
    assert as_kafka("h:9092").librdkafka() == {"bootstrap.servers": "h:9092", "security.protocol": "plaintext"}
    assert as_kafka("h:9092").aiokafka() == {"bootstrap_servers": "h:9092", "security_protocol": "PLAINTEXT"}
    assert as_kafka("h:9092").faust_credentials() is None
    assert Settings().kafka_connection() == KafkaConnection("127.0.0.1:19092")


def test_sasl_ssl_librdkafka_keys(pki) -> None:  # type: ignore[no-untyped-def]
    c = KafkaConnection("b:9093", "SASL_SSL", "SCRAM-SHA-512", "svc", PW, ssl_cafile=str(pki.ca))
    assert c.librdkafka({"group.id": "g"}) == {
        "bootstrap.servers": "b:9093", "security.protocol": "sasl_ssl", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc", "sasl.password": "s3cret", "ssl.ca.location": str(pki.ca),
        "ssl.endpoint.identification.algorithm": "https", "group.id": "g",
    }


def test_sasl_plaintext_has_no_tls_keys() -> None:
    conf = KafkaConnection("b:9092", "SASL_PLAINTEXT", "PLAIN", "svc", PW).librdkafka()
    assert conf == {"bootstrap.servers": "b:9092", "security.protocol": "sasl_plaintext", "sasl.mechanism": "PLAIN",
                    "sasl.username": "svc", "sasl.password": "s3cret"}


def test_mtls_keys_and_hostname_check_off(pki) -> None:  # type: ignore[no-untyped-def]
    c = KafkaConnection("b:9093", "SSL", ssl_cafile=str(pki.ca), ssl_certfile=str(pki.cert),
                        ssl_keyfile=str(pki.key), ssl_check_hostname=False)
    assert c.librdkafka() == {
        "bootstrap.servers": "b:9093", "security.protocol": "ssl", "ssl.ca.location": str(pki.ca),
        "ssl.certificate.location": str(pki.cert), "ssl.key.location": str(pki.key),
        "ssl.endpoint.identification.algorithm": "none",
    }
    kwargs = c.aiokafka()
    assert kwargs["security_protocol"] == "SSL" and isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert kwargs["ssl_context"].check_hostname is False
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED  # the chain is still verified
    creds = c.faust_credentials()
    assert isinstance(creds, faust.SSLCredentials) and creds.context.verify_mode == ssl.CERT_REQUIRED


def test_aiokafka_and_faust_sasl(pki) -> None:  # type: ignore[no-untyped-def]
    c = KafkaConnection("b:9093", "SASL_SSL", "SCRAM-SHA-256", "svc", PW, ssl_cafile=str(pki.ca))
    kwargs = c.aiokafka()
    assert {k: v for k, v in kwargs.items() if k != "ssl_context"} == {
        "bootstrap_servers": "b:9093", "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "svc", "sasl_plain_password": "s3cret"}
    assert kwargs["ssl_context"].check_hostname is True
    creds = c.faust_credentials()
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.protocol.value, creds.mechanism.value, creds.username, creds.password) == (
        "SASL_SSL", "SCRAM-SHA-256", "svc", "s3cret")
    plain = KafkaConnection("b:9092", "SASL_PLAINTEXT", "PLAIN", "svc", PW).faust_credentials()
    assert plain.protocol.value == "SASL_PLAINTEXT" and plain.ssl_context is None


def test_the_password_is_not_in_the_repr() -> None:
    assert "s3cret" not in repr(KafkaConnection("b:9092", "SASL_PLAINTEXT", "PLAIN", "svc", PW))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"security_protocol": "SASL_SSL", "sasl_username": "u", "sasl_password": PW}, "needs kafka_sasl_mechanism"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_password": PW},
     "needs kafka_sasl_username"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u"},
     "needs kafka_sasl_password"),
    ({"sasl_mechanism": "PLAIN"}, "does not use SASL"),
    ({"ssl_cafile": "/ca.pem"}, "does not use TLS"),
    ({"security_protocol": "SSL", "ssl_certfile": "/c.pem"}, "go together"),
    ({"security_protocol": "TLS"}, "must be one of"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI", "sasl_username": "u", "sasl_password": PW},
     "kafka_sasl_mechanism must be one of"),
])
def test_refused_kafka_combinations(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TransportConfigError, match=message):
        KafkaConnection("b:9092", **kwargs)  # type: ignore[arg-type]


def test_a_call_site_cannot_override_the_transport() -> None:
    with pytest.raises(TransportConfigError, match=r"security\.protocol"):
        as_kafka("b:9092").librdkafka({"security.protocol": "plaintext"})


def test_settings_refuse_sasl_without_mechanism_and_do_not_echo_the_password(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("PAYSTREAM_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("PAYSTREAM_KAFKA_SASL_PASSWORD", "hunter2-secret")
    with pytest.raises(ValidationError) as raised:
        Settings()  # type: ignore[call-arg]
    assert "needs kafka_sasl_mechanism" in str(raised.value)
    assert "hunter2-secret" not in str(raised.value)


def test_sasl_password_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text("from-the-file\n")
    monkeypatch.setenv("PAYSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("PAYSTREAM_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("PAYSTREAM_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("PAYSTREAM_KAFKA_SASL_PASSWORD_FILE", str(secret))
    conf = Settings().kafka_connection().librdkafka()  # type: ignore[call-arg]
    assert conf["sasl.password"] == "from-the-file" and conf["sasl.mechanism"] == "SCRAM-SHA-512"


def test_postgres_settings_are_merged_into_the_dsn() -> None:
    s = Settings(postgres_dsn="postgresql://app:pw@db.internal:5432/paystream", postgres_sslmode="verify-full",
                 postgres_sslrootcert="/etc/ssl/pg-ca.pem")
    from psycopg.conninfo import conninfo_to_dict

    assert conninfo_to_dict(s.postgres_dsn) == {
        "user": "app", "password": "pw", "host": "db.internal", "port": "5432", "dbname": "paystream",
        "sslmode": "verify-full", "sslrootcert": "/etc/ssl/pg-ca.pem"}
    untouched = "postgresql://postgres@127.0.0.1:15432/paystream?sslmode=verify-full"
    assert Settings(postgres_dsn=untouched).postgres_dsn == untouched


@pytest.mark.parametrize(("dsn", "kwargs", "message"), [
    ("postgresql://h/db?sslmode=require", {"sslmode": "verify-full"}, "disagree"),
    ("postgresql://h/db", {"sslmode": "prefer", "sslrootcert": "/ca.pem"}, "does not verify"),
    ("postgresql://h/db", {"sslmode": "verify-full", "sslcert": "/c.pem"}, "go together"),
])
def test_refused_postgres_combinations(dsn: str, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(TransportConfigError, match=message):
        postgres_conninfo(dsn, **kwargs)


def test_registry_tls_needs_https() -> None:
    assert registry_conf("https://r/apis/ccompat/v7", cafile="/ca.pem") == {
        "url": "https://r/apis/ccompat/v7", "ssl.ca.location": "/ca.pem"}
    with pytest.raises(TransportConfigError, match="not https"):
        registry_conf("http://r", cafile="/ca.pem")


def test_web_edge_https_settings(pki) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TransportConfigError, match="go together"):
        web_server_ssl_context(str(pki.cert), None)
    assert web_server_ssl_context(None, None) is None
    s = Settings(web_ssl_certfile=str(pki.cert), web_ssl_keyfile=str(pki.key), web_ssl_cafile=str(pki.ca),
                 web_port=7443)
    app = create_app(s)
    assert isinstance(app.conf.web_ssl_context, ssl.SSLContext)
    assert str(app.conf.canonical_url) == "https://127.0.0.1:7443"
    assert s.web_scheme == "https"
    plain = create_app(Settings())
    assert plain.conf.web_ssl_context is None and str(plain.conf.canonical_url).startswith("http://")


def test_the_faust_app_gets_the_broker_credentials(pki) -> None:  # type: ignore[no-untyped-def]
    s = Settings(kafka_bootstrap="b:9093", kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN",
                 kafka_sasl_username="svc", kafka_sasl_password=PW, kafka_ssl_cafile=str(pki.ca))
    app = create_app(s)
    creds = app.conf.broker_credentials
    assert isinstance(creds, faust.SASLCredentials) and creds.protocol.value == "SASL_SSL"
    assert str(app.conf.broker[0]) == "kafka://b:9093"
