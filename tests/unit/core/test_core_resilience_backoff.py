"""paystream.core.resilience: exponential backoff with full jitter."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paystream.core.resilience import RetryPolicy, backoff_delay


def test_full_jitter_spans_zero_to_the_exponential_ceiling() -> None:
    assert backoff_delay(0, base_s=0.2, cap_s=5, rand=lambda: 0.0) == 0.0
    assert backoff_delay(0, base_s=0.2, cap_s=5, rand=lambda: 0.5) == pytest.approx(0.1)
    assert backoff_delay(1, base_s=0.2, cap_s=5, rand=lambda: 0.5) == pytest.approx(0.2)
    assert backoff_delay(3, base_s=0.2, cap_s=5, rand=lambda: 0.999) == pytest.approx(1.6 * 0.999)


def test_the_cap_bounds_every_delay() -> None:
    assert backoff_delay(10, base_s=0.2, cap_s=5, rand=lambda: 0.5) == pytest.approx(2.5)
    assert backoff_delay(10_000, base_s=0.2, cap_s=5, rand=lambda: 0.999) <= 5
    # A broken random source cannot push a caller past the cap, nor below zero.
    assert backoff_delay(2, base_s=1, cap_s=3, rand=lambda: 7.0) == 3
    assert backoff_delay(2, base_s=1, cap_s=3, rand=lambda: -1.0) == 0


def test_jitter_spreads_callers_that_failed_together() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(4, base_s=0.1, cap_s=10, rand=rng.random) for _ in range(200)]
    assert min(delays) < 0.2 and max(delays) > 1.4  # ceiling 1.6: uses the whole range
    assert len(set(delays)) == 200


@given(retry=st.integers(0, 200), base=st.floats(0, 10), cap=st.floats(0, 60), r=st.floats(0, 1, exclude_max=True))
def test_delay_is_within_bounds(retry: int, base: float, cap: float, r: float) -> None:
    d = backoff_delay(retry, base_s=base, cap_s=cap, rand=lambda: r)
    assert 0 <= d <= cap
    assert d <= base * 2.0 ** min(retry, 1000) or d <= cap


def test_negative_retry_and_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError):
        backoff_delay(-1, base_s=1, cap_s=1, rand=lambda: 0.5)
    with pytest.raises(ValueError):
        RetryPolicy(max_tries=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_s=-1)
