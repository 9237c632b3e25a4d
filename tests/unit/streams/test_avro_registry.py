"""The schema-registry client the worker decodes with (streams/avro.py)."""

from __future__ import annotations

from streams.avro import registry_client


def test_the_registry_client_never_waits_forever() -> None:
    client = registry_client("http://127.0.0.1:9")
    assert client._rest_client.timeout == 10  # confluent-kafka's default is None: no timeout at all
