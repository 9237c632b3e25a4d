"""Transport security of every connection paystream makes (PCI DSS 4.2.1, docs/security.md).

The settings (``PAYSTREAM_KAFKA_SECURITY_PROTOCOL`` & co) are read once into a
``KafkaConnection``; each client library gets its part of the configuration from ONE builder
here, so no call site writes a security key itself:

* ``KafkaConnection.librdkafka()``        confluent-kafka Producer / Consumer / AdminClient
* ``KafkaConnection.aiokafka()``          aiokafka clients (gateway executor, method directory,
                                          gap reader)
* ``KafkaConnection.faust_credentials()`` the faust app's ``broker_credentials``
* ``registry_conf()``                     confluent-kafka's SchemaRegistryClient (https + CA)
* ``postgres_conninfo()``                 libpq/psycopg: sslmode, sslrootcert, client certificate
* ``web_server_ssl_context()`` / ``web_client_ssl_context()``  HTTPS of the worker's web edge
  and the edge's own requests to the other workers

Code that is handed a plain bootstrap string (tests, the local stack) gets a PLAINTEXT
connection: ``as_kafka("host:port")``.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias, get_args

from pydantic import SecretStr

KafkaSecurityProtocol: TypeAlias = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism: TypeAlias = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
PostgresSslMode: TypeAlias = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

SECURITY_PROTOCOLS: Final = frozenset(get_args(KafkaSecurityProtocol))
SASL_MECHANISMS: Final = frozenset(get_args(KafkaSaslMechanism))


class TransportConfigError(ValueError):
    """A combination of transport settings that cannot work (named in the message)."""


@dataclass(frozen=True)
class KafkaConnection:
    """Where the brokers are and how to talk to them securely."""

    bootstrap: str
    security_protocol: KafkaSecurityProtocol = "PLAINTEXT"
    sasl_mechanism: KafkaSaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = field(default=None, repr=False)
    ssl_cafile: str | None = None  # None with SSL: the system's trust store
    ssl_certfile: str | None = None  # client certificate (mTLS), PEM
    ssl_keyfile: str | None = None  # its private key, PEM (unencrypted)
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        problems = kafka_problems(self)
        if problems:
            raise TransportConfigError("; ".join(problems))

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def _password(self) -> str:
        return self.sasl_password.get_secret_value() if self.sasl_password is not None else ""

    # ---------------------------------------------------------------- confluent-kafka

    def librdkafka(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A confluent-kafka (librdkafka) configuration: bootstrap, security, then ``extra``."""
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap,
                                "security.protocol": self.security_protocol.lower()}
        if self.uses_sasl:
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = self._password()
        if self.uses_ssl:
            if self.ssl_cafile:
                conf["ssl.ca.location"] = self.ssl_cafile
            if self.ssl_certfile:
                conf["ssl.certificate.location"] = self.ssl_certfile
                conf["ssl.key.location"] = self.ssl_keyfile
            conf["ssl.endpoint.identification.algorithm"] = "https" if self.ssl_check_hostname else "none"
        overlap = set(conf) & set(extra or {}) - {"bootstrap.servers"}
        if overlap:
            raise TransportConfigError(f"transport keys must come from the settings, not the call site: {overlap}")
        conf.update(extra or {})
        return conf

    # ---------------------------------------------------------------- aiokafka and faust

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client-side TLS context (CA, client certificate, hostname check); None without SSL."""
        if not self.uses_ssl:
            return None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ssl_cafile)
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        if not self.ssl_check_hostname:
            context.check_hostname = False  # the certificate chain is still verified
        return context

    def aiokafka(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaConsumer / AIOKafkaProducer (bootstrap and security)."""
        kwargs: dict[str, Any] = {"bootstrap_servers": self.bootstrap, "security_protocol": self.security_protocol}
        if self.uses_sasl:
            kwargs.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                          sasl_plain_password=self._password())
        if self.uses_ssl:
            kwargs["ssl_context"] = self.ssl_context()
        return kwargs

    def faust_credentials(self) -> Any:
        """faust's ``broker_credentials`` (None for PLAINTEXT); faust hands them to aiokafka."""
        import faust

        if self.uses_sasl:
            return faust.SASLCredentials(username=self.sasl_username, password=self._password(),
                                         ssl_context=self.ssl_context(), mechanism=self.sasl_mechanism)
        if self.uses_ssl:
            return faust.SSLCredentials(self.ssl_context())
        return None


KafkaTarget: TypeAlias = str | KafkaConnection


def as_kafka(target: KafkaTarget) -> KafkaConnection:
    """A ``KafkaConnection`` as it is, a bare bootstrap string as PLAINTEXT (local stack, tests)."""
    return target if isinstance(target, KafkaConnection) else KafkaConnection(bootstrap=target)


