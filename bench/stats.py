"""The pure arithmetic of the benchmark: latency percentiles (HdrHistogram), rates and ratios.

Latencies are recorded in microseconds into an HdrHistogram (1 µs .. 10 min, 3 significant
digits), so p99.9 of a million samples costs no more memory than p50 of ten; summaries are
reported in milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from hdrh.histogram import HdrHistogram

PERCENTILES: tuple[float, ...] = (50.0, 95.0, 99.0, 99.9)
LOWEST_US = 1
HIGHEST_US = 600_000_000  # ten minutes: anything slower is clamped (and is a finding anyway)
SIGNIFICANT_DIGITS = 3


def percentile_label(p: float) -> str:
    """50.0 -> "p50", 99.9 -> "p99.9"."""
    return f"p{p:g}"


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of one latency distribution, in milliseconds."""

    count: int
    mean_ms: float
    max_ms: float
    percentiles_ms: dict[str, float]

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def record_ms(hist: HdrHistogram, values_ms: Iterable[float]) -> int:
    """Record latencies given in ms; negative values (clock skew of a few µs) count as 0.
    Returns how many were recorded."""
    n = 0
    for v in values_ms:
        us = round(v * 1000.0)
        hist.record_value(min(max(us, LOWEST_US), HIGHEST_US))
        n += 1
    return n


def summarize(values_ms: Iterable[float], percentiles: Iterable[float] = PERCENTILES) -> LatencySummary | None:
    """Percentile summary of latencies in ms; None when there is no sample."""
    hist = new_histogram()
    if record_ms(hist, values_ms) == 0:
        return None
    return LatencySummary(
        count=hist.get_total_count(),
        mean_ms=round(hist.get_mean_value() / 1000.0, 3),
        max_ms=round(hist.get_max_value() / 1000.0, 3),
        percentiles_ms={percentile_label(p): round(hist.get_value_at_percentile(p) / 1000.0, 3)
                        for p in percentiles},
    )


def rate(count: int, seconds: float) -> float:
    """Items per second; 0 when no time passed (nothing measurable)."""
    if seconds <= 0 or count <= 0:
        return 0.0
    return count / seconds


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator ÷ denominator, None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def serialised_bound(partitions: int, latency_ms: float) -> float:
    """Payments/s a pipeline would reach if each partition waited for one gateway call at a
    time: ``partitions × 1000 / latency``. A slow gateway must not pull us down to this."""
    if latency_ms <= 0:
        return float("inf")
    return partitions * 1000.0 / latency_ms


def open_loop_rates(max_rate: float, fractions: Iterable[float]) -> list[tuple[float, float]]:
    """(fraction, payments/s) pairs for the open-loop latency runs, at least 1 payment/s each."""
    return [(f, max(1.0, round(max_rate * f, 1))) for f in fractions]


def latencies_from(sent_at: Mapping[str, float], seen_at: Mapping[str, float]) -> tuple[list[float], int]:
    """Latencies in ms of every key in ``sent_at`` also in ``seen_at`` (both in seconds, one
    clock), and how many keys of ``sent_at`` were never seen."""
    out = []
    missing = 0
    for key, t0 in sent_at.items():
        t1 = seen_at.get(key)
        if t1 is None:
            missing += 1
        else:
            out.append((t1 - t0) * 1000.0)
    return out, missing


def answered_at(times: list[float], t0: float, marks: tuple[float, ...] = (0.1, 0.5, 0.9, 1.0)) -> dict[str, float]:
    """Seconds after ``t0`` by which each fraction of the (sorted) answer times had arrived:
    ``{"10%": 0.8, "50%": 2.1, ...}``; shows a slow start or a straggler behind an average."""
    if not times:
        return {}
    n = len(times)
    return {f"{m:.0%}": round(times[max(0, min(n - 1, round(m * n) - 1))] - t0, 3) for m in marks}


def steady_rate(times: list[float], lo: float = 0.1, hi: float = 0.9) -> float:
    """Answers per second between the ``lo`` and ``hi`` fractions of the (sorted) answer
    times: the rate once the pipeline is busy, without the first and last stragglers."""
    n = len(times)
    i, j = int(lo * n), int(hi * n) - 1
    if n < 10 or j <= i or times[j] <= times[i]:
        return 0.0
    return round((j - i) / (times[j] - times[i]), 1)
