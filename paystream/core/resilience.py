"""Retry backoff and per-gateway circuit breakers: pure, no I/O, no clock or randomness of their own.

``backoff_delay`` is exponential backoff with *full jitter*: the n-th retry waits a uniformly
random time in ``[0, min(cap, base * 2**n))``, so callers that failed together do not retry
together. The random source is passed in (tests pass a fixed one).

``CircuitBreaker`` keeps one gateway's health from the outcomes of the calls made to it; the
clock is passed in. See its docstring for the states.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "BreakerConfig",
    "BreakerState",
    "CallHealth",
    "CircuitBreaker",
    "RetryPolicy",
    "backoff_delay",
]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How the gateway executor retries a call the gateway answered "nothing done, retry".

    ``max_tries`` counts every try of the call, the first included (1: no retry).
    """

    max_tries: int = 3
    base_s: float = 0.2
    cap_s: float = 5.0

    def __post_init__(self) -> None:
        if isinstance(self.max_tries, bool) or self.max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {self.max_tries!r}")
        if self.base_s < 0 or self.cap_s < 0:
            raise ValueError("base_s and cap_s must not be negative")


def backoff_delay(retry: int, *, base_s: float, cap_s: float, rand: Callable[[], float]) -> float:
    """Seconds to wait before retry number ``retry`` (0 for the first retry), with full jitter.

    ``rand`` returns a float in ``[0, 1)`` (``random.random``). The result is in
    ``[0, min(cap_s, base_s * 2**retry)]``; out-of-range ``rand`` values are clamped, so a
    broken source can never make a caller sleep longer than the cap.
    """
    if retry < 0:
        raise ValueError(f"retry must be >= 0, got {retry!r}")
    # 2**retry overflows floats for huge retry counts: the ceiling is the cap long before that.
    ceiling = cap_s if retry >= 64 else min(cap_s, base_s * (2.0**retry))
    ceiling = max(ceiling, 0.0)
    fraction = min(max(rand(), 0.0), 1.0)
    return ceiling * fraction


# --- Circuit breaker ------------------------------------------------------------------------


class BreakerState(StrEnum):
    CLOSED = "closed"  # calls go through; outcomes are counted
    OPEN = "open"  # calls are refused until the cool-down is over
    HALF_OPEN = "half_open"  # one probe call goes through; its outcome closes or reopens


class CallHealth(StrEnum):
    """What one call says about the gateway's health (not about the payment)."""

    OK = "ok"  # the gateway answered: success, decline, a 4xx about our request, not found
    FAILED = "failed"  # "nothing done, retry" (5xx, 429, not sent) or no answer in time


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """``failures`` consecutive failed calls open the circuit, and so does a failure share of
    at least ``failure_rate`` over the last ``window`` calls (once ``window`` calls were seen).
    After ``cooldown_s`` one probe call is let through (half-open)."""

    failures: int = 10
    failure_rate: float = 0.5
    window: int = 50
    cooldown_s: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.failures, bool) or self.failures < 1:
            raise ValueError(f"failures must be >= 1, got {self.failures!r}")
        if not 0.0 < self.failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be within (0, 1], got {self.failure_rate!r}")
        if isinstance(self.window, bool) or self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window!r}")
        if self.cooldown_s < 0:
            raise ValueError("cooldown_s must not be negative")


class CircuitBreaker:
    """One gateway's circuit: closed → open → (cool-down) half-open → closed or open again.

    Ask ``allow()`` before a call and report its ``record(health)`` after it. While open,
    ``allow()`` is False: the call is not made. Half-open lets exactly one probe through; a
    probe that never reports back (its task was cancelled) is replaced after another
    cool-down, so the circuit cannot stay stuck half-open. Outcomes of calls that were already
    in flight when the circuit opened are ignored. Not thread-safe (one event loop).
    """

    def __init__(self, config: BreakerConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._recent: deque[bool] = deque(maxlen=config.window)  # True = failed
        self._consecutive = 0
        self._opened_at = 0.0
        self._probe_started: float | None = None
        self.transitions = 0

    @property
    def state(self) -> BreakerState:
        return self._state

    def allow(self) -> bool:
        now = self._clock()
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if now - self._opened_at < self.config.cooldown_s:
                return False
            self._move(BreakerState.HALF_OPEN)
            self._probe_started = now
            return True
        # Half-open: one probe at a time; a probe lost without an answer is replaced.
        if self._probe_started is not None and now - self._probe_started < max(self.config.cooldown_s, 1e-9):
            return False
        self._probe_started = now
        return True

    def record(self, health: CallHealth) -> None:
        failed = health is CallHealth.FAILED
        if self._state is BreakerState.OPEN:
            return  # a call that started before the circuit opened
        if self._state is BreakerState.HALF_OPEN:
            if self._probe_started is None:
                return
            self._probe_started = None
            if failed:
                self._open()
            else:
                self._close()
            return
        self._recent.append(failed)
        self._consecutive = self._consecutive + 1 if failed else 0
        cfg = self.config
        too_many = self._consecutive >= cfg.failures
        rate = len(self._recent) >= cfg.window and sum(self._recent) >= cfg.failure_rate * len(self._recent)
        if too_many or rate:
            self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._probe_started = None
        self._move(BreakerState.OPEN)

    def _close(self) -> None:
        self._recent.clear()
        self._consecutive = 0
        self._move(BreakerState.CLOSED)

    def _move(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            self.transitions += 1
