"""Topic names (a public contract, see ARCHITECTURE.md) and their creation.

Topics are created explicitly, with the settings' partitions, replication factor, min ISR and
retention, before any worker starts: a topic auto-created by a producer gets the broker's
defaults (a 7-day retention, for one), and faust refuses to run when a table's changelog and its
source topic differ in partitions.

Three kinds of topic (docs/operations.md):

* **records** (``payment.events``, the gateway replies, the audit topic, the dead letters):
  the history Postgres is built from and that ``paystream db rebuild`` replays; kept
  indefinitely by default (``retention.ms=-1``, ``PAYSTREAM_TOPIC_RECORDS_RETENTION_MS``).
* **compacted** (the vault topic, the tables' changelogs): the latest record per key is kept.
* **working** (``payment.requests``, ``payment.webhooks``, the gateway calls, the fraud check,
  verdict and admin topics): inputs that are done with once processed;
  ``PAYSTREAM_TOPIC_WORKING_RETENTION_MS`` (7 days by default).

Settings given at creation are re-applied to existing topics on every ``ensure_topics``
(incremental alter: retention, min ISR, cleanup policy), so a changed retention reaches a
running cluster; partitions and replication factor of an existing topic are only reported
when they differ (changing them is an operator's reassignment, not a config change).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from paystream.transport import KafkaTarget, as_kafka

log = logging.getLogger("paystream.topics")

REQUESTS = "payment.requests"
WEBHOOKS = "payment.webhooks"
EVENTS = "payment.events"
DEADLETTER = "payment.deadletter"


def gateway_calls(app_id: str) -> str:
    """Internal: gateway operations the command agent decided on (key payment_id)."""
    return f"{app_id}-gateway-calls"


def gateway_replies(app_id: str) -> str:
    """Internal: what the gateways answered (key payment_id), fed back to the command agent."""
    return f"{app_id}-gateway-replies"


def gateway_outcomes(app_id: str) -> str:
    """Internal: gateway replies the payments agent applied inline, in the transaction of the batch
    that made the call (key payment_id; same records as the gateway replies). History for the
    sink's payment_transactions; the agent never reads it back."""
    return f"{app_id}-gateway-outcomes"


def replies_history(app_id: str) -> list[str]:
    """The topics holding every gateway reply: the executor's, and the ones applied inline."""
    return [gateway_replies(app_id), gateway_outcomes(app_id)]


def vault(app_id: str) -> str:
    """Internal: saved payment methods for the vault sink (key method id; sealed token and masked
    card data only, never on payment.events). Compacted: an erasure supersedes older records."""
    return f"{app_id}-vault"


def audit(app_id: str) -> str:
    """Internal: audit records (JSON) from workers, the HTTP edge and admin commands, for the
    audit sink's hash-chained ``audit_log``."""
    return f"{app_id}-audit"


def fraud_checks(app_id: str) -> str:
    """Internal: fraud check hops (key ``<dimension>:<value>``, CreateTime timestamps; docs/fraud.md)."""
    return f"{app_id}-fraud-checks"


def fraud_verdicts(app_id: str) -> str:
    """Internal: fraud verdicts (key payment_id), co-partitioned with payment.requests."""
    return f"{app_id}-fraud-verdicts"


def fraud_admin(app_id: str) -> str:
    """Internal: fraud blocklist admin commands (JSON, key ``<kind>:<value>``)."""
    return f"{app_id}-fraud-admin"


#: The worker's changelog-backed tables (agents/payments.py). Their changelog topics are
#: created with the others: created lazily by faust, a first worker on a fresh stack crash-looped
#: for minutes on PartitionsMismatch while the new topic's metadata was not yet known.
TABLES = ("payments", "idempotency", "applied-offsets", "payment-methods")


def changelog(app_id: str, table: str) -> str:
    return f"{app_id}-{table}-changelog"


WEEK_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSettings:
    """How the project's topics are created (``Settings.topic_settings()``)."""

    partitions: int = 4
    replication_factor: int = 1
    min_insync_replicas: int = 1
    records_retention_ms: int = -1  # -1: kept indefinitely
    working_retention_ms: int = WEEK_MS

    def __post_init__(self) -> None:
        if self.partitions < 1 or self.replication_factor < 1 or self.min_insync_replicas < 1:
            raise ValueError("partitions, replication factor and min ISR must be at least 1")
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(f"min.insync.replicas={self.min_insync_replicas} is more than the replication factor "
                             f"{self.replication_factor}: acks=all producers could never write")
        for name in ("records_retention_ms", "working_retention_ms"):
            value = getattr(self, name)
            if value != -1 and value < 3_600_000:
                raise ValueError(f"{name} must be -1 (indefinitely) or at least one hour, got {value}")


