"""paystream's settings: one pydantic-settings object, every field an environment variable.

Each field is read from ``PAYSTREAM_<NAME>`` (for example ``PAYSTREAM_KAFKA_BOOTSTRAP``).
Secrets are ``SecretStr`` so they never show up in a repr or a log line.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.topics import TopicSettings


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAYSTREAM_", extra="ignore")

    app_id: str = Field("paystream", description="faust app id: consumer group and prefix of internal topics")
    kafka_bootstrap: str = Field("127.0.0.1:19092", description="Kafka bootstrap servers")
    schema_registry_url: str = Field(
        "http://127.0.0.1:18081/apis/ccompat/v7", description="Confluent-compatible schema registry URL"
    )
    postgres_dsn: str = Field("postgresql://postgres@127.0.0.1:15432/paystream", description="sink database")
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
    commit_interval_s: float = Field(0.1, description="how often the worker commits (EOS transactions)")
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
    store: str = Field("memory://", description="faust table store URL")
    datadir: str = Field(".stack/worker-data", description="faust data directory")
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    default_gateway: str = Field("simulated", description="gateway used when a command names none")
    simgw_url: str = Field("http://127.0.0.1:18090", description="simulated gateway base URL")
    simgw_in_process: bool = Field(False, description="use the simulated gateway in-process (benchmarks)")
    stripe_api_base: str = Field("http://127.0.0.1:12111", description="Stripe API base (stripe-mock locally)")
    stripe_api_key: SecretStr = SecretStr("sk_test_123")
    gateway_timeout_s: float = Field(10.0, description="after this a gateway call's outcome is unknown")
    gateway_batch_size: int = Field(256, description="gateway calls carried out concurrently per batch")
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
    sink_batch_wait_s: float = 0.2
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
