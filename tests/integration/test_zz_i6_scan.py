"""I6 after the whole suite: no card number in any topic, Postgres table or log file.

Runs last (tests/conftest.py moves it after every other test, unit tests included). Before
scanning it stops the paystream processes the suite still runs (the session worker and sink, as
their fixtures' teardown would: SIGTERM, then wait), so nothing writes to the stack or to a log
after the scan and their shutdown lines are scanned too. What is scanned (tests/support/i6.py):

* every topic of the stack's Kafka but ``payment.requests`` (the senders' input; see
  ``EXCLUDED_TOPICS`` for why, and why ``payment.webhooks`` and the dead letters are scanned),
  read_uncommitted so aborted transactional records count; keys, values (the strings of a
  decoded Avro record, else the raw bytes) and headers;
* ``pg_dump --data-only`` of every database of the stack's Postgres server;
* every log file: the stack's (``$PAYSTREAM_STACK_DIR/logs``, Kafka's, Postgres', the simulated
  gateway's) and the suite's (every worker, sink and chaos log lives under pytest's basetemp:
  ``tmp_path_factory.mktemp`` / ``tmp_path``).

The finder is the chaos checker's (``chaos.checker.card_numbers_in``), independent of the
worker's guard. A finding is printed with where it is and the number masked (first 6, last 4).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from paystream import stack
from tests.support.i6 import I6Report, log_files, scan_kafka, scan_logs, scan_postgres


def _suite_processes() -> list[int]:
    """pids of this pytest process's live paystream children (``python -m paystream.cli ...``)."""
    me, out = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != me or fields[0] == "Z":
                continue
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if b"paystream.cli" in cmdline:
            out.append(int(stat.parent.name))
    return out


def _stop_suite_processes(timeout: float = 90.0) -> list[int]:
    pids = _suite_processes()
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and set(pids) & set(_suite_processes()):
        time.sleep(0.2)
    for pid in set(pids) & set(_suite_processes()):
        os.kill(pid, signal.SIGKILL)
    return pids


def test_no_card_number_in_any_topic_table_or_log_after_the_suite(
        stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> None:
    stopped = _stop_suite_processes()
    report = I6Report()
    scan_kafka(stack_env["PAYSTREAM_KAFKA_BOOTSTRAP"], stack_env["PAYSTREAM_SCHEMA_REGISTRY_URL"], report)
    scan_postgres(stack_env["PAYSTREAM_POSTGRES_DSN"], report)
    logs = log_files([tmp_path_factory.getbasetemp()], every_file_under=[stack.stack_dir() / "logs"])
    scan_logs(logs, report)
    print(f"{report.summary()} (stopped {len(stopped)} suite process(es) first)")

    # The scan covered what it says: all topics to their end, every database dumped, the logs read.
    assert not report.incomplete, f"topics not read to their end: {report.incomplete}"
    assert not report.dump_failures, f"pg_dump failed for {report.dump_failures}"
    assert "paystream" in report.databases and report.log_files
    if report.findings:
        pytest.fail(f"{len(report.findings)} card number(s) found (I6):\n" + "\n".join(report.findings[:100]),
                    pytrace=False)
