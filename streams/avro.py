"""The Avro wire format: Confluent framing (magic byte, schema id) via confluent-kafka's
serializers over fastavro, against the schema registry. ``avro/*.avsc`` is the one source
of message shapes; this module registers them and never lets a client auto-register."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from streams.topics import AVRO_TOPICS, AvroTopic

COMPATIBILITY = "BACKWARD_TRANSITIVE"


class DecodeError(Exception):
    """The bytes are not a valid message of the topic's schema (poison input)."""


class RegistryUnavailable(Exception):
    """The registry could not be asked: retry later, never dead-letter the message for it."""


REGISTRY_TIMEOUT_S = 10


def registry_client(target: str | Mapping[str, Any], timeout_s: float = REGISTRY_TIMEOUT_S) -> SchemaRegistryClient:
    """confluent-kafka's client with a request timeout: its default is none at all, and its
    calls are synchronous, so one stalled registry connection would freeze the worker's event
    loop for good (suspected cause of a restarted worker that went silent mid-burst in a CI
    simulation, not proven). A timeout surfaces as ``RegistryUnavailable`` and the message is
    retried. ``target``: a URL, or ``Settings.registry_conf()`` (URL and TLS files)."""
    conf = {"url": target} if isinstance(target, str) else dict(target)
    return SchemaRegistryClient({**conf, "timeout": timeout_s})


def register_schemas(client: SchemaRegistryClient) -> dict[str, int]:
    """Register every topic's schema under ``<topic>-value`` with BACKWARD_TRANSITIVE.

    Idempotent: registering an identical schema returns its existing id. An incompatible
    change is refused by the registry (HTTP 409) and raises here, before anything runs.
    """
    ids = {}
    for t in AVRO_TOPICS:
        client.set_compatibility(subject_name=t.subject, level=COMPATIBILITY)
        ids[t.subject] = client.register_schema(t.subject, Schema(t.schema_text(), "AVRO"))
    return ids


def check_compatibility(client: SchemaRegistryClient) -> dict[str, bool]:
    """Whether each ``.avsc`` may be registered over what the registry holds now.

    BACKWARD_TRANSITIVE means: readable against *every* registered version. The registry's
    ``/compatibility/.../versions/latest`` endpoint (the client's default) tests the latest
    version only and says "compatible" for a change the registration then refuses (a field
    whose default was added in v2 and dropped again breaks v1 data), so each version is tested.
    """
    result = {}
    for t in AVRO_TOPICS:
        try:
            versions = client.get_versions(t.subject)
        except SchemaRegistryError as exc:
            if exc.http_status_code != 404:
                raise
            result[t.subject] = True  # nothing registered yet: anything goes
            continue
        schema = Schema(t.schema_text(), "AVRO")
        result[t.subject] = all(bool(client.test_compatibility(t.subject, schema, version=v)) for v in versions)
    return result


class AvroCodec:
    """Encode and decode one topic's values in the Confluent wire format."""

    def __init__(self, client: SchemaRegistryClient, topic: AvroTopic) -> None:
        self.topic = topic
        schema = topic.schema_text()
        self._ser = AvroSerializer(
            client,
            schema,
            conf={"auto.register.schemas": False, "normalize.schemas": False},
        )
        # Reading with our own schema resolves older writers' records to the current shape;
        # return_record_name: unions of records come back as (full name, dict) pairs.
        self._de = AvroDeserializer(client, schema, return_record_name=True)
        self._ctx = SerializationContext(topic.topic, MessageField.VALUE)

    def encode(self, record: Mapping[str, Any]) -> bytes:
        out: bytes | None = self._ser(record, self._ctx)
        assert out is not None
        return out

    def decode(self, data: bytes | None) -> dict[str, Any]:
        if not data:
            raise DecodeError("empty message")
        if data[0] != 0 or len(data) < 6:
            raise DecodeError("not in the Confluent Avro wire format (magic byte)")
        try:
            value = self._de(data, self._ctx)
        except SchemaRegistryError as exc:
            if exc.http_status_code in (404, 422):  # unknown schema id: poison
                raise DecodeError(f"unknown schema id ({exc.error_message})") from None
            raise RegistryUnavailable(str(exc)) from exc
        except (OSError, httpx.TransportError) as exc:
            raise RegistryUnavailable(str(exc)) from exc
        except Exception as exc:  # truncated or corrupt Avro, a schema of another topic
            raise DecodeError(f"{type(exc).__name__}: {str(exc)[:200]}") from None
        if not isinstance(value, dict):
            raise DecodeError("not a record")
        return value


def codecs(client: SchemaRegistryClient) -> dict[str, AvroCodec]:
    return {t.topic: AvroCodec(client, t) for t in AVRO_TOPICS}


def schema_json(topic: AvroTopic) -> dict[str, Any]:
    return json.loads(topic.schema_text())  # type: ignore[no-any-return]
