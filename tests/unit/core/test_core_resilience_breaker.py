"""paystream.core.resilience.CircuitBreaker: closed → open → half-open → closed/open, on an injected clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paystream.core.resilience import BreakerConfig, BreakerState, CallHealth, CircuitBreaker

OK, FAILED = CallHealth.OK, CallHealth.FAILED


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def breaker(**kw: float) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    cfg = {"failures": 3, "failure_rate": 0.5, "window": 10, "cooldown_s": 30.0, **kw}
    return CircuitBreaker(BreakerConfig(**cfg), clock), clock  # type: ignore[arg-type]


def test_consecutive_failures_open_and_a_success_resets_the_count() -> None:
    b, _ = breaker()
    for health in (FAILED, FAILED, OK, FAILED, FAILED):
        assert b.allow()
        b.record(health)
    assert b.state is BreakerState.CLOSED
    b.record(FAILED)
    assert b.state is BreakerState.OPEN and not b.allow()


def test_failure_rate_over_the_window_opens_without_a_long_streak() -> None:
    b, _ = breaker(failures=100, failure_rate=0.5, window=10)
    for i in range(9):
        b.record(FAILED if i % 2 == 0 else OK)  # 5 of 9: the window is not full yet
    assert b.state is BreakerState.CLOSED
    b.record(OK)  # 5 of 10 = 0.5
    assert b.state is BreakerState.OPEN


def test_rate_below_threshold_stays_closed() -> None:
    b, _ = breaker(failures=100, failure_rate=0.5, window=10)
    for i in range(100):
        b.record(FAILED if i % 3 == 0 else OK)  # one in three
    assert b.state is BreakerState.CLOSED


def test_cooldown_then_one_probe_whose_success_closes() -> None:
    b, clock = breaker()
    for _ in range(3):
        b.record(FAILED)
    clock.t += 29.9
    assert not b.allow()
    clock.t += 0.2
    assert b.allow() and b.state is BreakerState.HALF_OPEN
    assert not b.allow() and not b.allow()  # only one probe at a time
    b.record(OK)
    assert b.state is BreakerState.CLOSED and b.allow()
    b.record(FAILED)  # counts start again from zero
    b.record(FAILED)
    assert b.state is BreakerState.CLOSED


def test_failed_probe_reopens_for_a_full_cooldown() -> None:
    b, clock = breaker()
    for _ in range(3):
        b.record(FAILED)
    clock.t += 30
    assert b.allow()
    b.record(FAILED)
    assert b.state is BreakerState.OPEN
    clock.t += 29
    assert not b.allow()
    clock.t += 1
    assert b.allow() and b.state is BreakerState.HALF_OPEN


def test_a_lost_probe_is_replaced_after_a_cooldown() -> None:
    b, clock = breaker()
    for _ in range(3):
        b.record(FAILED)
    clock.t += 30
    assert b.allow()  # the probe's task is cancelled: no record() ever comes
    clock.t += 10
    assert not b.allow()
    clock.t += 20
    assert b.allow()
    b.record(OK)
    assert b.state is BreakerState.CLOSED


def test_outcomes_of_calls_in_flight_when_it_opened_are_ignored() -> None:
    b, _ = breaker()
    for _ in range(3):
        b.record(FAILED)
    b.record(OK)  # a slow call from before: does not close the circuit
    assert b.state is BreakerState.OPEN and not b.allow()
    assert b.transitions == 1


@given(st.lists(st.sampled_from([OK, FAILED]), max_size=200))
def test_never_open_without_enough_failures(outcomes: list[CallHealth]) -> None:
    b, _ = breaker(failures=5, failure_rate=0.6, window=20)
    for h in outcomes:
        b.allow()
        b.record(h)
    if b.state is BreakerState.OPEN:
        assert outcomes.count(FAILED) >= 5


@pytest.mark.parametrize("bad", [{"failures": 0}, {"failure_rate": 0.0}, {"failure_rate": 1.5}, {"window": 0},
                                 {"cooldown_s": -1.0}])
def test_bad_configs_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerConfig(**bad)  # type: ignore[arg-type]
