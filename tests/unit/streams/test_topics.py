"""Topic settings: record topics kept indefinitely by default, working topics for a week,
compacted ones compacted; min ISR everywhere; impossible combinations refused."""

from __future__ import annotations

import pytest

from paystream.config import Settings
from streams import topics
from streams.topics import TopicSettings, topic_config


def test_record_topics_are_kept_indefinitely_by_default() -> None:
    for name in (topics.EVENTS, topics.DEADLETTER, topics.gateway_replies("ps"), topics.gateway_outcomes("ps"),
                 topics.audit("ps")):
        assert topic_config("ps", name) == {"min.insync.replicas": "1", "cleanup.policy": "delete",
                                            "retention.ms": "-1"}, name


def test_working_and_compacted_topics() -> None:
    s = TopicSettings(replication_factor=3, min_insync_replicas=2, working_retention_ms=3_600_000)
    assert topic_config("ps", topics.REQUESTS, s) == {"min.insync.replicas": "2", "cleanup.policy": "delete",
                                                      "retention.ms": "3600000"}
    assert topic_config("ps", topics.vault("ps"), s) == {"min.insync.replicas": "2", "cleanup.policy": "compact"}
    assert topic_config("ps", topics.changelog("ps", "payments"), s)["cleanup.policy"] == "compact"
    every = set(topics.all_topics("ps"))
    assert set(topics.record_topics("ps")) | set(topics.compacted_topics("ps")) <= every


def test_settings_reach_the_topics() -> None:
    s = Settings(partitions=8, topic_replication_factor=3, topic_min_insync_replicas=2,  # type: ignore[call-arg]
                 topic_records_retention_ms=-1, topic_working_retention_ms=86_400_000)
    assert s.topic_settings() == TopicSettings(8, 3, 2, -1, 86_400_000)


@pytest.mark.parametrize("kwargs", [{"replication_factor": 1, "min_insync_replicas": 2},
                                    {"records_retention_ms": 1000}, {"partitions": 0}])
def test_impossible_settings_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        TopicSettings(**kwargs)
