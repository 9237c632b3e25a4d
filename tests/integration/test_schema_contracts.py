"""Data contracts on the real registry: BACKWARD_TRANSITIVE refuses an incompatible change, and
every avro/*.avsc is compatible with what the stack's registry holds (`paystream schemas check`)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from streams.avro import COMPATIBILITY, check_compatibility, register_schemas
from streams.topics import AVRO_DIR, AVRO_TOPICS, EVENTS

ROOT = AVRO_DIR.parent


@pytest.fixture
def registry(stack_env: dict[str, str]) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": stack_env["PAYSTREAM_SCHEMA_REGISTRY_URL"]})


@pytest.fixture
def subjects(registry: SchemaRegistryClient) -> Iterator[list[str]]:
    """Throwaway subjects (``test-<uuid>-value``), deleted afterwards."""
    made: list[str] = []
    yield made
    for subject in made:
        try:
            registry.delete_subject(subject)
            registry.delete_subject(subject, permanent=True)
        except Exception:  # cleanup only
            pass


@pytest.fixture
def throwaway_subject(subjects: list[str]) -> str:
    subjects.append(f"test-{uuid.uuid4().hex}-value")
    return subjects[-1]


def _event_schema() -> dict[str, Any]:
    return json.loads((AVRO_DIR / "payment_event.avsc").read_text())


def _with_field(schema: dict[str, Any], field: dict[str, Any]) -> str:
    changed = copy.deepcopy(schema)
    changed["fields"].append(field)
    return json.dumps(changed)


def test_backward_transitive_refuses_a_new_required_field(registry: SchemaRegistryClient,
                                                          subjects: list[str]) -> None:
    subject, v2_only = f"test-{uuid.uuid4().hex}-value", f"test-{uuid.uuid4().hex}-value"
    subjects += [subject, v2_only]
    base = _event_schema()
    registry.set_compatibility(subject_name=subject, level=COMPATIBILITY)
    registry.register_schema(subject, Schema(json.dumps(base), "AVRO"))
    assert registry.get_compatibility(subject) == COMPATIBILITY

    required = _with_field(base, {"name": "merchant_id", "type": "string"})  # no default
    with_default = _with_field(base, {"name": "merchant_id", "type": "string", "default": "m0"})
    assert registry.test_compatibility(subject, Schema(required, "AVRO")) is False
    assert registry.test_compatibility(subject, Schema(with_default, "AVRO")) is True

    # Transitive: once v2 (with the default) is registered, the required field is still refused
    # against v1 (whose data lacks it), although it is compatible with v2 alone.
    registry.register_schema(subject, Schema(with_default, "AVRO"))
    assert registry.test_compatibility(subject, Schema(required, "AVRO"), version=1) is False
    assert registry.test_compatibility(subject, Schema(required, "AVRO"), version=2) is True
    registry.set_compatibility(subject_name=v2_only, level=COMPATIBILITY)
    registry.register_schema(v2_only, Schema(with_default, "AVRO"))
    assert registry.test_compatibility(v2_only, Schema(required, "AVRO")) is True

    # Dropping an event record from the union is refused too: old data may hold it.
    fewer_events = copy.deepcopy(base)
    event_field = next(f for f in fewer_events["fields"] if f["name"] == "event")
    event_field["type"] = event_field["type"][:-1]
    assert registry.test_compatibility(subject, Schema(json.dumps(fewer_events), "AVRO")) is False


def test_check_compatibility_reports_an_incompatible_avsc(registry: SchemaRegistryClient, throwaway_subject: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The function behind `paystream schemas check`, pointed at a throwaway subject."""
    from streams import avro, topics

    base = _event_schema()
    registry.set_compatibility(subject_name=throwaway_subject, level=COMPATIBILITY)
    registry.register_schema(throwaway_subject, Schema(json.dumps(base), "AVRO"))

    class Candidate(topics.AvroTopic):
        text = ""

        @property
        def subject(self) -> str:
            return throwaway_subject

        def schema_text(self) -> str:
            return self.text

    candidate = Candidate(EVENTS, "payment_event.avsc")
    monkeypatch.setattr(avro, "AVRO_TOPICS", (candidate,))
    Candidate.text = _with_field(base, {"name": "merchant_id", "type": "string"})
    assert check_compatibility(registry) == {throwaway_subject: False}
    with_default = _with_field(base, {"name": "merchant_id", "type": "string", "default": "m0"})
    Candidate.text = with_default
    assert check_compatibility(registry) == {throwaway_subject: True}
    # Transitively: with v2 registered, the required field is compatible with the latest
    # version only; the check must still say no (the registration would be refused).
    registry.register_schema(throwaway_subject, Schema(with_default, "AVRO"))
    Candidate.text = _with_field(base, {"name": "merchant_id", "type": "string"})
    assert check_compatibility(registry) == {throwaway_subject: False}
    with pytest.raises(SchemaRegistryError) as refused:
        registry.register_schema(throwaway_subject, Schema(Candidate.text, "AVRO"))
    assert refused.value.http_status_code == 409


def test_every_avsc_is_compatible_with_the_stack_registry(registry: SchemaRegistryClient,
                                                          stack_env: dict[str, str]) -> None:
    result = check_compatibility(registry)
    assert set(result) == {t.subject for t in AVRO_TOPICS}
    assert all(result.values()), result
    for t in AVRO_TOPICS:
        assert registry.get_compatibility(t.subject) == COMPATIBILITY
    # The CLI says the same and exits 0.
    out = subprocess.run([sys.executable, "-m", "paystream.cli", "schemas", "check"], cwd=ROOT,
                         env={**os.environ, **stack_env}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("compatible") == len(AVRO_TOPICS) and "INCOMPATIBLE" not in out.stdout
    # Registering the current files is idempotent (same ids) once they are compatible.
    assert register_schemas(registry) == register_schemas(registry)
