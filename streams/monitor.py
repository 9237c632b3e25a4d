"""faust's Prometheus sensor, without the per-message work nobody reads.

faust's ``PrometheusMonitor`` (and the ``Monitor`` it extends) runs bookkeeping and Prometheus
label lookups on every message in and out, every stream event, every table get/set/delete and
every send: about a dozen calls per payment input, ~5 % of a worker's CPU under load (py-spy,
docs/performance.md). Our dashboards and alerts read none of those series (they use
paystream's own business metrics and faust's per-partition end and committed offsets, and its
rebalance counters). ``LeanPrometheusMonitor`` keeps faust's commit, end-offset, rebalance,
assignment and web-request hooks and does nothing else per message, except remembering when
each partition last delivered an event (faust's slow-stream diagnostics read it).
"""

from __future__ import annotations

from time import monotonic
from typing import Any

import faust
from faust.sensors.prometheus import PrometheusMonitor, setup_prometheus_sensors


class LeanPrometheusMonitor(PrometheusMonitor):
    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        self.stream_inbound_time[tp] = monotonic()
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_table_get(self, table: Any, key: Any) -> None:
        return None

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        return None

    def on_table_del(self, table: Any, key: Any) -> None:
        return None

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int, valsize: int) -> None:
        return None

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        return None

    def on_send_error(self, producer: Any, exc: BaseException, state: Any) -> None:
        self.send_errors += 1
        self._metrics.total_error_messages_sent.inc()


def setup_metrics(app: faust.App, name_prefix: str = "paystream") -> None:
    """``/metrics`` on the worker's web port with the lean faust sensor (one process registry:
    faust's partition metrics and paystream's own)."""
    setup_prometheus_sensors(app, pattern="/metrics", name_prefix=name_prefix)
    app.monitor = LeanPrometheusMonitor(metrics=app.monitor._metrics)  # type: ignore[attr-defined]