def kafka_problems(c: KafkaConnection) -> list[str]:
    """What is wrong with a combination of Kafka transport settings (empty: nothing)."""
    problems: list[str] = []
    if c.security_protocol not in SECURITY_PROTOCOLS:
        problems.append(f"kafka_security_protocol must be one of {sorted(SECURITY_PROTOCOLS)}, "
                        f"not {c.security_protocol!r}")
        return problems
    if c.uses_sasl:
        if c.sasl_mechanism is None:
            problems.append(f"kafka_security_protocol={c.security_protocol} needs kafka_sasl_mechanism "
                            f"({', '.join(sorted(SASL_MECHANISMS))})")
        elif c.sasl_mechanism not in SASL_MECHANISMS:
            problems.append(f"kafka_sasl_mechanism must be one of {sorted(SASL_MECHANISMS)}, not {c.sasl_mechanism!r}")
        if not c.sasl_username:
            problems.append(f"kafka_security_protocol={c.security_protocol} needs kafka_sasl_username")
        if c.sasl_password is None or not c.sasl_password.get_secret_value():
            problems.append(f"kafka_security_protocol={c.security_protocol} needs kafka_sasl_password "
                            "(or kafka_sasl_password_file)")
    elif c.sasl_mechanism or c.sasl_username or c.sasl_password is not None:
        problems.append(f"kafka_sasl_* settings are set but kafka_security_protocol={c.security_protocol} does not "
                        "use SASL (SASL_PLAINTEXT or SASL_SSL)")
    ssl_files = [name for name, value in (("kafka_ssl_cafile", c.ssl_cafile), ("kafka_ssl_certfile", c.ssl_certfile),
                                          ("kafka_ssl_keyfile", c.ssl_keyfile)) if value]
    if ssl_files and not c.uses_ssl:
        problems.append(f"{', '.join(ssl_files)} set but kafka_security_protocol={c.security_protocol} does not use "
                        "TLS (SSL or SASL_SSL)")
    if bool(c.ssl_certfile) != bool(c.ssl_keyfile):
        problems.append("kafka_ssl_certfile and kafka_ssl_keyfile go together (client certificate and its key)")
    return problems


# -------------------------------------------------------------------- schema registry


def registry_conf(url: str, *, cafile: str | None = None, certfile: str | None = None,
                  keyfile: str | None = None) -> dict[str, Any]:
    """The TLS part of a SchemaRegistryClient configuration, with ``url``."""
    if (certfile or keyfile) and not (certfile and keyfile):
        raise TransportConfigError("schema_registry_ssl_certfile and schema_registry_ssl_keyfile go together")
    if (cafile or certfile) and not url.startswith("https://"):
        raise TransportConfigError("schema registry TLS files are set but schema_registry_url is not https://")
    conf: dict[str, Any] = {"url": url}
    if cafile:
        conf["ssl.ca.location"] = cafile
    if certfile:
        conf["ssl.certificate.location"] = certfile
        conf["ssl.key.location"] = keyfile
    return conf


# -------------------------------------------------------------------- Postgres


def postgres_conninfo(dsn: str, *, sslmode: str | None = None, sslrootcert: str | None = None,
                      sslcert: str | None = None, sslkey: str | None = None) -> str:
    """``dsn`` with the TLS parameters merged in (unchanged when none is given).

    A parameter given both in the DSN and as a setting must agree: two sources that disagree
    about TLS are a configuration error, not something to choose between silently."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    wanted = {k: v for k, v in (("sslmode", sslmode), ("sslrootcert", sslrootcert), ("sslcert", sslcert),
                                ("sslkey", sslkey)) if v}
    if not wanted:
        return dsn
    if bool(sslcert) != bool(sslkey):
        raise TransportConfigError("postgres_sslcert and postgres_sslkey go together (client certificate and its key)")
    try:
        present = conninfo_to_dict(dsn)
    except Exception as exc:  # psycopg.ProgrammingError: never echo the DSN, it may hold a password
        raise TransportConfigError(f"postgres_dsn cannot be parsed ({type(exc).__name__})") from None
    clash = sorted(k for k, v in wanted.items() if k in present and str(present[k]) != v)
    if clash:
        raise TransportConfigError(f"postgres_dsn and the postgres_{clash[0]} setting disagree about {clash}")
    mode = wanted.get("sslmode", present.get("sslmode"))
    if mode in ("disable", "allow", "prefer") and ("sslrootcert" in wanted or "sslcert" in wanted):
        raise TransportConfigError(f"postgres TLS files set but sslmode={mode} does not verify the server; "
                                   "use verify-full (or verify-ca, require)")
    return make_conninfo(dsn, **wanted)


# -------------------------------------------------------------------- the web edge


def web_server_ssl_context(certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
    """The HTTPS context of the worker's web server (None: plain HTTP)."""
    if not certfile and not keyfile:
        return None
    if not (certfile and keyfile):
        raise TransportConfigError("web_ssl_certfile and web_ssl_keyfile go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    return context


def web_client_ssl_context(cafile: str | None) -> ssl.SSLContext:
    """How a worker's edge verifies another worker it forwards a request to (system CAs + ``cafile``)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if cafile:
        context.load_verify_locations(cafile)
    return context
