"""The gateway executor in processes of its own (``gateway_executor_in_worker`` false,
``paystream gateway-executor``): the worker then runs no executor, learns a gateway's latency
from the replies the executors send back (so it keeps choosing inline or handed-over calls
right), and a standalone executor refuses the in-process simulated gateway, whose idempotency
store would not be the worker's."""

from __future__ import annotations

import pytest

from agents.gateway import GatewayLimits, reply_latency
from agents.payments import Wiring, install
from paystream.config import Settings
from paystream.worker import ExecutorConfigError, run_gateway_executor
from streams.app import create_app


def _reply(**meta: object) -> dict[str, object]:
    return {"kind": "reply", "payment_id": "p1", "input": {},
            "meta": {"gateway": "simulated", "latency_ms": 180, "tries": 1, **meta}}


def test_a_single_try_reply_reports_its_gateway_and_seconds() -> None:
    assert reply_latency(_reply()) == ("simulated", 0.18)
    assert reply_latency(_reply(latency_ms=0)) == ("simulated", 0.0)


@pytest.mark.parametrize("meta", [
    {"tries": 2},  # retried: its time holds backoff sleeps
    {"tries": 0},  # not made (gateway switched off, circuit open)
    {"latency_ms": None},
    {"latency_ms": 1.5},
    {"latency_ms": True},
    {"gateway": None},
])
def test_replies_without_one_timed_try_teach_nothing(meta: dict[str, object]) -> None:
    assert reply_latency(_reply(**meta)) is None


def test_a_reply_without_meta_teaches_nothing() -> None:
    assert reply_latency({"kind": "reply", "input": {}}) is None
    assert reply_latency({"kind": "reply", "meta": "x"}) is None


def test_replies_of_a_slow_gateway_move_its_typical_latency_past_the_inline_limit() -> None:
    limits = GatewayLimits(256)
    for _ in range(30):
        seen = reply_latency(_reply(latency_ms=200))
        assert seen is not None
        limits.observe(*seen)
    assert limits.typical_latency_s("simulated") > 0.020  # gateway_inline_max_latency_ms: handed over
    for _ in range(60):
        seen = reply_latency(_reply(latency_ms=2))
        assert seen is not None
        limits.observe(*seen)
    assert limits.typical_latency_s("simulated") < 0.020  # fast again: inline again


@pytest.mark.parametrize("in_worker", [True, False])
def test_the_worker_runs_the_executor_only_when_told_to(in_worker: bool) -> None:
    s = Settings(kafka_bootstrap="127.0.0.1:9", gateway_executor_in_worker=in_worker)
    app = create_app(s)
    install(app, Wiring(s, {}, {}))
    names = {getattr(t, "__name__", "") for t in app._app_tasks}
    assert "reconciler" in names
    assert ("gateway_executor" in names) is in_worker


def test_a_standalone_executor_refuses_the_in_process_simulated_gateway() -> None:
    # Checked before anything is contacted: the broker address here does not exist.
    with pytest.raises(ExecutorConfigError, match="in-process simulated gateway"):
        run_gateway_executor(Settings(kafka_bootstrap="127.0.0.1:9", simgw_in_process=True))
