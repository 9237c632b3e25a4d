"""sinks/postgres.py ``commit_stored``: after a stored batch, a "not now" from the group
coordinator (loading after a broker restart, moving, rebalancing) defers the commit to the next
batch instead of crashing the sink; any other commit failure still raises."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError, KafkaException

from sinks.postgres import commit_stored


class FakeConsumer:
    def __init__(self, error: KafkaError | None) -> None:
        self.error, self.commits = error, 0

    def commit(self, asynchronous: bool = True) -> None:
        assert asynchronous is False
        self.commits += 1
        if self.error is not None:
            raise KafkaException(self.error)


def test_a_commit_that_succeeds() -> None:
    consumer = FakeConsumer(None)
    assert commit_stored(consumer, logging.getLogger("t")) is True  # type: ignore[arg-type]
    assert consumer.commits == 1


@pytest.mark.parametrize("code", [KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.NOT_COORDINATOR,
                                  KafkaError.REBALANCE_IN_PROGRESS, KafkaError._TIMED_OUT])
def test_not_now_is_deferred_and_logged(code: int, caplog: pytest.LogCaptureFixture) -> None:
    consumer = FakeConsumer(KafkaError(code))
    with caplog.at_level(logging.WARNING):
        assert commit_stored(consumer, logging.getLogger("t")) is False  # type: ignore[arg-type]
    assert "offset commit deferred" in caplog.text


@pytest.mark.parametrize("code", [KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError._FATAL,
                                  KafkaError.OFFSET_METADATA_TOO_LARGE])
def test_other_failures_still_raise(code: int) -> None:
    with pytest.raises(KafkaException):
        commit_stored(FakeConsumer(KafkaError(code)), logging.getLogger("t"))  # type: ignore[arg-type]
