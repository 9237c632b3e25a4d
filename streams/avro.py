"""The Avro wire format: Confluent framing (magic byte, schema id) and fastavro, against the
schema registry (confluent-kafka's client). ``avro/*.avsc`` is the one source
of message shapes; this module registers them and never lets a client auto-register."""

from __future__ import annotations

import contextlib
import io
import json
import struct
from collections.abc import Mapping
from typing import Any

import fastavro
import httpx
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

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


WIRE_MAGIC = 0
_HEADER = struct.Struct(">bI")  # magic byte, schema id (big-endian): the Confluent wire format


class AvroCodec:
    """Encode and decode one topic's values in the Confluent wire format.

    fastavro directly, with every schema parsed once: confluent-kafka's AvroSerializer and
    AvroDeserializer deep-copied and expanded the reader schema and ran the (empty) rule
    machinery on every message, a tenth of a worker's CPU per payment (py-spy, 2026-11-26).
    The registry is asked once per schema id (our own id on the first encode, each writer's id
    on its first decode); the confluent client caches its answers too.
    """

    def __init__(self, client: SchemaRegistryClient, topic: AvroTopic) -> None:
        self.topic = topic
        self._client = client
        self._text = topic.schema_text()
        self._reader = fastavro.parse_schema(json.loads(self._text))
        self._prefix: bytes | None = None  # magic byte + our schema id, once looked up
        self._own_id: int | None = None
        self._writers: dict[int, Any] = {}  # schema id -> parsed writer schema

    def _own_prefix(self) -> bytes:
        if self._prefix is None:
            try:
                registered = self._client.lookup_schema(self.topic.subject, Schema(self._text, "AVRO"))
            except SchemaRegistryError as exc:
                if exc.http_status_code == 404:  # never auto-register: `paystream schemas register` does
                    raise ValueError(f"schema of {self.topic.topic} is not registered under "
                                     f"{self.topic.subject}") from None
                raise RegistryUnavailable(str(exc)) from exc
            except (OSError, httpx.TransportError) as exc:
                raise RegistryUnavailable(str(exc)) from exc
            self._own_id = registered.schema_id
            self._prefix = _HEADER.pack(WIRE_MAGIC, registered.schema_id)
        return self._prefix

    def encode(self, record: Mapping[str, Any]) -> bytes:
        prefix = self._own_prefix()
        out = io.BytesIO()
        out.write(prefix)
        fastavro.schemaless_writer(out, self._reader, record)
        return out.getvalue()

    def _writer(self, schema_id: int) -> Any:
        writer = self._writers.get(schema_id)
        if writer is None:
            try:
                schema = self._client.get_schema(schema_id)
            except SchemaRegistryError as exc:
                if exc.http_status_code in (404, 422):  # unknown schema id: poison
                    raise DecodeError(f"unknown schema id ({exc.error_message})") from None
                raise RegistryUnavailable(str(exc)) from exc
            except (OSError, httpx.TransportError) as exc:
                raise RegistryUnavailable(str(exc)) from exc
            if schema.schema_type not in (None, "AVRO"):
                raise DecodeError(f"schema id {schema_id} is not an Avro schema")
            try:
                writer = fastavro.parse_schema(json.loads(schema.schema_str or ""))
            except Exception as exc:
                raise DecodeError(f"schema id {schema_id} does not parse: {type(exc).__name__}") from None
            self._writers[schema_id] = writer
        return writer

    def decode(self, data: bytes | None) -> dict[str, Any]:
        if not data:
            raise DecodeError("empty message")
        if data[0] != WIRE_MAGIC or len(data) < _HEADER.size:
            raise DecodeError("not in the Confluent Avro wire format (magic byte)")
        _, schema_id = _HEADER.unpack_from(data)
        if self._own_id is None:
            with contextlib.suppress(ValueError):  # not registered: every id is a foreign writer
                self._own_prefix()
        if schema_id == self._own_id:
            writer, reader = self._reader, None  # written with our schema: no resolution needed
        else:
            # Reading with our own schema resolves older writers' records to the current shape.
            writer, reader = self._writer(schema_id), self._reader
        try:
            # return_record_name: unions of records come back as (full name, dict) pairs.
            value = fastavro.schemaless_reader(io.BytesIO(data[_HEADER.size:]), writer, reader,
                                               return_record_name=True)
        except Exception as exc:  # truncated or corrupt Avro, a schema of another topic
            raise DecodeError(f"{type(exc).__name__}: {str(exc)[:200]}") from None
        if not isinstance(value, dict):
            raise DecodeError("not a record")
        return value


def codecs(client: SchemaRegistryClient) -> dict[str, AvroCodec]:
    return {t.topic: AvroCodec(client, t) for t in AVRO_TOPICS}


def schema_json(topic: AvroTopic) -> dict[str, Any]:
    return json.loads(topic.schema_text())  # type: ignore[no-any-return]
