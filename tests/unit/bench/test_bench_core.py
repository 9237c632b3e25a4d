"""bench.core runs the agent's per-payment path without Kafka and prints our CPU per payment."""

from __future__ import annotations

import os
import re

import pytest

from bench import core


def test_importing_the_core_bench_leaves_the_environment_alone() -> None:
    # It once set PAYSTREAM_SIMGW_IN_PROCESS at import: pytest imports every test module before
    # the integration tests run, and their workers then skipped the stack's simulated gateway.
    assert "PAYSTREAM_SIMGW_IN_PROCESS" not in os.environ


def test_core_bench_runs_the_whole_payment_path_and_reports_cpu_per_payment(capsys: pytest.CaptureFixture[str]) -> None:
    result = core.main(["--payments", "40"])
    out = capsys.readouterr().out
    # Every payment (the warm-up's too) went the whole way: created, captured (one authorize-and-capture
    # call), succeeded.
    assert result["events"] == {"PaymentCreated": 80, "PaymentCaptured": 80, "PaymentSucceeded": 80}
    match = re.search(r"40 payments: (\d+) µs of CPU per payment", out)
    assert match is not None, out
    assert int(match.group(1)) > 0
    assert "PAYSTREAM_SIMGW_IN_PROCESS" not in os.environ  # running it leaves the environment alone too
