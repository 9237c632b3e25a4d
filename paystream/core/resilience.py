"""Retry backoff and per-gateway circuit breakers: pure, no I/O, no clock or randomness of their own.

``backoff_delay`` is exponential backoff with *full jitter*: the n-th retry waits a uniformly
random time in ``[0, min(cap, base * 2**n))``, so callers that failed together do not retry
together. The random source is passed in (tests pass a fixed one).

``CircuitBreaker`` keeps one gateway's health from the outcomes of the calls made to it; the
clock is passed in. See its docstring for the states.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
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
