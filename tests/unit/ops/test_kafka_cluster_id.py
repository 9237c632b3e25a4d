"""The SASL test broker's cluster id (tests/support/tls.py) never starts with "-", which
kafka-storage's argument parser reads as an option (one random id in 64 did)."""

from __future__ import annotations

import uuid

import pytest

from tests.support import tls


def test_an_id_starting_with_a_dash_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    dash_first = uuid.UUID(bytes=b"\xf8" + bytes(15))  # urlsafe base64 of 0xf8... starts with "-"
    plain = uuid.UUID(bytes=b"\x10" + bytes(15))
    draws = iter([dash_first, dash_first, plain])
    monkeypatch.setattr(tls.uuid, "uuid4", lambda: next(draws))
    cluster_id = tls.kafka_cluster_id()
    assert not cluster_id.startswith("-") and len(cluster_id) == 22
    assert cluster_id.startswith("E")  # the third draw, 0x10...
