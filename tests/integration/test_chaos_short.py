"""Short chaos runs on the real stack: each scenario of ``chaos.scenarios`` with a few hundred
payments (and two or three kills), checked from outside by ``chaos.checker``.

Every invariant column must be zero: double charges (I1), lost commands (I4), duplicate or
missing events (I2, I5), sequence gaps (I5), amount violations (I3), Postgres mismatches (I7),
card numbers (I6), disagreements with the gateway's ledger, forged webhooks accepted. The
first two columns (commands sent, results) are sizes, not checks. A scenario that fails
because of a known bug is marked xfail (not strict: fixes are in progress) with the
finding (docs/reliability.md), so the marker has to go when the bug is fixed; the checker
itself is never relaxed.

The scenarios start their own workers and sink; the session's worker (tests/conftest.py), if
it runs, is stopped meanwhile so no other member of the consumer group takes their partitions.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.scenarios import run_scenario
from tests.support.session import session_worker_paused

# Known findings that make a short scenario fail today (see docs/reliability.md).
KNOWN: dict[str, str] = {
    # Empty since session 2: F5/F6 (gateway-faults), F9 (webhooks), F10 (rebalance) and F7/F12
    # (poison) are fixed; each of those scenarios passed in fresh-clone CI simulations.
}

ORDER = ["worker-kill", "rebalance", "kafka-kill", "postgres-stop", "gateway-faults", "webhooks", "poison"]


def _params() -> list[object]:
    out: list[object] = []
    for name in ORDER:
        reason = KNOWN.get(name)
        marks = [pytest.mark.xfail(strict=False, reason=reason)] if reason else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.fixture(scope="module")
def chaos_env(stack_env: dict[str, str], request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    with session_worker_paused(request):
        yield {**os.environ, **stack_env}


@pytest.mark.parametrize("name", _params())
def test_chaos_short(name: str, chaos_env: dict[str, str], tmp_path: Path) -> None:
    report = run_scenario(name, short=True, outdir=tmp_path, env=chaos_env)
    print(report.summary_line())
    assert report.results > 0 and report.payments > 0, f"no traffic went through:\n{report.details()}"
    assert report.extra.get("forged_accepted", 0) == 0, f"forged webhooks accepted:\n{report.details()}"
    violations = {k: v for k, v in report.failures().items() if v}
    assert not violations, f"{report.summary_line()}\n{report.details(limit=20)}"


# faust's own layout: one transactional producer per input partition
# (PAYSTREAM_EOS_TRANSACTIONS=partition; the default is one per worker, fenced by group
# generation, KIP-447) and the consumer in a thread of its own (PAYSTREAM_CONSUMER_IN_LOOP=false;
# the default runs it in the worker's loop): the scenarios that kill and move workers, where the
# layouts differ. (All seven passed in partition mode on the session-12 code and with the
# consumer in the loop on session 13's; these two run in faust's layout in every `make test`, the
# rest with `PAYSTREAM_EOS_TRANSACTIONS=partition PAYSTREAM_CONSUMER_IN_LOOP=false make chaos`.)
FAUST_LAYOUT = ["worker-kill", "rebalance"]


@pytest.mark.parametrize("name", FAUST_LAYOUT)
def test_chaos_short_fausts_own_layout(name: str, chaos_env: dict[str, str], tmp_path: Path) -> None:
    env = {**chaos_env, "PAYSTREAM_EOS_TRANSACTIONS": "partition", "PAYSTREAM_CONSUMER_IN_LOOP": "false"}
    report = run_scenario(name, short=True, outdir=tmp_path, env=env)
    print(report.summary_line())
    assert report.results > 0 and report.payments > 0, f"no traffic went through:\n{report.details()}"
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.rglob("worker-*.log"))
    assert "starting transactional producer" not in logs, "the workers ran one transaction per worker"
    assert "(consumer in its thread, one transaction per partition, " in logs, logs[-3000:]
    violations = {k: v for k, v in report.failures().items() if v}
    assert not violations, f"{report.summary_line()}\n{report.details(limit=20)}"
