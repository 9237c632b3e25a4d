"""bench.core runs the agent's per-payment path without Kafka and prints our CPU per payment."""

from __future__ import annotations

import re

import pytest

from bench import core


def test_core_bench_runs_the_whole_payment_path_and_reports_cpu_per_payment(capsys: pytest.CaptureFixture[str]) -> None:
    result = core.main(["--payments", "40"])
    out = capsys.readouterr().out
    # Every payment (the warm-up's too) went the whole way: created, captured (one authorize-and-capture
    # call), succeeded.
    assert result["events"] == {"PaymentCreated": 80, "PaymentCaptured": 80, "PaymentSucceeded": 80}
    match = re.search(r"40 payments: (\d+) µs of CPU per payment", out)
    assert match is not None, out
    assert int(match.group(1)) > 0
