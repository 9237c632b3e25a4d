"""The rebuild's pure parts: partition ranges, truncated-history detection, progress lines,
the summary, the DSN handling."""

from __future__ import annotations

import io

import pytest

from sinks.rebuild import (
    PartitionRange,
    Progress,
    RebuildError,
    RebuildReport,
    SourceReport,
    committed_gaps,
    database_name,
    source_topics,
    target_dsn,
)


def test_partition_range_counts_what_was_read_up_to_the_end() -> None:
    r = PartitionRange("payment.events", 0, low=10, end=20)
    assert (r.read, r.size, r.done) == (0, 10, False)
    r.position = 25  # past the end (a transaction marker after the captured end)
    assert (r.read, r.done) == (10, True)
    assert PartitionRange("t", 1, 5, 5).done  # an empty partition needs no reading


def test_truncated_history_is_found_on_delete_topics_only() -> None:
    ranges = [PartitionRange("payment.events", 0, 0, 9), PartitionRange("payment.events", 1, 3, 9),
              PartitionRange("ps-vault", 0, 7, 9)]
    assert [(r.topic, r.partition) for r in committed_gaps(ranges, {"ps-vault"})] == [("payment.events", 1)]


def test_progress_prints_a_line_per_interval_when_not_a_terminal() -> None:
    out = io.StringIO()
    p = Progress(200, out, every_s=0)
    p.update(50, "events: 50 messages")
    p.close(200, "done")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "50/200 offsets" in lines[0] and "25.0%" in lines[0]
    assert "200/200 offsets" in lines[1] and "100.0%" in lines[1] and "\r" not in out.getvalue()


def test_summary_names_events_payments_seconds_and_rate() -> None:
    report = RebuildReport("rb", created=True, migrations=4, events=90, seconds=2.0,
                           sources=[SourceReport("events", ["payment.events"], messages=100, seconds=1.5)],
                           counts={"payments": 30, "payment_events": 90})
    text = report.summary()
    assert "rebuilt rb (created) in 2.0s: 100 messages, 50 messages/s; 90 events, 30 payments" in text
    assert "payment_events=90" in text


def test_dsn_handling() -> None:
    dsn = "postgresql://postgres@127.0.0.1:15432/paystream"
    assert database_name(target_dsn(dsn, "paystream_rebuild_1")) == "paystream_rebuild_1"
    assert database_name(target_dsn(dsn, None)) == "paystream"
    with pytest.raises(RebuildError):
        database_name("host=127.0.0.1")
    assert source_topics("events", "ps") == ["payment.events", "ps-gateway-replies", "ps-gateway-outcomes"]
    with pytest.raises(ValueError):
        source_topics("nope", "ps")
