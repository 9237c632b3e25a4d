"""paystream's settings: one pydantic-settings object, every field an environment variable.

Each field is read from ``PAYSTREAM_<NAME>`` (for example ``PAYSTREAM_KAFKA_BOOTSTRAP``).
Secrets are ``SecretStr`` so they never show up in a repr or a log line.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from paystream.transport import (
    KafkaConnection,
    KafkaSaslMechanism,
    KafkaSecurityProtocol,
    PostgresSslMode,
    TransportConfigError,
    postgres_conninfo,
    registry_conf,
    web_client_ssl_context,
    web_server_ssl_context,
)
from streams.topics import TopicSettings


class Settings(BaseSettings):
    # hide_input_in_errors: a validation error must not print the input (passwords, DSNs).
    model_config = SettingsConfigDict(env_prefix="PAYSTREAM_", extra="ignore", hide_input_in_errors=True)

    app_id: str = Field("paystream", description="faust app id: consumer group and prefix of internal topics")
    kafka_bootstrap: str = Field("127.0.0.1:19092", description="Kafka bootstrap servers")
    kafka_security_protocol: KafkaSecurityProtocol = Field(
        "PLAINTEXT", description="how every Kafka client (worker, sinks, CLI) talks to the brokers: PLAINTEXT, SSL "
        "(TLS), SASL_PLAINTEXT or SASL_SSL (TLS + SASL); production: SASL_SSL or SSL (docs/security.md)",
    )
    kafka_sasl_mechanism: KafkaSaslMechanism | None = Field(
        None, description="SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512); required with SASL_*"
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name; required with SASL_*")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (or kafka_sasl_password_file)")
    kafka_sasl_password_file: str | None = Field(
        None, description="file holding the SASL password (trailing newline ignored), e.g. a mounted secret"
    )
    kafka_ssl_cafile: str | None = Field(
        None, description="PEM file of the CA(s) that signed the brokers' certificates (default: the system's)"
    )
    kafka_ssl_certfile: str | None = Field(None, description="client certificate (PEM) for mutual TLS")
    kafka_ssl_keyfile: str | None = Field(None, description="private key (PEM, unencrypted) of kafka_ssl_certfile")
    kafka_ssl_check_hostname: bool = Field(
        True, description="check that a broker's certificate names the host connected to (keep on in production)"
    )
    schema_registry_url: str = Field(
        "http://127.0.0.1:18081/apis/ccompat/v7", description="Confluent-compatible schema registry URL"
    )
    schema_registry_ssl_cafile: str | None = Field(
        None, description="PEM file of the CA that signed an https:// registry's certificate (default: the system's)"
    )
    schema_registry_ssl_certfile: str | None = Field(None, description="client certificate (PEM) for the registry")
    schema_registry_ssl_keyfile: str | None = Field(None, description="private key of schema_registry_ssl_certfile")
    postgres_dsn: str = Field(
        "postgresql://postgres@127.0.0.1:15432/paystream",
        description="sink database (libpq URL or key=value); the postgres_ssl* settings are merged into it",
    )
    postgres_sslmode: PostgresSslMode | None = Field(
        None, description="libpq sslmode (production: verify-full); may also be given in the DSN"
    )
    postgres_sslrootcert: str | None = Field(
        None, description="PEM file of the CA that signed the server's certificate (for verify-ca/verify-full)"
    )
    postgres_sslcert: str | None = Field(None, description="client certificate (PEM) for certificate authentication")
    postgres_sslkey: str | None = Field(None, description="private key of postgres_sslcert (mode 0600)")
    partitions: int = Field(4, description="partitions of the payment topics (all co-partitioned)")
    topic_replication_factor: int = Field(
        1, ge=1, description="replication factor of the topics paystream creates (3 in production, 1 locally)"
    )
    topic_min_insync_replicas: int = Field(
        1, ge=1, description="min.insync.replicas of paystream's topics (2 with a replication factor of 3); "
        "at most the replication factor"
    )
    topic_records_retention_ms: int = Field(
        -1, ge=-1,
        description="retention.ms of the record topics (payment.events, gateway replies, audit, dead letters): the "
        "history `paystream db rebuild` replays; -1 keeps them indefinitely (docs/operations.md)",
    )
    topic_working_retention_ms: int = Field(
        7 * 24 * 3600 * 1000, ge=-1,
        description="retention.ms of the working topics (payment.requests, payment.webhooks, gateway calls)",
    )
    processing_guarantee: Literal["exactly_once", "at_least_once"] = "exactly_once"
    eos_transactions: Literal["partition", "worker"] = Field(
        "worker", description="exactly_once: one transactional producer per worker, fenced by the consumer group "
        "generation (KIP-447: TxnOffsetCommit v3; a third of the requests per commit; a worker killed outright "
        "leaves its open transaction to transaction_timeout_s), or one per input partition (faust's way: a "
        "partition's next owner fences a zombie by its transactional id). Never mix the two in one app: switch "
        "with all its workers stopped. streams/worker_transactions.py, docs/reliability.md")
    worker_id: str | None = Field(
        None, description="eos_transactions=worker: this worker's stable id, unique among live workers and kept "
        "across its restarts (a restart then aborts its predecessor's open transaction at once); default "
        "<hostname>-<web_port>")
    transaction_timeout_s: float = Field(
        10.0, gt=0, description="eos_transactions=worker: the broker aborts a transaction left open this long (a "
        "worker killed outright); read_committed readers of its partitions wait that long at most")
    consumer_in_loop: bool = Field(
        True, description="run faust's Kafka consumer in the worker's event loop instead of a thread of its own "
        "(no cross-thread hand-over per fetch and commit; its heartbeats then share the loop with the agent); "
        "false: faust's consumer thread. streams/inloop_consumer.py")
    event_loop: Literal["asyncio", "uvloop"] = Field(
        "uvloop", description="the worker's event loop: uvloop (libuv: the loop's own socket writes, polling, "
        "callbacks and futures in C; 5-9 % less worker CPU per payment in bursts) or asyncio's own")
    commit_interval_s: float = Field(0.1, description="how often the worker commits (EOS transactions)")
    commit_when_idle: bool = Field(
        True, description="EOS: also commit as soon as the payments agent has no input waiting (latency at low "
                          "load); under load only the commit interval applies")
    switch_interval_ms: float = Field(
        0.5, gt=0,
        description="the worker's Python thread switch interval (sys.setswitchinterval); CPython's 5 ms default "
        "made the event loop wait for the GIL behind faust's consumer thread after every socket write",
    )
    producer_linger_ms: int = Field(
        5, ge=0,
        description="how long the worker's producers wait to fill a batch: more records per produce request, "
        "far fewer socket writes; well below the commit interval, so it adds no visible latency under exactly_once",
    )
    gc_young_threshold: int = Field(
        20_000, ge=0, description="worker: allocations between two collections of the garbage collector's youngest "
        "generation (CPython's default: 700; 0 keeps it). A payment's short-lived objects then die before a "
        "collection instead of being promoted and walked again by the older generations: 12-14 % less CPU per "
        "payment in the benchmark (docs/performance.md, Session 8)")
    gc_freeze_interval_s: float = Field(
        10.0, ge=0, description="worker: how often live objects (table values) are moved out of the garbage "
        "collector's generations, so its full collections do not walk the tables (0: never)")
    gc_full_interval_s: float = Field(
        3600.0, gt=0, description="worker: how often everything is unfrozen and collected once (reclaims cyclic "
        "garbage frozen by chance)")
    store: str = Field("memory://", description="faust table store URL")
    datadir: str = Field(".stack/worker-data", description="faust data directory")
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    web_ssl_certfile: str | None = Field(
        None, description="certificate chain (PEM) of the worker's web edge: set with web_ssl_keyfile, the edge "
        "serves HTTPS only (TLS 1.2+)",
    )
    web_ssl_keyfile: str | None = Field(None, description="private key (PEM) of web_ssl_certfile")
    web_ssl_cafile: str | None = Field(
        None, description="CA (PEM) the edge trusts when it forwards a request to the worker that owns a key "
        "(besides the system's); the workers' certificates must name their web_host",
    )
    default_gateway: str = Field("simulated", description="gateway used when a command names none")
    simgw_url: str = Field("http://127.0.0.1:18090", description="simulated gateway base URL")
    simgw_in_process: bool = Field(False, description="use the simulated gateway in-process (benchmarks)")
    stripe_api_base: str = Field("http://127.0.0.1:12111", description="Stripe API base (stripe-mock locally)")
    stripe_api_key: SecretStr = SecretStr("sk_test_123")
    gateway_timeout_s: float = Field(10.0, description="after this a gateway call's outcome is unknown")
    gateway_batch_size: int = Field(256, description="gateway calls carried out concurrently per batch")
    gateway_max_in_flight: int = Field(
        256, ge=1, description="requests in flight to one gateway from one worker (inline calls and the executor "
        "together), at most what its client serves at once (the httpx pools of the Stripe, PayPal and Adyen "
        "clients: 100; a long queue inside httpx's pool costs quadratic CPU); the rest wait their turn in the "
        "worker. The simulated gateway's aiohttp pool holds this many connections. At 200 ms gateway latency it "
        "bounds one worker to 256 / 0.2 s = 1,280 calls/s (128: 640/s, and 525-578 payments/s in the benchmark "
        "against 692-717/s with 256)")
    gateway_executor_in_worker: bool = Field(
        True, description="run the gateway executor (the gateway-calls topic's consumer) inside each worker; false: "
        "run it as its own processes (`paystream gateway-executor`), so slow gateways' HTTP calls take another "
        "core's CPU and scale apart from the stateful payments agent")
    gateway_inline: bool = Field(
        True, description="the payments agent carries out the gateway calls its inputs decide in the same batch "
        "and transaction (concurrently, idempotency keys make a repeat safe); a call not answered within "
        "gateway_inline_wait_ms goes to the gateway-calls topic and the executor instead")
    gateway_inline_max_latency_ms: float = Field(
        20.0, ge=0, description="calls are made inline only to gateways whose recent typical latency is below "
        "this; a slower gateway's calls go to the executor at once, which pipelines them without holding the "
        "batch's commit (in-process and nearby gateways: inline; a 50-200 ms gateway: the executor)")
    gateway_inline_wait_ms: int = Field(
        500, ge=0, description="how long a batch of inputs waits for its inline gateway calls before handing the "
        "unanswered ones over to the executor (the batch's partitions do not commit meanwhile)")
    input_batch_max: int = Field(
        500, ge=1, description="the payments agent applies up to this many inputs already waiting as one batch: "
        "one applied-offset write per partition, gateway calls made concurrently (1: one input at a time)")
    gateway_retry_max_tries: int = Field(
        3, ge=1,
        description="tries of one gateway call under the same idempotency key while the gateway answers "
        "'nothing done, retry' (1: no retry); then the state machine decides (new attempt, failover or failed)",
    )
    gateway_retry_base_s: float = Field(
        0.2, ge=0, description="backoff before the n-th retry: uniformly random in [0, min(cap, base * 2^n)]"
    )
    gateway_retry_cap_s: float = Field(5.0, ge=0, description="upper bound of one backoff between retries")
    gateway_breaker_enabled: bool = Field(True, description="a circuit breaker per gateway in the gateway executor")
    gateway_breaker_failures: int = Field(
        10, ge=1, description="consecutive failed calls (5xx/429/not sent, timeouts) that open a gateway's circuit"
    )
    gateway_breaker_failure_rate: float = Field(
        0.5, gt=0, le=1,
        description="share of failed calls among the last gateway_breaker_window calls that opens the circuit",
    )
    gateway_breaker_window: int = Field(50, ge=1, description="calls the failure rate is computed over")
    gateway_breaker_cooldown_s: float = Field(
        30.0, ge=0, description="an open circuit lets one probe call through after this long (half-open)"
    )
    routing_rules_file: str | None = Field(
        None, description="gateway routing table (YAML or JSON, docs/routing.md); default config/routing.yaml"
    )
    gateways_disabled: str = Field(
        "", description="gateways switched off, comma-separated: routing skips them and no new authorization "
        "is sent to them (captures, refunds and reconciliation of their payments go on)"
    )
    fraud_enabled: bool = Field(
        False, description="hold every new payment for the streaming fraud check (docs/fraud.md) before its "
        "authorization; off: payments go straight to the gateway as before"
    )
    fraud_rules_file: str | None = Field(
        None, description="the active fraud rule set (YAML or JSON, docs/fraud.md); default config/fraud-rules.yaml"
    )
    fraud_candidate_rules_file: str | None = Field(
        None, description="a candidate fraud rule set evaluated in shadow mode (FraudDecision shadow=true, "
        "metrics mode=shadow); it never decides a payment"
    )
    fraud_verdict_timeout_s: float = Field(
        30.0, gt=0, description="a payment whose fraud check has not answered after this long is held for "
        "review (synthetic verdict, rule fraud_check_timeout)"
    )
    idempotency_retention_s: int = Field(7 * 24 * 3600, description="how long command ids are remembered")
    sink_batch_size: int = 500
    sink_batch_wait_s: float = Field(
        0.2, gt=0, description="how long an idle sink waits for a first message; what is already fetched then "
        "goes in the same batch at once, up to sink_batch_size (no wait for a batch to fill)")
    sink_batch_linger_s: float = Field(
        0.2, ge=0, description="sinks (events, vault, audit): how long a batch may wait for more messages after "
        "its first one (0: only what is already fetched). Each batch costs a Postgres transaction and an offset "
        "commit: at 0.05 the extra batches took CPU the worker needed (p50 at 25 % load 82 -> 124 ms)")
    sink_group: str = "paystream-sink"
    sink_metrics_port: int = 6067
    encryption_keys: SecretStr | None = Field(
        None,
        description="encryption keys for tokens at rest: kid:base64key,... (16/24/32-byte AES keys); "
        "old keys stay listed to decrypt after a rotation",
    )
    encryption_keys_file: str | None = Field(
        None, description="file with the encryption keys (same entries, one per line); the local stack writes one"
    )
    encryption_current_key_id: str | None = Field(
        None, description="key id new encryptions use (default: the last key listed)"
    )
    vault_sink_group: str = Field("paystream-vault-sink", description="consumer group of the vault sink")
    audit_sink_group: str = Field("paystream-audit-sink", description="consumer group of the audit sink")
    sink_metrics_host: str = Field(
        "127.0.0.1",
        description="address the sinks' HTTP servers (/metrics, /health, /ready) bind: the event, vault and audit "
        "sinks; 0.0.0.0 in a container, so Prometheus and the probes reach them",
    )
    vault_sink_metrics_port: int = Field(
        6070, description="port of the vault sink's (`paystream customers sink`) /metrics, /health, /ready"
    )
    audit_sink_metrics_port: int = Field(
        6071, description="port of the audit sink's (`paystream audit sink`) /metrics, /health, /ready"
    )

    @model_validator(mode="after")
    def _transport(self) -> Settings:
        """Check the transport settings together and merge the Postgres TLS ones into the DSN,
        so that every connection made from ``postgres_dsn`` uses them."""
        try:
            if self.kafka_sasl_password_file and self.kafka_sasl_password is not None:
                raise TransportConfigError("set kafka_sasl_password or kafka_sasl_password_file, not both")
            self.kafka_connection()
            registry_conf(self.schema_registry_url, cafile=self.schema_registry_ssl_cafile,
                          certfile=self.schema_registry_ssl_certfile, keyfile=self.schema_registry_ssl_keyfile)
            if bool(self.web_ssl_certfile) != bool(self.web_ssl_keyfile):
                raise TransportConfigError("web_ssl_certfile and web_ssl_keyfile go together")
            self.postgres_dsn = postgres_conninfo(self.postgres_dsn, sslmode=self.postgres_sslmode,
                                                  sslrootcert=self.postgres_sslrootcert,
                                                  sslcert=self.postgres_sslcert, sslkey=self.postgres_sslkey)
        except TransportConfigError as exc:
            raise ValueError(f"transport security settings: {exc}") from None
        return self

    def kafka_connection(self) -> KafkaConnection:
        """The brokers and how to reach them: every Kafka client is built from this."""
        password = self.kafka_sasl_password
        if self.kafka_sasl_password_file:
            try:
                password = SecretStr(Path(self.kafka_sasl_password_file).read_text().rstrip("\r\n"))
            except OSError as exc:
                raise TransportConfigError(f"cannot read kafka_sasl_password_file: {type(exc).__name__}") from None
        return KafkaConnection(
            bootstrap=self.kafka_bootstrap, security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism, sasl_username=self.kafka_sasl_username, sasl_password=password,
            ssl_cafile=self.kafka_ssl_cafile, ssl_certfile=self.kafka_ssl_certfile, ssl_keyfile=self.kafka_ssl_keyfile,
            ssl_check_hostname=self.kafka_ssl_check_hostname,
        )

    def registry_conf(self) -> dict[str, Any]:
        """SchemaRegistryClient configuration: URL and TLS files (``streams.avro.registry_client``)."""
        return registry_conf(self.schema_registry_url, cafile=self.schema_registry_ssl_cafile,
                             certfile=self.schema_registry_ssl_certfile, keyfile=self.schema_registry_ssl_keyfile)

    def web_ssl_context(self) -> Any:
        """The edge's server TLS context (``ssl.SSLContext``), or None for plain HTTP."""
        return web_server_ssl_context(self.web_ssl_certfile, self.web_ssl_keyfile)

    def web_client_ssl_context(self) -> Any:
        return web_client_ssl_context(self.web_ssl_cafile)

    @property
    def web_scheme(self) -> str:
        return "https" if self.web_ssl_certfile else "http"

    def topic_settings(self) -> TopicSettings:
        return TopicSettings(partitions=self.partitions, replication_factor=self.topic_replication_factor,
                             min_insync_replicas=self.topic_min_insync_replicas,
                             records_retention_ms=self.topic_records_retention_ms,
                             working_retention_ms=self.topic_working_retention_ms)

    def disabled_gateways(self) -> frozenset[str]:
        return frozenset(name.strip() for name in self.gateways_disabled.split(",") if name.strip())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()  # type: ignore[call-arg]  # pydantic-settings fills the fields from the environment