def record_topics(app_id: str) -> list[str]:
    """The history Postgres is built from: kept indefinitely by default, replayed by a rebuild."""
    return [EVENTS, DEADLETTER, *replies_history(app_id), audit(app_id)]


def compacted_topics(app_id: str) -> list[str]:
    return [vault(app_id), *(changelog(app_id, t) for t in TABLES)]


def topic_config(app_id: str, topic: str, settings: TopicSettings | None = None) -> dict[str, str]:
    """Per-topic settings given at creation (and re-applied to existing topics)."""
    s = settings or TopicSettings()
    config = {"min.insync.replicas": str(s.min_insync_replicas)}
    if topic in compacted_topics(app_id):
        return {**config, "cleanup.policy": "compact"}
    retention = s.records_retention_ms if topic in record_topics(app_id) else s.working_retention_ms
    return {**config, "cleanup.policy": "delete", "retention.ms": str(retention)}


AVRO_DIR = Path(__file__).resolve().parent.parent / "avro"


@dataclass(frozen=True)
class AvroTopic:
    topic: str
    schema_file: str

    @property
    def subject(self) -> str:
        return f"{self.topic}-value"  # topic-name strategy

    def schema_text(self) -> str:
        return (AVRO_DIR / self.schema_file).read_text()


AVRO_TOPICS = (
    AvroTopic(REQUESTS, "payment_command.avsc"),
    AvroTopic(EVENTS, "payment_event.avsc"),
    AvroTopic(WEBHOOKS, "gateway_notification.avsc"),
)


def all_topics(app_id: str) -> list[str]:
    return [REQUESTS, WEBHOOKS, EVENTS, DEADLETTER, gateway_calls(app_id), *replies_history(app_id),
            vault(app_id), audit(app_id), *(changelog(app_id, t) for t in TABLES),
            fraud_checks(app_id), fraud_verdicts(app_id), fraud_admin(app_id)]


def ensure_topics(bootstrap: KafkaTarget, app_id: str, partitions: int, timeout: float = 30.0,
                  settings: TopicSettings | None = None,
                  extra: Mapping[str, Mapping[str, str]] | None = None) -> list[str]:
    """Create the topics that do not exist yet and re-apply the configs of those that do;
    returns the names created. ``settings`` defaults to ``TopicSettings(partitions)``; ``extra``:
    more topics (name → config, min ISR added), e.g. the changelogs of the fraud tables the rule
    files declare."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    s = settings or TopicSettings(partitions=partitions)
    admin = AdminClient(as_kafka(bootstrap).librdkafka())
    existing = admin.list_topics(timeout=timeout).topics
    configs = {t: topic_config(app_id, t, s) for t in all_topics(app_id)}
    isr = {"min.insync.replicas": str(s.min_insync_replicas)}
    configs.update({t: {**isr, **dict(c)} for t, c in (extra or {}).items()})
    wanted = [t for t in configs if t not in existing]
    created = []
    if wanted:
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=s.partitions, replication_factor=s.replication_factor, config=configs[t])
             for t in wanted],
            request_timeout=timeout,
        )
        for name, fut in futures.items():
            try:
                fut.result()
                created.append(name)
            except Exception as exc:  # already created by a concurrent caller is fine
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
    present = [t for t in configs if t in existing]
    for name in present:
        meta = existing[name]
        replicas = {len(p.replicas) for p in meta.partitions.values()}
        if len(meta.partitions) != s.partitions or replicas != {s.replication_factor}:
            log.warning("topic %s has %d partitions and replication factor %s; the settings say %d and %d",
                        name, len(meta.partitions), sorted(replicas), s.partitions, s.replication_factor)
    if present:
        apply_configs(admin, {t: configs[t] for t in present}, timeout)
    return created


def apply_configs(admin: object, configs: Mapping[str, Mapping[str, str]], timeout: float = 30.0) -> None:
    """Set each topic's configs (incremental: other configs of the topic are left alone)."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]  # exported, not listed in __all__
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
    )

    assert isinstance(admin, AdminClient)
    resources = [
        ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[
            ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET) for key, value in config.items()])
        for name, config in configs.items()
    ]
    for resource, fut in admin.incremental_alter_configs(resources, request_timeout=timeout).items():
        try:
            fut.result()
        except Exception as exc:  # e.g. no AlterConfigs permission: the topic works, its config may drift
            log.warning("could not apply the configs of topic %s: %s", resource.name, exc)
