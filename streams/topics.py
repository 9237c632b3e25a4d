"""Topic names (a public contract, see ARCHITECTURE.md) and their creation.

Topics are created explicitly, with the partition count of the settings, before any worker
starts: a topic auto-created by a producer gets the broker's default count, and faust refuses
to run when a table's changelog and its source topic differ in partitions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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


def topic_config(app_id: str, topic: str) -> dict[str, str]:
    """Per-topic settings given at creation."""
    if topic == vault(app_id) or topic in {changelog(app_id, t) for t in TABLES}:
        return {"cleanup.policy": "compact"}
    return {}


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
    return [REQUESTS, WEBHOOKS, EVENTS, DEADLETTER, gateway_calls(app_id), gateway_replies(app_id),
            vault(app_id), audit(app_id), *(changelog(app_id, t) for t in TABLES),
            fraud_checks(app_id), fraud_verdicts(app_id), fraud_admin(app_id)]


def ensure_topics(bootstrap: str, app_id: str, partitions: int, timeout: float = 30.0,
                  extra: Mapping[str, Mapping[str, str]] | None = None) -> list[str]:
    """Create the topics that do not exist yet; returns the names created. ``extra``: more
    topics (name → config), e.g. the changelogs of the fraud tables the rule files declare."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = admin.list_topics(timeout=timeout).topics
    configs = {t: topic_config(app_id, t) for t in all_topics(app_id)}
    configs.update({t: dict(c) for t, c in (extra or {}).items()})
    wanted = [t for t in configs if t not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1, config=configs[t]) for t in wanted],
        request_timeout=timeout,
    )
    created = []
    for name, fut in futures.items():
        try:
            fut.result()
            created.append(name)
        except Exception as exc:  # already created by a concurrent caller is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    return created
