"""The benchmark's arithmetic: HdrHistogram percentiles, rates, ratios, the serialised bound."""

from __future__ import annotations

import math

import pytest

from bench.stats import (
    answered_at,
    latencies_from,
    open_loop_rates,
    percentile_label,
    rate,
    ratio,
    serialised_bound,
    steady_rate,
    summarize,
)


def test_percentile_labels_read_like_the_docs() -> None:
    assert [percentile_label(p) for p in (50.0, 95.0, 99.0, 99.9)] == ["p50", "p95", "p99", "p99.9"]


def test_percentiles_of_a_uniform_ramp_are_within_the_histograms_precision() -> None:
    summary = summarize([float(ms) for ms in range(1, 1001)])  # 1..1000 ms
    assert summary is not None
    assert summary.count == 1000
    # three significant digits: each value is within 0.1 % of the exact percentile
    for label, exact in (("p50", 500), ("p95", 950), ("p99", 990), ("p99.9", 999)):
        assert summary.percentiles_ms[label] == pytest.approx(exact, rel=1e-3)
    assert summary.max_ms == pytest.approx(1000, rel=1e-3)
    assert summary.mean_ms == pytest.approx(500.5, rel=1e-3)


def test_a_single_outlier_shows_in_p99_9_and_max_but_not_in_p50() -> None:
    summary = summarize([10.0] * 999 + [5000.0])
    assert summary is not None
    assert summary.percentiles_ms["p50"] == pytest.approx(10, rel=1e-3)
    assert summary.percentiles_ms["p99"] == pytest.approx(10, rel=1e-3)
    assert summary.max_ms == pytest.approx(5000, rel=1e-3)


def test_sub_millisecond_values_keep_microsecond_resolution() -> None:
    summary = summarize([0.25] * 10)
    assert summary is not None
    assert summary.percentiles_ms["p50"] == pytest.approx(0.25, rel=1e-2)


def test_negative_latencies_from_clock_jitter_count_as_the_lowest_value() -> None:
    summary = summarize([-0.5, 1.0])
    assert summary is not None
    assert summary.count == 2
    assert summary.percentiles_ms["p50"] == pytest.approx(0.001, abs=1e-3)


def test_no_samples_no_summary() -> None:
    assert summarize([]) is None


def test_summary_is_json_ready() -> None:
    summary = summarize([1.0, 2.0])
    assert summary is not None
    assert set(summary.to_json()) == {"count", "mean_ms", "max_ms", "percentiles_ms"}
    assert set(summary.percentiles_ms) == {"p50", "p95", "p99", "p99.9"}


def test_rate_and_ratio_guard_against_division_by_zero() -> None:
    assert rate(100, 4.0) == 25.0
    assert rate(100, 0.0) == 0.0
    assert rate(0, 3.0) == 0.0
    assert ratio(50.0, 200.0) == 0.25
    assert ratio(50.0, 0.0) is None
    assert ratio(None, 2.0) is None
    assert ratio(2.0, None) is None


def test_serialised_bound_is_partitions_times_calls_per_second() -> None:
    assert serialised_bound(4, 50.0) == 80.0
    assert serialised_bound(4, 200.0) == 20.0
    assert math.isinf(serialised_bound(4, 0.0))


def test_open_loop_rates_are_fractions_of_the_maximum_and_never_below_one() -> None:
    assert open_loop_rates(400.0, (0.25, 0.5, 0.75)) == [(0.25, 100.0), (0.5, 200.0), (0.75, 300.0)]
    assert open_loop_rates(2.0, (0.25,)) == [(0.25, 1.0)]


def test_latencies_pair_sent_and_seen_and_count_the_unseen() -> None:
    sent = {"a": 10.0, "b": 11.0, "c": 12.0}
    seen = {"a": 10.5, "c": 12.25, "zzz": 99.0}
    values, missing = latencies_from(sent, seen)
    assert sorted(values) == [250.0, 500.0]
    assert missing == 1


def test_answered_at_gives_the_arrival_of_each_fraction() -> None:
    times = [100.0 + i for i in range(1, 11)]  # answers at t0+1 .. t0+10
    assert answered_at(times, 100.0) == {"10%": 1.0, "50%": 5.0, "90%": 9.0, "100%": 10.0}
    assert answered_at([], 0.0) == {}


def test_steady_rate_ignores_a_slow_start_and_a_straggler() -> None:
    times = [50.0] + [100.0 + i / 100 for i in range(98)] + [500.0]  # 100 per second in the middle
    assert steady_rate(times) == pytest.approx(100.0, rel=0.02)
    assert steady_rate([1.0, 2.0]) == 0.0  # too few to say
